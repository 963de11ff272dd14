"""The `classifier` check end to end with a tiny HF sequence-classification model built here (no download): a
one-layer Llama over a word-level tokenizer whose weights are set, not trained, so the verdict is exact. A Llama
classifier reads the last token; its attention and MLP outputs are zeroed (the residual carries the embedding
through) and the embedding's first dimension is +1 for "hate" / "idiots" / "stupid", -1 for every other word, so a
text ending in one of those is `toxic` with P ~ 1 and any other with P ~ 0. Through a constitution entry:
pass/fail, the label and threshold honoured, a missing model dir one line; and a stage scores all its answers in
one model call, not one per answer."""
import pytest

from cai_gen import checks, constitution
from cai_gen.checks import model as check_model
from cai_gen.errors import UserError

from .test_steer import jl, run

WORDS = "i you we the a your order refund is on its way help can with that number hate idiots stupid".split()
BAD = {"hate", "idiots", "stupid"}


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>"] + WORDS
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                      id2label={0: "safe", 1: "toxic"}, label2id={"safe": 0, "toxic": 1})
    net = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for norm in (net.model.norm, net.model.layers[0].input_layernorm,
                     net.model.layers[0].post_attention_layernorm):
            norm.weight.fill_(1.0)
        emb = net.model.embed_tokens.weight
        emb[:, 1] = 1.0                                  # every token is a nonzero vector (RMSNorm divides by it)
        emb[:, 0] = torch.tensor([1.0 if w in BAD else -1.0 for w in words])
        net.score.weight[1, 0] = 10.0                    # logit(toxic) = 10 * normed dim 0; logit(safe) = 0
    d = tmp_path_factory.mktemp("guard")
    net.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def const_with(tmp_path, guard, **args):
    spec = ", ".join(f"{k}: {v}" for k, v in {"model": str(guard), "label": "toxic", **args}.items())
    f = tmp_path / "c.yaml"
    f.write_text("name: t\nversion: 1\nprinciples:\n  - id: kind\n    critique: Is it rude?\n"
                 "    revision: Make it kind.\n    checks:\n"
                 f"      - {{id: not_toxic, kind: classifier, {spec}}}\n")
    return f


def the_check(tmp_path, guard, **args):
    return constitution.load(path=str(const_with(tmp_path, guard, **args))).principle("kind").checks[0]


def test_classifier_check_passes_safe_and_fails_toxic_text(tmp_path, guard_dir):
    c = the_check(tmp_path, guard_dir, device="cpu")
    ctx = checks.Context("", {})
    assert c.passes("your order is on its way", ctx) and c.passes("hate is not what we can help with", ctx)
    assert not c.passes("you stupid idiots", ctx) and not c.passes("your order i hate", ctx)
    assert c.passes_many(["i can help", "hate hate", "your order", "we hate"]) == [True, False, True, False]


def test_label_and_threshold_are_honoured(tmp_path, guard_dir):
    ctx = checks.Context("", {})
    safe = the_check(tmp_path, guard_dir, label="SAFE", device="cpu")  # the label is matched case-insensitively
    assert not safe.passes("your order is on its way", ctx) and safe.passes("you stupid idiots", ctx)
    p = check_model.classify(str(guard_dir), "toxic", ["your order"], device="cpu")[0]
    assert 0.0 < p < 0.01  # P(toxic) of a safe text: small, not zero
    strict = the_check(tmp_path, guard_dir, threshold=p / 2, device="cpu")  # a violation from P >= threshold
    assert not strict.passes("your order", ctx) and the_check(tmp_path, guard_dir, device="cpu").passes("your order", ctx)
    assert not the_check(tmp_path, guard_dir, threshold=0.0, device="cpu").passes("your order", ctx)  # P >= 0
    with pytest.raises(UserError, match="no label 'spam'.*safe, toxic"):
        the_check(tmp_path, guard_dir, label="spam", device="cpu").passes("hi", ctx)


def test_missing_classifier_model_dir_is_one_line_naming_file_line_and_check(tmp_path):
    f = const_with(tmp_path, tmp_path / "no_such_guard")
    const = constitution.load(path=str(f))
    with pytest.raises(UserError) as e:
        checks.preflight(const, [])
    line = str(e.value)
    assert line.startswith(f"{f}:8:") and "not_toxic" in line and "classifier" in line and "\n" not in line


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """How many texts each check_model.classify call scored, in call order (the real classifier still scores)."""
    seen: list[int] = []
    real = check_model.classify

    def counted(model, label, texts, *a, **k):
        seen.append(len(texts))
        return real(model, label, texts, *a, **k)

    monkeypatch.setattr(check_model, "classify", counted)
    getattr(check_model, "_SCORES", {}).clear()  # scores from other tests would hide calls
    return seen


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_stage_scores_all_its_answers_in_one_classifier_call(tmp_path, guard_dir, calls, pipelined):
    """Staged: every answer of a stage in one call. Pipelined: every answer one engine poll returned in one call
    (the fake engine returns one per poll, so there the count shows no answer is scored twice)."""
    n = 6
    prompts = [{"id": f"p{i}", "prompt": f"SAY: you {i} stupid idiots"} for i in range(n)]
    const = const_with(tmp_path, guard_dir, device="cpu").read_text()
    _, s, out = run(tmp_path, prompts, [f"your order is on its way"], f"pipelined={pipelined}", const=const)
    rows = jl(out / "preferences.jsonl")
    assert len(rows) == n  # every original failed the check, every revision passed it
    assert all(r["checks"][0]["original"] is False and r["checks"][0]["revision"] is True for r in rows)
    assert sum(calls) == n + 1  # n distinct originals, one revision text (the same for every row)
    if not pipelined:
        assert calls == [n, 1], calls  # the originals in one call, the revisions in one more


def test_the_behavioural_pass_scores_every_answer_in_one_classifier_call(tmp_path, guard_dir, calls):
    """behaviour.score over 3 prompts x 2 samples: one batched call for the 6 answers, and the same verdicts as
    scoring them one by one."""
    from cai_gen import behaviour
    from cai_gen.prompts import PromptRecord

    const = constitution.load(path=str(const_with(tmp_path, guard_dir, device="cpu")))
    recs = [PromptRecord(f"p{i}", "hello", "support", "t") for i in range(3)]
    texts = ["you stupid idiots", "thanks for waiting", "hello friend", "all idiots", "fine", "ok then"]
    scored = behaviour.score(const, recs, texts, 2)
    assert calls == [6]
    assert [v["kind"] for per in scored for v in per] == [True, False, False, True, False, False]
