"""bench/throughput.py's own logic, without an engine: the timed order, the ratio it prints, and a missing peer."""
import sys

import pytest

from .conftest import ROOT

sys.path[:0] = [str(ROOT / "bench")]
import throughput  # noqa: E402


def test_passes_alternate_cai_gen_raw_raw_cai_gen_and_pair_neighbours():
    order = []

    def run(name):
        def one():
            order.append(name)
            return {"i": len(order)}
        return one

    cg, raw = throughput.alternate(run("cai_gen"), run("raw"), blocks=2)
    assert order == ["cai_gen", "raw", "raw", "cai_gen"] * 2
    # pair i ran side by side: positions (1, 2), (4, 3), (5, 6), (8, 7)
    assert [(c["i"], r["i"]) for c, r in zip(cg, raw)] == [(1, 2), (4, 3), (5, 6), (8, 7)]


def test_ratio_is_the_median_of_adjacent_pairs_with_its_spread():
    cg = [{"tokens": 100, "seconds": s} for s in (1.0, 1.25, 2.0)]
    raw = [{"tokens": 100, "seconds": 1.0}] * 3
    assert throughput.tps_ratio(cg, raw) == {"median": 0.8, "min": 0.5, "max": 1.0, "pairs": 3}
    assert throughput.median_pass(cg)["seconds"] == 1.25


def test_missing_peer_packages_is_one_line_how_to_install_and_the_rest_goes_on(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distilabel", None)  # as if bench/.peer were not installed
    monkeypatch.delitem(sys.modules, "peer", raising=False)
    res = throughput.sys_peer(None, ROOT / "unused.jsonl")
    err = res["peer"]["error"]
    assert "distilabel is not installed" in err and "-r bench/peer-requirements.txt" in err
    res["naive"] = {"seconds": 6.0, "tokens": 60, "pairs_made": 3}
    throughput.report(res)
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "peer" in line and "install" in line] == [f"peer: {err}"]
    assert any(line.startswith("pairs/min") and "30.00" in line for line in out)  # the naive column still reports


def test_efficacy_rejection_sampling_pairs_a_passing_with_a_failing_answer_of_the_same_prompt():
    import efficacy
    from cai_gen.prompts import PromptRecord

    recs = [PromptRecord("p1", "q1", "support", "t"), PromptRecord("p2", "q2", "support", "t"),
            PromptRecord("p3", "q3", "support", "t")]
    k = 2
    texts = ["bad1", "good1", "good2", "good2b", "  ", "bad3"]
    scored = [[{"x": True}, {"x": False}],     # p1: a failing then a passing answer: one pair
              [{"x": False}, {"x": False}],    # p2: both pass: no rejected, no pair
              [{"x": False}, {"x": True}]]     # p3: the passing one is empty: no pair
    rows = efficacy.pick(recs, texts, scored, k)
    assert [(r["prompt_id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == \
        [("p1", "good1", "bad1")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "q1"}]
