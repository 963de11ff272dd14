"""The transformers backend on the real default model (SmolLM2-135M, float32 on the CPU): mixed sampling params
share one generate() call, and each row keeps its own seed, temperature, top-p, limit and greediness.
Marked slow like the other real-model tests: each takes a few seconds of generation on two CPU cores."""
import pytest

from cai_gen.backends import Params, loop_end

ASK = ["Hi, can you help me?", "Where is my parcel? I ordered it two weeks ago and it never came.",
       "How do I reset my password?", "Write a short poem about the sea."]
CONVS = [[{"role": "user", "content": q}] for q in ASK]
# Rows 0 and 1 share temperature/top-p/limit but not the seed; 2 differs in all three; 3 is greedy
MIXED = [Params(0.7, 0.9, 16, 11), Params(0.7, 0.9, 16, 12), Params(1.0, 0.8, 10, 13), Params(0.0, 1.0, 12, 14)]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf(default_model_dir):
    from cai_gen.backends import make_backend

    be = make_backend("transformers", default_model_dir, "smol", dict(dtype="float32", max_model_len=2048,
                                                                    batch_size=16, device="cpu"))
    yield be
    be.close()


@pytest.fixture(scope="module")
def together(hf):
    return hf.generate(CONVS, MIXED)


def test_mixed_sampling_params_share_one_generate_call(hf, monkeypatch):
    calls, generate = [], hf.lm.generate

    def counted(**kw):
        calls.append(kw["input_ids"].shape[0])  # rows in this call
        return generate(**kw)

    monkeypatch.setattr(hf.lm, "generate", counted)
    gens = hf.generate(CONVS, MIXED)
    assert calls == [4]
    assert len(gens) == 4 and all(g.text.strip() for g in gens)


def test_seeded_request_same_text_alone_and_in_a_mixed_batch(hf, together):
    # row 1 shares its sampling params with row 0, so one seed per batch (or per params group) would change it
    for k in (0, 1, 2):
        (alone,) = hf.generate([CONVS[k]], [MIXED[k]])
        assert alone == together[k], k


def test_each_row_stops_at_its_own_max_tokens(hf):
    # the poem prompt never ends within these limits at this seed: each row runs exactly to its own cap
    convs = [CONVS[3]] * 3
    params = [Params(0.8, 0.95, 5, 7), Params(0.8, 0.95, 24, 7), Params(0.0, 1.0, 12, 7)]
    gens = hf.generate(convs, params)
    assert [(g.completion_tokens, g.finish_reason) for g in gens] == [(5, "length"), (24, "length"), (12, "length")]
    # same seed, shorter limit: the 5-token answer is the start of the 24-token one, cut at its own limit
    assert gens[1].text.startswith(gens[0].text) and len(gens[1].text) > len(gens[0].text)
    assert hf.count_tokens(convs)[0] == gens[0].prompt_tokens


def test_greedy_row_in_a_mixed_batch_is_greedy(hf, together):
    (alone,) = hf.generate([CONVS[3]], [MIXED[3]])
    assert alone == together[3]
    # and greedy means the seed plays no part
    (reseeded,) = hf.generate([CONVS[3]], [Params(0.0, 1.0, 12, 999)])
    assert reseeded.text == alone.text


def test_forced_choices_beside_free_text_in_one_call(hf):
    ask = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    gens = hf.generate([ask, CONVS[0]], [Params(0.0, 1.0, 4, 0, ("yes", "no")), MIXED[0]])
    assert gens[0].text in ("yes", "no") and set(gens[0].probs) == {"yes", "no"}
    assert abs(sum(gens[0].probs.values()) - 1) < 1e-3
    assert gens[1].text.strip() and gens[1].completion_tokens <= MIXED[0].max_tokens


def test_loop_stop_ends_a_looping_row_with_the_text_it_would_have_written(hf):
    """As on vLLM (tests/test_loop.py): a row that loops ends at loop_stop with finish_reason "loop" and fewer
    tokens, its text the start of the same greedy row's without loop_stop; a row beside it that asks for
    loop_stop but does not loop is untouched."""
    say = [{"role": "user", "content": "Say 'I am sorry for the trouble with your order.' over and over."}]
    convs = [say, say, CONVS[2], CONVS[2]]
    params = [Params(0.0, 1.0, 200, 7), Params(0.0, 1.0, 200, 7, loop_stop=3),
              Params(0.0, 1.0, 40, 7), Params(0.0, 1.0, 40, 7, loop_stop=3)]
    full, cut, plain, asked = hf.generate(convs, params)
    assert loop_end(full.text, 3) is not None, full.text  # the model does loop on this prompt
    assert cut.finish_reason == "loop" and cut.completion_tokens < full.completion_tokens
    assert full.text.startswith(cut.text) and loop_end(cut.text, 3) == len(cut.text)
    assert loop_end(plain.text, 3) is None and asked == plain
