"""store.save_dataset: the datasets copy a TRL user loads is replaced as a whole (the old copy or the new one,
never neither), and a failed save leaves the old copy and no temp dirs."""
from pathlib import Path

import pytest

from cai_gen import store


def load(p: Path) -> list[str]:
    import datasets

    return list(datasets.load_from_disk(str(p))["train"]["x"])


def test_a_reader_always_finds_a_whole_copy(tmp_path, monkeypatch):
    """Regression: the old copy was removed before the new one was renamed in. Every filesystem step of the swap
    is followed by a load, as a reader at that instant would do."""
    path = tmp_path / "ds"
    store.save_dataset(path, {"train": ([{"x": "old"}], ["x"])})
    seen = []
    real_rmtree, real_replace = store.shutil.rmtree, store.os.replace

    def after(op):
        def run(*a, **k):
            op(*a, **k)
            seen.append(load(path))  # raises if `path` is missing or half there
        return run

    monkeypatch.setattr(store.shutil, "rmtree", after(real_rmtree))
    monkeypatch.setattr(store.os, "replace", after(real_replace))
    store.save_dataset(path, {"train": ([{"x": "new"}], ["x"])})
    monkeypatch.undo()
    assert load(path) == ["new"] and seen and seen[-1] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the old copy is gone, no temp dir left


def test_a_failed_save_keeps_the_old_copy(tmp_path, monkeypatch):
    import datasets

    path = tmp_path / "ds"
    store.save_dataset(path, {"train": ([{"x": "old"}], ["x"])})

    def disk_full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", disk_full)
    with pytest.raises(OSError):
        store.save_dataset(path, {"train": ([{"x": "new"}], ["x"])})
    monkeypatch.undo()
    assert load(path) == ["old"] and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_an_empty_split_loads_back_with_its_siblings_features(tmp_path):
    """Regression: datasets 5 saves an empty split as zero shards and load_from_disk then fails (IndexError), so
    output.test_size=0 (or a run whose prompts all hash to train) wrote a preferences/ no one could load."""
    import datasets

    path = tmp_path / "ds"
    store.save_dataset(path, {"train": ([{"x": "a", "n": 1}], ["x", "n"]), "test": ([], ["x", "n"])})
    d = datasets.load_from_disk(str(path))
    assert len(d["train"]) == 1 and len(d["test"]) == 0 and d["test"].features == d["train"].features
    store.save_dataset(tmp_path / "one", [], ["x"])
    assert len(datasets.load_from_disk(str(tmp_path / "one"))) == 0


def _fake_run(out: Path, *overrides: str) -> dict:
    from cai_gen import pipeline
    from cai_gen.backends.fake import FakeBackend

    from .conftest import make_cfg

    cfg = make_cfg("backend=fake", "limit=3", *overrides)
    return pipeline.run(cfg, out, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))


def test_a_rerun_without_datasets_removes_the_old_copies(tmp_path):
    from cai_gen.review import db
    from cai_gen.review.__main__ import main as review_main

    run = tmp_path / "run"
    _fake_run(run, "review.sample_rate=1.0")
    db.open_run(run).close()
    assert review_main(["merge", str(run)]) == 0
    made = [run / "preferences", run / "kto", run / "trace.jsonl", run / "reviewed" / "preferences",
            run / "reviewed" / "kto"]
    assert all(p.exists() for p in made)
    # fewer rows now: an old copy left behind would hold rows the JSONL no longer has
    _fake_run(run, "limit=2", "review.sample_rate=1.0", "output.save_dataset=false")
    assert not (run / "preferences").exists() and not (run / "kto").exists()
    assert (run / "trace.jsonl").is_file() and (run / "preferences.jsonl").is_file()
    assert review_main(["merge", str(run)]) == 0
    assert not (run / "reviewed" / "preferences").exists() and not (run / "reviewed" / "kto").exists()


def test_a_rerun_without_the_trace_removes_the_old_one(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    assert (run / "trace.jsonl").is_file()
    _fake_run(run, "limit=2", "output.trace=false")
    assert not (run / "trace.jsonl").exists() and (run / "preferences").is_dir()
