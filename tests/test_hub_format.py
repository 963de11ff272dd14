"""A run dir is a dataset repository: load_dataset(RUN) and its configs give the splits TRL trains on, the card's
front matter names exactly the data files there, and `python -m cai_gen.push` uploads the repository's files
(checked without a network: --dry-run, its argument handling, and a stand-in for huggingface_hub's HfApi)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import hubcard, push, rundir

from .test_store import _fake_run


def jl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "run"
    _fake_run(out, "limit=6", "output.test_size=0.4")  # both sides hold rows
    return out


def load(run: Path, tmp_path: Path, name: str | None = None):
    import datasets

    return datasets.load_dataset(str(run), name, cache_dir=str(tmp_path / "cache"))


def ids(ds) -> list[str]:
    return list(ds["id"])


def test_load_dataset_gives_the_preference_splits_in_trls_conversational_form(run, tmp_path):
    """Regression: load_dataset(RUN/preferences) failed (a save_to_disk folder) and load_dataset(RUN) read every
    JSONL file as one split."""
    ds = load(run, tmp_path)
    assert sorted(ds) == ["test_prefs", "train_prefs"]
    prefs = jl(run / rundir.PREFS)
    for s in ("train", "test"):
        d = ds[f"{s}_prefs"]
        assert ids(d) == [r["id"] for r in prefs if r["split"] == s] and len(d) > 0
        assert {"prompt", "chosen", "rejected"} <= set(d.column_names)
        assert not {"messages", "completion"} & set(d.column_names)  # TRL's format detection would pick them
        row = d[0]
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        want = next(r for r in prefs if r["id"] == row["id"])
        assert (row["prompt"], row["chosen"], row["rejected"]) == (want["prompt"], want["chosen"], want["rejected"])


def test_the_sft_and_kto_configs_give_their_rows(run, tmp_path):
    sft, kto = load(run, tmp_path, "sft"), load(run, tmp_path, "kto")
    assert sorted(sft) == ["test_sft", "train_sft"] and sorted(kto) == ["test", "train"]
    for s in ("train", "test"):
        assert ids(sft[f"{s}_sft"]) == [r["id"] for r in jl(run / rundir.SFT) if r["split"] == s]
        rows = [r for r in jl(run / rundir.KTO) if r["split"] == s]
        d = kto[s]
        assert [(r["id"], r["completion"], r["label"]) for r in d] == [(r["id"], r["completion"], r["label"])
                                                                     for r in rows]
        assert {"prompt", "completion", "label"} <= set(d.column_names)
    assert set(kto["train"]["label"]) == {True, False}


def test_load_from_disk_still_reads_the_copies(run):
    import datasets

    d = datasets.load_from_disk(str(run / rundir.PREFS_DIR))
    assert sorted(d) == ["test_prefs", "test_sft", "train_prefs", "train_sft"]
    assert sorted(datasets.load_from_disk(str(run / rundir.KTO_DIR))) == ["test", "train"]


def card_data(run: Path):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(run / rundir.CARD)


def test_the_card_front_matter_parses_and_maps_every_data_file(run):
    card = card_data(run)
    d = card.data
    named = {f["path"] for c in d.configs for f in c["data_files"]}
    there = {p.relative_to(run).as_posix() for p in (run / rundir.DATA).rglob("*") if p.is_file()}
    assert named == there and len(there) == 6
    assert [c["config_name"] for c in d.configs] == ["default", "sft", "kto"] and d.configs[0]["default"]
    assert d.license == "unknown" and d.language == ["en"] and "synthetic" in d.tags
    n = len(jl(run / rundir.KTO))  # the largest config: KTO's two rows per pair
    assert d.size_categories == [hubcard.size_category(n)] == ["n<1K"]
    assert "customer_service" in d.pretty_name


def test_the_card_shows_one_example_row_per_config_and_how_it_was_made(run):
    text = (run / rundir.CARD).read_text()
    body = text.split("## Examples", 1)[1].split("## Files", 1)[0]
    heads = [line for line in body.splitlines() if line.startswith("### ")]
    assert [h.split("`")[1] for h in heads] == ["default", "sft", "kto"]
    first = next(r for r in jl(run / rundir.PREFS) if r["split"] == "train")
    assert f'"id": {json.dumps(first["id"])}' in body.split("### ")[1]
    assert "## Reproduce" in body and "config.json" in body  # an API run: no command line, the config says it


def test_a_card_option_and_an_empty_split(tmp_path):
    """output.license/language reach the card. output.test_size=0 leaves the test splits empty: they get no file
    and the card names none, so load_dataset reads the rest (it fails on a split of no rows)."""
    import datasets

    out = tmp_path / "run"
    _fake_run(out, "output.test_size=0", "output.license=cc-by-4.0", "output.language=[en,de]")
    d = card_data(out).data
    assert d.license == "cc-by-4.0" and d.language == ["en", "de"]
    assert [[f["split"] for f in c["data_files"]] for c in d.configs] == [["train_prefs"], ["train_sft"], ["train"]]
    assert sorted(p.name for p in (out / rundir.DATA).iterdir()) == ["kto_train.parquet", "train_prefs.parquet",
                                                                     "train_sft.parquet"]
    assert list(load(out, tmp_path)) == ["train_prefs"] and list(load(out, tmp_path, "kto")) == ["train"]
    assert len(datasets.load_from_disk(str(out / rundir.PREFS_DIR))["test_prefs"]) == 0  # the copies keep it


def test_the_reproduce_command_is_the_runs_overrides(run, tmp_path):
    from cai_gen import report

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / ".hydra").mkdir()
    (out / ".hydra" / "overrides.yaml").write_text("- backend=fake\n- limit=6\n- prompts.path=/a b/x.jsonl\n")
    report.build(out)
    text = (out / rundir.CARD).read_text()
    assert "python -m cai_gen backend=fake limit=6 'prompts.path=/a b/x.jsonl'" in text


def test_model_text_cannot_close_its_fence():
    lines = hubcard.fenced('{"content": "```\\n# heading ````"}', "json")
    assert lines[0] == "`````json" and lines[-1] == "`````"


# the files of a dataset repository, and none of the run's internals
UPLOADED = ["README.md", "config.json", "constitution.json", "data/kto_test.parquet", "data/kto_train.parquet",
            "data/test_prefs.parquet", "data/test_sft.parquet", "data/train_prefs.parquet", "data/train_sft.parquet",
            "no_violation.jsonl", "rejected.jsonl", "summary.json"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai_gen.push", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_push_dry_run_lists_the_repository_files(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    for f in (".hydra/overrides.yaml", "review.sqlite", "eval/eval.json", "eval/eval.png", "reviewed/kto.jsonl"):
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_text("x")
    r = cli(str(out), "me/cai-data", "--private", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    head, *listed = r.stdout.splitlines()
    assert "me/cai-data (private)" in head
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "plots").glob("*.png"))
    assert plots and listed == sorted(UPLOADED + plots + ["eval/eval.json", "eval/eval.png"])
    assert listed == push.files(out)


@pytest.mark.parametrize("args, says", [
    (["{run}", "not a repo id!"], "repo id 'not a repo id!'"),
    (["{tmp}/none", "me/x"], "no such run dir"),
    (["{run}"], "required: repo"),
    (["{tmp}", "me/x"], "not a finished cai_gen run dir (no README.md)"),
])
def test_push_arguments_are_checked_in_one_line(run, tmp_path, args, says):
    r = cli(*[a.format(run=run, tmp=tmp_path) for a in args], "--dry-run")
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_push_refuses_a_card_without_data_or_naming_a_missing_file(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "data" / "kto_test.parquet").unlink()
    r = cli(str(out), "me/x", "--dry-run")
    assert r.returncode == 2 and "names data/kto_test.parquet, which is not in the run dir" in r.stderr
    text = (out / rundir.CARD).read_text()  # a card as cai_gen wrote it before data/: tags only
    (out / rundir.CARD).write_text("---\ntags: [cai_gen]\n---\n" + text.split("\n---\n", 1)[1])
    r = cli(str(out), "me/x", "--dry-run")
    assert r.returncode == 2 and "maps no data files" in r.stderr
    for bad, says in (("configs: [a\n", "front matter is not valid YAML"),
                      ("configs: [{data_files: x}]\n", "is not a list of config_name + data_files")):
        (out / rundir.CARD).write_text(f"---\n{bad}---\n")
        r = cli(str(out), "me/x", "--dry-run")
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_push_refuses_a_run_dir_in_use(run, tmp_path, monkeypatch, capsys):
    from cai_gen.lock import RunLock

    out = tmp_path / "run"
    shutil.copytree(run, out)
    with RunLock(out):
        assert push.main([str(out), "me/x", "--dry-run"]) == 2
    assert "in use by another cai_gen run" in capsys.readouterr().err


class FakeApi:
    calls: list = []
    fail: Exception | None = None

    def create_repo(self, repo, **kw):
        if self.fail:
            raise self.fail
        self.calls.append(("create_repo", repo, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        return "https://huggingface.co/datasets/me/x/commit/abc"


def test_push_creates_the_repo_and_uploads_the_listed_files(run, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.fail = [], None
    assert push.main([str(run), "me/x", "--private"]) == 0
    (_, repo, kw), (_, up) = FakeApi.calls
    assert repo == "me/x" and kw == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert up["repo_type"] == "dataset" and up["folder_path"] == str(run) and up["repo_id"] == "me/x"
    assert up["allow_patterns"] == rundir.HUB_FILES
    assert "/datasets/me/x" in capsys.readouterr().out
    FakeApi.calls, FakeApi.fail = [], OSError("Token is required (`token=True`), but no token found.\nmore")
    assert push.main([str(run), "me/x"]) == 2
    assert capsys.readouterr().err.strip() == "cai_gen.push: error: push to me/x: Token is required (`token=True`), " \
                                              "but no token found."


@pytest.mark.slow
def test_trls_own_cli_trains_one_dpo_step_on_a_run_dir(run, tmp_path, default_model_dir):
    """`trl dpo --dataset_name RUN` as TRL's docs give it, unchanged: TRL calls load_dataset(RUN)."""
    trl = Path(sys.executable).with_name("trl")
    r = subprocess.run([str(trl), "dpo", "--model_name_or_path", default_model_dir, "--dataset_name", str(run),
                        "--dataset_train_split", "train_prefs", "--max_steps", "1", "--use_cpu",
                        "--per_device_train_batch_size", "1", "--max_length", "128", "--report_to", "none",
                        "--save_strategy", "no", "--logging_steps", "1", "--output_dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'train_loss'" in r.stdout + r.stderr and (tmp_path / "out" / "model.safetensors").is_file()
