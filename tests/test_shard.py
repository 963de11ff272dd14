"""Sharding (shard.index / shard.count), Hydra sweeps over shards (basic and submitit launchers), and merging
the shards back: together they must equal the unsharded run, and a missing or foreign shard is refused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import merge, pipeline, prompts
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import UserError
from cai_gen.prompts import PromptRecord

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent


def recs(n: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", f"prompt {i}", "d", "test") for i in range(n)]


def rows(d: Path) -> dict:
    out = {}
    for line in (d / "preferences.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("created_at")
        out[r["id"]] = r
    return out


def test_shards_partition_the_prompts_and_stay_put_as_the_set_grows():
    all_ = recs(300)
    parts = [prompts.shard(all_, i, 4) for i in range(4)]
    ids = [r.id for p in parts for r in p]
    assert sorted(ids) == sorted(r.id for r in all_) and len(ids) == len(set(ids))
    assert all(50 <= len(p) <= 100 for p in parts)            # about 75 each
    grown = [prompts.shard(recs(400), i, 4) for i in range(4)]
    for old, new in zip(parts, grown):                         # old prompts keep their shard
        assert {r.id for r in old} <= {r.id for r in new}
    assert prompts.shard(all_, 0, 1) == all_


def test_shard_index_out_of_range_is_one_line(capsys):
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "shard.count=2", "shard.index=2"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["cai_gen: error: config: shard: Value error, index must be < count (2), "
                                             "got 2 (got {'index': 2, 'count': 2})"]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory) -> dict:
    cfg = make_cfg("backend=fake", "limit=20")
    out = tmp_path_factory.mktemp("whole")
    pipeline.run(cfg, out, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    return rows(out)


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_sweep_over_shards_then_merge_equals_the_unsharded_run(tmp_path, unsharded, launcher):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "cai_gen", "-m", "backend=fake", "limit=20", "samples=2", "shard.count=3",
                        "shard.index=range(0,3)", f"hydra.sweep.dir={sweep}", f"hydra/launcher={launcher}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    shards = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(shards) == 3 and all(rows(s) for s in shards)
    assert merge.main([*map(str, shards), "--out", str(tmp_path / "m")]) == 0
    merged = rows(tmp_path / "m")
    assert merged == unsharded  # same ids, same pairs, nothing twice
    info = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert info["shards"] == {"count": 3, "indices": [0, 1, 2], "missing": []}


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory) -> list[Path]:
    out = []
    for i in range(3):
        cfg = make_cfg("backend=fake", "limit=20", "shard.count=3", f"shard.index={i}")
        d = tmp_path_factory.mktemp(f"shard{i}")
        pipeline.run(cfg, d, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
        out.append(d)
    return out


def test_missing_twice_and_foreign_shards_are_refused(shard_dirs, tmp_path):
    with pytest.raises(UserError, match=r"shard\(s\) 1 of 3 missing"):
        merge.merge([shard_dirs[0], shard_dirs[2]])
    got, _, info = merge.merge([shard_dirs[0], shard_dirs[2]], partial=True)
    assert info["shards"]["missing"] == [1] and len(got) == len(rows(shard_dirs[0])) + len(rows(shard_dirs[2]))
    with pytest.raises(UserError, match="the same shard given twice"):
        merge.merge([shard_dirs[0], shard_dirs[0], shard_dirs[1], shard_dirs[2]])
    cfg = make_cfg("backend=fake", "limit=20", "shard.count=3", "shard.index=1", "seed=5")
    other = tmp_path / "other"
    pipeline.run(cfg, other, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    with pytest.raises(UserError, match=r"not a shard of the same run .* \(differs in seed\)"):
        merge.merge([shard_dirs[0], other, shard_dirs[2]])
    whole = tmp_path / "whole"
    pipeline.run(make_cfg("backend=fake", "limit=3"), whole, backend=FakeBackend("fake", "m", max_model_len=2048))
    with pytest.raises(UserError, match="mixing shards with other runs"):
        merge.merge([*shard_dirs, whole])


def test_slurm_launcher_config_runs_one_shard_per_array_task():
    from hydra import compose, initialize_config_dir

    from cai_gen.__main__ import CONF, register_groups

    register_groups()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "shard.count=8", "hydra.launcher.partition=gpu"])
    lc = cfg.hydra.launcher
    assert lc._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (lc.gpus_per_node, lc.tasks_per_node, lc.partition, lc.array_parallelism) == (1, 1, "gpu", 64)
    assert cfg.shard.count == 8


def test_shards_whose_constitutions_differ_in_their_checks_are_refused(tmp_path, capsys):
    """Issue 31 item 8: the run record keeps the constitution without its checks (a re-filter is the same run),
    so a shard run after a check was added to the constitution file merged with the others without a word."""
    const = tmp_path / "mini.yaml"
    base = ("name: mini\nversion: 1\nprinciples:\n  - id: p1\n    critique: Identify what is wrong.\n"
            "    revision: Rewrite the response.\n")
    dirs = []
    for i in range(2):
        const.write_text(base + ("    checks:\n      - {id: zz, kind: regex, pattern: zzzz, must: not_match}\n"
                                 if i else ""))
        cfg = make_cfg("backend=fake", "limit=6", f"constitution.path={const}", "shard.count=2", f"shard.index={i}")
        pipeline.run(cfg, tmp_path / f"s{i}", backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
        dirs.append(str(tmp_path / f"s{i}"))
    capsys.readouterr()
    assert merge.main([*dirs, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a shard of the same run" in err[0] and "constitution's checks" in err[0]
    assert not (tmp_path / "m").exists()
