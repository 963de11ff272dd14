"""The gate, rounds that keep their last good revision, and re-filtering a finished run dir, on the fake backend.
The gate's real forced-choice request on vLLM is in test_engine.py."""
import json
from pathlib import Path

from cai_gen import pipeline, stages
from cai_gen.backends import Generation, choice_probs
from cai_gen.backends.fake import FakeBackend

from .conftest import ONE, make_cfg


def run(tmp_path: Path, *overrides: str, gate: str = "yes", mode: str = "good"):
    cfg = make_cfg("backend=fake", ONE, "limit=5", *overrides)
    be = FakeBackend("fake", cfg.model.name, mode=mode, gate=gate, max_model_len=cfg.backend.max_model_len or 2048)
    return be, pipeline.run(cfg, tmp_path, backend=be)


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def test_gate_no_ends_the_row_without_a_revision_request(tmp_path):
    be, s = run(tmp_path, gate="no")
    assert s["kept"] == 0 and s["no_violation"] == 10 and s["reasons"] == {}   # its own count, not a filter
    assert be.calls and sum(be.calls) == 30  # respond, critique, gate: no revision request was sent
    nv = jl(tmp_path / "no_violation.jsonl")
    assert len(nv) == 10 and all(r["critiques"] and r["gate"][0]["answer"] == "NO" and r["gate"][0]["p_yes"] == 0.0
                                 for r in nv)
    kto = jl(tmp_path / "kto.jsonl")
    assert len(kto) == 10 and all(k["label"] is True for k in kto)
    assert [k["completion"][0]["content"] for k in kto] == [r["original"] for r in nv]
    sft = jl(tmp_path / "sft.jsonl")
    assert [r["origin"] for r in sft] == ["no_violation"] * 10
    assert all(r["messages"][-1] == {"role": "assistant", "content": n["original"]} for r, n in zip(sft, nv))
    trace = jl(tmp_path / "trace.jsonl")
    assert {t["outcome"] for t in trace} == {"no_violation"}
    assert [st["stage"] for st in trace[0]["stages"]] == ["respond", "critique", "gate"]
    rep = s["report"]["gate"]
    assert rep["no"] == 10 and rep["yes"] == 0 and "NO to 100%" in rep["warning"]
    card = (tmp_path / "README.md").read_text()
    assert "## Gate" in card and "Warning: the gate said NO" in card


def test_gate_yes_revises_and_records_p_yes(tmp_path):
    be, s = run(tmp_path)
    assert s["kept"] == 10 and s["no_violation"] == 0
    prefs = jl(tmp_path / "preferences.jsonl")
    assert all(p["gate"] == [{"round": 1, "principle": p["principle_ids"][0], "p_yes": 1.0, "answer": "YES"}]
               for p in prefs)
    sft = jl(tmp_path / "sft.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == [p["chosen"][0]["content"] for p in prefs]
    assert "YES to 100%" in s["report"]["gate"]["warning"]  # a one-sided gate is said, not hidden


def test_gate_off_sends_no_gate_requests(tmp_path):
    be, s = run(tmp_path, "gate.enabled=false", "pipelined=false", gate="no")
    assert be.calls == [10, 10, 10] and s["kept"] == 10 and s["report"]["gate"] is None


def test_mixed_gate_splits_rows_and_threshold_moves_the_split(tmp_path):
    _, s = run(tmp_path / "a", "limit=20", gate="mixed")
    assert 0 < s["no_violation"] < 40 and s["kept"] + s["no_violation"] + sum(s["reasons"].values()) == 40
    # the threshold is applied to the recorded P(YES): a re-filter of the same run dir, no engine needed
    be, s2 = run(tmp_path / "a", "limit=20", "gate.threshold=0.0", gate="mixed")
    assert s2["no_violation"] == 0 and s2["kept"] == 40
    assert sum(be.calls) == s["no_violation"]  # only the revisions of the former NO rows were generated


def test_later_round_no_keeps_the_last_revision(tmp_path):
    _, s = run(tmp_path, "rounds=3", "samples=1", "limit=20", gate="mixed")
    prefs = jl(tmp_path / "preferences.jsonl")
    trace = {t["id"]: t for t in jl(tmp_path / "trace.jsonl")}
    stopped = [p for p in prefs if any(g["answer"] == "NO" for g in p["gate"])]
    assert stopped, "the hash gate says NO in some later round"
    for p in stopped:
        k = next(i for i, g in enumerate(p["gate"]) if g["answer"] == "NO")  # rounds before k revised
        revs = [st["output"].strip() for st in trace[p["id"]]["stages"] if st["stage"] == "revise"]
        assert len(revs) == k and p["chosen"][0]["content"] == revs[-1]
        assert len(p["gate"]) == k + 1 == len(p["critiques"])  # no critique after the NO


def test_failed_round_2_revision_keeps_round_1(tmp_path, monkeypatch):
    real = stages.Revise.accept

    def fail_r2(self, job, row, gens):  # round 2's revision fails a filter, as a meta revision would
        if self.rnd == 2:
            return job.fail(row, self, "revision_is_meta")
        return real(self, job, row, gens)

    monkeypatch.setattr(stages.Revise, "accept", fail_r2)
    _, s = run(tmp_path, "rounds=2", "samples=1")
    prefs = jl(tmp_path / "preferences.jsonl")
    assert s["kept"] == 5 and s["flags"] == {"round_failed": 5}
    trace = {t["id"]: t for t in jl(tmp_path / "trace.jsonl")}
    for p in prefs:
        r1 = next(st for st in trace[p["id"]]["stages"] if st["stage"] == "revise" and st["round"] == 1)
        assert p["chosen"][0]["content"] == r1["output"].strip()
        assert {"stage": "revise", "round": 2, "failed": "revision_is_meta"} in trace[p["id"]]["stages"]


def test_refilter_uses_no_engine(tmp_path):
    """Changing filters or gate knobs on a finished run dir: everything from the ledger, no engine start."""
    cfg = make_cfg("backend=fake", ONE, "limit=5")
    s = pipeline.run(cfg, tmp_path)
    assert s["engine_started"] is True and s["kept"] == 10
    s = pipeline.run(make_cfg("backend=fake", ONE, "limit=5", "filters.min_edit=1.0", "gate.threshold=0.4"), tmp_path)
    assert s["engine_started"] is False and s["kept"] == 0 and s["reasons"] == {"too_similar": 10}
    be = FakeBackend("fake", cfg.model.name)
    pipeline.run(make_cfg("backend=fake", ONE, "limit=5", "filters.max_edit=0.5"), tmp_path, backend=be)
    assert be.calls == []


def test_restart_keeps_the_ledger(tmp_path):
    _, s1 = run(tmp_path, "rounds=1")
    be, s2 = run(tmp_path, "rounds=2", "restart=true", "pipelined=false")
    assert be.calls == [10, 10, 10]  # only round 2: critique, gate, revise; round 1 came from the ledger
    assert s2["kept"] == 10 and all(len(p["critiques"]) == 2 for p in jl(tmp_path / "preferences.jsonl"))


def test_truncated_originals_are_trimmed_kept_or_dropped(tmp_path):
    # the fake answer "Sure. w1 w2 ... w30." cut at 12 words: trimmed back to "Sure." (too short: dropped)
    _, s = run(tmp_path / "a", "sampling.max_tokens.respond=12")
    assert s["reasons"] == {"truncated_original": 10}
    _, s = run(tmp_path / "b", "sampling.max_tokens.respond=12", "filters.truncated_original=keep")
    assert s["kept"] == 10 and s["flags"] == {"original_truncated": 10}
    _, s = run(tmp_path / "c", "sampling.max_tokens.respond=12", "filters.truncated_original=drop")
    assert s["reasons"] == {"truncated_original": 10}


def test_trimmed_original_is_what_gets_critiqued(tmp_path, monkeypatch):
    from cai_gen.backends import fake

    monkeypatch.setattr(fake.FakeBackend, "_text", lambda self, conv, p: (
        "YES" if p.choices else "Thanks for waiting: open Settings, choose Orders and tap Track." if "rewritten response only"
        in conv[-1]["content"] else "The response is vague about it." if len(conv) > 1 else
        "First, open Settings. Then pick Orders. Then wait for the"))
    _, s = run(tmp_path, "sampling.max_tokens.respond=9", "limit=1", "samples=1")
    p = jl(tmp_path / "preferences.jsonl")[0]
    assert p["rejected"][0]["content"] == "First, open Settings. Then pick Orders."
    assert "original_trimmed" in p["flags"]
    trace = jl(tmp_path / "trace.jsonl")[0]["stages"]
    crit_input = next(st for st in trace if st["stage"] == "critique")["input"]
    assert {"role": "assistant", "content": "First, open Settings. Then pick Orders."} in crit_input


def test_p_yes_from_probs_text_or_nothing():
    assert stages.p_yes(Generation("NO", "stop", 1, 1, probs={"YES": 0.7, "NO": 0.3})) == 0.7
    assert stages.p_yes(Generation("yes", "stop", 1, 1)) == 1.0
    assert stages.p_yes(Generation(" NO ", "stop", 1, 1)) == 0.0
    assert stages.p_yes(Generation("maybe", "stop", 1, 1)) is None


def test_choice_probs_from_first_token_logprobs():
    import math
    got = choice_probs({"YES": math.log(0.6), "Y": math.log(0.1), "NO": math.log(0.2), "Hello": math.log(0.1)},
                       ("YES", "NO"))
    assert abs(got["YES"] - 0.7 / 0.9) < 1e-9 and abs(got["NO"] - 0.2 / 0.9) < 1e-9
    assert choice_probs({"A": 0.0}, ("A HIGH", "A LOW")) is None  # ambiguous first token
    assert choice_probs({"maybe": 0.0}, ("YES", "NO")) is None


def test_revision_style_from_constitution_with_run_override(tmp_path):
    c = tmp_path / "mine.yaml"
    base = Path(__file__).resolve().parent.parent / "constitutions" / "customer_service.yaml"
    c.write_text(f"include: {base}\nname: mine\nrevision_style: minimal\n")
    line = "Change only what the critique asks for"

    def revise_input(out: Path) -> str:
        st = next(s for s in jl(out / "trace.jsonl")[0]["stages"] if s["stage"] == "revise")
        return st["input"][-1]["content"]

    run(tmp_path / "a", f"constitution.path={c}", "limit=1", "samples=1")
    assert line in revise_input(tmp_path / "a")  # include-merged, the local key wins over the base's free
    run(tmp_path / "b", f"constitution.path={c}", "revision_style=free", "limit=1", "samples=1")
    assert line not in revise_input(tmp_path / "b")
    run(tmp_path / "c", "revision_style=minimal", "limit=1", "samples=1")
    assert line in revise_input(tmp_path / "c")
    prefs = jl(tmp_path / "c" / "preferences.jsonl")
    assert all(0 < p["edit_ratio"] <= 1 and abs(p["edit_ratio"] + p["similarity"] - 1) < 1e-3 for p in prefs)
