"""Spending fewer tokens on rows the filters drop (issue 17): loop_stop ends a looping critique or revision early,
revise_max_scale sizes a revision's max tokens from its original's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_gen import pipeline, quality
from cai_gen.backends import Params, loop_end
from cai_gen.backends.fake import FakeBackend
from cai_gen.ledger import request_key
from cai_gen.stages import REVISE_FLOOR, revise_tokens

from .conftest import ONE, make_cfg

LOOP = "Thanks for asking. I can help with that today. " + "I am here to help you today. " * 6


def test_loop_end_counts_closed_sentences_of_four_words_or_more():
    assert loop_end("Yes. Yes. Yes. Yes.", 3) is None  # short sentences are not a loop
    end = loop_end(LOOP, 3)
    assert LOOP[:end].count("I am here to help you today.") == 3 and LOOP[:end].endswith("today.")
    # the third copy still open (no full stop yet) does not count: a text may still leave the loop there
    open_third = "I am here to help you. I am here to help you. I am here to help you"
    assert loop_end(open_third, 3) is None and quality.repetitive(open_third)


def test_a_text_cut_at_loop_end_fails_the_repetition_filter_however_it_goes_on():
    """The lossless claim: wherever loop_stop ends a text, the whole text would have been dropped too."""
    end = loop_end(LOOP, 3)
    for tail in ("", " But now something else entirely, a real answer with new words in it.",
                 " Refunds take five days", "\n\nOk"):
        assert quality.repetitive(LOOP[:end] + tail)


def test_ledger_keys_without_the_new_fields_are_unchanged():
    p = Params(0.7, 0.95, 64, 1)
    assert request_key("m", [{"role": "user", "content": "x"}], p) == \
        request_key("m", [{"role": "user", "content": "x"}], Params(0.7, 0.95, 64, 1, None, None))
    assert request_key("m", [], p) != request_key("m", [], Params(0.7, 0.95, 64, 1, loop_stop=3))


def run(tmp_path: Path, *overrides: str, mode: str = "good"):
    cfg = make_cfg("backend=fake", ONE, "limit=3", *overrides)
    be = FakeBackend("fake", cfg.model.name, mode=mode, max_model_len=2048)
    return pipeline.run(cfg, tmp_path, backend=be)


def revise_tokens_spent(s: dict) -> int:
    return s["stages"]["revise r1"]["completion_tokens"]


def test_loop_stop_ends_looping_revisions_early_and_drops_what_the_filter_would(tmp_path):
    # revise_max_scale off in both runs: this test measures loop_stop alone.
    off = run(tmp_path / "off", "sampling.loop_stop.revise=null", "sampling.revise_max_scale=null", mode="loop")
    on = run(tmp_path / "on", "sampling.loop_stop.revise=3", "sampling.revise_max_scale=null", mode="loop")
    assert off["reasons"] == {"truncated_revision": 6}  # ran to max tokens, then dropped
    assert on["reasons"] == {"repetitive_revision": 6} and on["kept"] == off["kept"] == 0
    assert revise_tokens_spent(on) * 5 < revise_tokens_spent(off)
    trace = [json.loads(x) for x in (tmp_path / "on" / "trace.jsonl").read_text().splitlines()]
    rev = [st for r in trace for st in r["stages"] if st["stage"] == "revise"]
    assert {st["finish_reason"] for st in rev} == {"loop"}


def test_loop_stop_leaves_rows_that_do_not_loop_alone(tmp_path):
    off = run(tmp_path / "off", "sampling.loop_stop.revise=null", "sampling.loop_stop.critique=null")
    on = run(tmp_path / "on", "sampling.loop_stop.revise=3", "sampling.loop_stop.critique=3")
    assert on["kept"] == off["kept"] == 6
    def pairs(d):  # created_at aside (when the generation finished)
        return [{k: v for k, v in json.loads(x).items() if k != "created_at"}
                for x in (tmp_path / d / "preferences.jsonl").read_text().splitlines()]
    assert pairs("on") == pairs("off")


def test_revise_max_scale_sizes_each_revision_from_its_original():
    assert revise_tokens(256, None, 10) == 256
    assert revise_tokens(256, 2.0, 40) == 80
    assert revise_tokens(256, 2.0, 10) == REVISE_FLOOR
    assert revise_tokens(256, 2.0, 200) == 256


def test_revise_max_scale_reaches_the_revision_requests(tmp_path):
    run(tmp_path, "sampling.revise_max_scale=1.5")
    for line in (tmp_path / "trace.jsonl").read_text().splitlines():
        st = {s["stage"]: s for s in json.loads(line)["stages"]}
        want = revise_tokens(256, 1.5, st["respond"]["completion_tokens"])
        assert st["revise"]["params"]["max_tokens"] == want < 256


@pytest.mark.slow
def test_real_engine_ends_a_loop_early_with_the_text_it_would_have_written(vllm_backend):
    """On vLLM: a request that loops ends at loop_stop with finish_reason "loop", fewer tokens than max, and its
    text is the start of what the same seeded request writes without loop_stop (nothing changed, only cut)."""
    conv = [{"role": "user", "content": "Say 'I am sorry for the trouble with your order.' over and over."}]
    full, cut = vllm_backend.generate([conv, conv], [Params(0.0, 1.0, 200, 7), Params(0.0, 1.0, 200, 7, loop_stop=3)])
    assert loop_end(full.text, 3) is not None, full.text  # the model does loop on this prompt
    assert cut.finish_reason == "loop" and cut.completion_tokens < full.completion_tokens
    assert full.text.startswith(cut.text) and loop_end(cut.text, 3) == len(cut.text)
    again = vllm_backend.generate([conv], [Params(0.0, 1.0, 200, 7)])[0]  # the engine carries on normally after
    assert again.text == full.text


@pytest.mark.parametrize("preset", ["default", "greedy", "redteam"])
def test_the_adopted_token_knobs_are_the_defaults_and_critique_loop_stop_is_off(preset):
    """docs/benchmarks/throughput.md: loop_stop.revise=3 and revise_max_scale=2 are the defaults (bench/knobs.py:
    the same kept pairs for 0.87 of the tokens); loop_stop.critique stays off (it changes the revisions; its new pairs read at parity)."""
    s = make_cfg(f"sampling={preset}").sampling
    assert (s.loop_stop.revise, s.revise_max_scale, s.loop_stop.critique) == (3, 2.0, None)
