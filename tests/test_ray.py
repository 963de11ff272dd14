"""executor=ray on a local Ray instance: Ray Data batches over engine replicas give exactly the local run's
files (fake engine, fast-ish), resume across executors through the replicas' ledger segments, report a failed
replica in one line, and run the real vLLM CPU engine inside a replica (slow)."""
import json
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import Resumable, UserError

from .conftest import make_cfg

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield
    ray.shutdown()


def files(d: Path) -> dict:
    """Rows of two independent runs, which differ only in created_at (when each generation finished);
    reruns of one dir are compared byte for byte (raw())."""
    return {f: [{k: v for k, v in json.loads(x).items() if k != "created_at"}
                for x in (d / f).read_text().splitlines()]
            for f in ("preferences.jsonl", "rejected.jsonl", "kto.jsonl", "trace.jsonl")}


def raw(d: Path) -> dict:
    return {f: (d / f).read_bytes() for f in ("preferences.jsonl", "rejected.jsonl", "kto.jsonl", "trace.jsonl")}


def segments(d: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in (d / "work").glob("generations*.jsonl")}


def test_ray_equals_local_and_resumes_across_executors(tmp_path):
    common = ("backend=fake", "limit=10", "judge=self")
    local = tmp_path / "local"
    pipeline.run(make_cfg(*common), local)
    run = tmp_path / "ray"
    ray_cfg = make_cfg(*common, "executor.kind=ray", "executor.replicas=2", "executor.batch_size=4")
    s = pipeline.run(ray_cfg, run)
    assert files(run) == files(local)            # same requests, seeds and checks: the same dataset
    segs = segments(run)
    # one ledger segment per replica that got a batch (under load Ray Data may hand every batch to the replica
    # that started first: a replica with no batch opens no file); never the local executor's file
    assert 1 <= len(segs) <= 2 and "generations.jsonl" not in segs
    assert sum(segs.values()) == sum(segments(local).values())
    judge = s["stages"]["judge"]
    assert s["stages"]["respond"]["rows"] == 20 and judge["requests"] == 2 * judge["rows"] == 2 * s["kept"]

    first = raw(run)
    pipeline.run(ray_cfg, run)                   # rerun on ray: everything reused, nothing written
    assert segments(run) == segs and raw(run) == first
    be = FakeBackend("fake", ray_cfg.model.name, max_model_len=2048)
    pipeline.run(make_cfg(*common), run, backend=be)   # and the local executor resumes the replicas' work
    assert be.calls == [] and raw(run) == first


def test_ray_resumes_a_local_run(tmp_path):
    """Regression: replicas read only the other replicas' segments, never the local executor's
    generations.jsonl, so moving a run from local to ray regenerated everything."""
    common = ("backend=fake", "limit=6", "judge=self")
    pipeline.run(make_cfg(*common), tmp_path)
    before = segments(tmp_path)
    local = raw(tmp_path)
    pipeline.run(make_cfg(*common, "executor.kind=ray", "executor.replicas=2", "executor.batch_size=4"), tmp_path)
    assert segments(tmp_path) == before == {"generations.jsonl": before["generations.jsonl"]}  # nothing generated
    assert raw(tmp_path) == local


def test_a_failing_replica_is_one_line(tmp_path):
    cfg = make_cfg("backend=openai", "backend.base_url=http://127.0.0.1:9/v1", "backend.count_tokens=none",
                   "backend.max_retries=0", "limit=2", "executor.kind=ray", "executor.replicas=1")
    with pytest.raises(UserError) as e:
        pipeline.run(cfg, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("executor=ray: backend: http://127.0.0.1:9/v1/chat/completions failed 1 times")
    assert isinstance(e.value, Resumable)  # the replica's give-up stays resumable: __main__ prints the command


def test_config_rules(tmp_path):
    with pytest.raises(UserError, match="executor=ray judges with the generating model only"):
        make_cfg("executor.kind=ray", "judge=qwen25_7b")
    with pytest.raises(UserError, match="not backend=transformers"):
        make_cfg("executor.kind=ray", "backend=transformers")


@pytest.mark.slow
def test_real_cpu_engine_in_a_ray_replica(tmp_path, default_model_dir):
    cfg = make_cfg("executor.kind=ray", "executor.replicas=1", "limit=2", "backend.gpu_memory_utilization=0.15",
                   "backend.enforce_eager=true", "sampling.max_tokens.respond=48", "sampling.max_tokens.critique=32",
                   "sampling.max_tokens.revise=48")
    s = pipeline.run(cfg, tmp_path)
    nv = len((tmp_path / "no_violation.jsonl").read_text().splitlines())
    assert s["rows"] == 4 and s["kept"] + len(files(tmp_path)["rejected.jsonl"]) + nv == 4
    segs = segments(tmp_path)
    assert len(segs) == 1 and sum(segs.values()) == sum(s["stages"][k]["requests"] for k in
                                                        ("respond", "critique r1", "gate r1", "revise r1"))
    trace = files(tmp_path)["trace.jsonl"]
    assert all(st["output"].strip() for t in trace for st in t["stages"] if "output" in st)  # real text came back


def test_a_backend_of_your_own_runs_in_the_replicas(tmp_path, monkeypatch):
    # replicas are other processes: the config names the plugin's config class (module cai_gen_backend_greet), which
    # only the driver had loaded, so unpickling it failed in the replica; now each replica loads the include dirs
    from cai_gen import backends

    from .test_backend_plugin import PLUGIN

    for name, v in (("_configs", dict(backends.configs())), ("_classes", dict(backends._classes)), ("_loaded", set())):
        monkeypatch.setattr(backends, name, v)  # the registry is process-wide: this test's backend leaves with it
    mine = tmp_path / "mine"
    (mine / "backend").mkdir(parents=True)
    (mine / "backend" / "greet.py").write_text(PLUGIN)
    (mine / "backend" / "greet.yaml").write_text("kind: greet\ngreeting: Hello.\nmax_model_len: 2048\n")
    common = ("backend=greet", f"include_path={mine}", "backend.greeting=Ahoy.", "limit=4")
    pipeline.run(make_cfg(*common), tmp_path / "local")
    pipeline.run(make_cfg(*common, "executor.kind=ray", "executor.replicas=1", "executor.batch_size=4"), tmp_path / "ray")
    assert files(tmp_path / "ray") == files(tmp_path / "local")
    prefs = files(tmp_path / "ray")["preferences.jsonl"]
    assert prefs and all(r["rejected"][0]["content"].startswith("Ahoy. ") for r in prefs)
