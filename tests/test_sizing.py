"""Where a run's tokens and time go (issue 33 item 4, fake backend): rows start `in_flight` at a time, so the first
pairs are made while later rows have not started; best-of-N samples are asked `sampling.revise_wave` at a time, so
the samples after the first passing one are never generated, and the pairs are the ones all N at once give."""
from __future__ import annotations

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import REVISION_MARK

from .conftest import make_cfg
from .test_steer import CONST, FINE, Scripted, jl, setup

REVS = ["I guarantee it.", "We guarantee a refund today for sure.", FINE, FINE + " Thanks!"]


class Timeline(Scripted):
    """Records every request in submit order as (stage, prompt id)."""

    def __init__(self, revisions, **kw):
        super().__init__(revisions, **kw)
        self.order = []

    def note(self, convs, params):
        for c, p in zip(convs, params):
            last, first = c[-1]["content"], c[0]["content"] if c[0]["role"] == "user" else c[1]["content"]
            stage = "revise" if REVISION_MARK in last and not p.choices else \
                "respond" if not any(m["role"] == "assistant" for m in c) else "other"
            self.order.append((stage, first.split("Order ")[-1].rstrip(".")))

    def submit(self, convs, params):  # the pipelined schedule
        self.note(convs, params)
        return super().submit(convs, params)

    def generate(self, convs, params, on_done=None):  # the staged one
        self.note(convs, params)
        return super().generate(convs, params, on_done)


def run(tmp_path, n_rows, *over, out="run", revisions=REVS):
    prompts = [{"id": f"p{i}", "prompt": f"SAY: I guarantee your refund. Order {i}."} for i in range(n_rows)]
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", "preview=0",
                   *setup(tmp_path, prompts, CONST), *over)
    be = Timeline(revisions)
    s = pipeline.run(cfg, tmp_path / out, backend=be)
    return be, s, tmp_path / out


def pairs(out):
    """The written pairs, less when each was made."""
    return [{k: v for k, v in r.items() if k != "created_at"} for r in jl(out / "preferences.jsonl")]


def test_rows_start_in_flight_at_a_time_so_pairs_come_before_the_last_row_starts(tmp_path):
    """Regression: every row's answer was asked first, so no pair could be made before the engine had worked
    through all of them (on the CPU default run, minutes of a 100-row batch before the first pair)."""
    be, s, _ = run(tmp_path, 8, "in_flight=2")
    assert s["kept"] == 8
    first_revise = next(i for i, (stage, _) in enumerate(be.order) if stage == "revise")
    last_respond = max(i for i, (stage, _) in enumerate(be.order) if stage == "respond")
    assert first_revise < last_respond
    started = [p for stage, p in be.order if stage == "respond"]
    assert started == [str(i) for i in range(8)]  # in prompt order
    # never more than 2 rows between their answer and their last request
    live, most = set(), 0
    done = {p: max(i for i, (_, q) in enumerate(be.order) if q == p) for p in started}
    for i, (_, p) in enumerate(be.order):
        live.add(p)
        live = {q for q in live if done[q] >= i}
        most = max(most, len(live))
    assert most <= 2

    be_all, s_all, _ = run(tmp_path, 8, "in_flight=null", out="all")  # every row at once: the old order
    assert [stage for stage, _ in be_all.order[:8]] == ["respond"] * 8
    assert pairs(tmp_path / "run") == pairs(tmp_path / "all")


@pytest.mark.parametrize("pipelined", ["true", "false"])
def test_waves_make_the_pairs_all_n_at_once_make_for_fewer_requests(tmp_path, pipelined):
    """sample 0 and 1 fail the check, sample 2 passes, sample 3 is never asked for (revise_n=4, one at a time)."""
    be1, s1, out1 = run(tmp_path, 3, "sampling.revise_n=4", "sampling.revise_wave=1", f"pipelined={pipelined}")
    be4, s4, out4 = run(tmp_path, 3, "sampling.revise_n=4", "sampling.revise_wave=null", f"pipelined={pipelined}",
                        out="all")
    assert [stage for stage, _ in be1.order].count("revise") == 3 * 3
    assert [stage for stage, _ in be4.order].count("revise") == 3 * 4
    assert pairs(out1) == pairs(out4) and len(pairs(out1)) == 3
    assert [r["chosen"][0]["content"] for r in jl(out1 / "preferences.jsonl")] == [FINE] * 3
    samples = [[e["samples"] for e in t["stages"] if "samples" in e] for t in jl(out1 / "trace.jsonl")]
    assert samples == [[["still_violates", "still_violates", None]]] * 3
    assert s1["kept"] == s4["kept"] == 3


def test_a_row_whose_samples_all_fail_is_dropped_with_the_first_reason(tmp_path):
    be, s, out = run(tmp_path, 2, "sampling.revise_n=3", revisions=["I guarantee it."])
    assert s["kept"] == 0 and s["reasons"] == {"still_violates": 2}
    assert [stage for stage, _ in be.order].count("revise") == 2 * 3  # every sample asked, one at a time


def test_in_flight_auto_is_a_window_on_a_cpu_engine_and_every_row_elsewhere(monkeypatch):
    from cai_gen import flow

    monkeypatch.setattr(flow, "_cuda", lambda: False)
    assert flow.window(make_cfg(), 100) == flow.CPU_IN_FLIGHT  # the default run: vLLM on the CPU
    assert flow.window(make_cfg(), 5) == 5
    assert flow.window(make_cfg("backend=fake"), 100) == 100
    assert flow.window(make_cfg("in_flight=null"), 100) == 100 and flow.window(make_cfg("in_flight=4"), 100) == 4
    monkeypatch.setattr(flow, "_cuda", lambda: True)
    assert flow.window(make_cfg(), 100) == 100  # a GPU wants the biggest batch
