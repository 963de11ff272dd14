"""How surprising an answer is to the reference model: the collapse guard for short nonsense.

A model trained on shorter-is-better pairs can pass every check with answers like "Hustle." or "No, no, no": not
empty, not looping, not refusing, only nonsense. Each answer's mean per-token negative log-likelihood under the
reference model (the untrained model, the prompt as context) measures that: the reference's own answers set the
scale, and an answer above the 95th percentile of the reference's own is "nonsense" (so about 5% of the
reference's answers are, by construction). A share whose paired CI over prompts lies more than 5 points above
the reference's is a collapse (behaviour.guard_tests).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

from .backends import Generation

QUANTILE = 0.95  # an answer more surprising than 95% of the reference's own answers is nonsense


def nll(model_dir: str, recs: Sequence, answers: dict[str, list[str]], k: int, device: str = "cpu",
        max_length: int = 512, batch: int = 8, tracker=None) -> dict[str, list[float]]:
    """Per answer set (name -> K answers per prompt, prompt-major), per answer: mean negative log-likelihood per
    answer token under the model at `model_dir` (loaded once for every set), the prompt's conversation as context.
    The answer's tokens include the chat template's end of turn, so stopping where the reference would not (an
    empty or cut-off answer) counts too. Over max_length tokens the prompt is cut from the left (fit).
    Batched, right-padded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return {name: _score(tok, model, recs, texts, k, device, max_length, batch, tracker, f"fluency: {name}")
            for name, texts in answers.items()}


def _score(tok, model, recs: Sequence, texts: list[str], k: int, device: str, max_length: int, batch: int,
           tracker, label: str) -> list[float]:
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    items = []  # (token ids, where the answer starts)
    for i, r in enumerate(recs):
        msgs = r.messages()
        start = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
        for t in texts[i * k:(i + 1) * k]:
            ids = tok.apply_chat_template(msgs + [{"role": "assistant", "content": t}], tokenize=True,
                                          return_dict=False)
            items.append(fit(ids, min(start, len(ids)), max_length))
    out = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda j: len(items[j][0]))  # similar lengths together: less padding
    bar = tracker.stage(label, len(items), generating=False) if tracker is not None else nullcontext(None)
    with bar as on_done, torch.no_grad():
        for b in range(0, len(order), batch):
            js = order[b:b + batch]
            width = max(len(items[j][0]) for j in js)
            x = torch.full((len(js), width), pad, dtype=torch.long)
            mask = torch.zeros((len(js), width), dtype=torch.long)
            for row, j in enumerate(js):
                ids = items[j][0]
                x[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            x, mask = x.to(device), mask.to(device)
            lp = model(input_ids=x, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
            tok_lp = lp.gather(2, x[:, 1:, None])[..., 0]
            for n, (row, j) in enumerate(enumerate(js)):
                ids, start = items[j]
                span = tok_lp[row, max(start - 1, 0):len(ids) - 1]  # the answer's tokens, each given what precedes
                out[j] = round(float(-span.mean()), 4) if span.numel() else 0.0
                if on_done is not None:  # the bar counts scored answer tokens (tok/s)
                    on_done(b + n, Generation("", "stop", start, span.numel()))
    return out


def fit(ids: list[int], start: int, max_length: int) -> tuple[list[int], int]:
    """(ids, answer start) within max_length tokens, cut from the left: the prompt's oldest tokens go first, so a
    long prompt never pushes the answer out (cut from the right, a prompt of max_length tokens left no answer
    token and scored NLL 0, the least surprising answer there is). An answer longer than the window keeps its
    head, after at least one token of context to predict its first token from."""
    if len(ids) <= max_length:
        return ids, start
    answer = ids[start:][:max_length - 1]
    context = ids[:start][-(max_length - len(answer)):]
    return context + answer, len(context)


def cut(reference: list[float]) -> float:
    """The reference answers' QUANTILE: above it an answer is more surprising than nearly all of the model's own."""
    xs = sorted(reference)
    return xs[min(len(xs) - 1, int(QUANTILE * len(xs)))] if xs else float("inf")


def share(values: list[float], threshold: float) -> float:
    return round(sum(v > threshold for v in values) / (len(values) or 1), 4)
