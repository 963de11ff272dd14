"""Reward-model margin check with a tiny sequence-classification model built here (no download): the
mechanics (scoring, padding, margins, threshold actions) on a real transformers model."""
import json
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import WORDS, FakeBackend
from cai_gen.errors import UserError
from cai_gen.reward import score

from .conftest import make_cfg


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> str:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>", "user", "assistant", ":"] + WORDS
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, num_labels=1, pad_token_id=0)
    out = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_batched_scores_match_single_unpadded_forward(reward_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    u = [{"role": "user", "content": "refund order"}]
    pairs = [(u, [{"role": "assistant", "content": "refund " * n + "help"}], [{"role": "assistant", "content": "no"}])
             for n in (1, 5, 9)]
    got = score(reward_dir, pairs, batch_size=2)
    tok = AutoTokenizer.from_pretrained(reward_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    for (p, c, r), (sc, sr) in zip(pairs, got):
        for msgs, s in ((p + c, sc), (p + r, sr)):
            ids = tok(tok.apply_chat_template(msgs, tokenize=False), return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                assert rm(**ids).logits[0, 0].item() == pytest.approx(s, abs=1e-4)
    assert len({round(sc, 5) for sc, _ in got}) == 3  # different answers, different scores


def run(tmp_path: Path, reward_dir: str, *overrides: str):
    cfg = make_cfg("backend=fake", "limit=4", f"reward.model={reward_dir}", *overrides)
    return pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name))


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def test_margins_recorded_and_threshold_flags(tmp_path, reward_dir):
    s = run(tmp_path / "a", reward_dir, "reward.threshold=-1e9")
    prefs = jl(tmp_path / "a" / "preferences.jsonl")
    assert s["kept"] == 8 and all("reward_margin_low" not in p["flags"] for p in prefs)
    for p in prefs:
        r = p["reward"]
        assert r["margin"] == pytest.approx(r["chosen"] - r["rejected"], abs=2e-4) and r["model"] == reward_dir
    assert s["report"]["reward"]["margin"]["n"] == 8
    s = run(tmp_path / "b", reward_dir, "reward.threshold=1e9")
    assert s["kept"] == 8 and s["flags"] == {"reward_margin_low": 8}
    s = run(tmp_path / "c", reward_dir, "reward.threshold=1e9", "reward.action=drop")
    assert s["kept"] == 0 and s["reasons"] == {"reward_margin_low": 8}
    assert all(r["reward"]["margin"] < 1e9 for r in jl(tmp_path / "c" / "rejected.jsonl"))


def test_margin_threshold_splits_pairs(tmp_path, reward_dir):
    s = run(tmp_path / "a", reward_dir)
    margins = sorted(p["reward"]["margin"] for p in jl(tmp_path / "a" / "preferences.jsonl"))
    mid = (margins[3] + margins[4]) / 2
    s = run(tmp_path / "b", reward_dir, f"reward.threshold={mid}", "reward.action=drop")
    assert s["kept"] == 4 and s["reasons"] == {"reward_margin_low": 4}


def test_unloadable_reward_model_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"reward.model: cannot load"):
        run(tmp_path, str(tmp_path / "nope"))
