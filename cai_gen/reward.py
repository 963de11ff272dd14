"""Reward-model margin check: score chosen and rejected with a Hugging Face sequence-classification reward
model (transformers, not vLLM: reward models are classifiers, and this runs once over the kept pairs).

Real choices on a GPU: Skywork/Skywork-Reward-V2-Llama-3.1-8B, Skywork/Skywork-Reward-V2-Qwen3-1.7B (small),
internlm/internlm2-7b-reward (trust_remote_code). The score is logit 0 of the conversation prompt + answer
rendered with the reward model's own chat template.
"""
from __future__ import annotations

from typing import Callable

from .backends import Generation
from .errors import UserError


def _text(tok, messages: list[dict]) -> str:
    if tok.chat_template:
        return tok.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)  # a classifier without a chat template


def check(model: str, trust_remote_code: bool = False) -> None:
    """Fail at the start of a run, not after hours of generation, when the reward model cannot be found."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"reward.model: cannot load {model!r}: {str(e).splitlines()[0]}") from None


def load(model: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        rm = AutoModelForSequenceClassification.from_pretrained(
            model, dtype="auto" if dtype == "auto" else getattr(torch, dtype), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"reward.model: cannot load {model!r} as a sequence-classification model: "
                        f"{str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id  # batched scoring finds each sequence's last real token by it
    tok.padding_side = "right"
    tok.truncation_side = "left"  # keep the answer (the end) when a conversation is too long
    return tok, rm.to(dev).eval(), dev


def score(model: str, pairs: list[tuple[list, list, list]], batch_size: int = 8, max_length: int = 2048,
          dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
          on_done: Callable[[int, Generation], None] | None = None) -> list[tuple[float, float]]:
    """(score(prompt + chosen), score(prompt + rejected)) per (prompt, chosen, rejected) pair."""
    import torch

    tok, rm, dev = load(model, dtype, device, trust_remote_code)
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        texts = [_text(tok, p + c) for p, c, _ in batch] + [_text(tok, p + r) for p, _, r in batch]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                  add_special_tokens=False).to(dev)
        with torch.no_grad():
            logits = rm(**enc).logits[:, 0].float().tolist()
        n = len(batch)
        for j in range(n):
            out.append((logits[j], logits[n + j]))
            if on_done:
                on_done(start + j, Generation("", "stop", int(enc["attention_mask"][j].sum()), 0))
    return out
