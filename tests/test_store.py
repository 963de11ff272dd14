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
