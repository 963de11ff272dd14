"""Check kinds that need a model: a yes/no proposition asked of the judge (through the engine's structured-choice
path, P(yes) against a threshold) and an HF sequence-classification model (a guard model) run in-process."""
from __future__ import annotations

from functools import lru_cache
from typing import ClassVar, Literal

from pydantic import Field

from . import Check, Context, register

CHOICES = ("YES", "NO")


@register
class Judge(Check):
    """`proposition` is a statement about the response ("The response asks for the customer's full card
    number."). The judge answers YES/NO; P(YES) >= threshold means the proposition holds, which is a violation
    (`violation_if: yes`, the default) or, for a proposition that states compliance, its absence (`no`)."""
    kind: Literal["judge"]
    proposition: str = Field(min_length=1)
    threshold: float = Field(0.5, ge=0, le=1)
    violation_if: Literal["yes", "no"] = "yes"
    max_tokens: int = Field(2, gt=0)
    needs_engine: ClassVar[bool] = True
    plain: ClassVar[bool] = False  # the judge reads the answer as written

    def conversation(self, prompt: list[dict], text: str) -> list[dict]:
        """The judge's request: the conversation and the answer as data in a fixed template, then the question."""
        from ..turns import render

        convo = "\n\n".join(f"[{m['role'].upper()}]\n{m['content']}" for m in prompt)
        return [{"role": "user", "content": render("check", conversation=convo, response=text,
                                                   proposition=self.proposition)}]

    def verdict(self, p_yes: float | None) -> bool:
        """Passes? An unparsed answer (None, a reply off the choices) does not: a pass would label an answer nobody
        checked as compliant (verified, KTO True). stages.Inspect flags the row check_unparsed_rN, as the gate does."""
        if p_yes is None:
            return False
        holds = p_yes >= self.threshold
        return not holds if self.violation_if == "yes" else holds

    def passes(self, text: str, ctx: Context) -> bool:
        raise TypeError("judge checks are asked through the engine (stages.Inspect), not inline")


@lru_cache(maxsize=4)
def _classifier(model: str, device: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForSequenceClassification.from_pretrained(model).eval()
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return tok, net.to(dev), dev


def classify(model: str, label: str, texts: list[str], max_length: int = 512, device: str = "auto",
             batch_size: int = 16) -> list[float]:
    """P(label) per text from a sequence-classification model (softmax over its labels; sigmoid for one)."""
    import torch

    tok, net, dev = _classifier(model, device)
    names = {v.lower(): int(k) for k, v in net.config.id2label.items()}
    if label.lower() not in names:
        from ..errors import UserError
        raise UserError(f"classifier {model}: no label {label!r} (has: {', '.join(net.config.id2label.values())})")
    j, out = names[label.lower()], []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt").to(dev)
        with torch.no_grad():
            logits = net(**enc).logits.float()
        probs = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
        out += probs[:, min(j, probs.shape[-1] - 1)].tolist()
    return out


# P(label) already computed, per (model, label, max_length, device) and text: a stage scores every answer it got
# in one batched call (prime), and the per-answer check afterwards reads the score from here
_SCORES: dict[tuple, float] = {}
_MAX_SCORES = 50_000


@register
class Classifier(Check):
    """An HF sequence-classification model (a guard model such as Granite Guardian HAP): P(`label`) >=
    threshold on the answer is a violation."""
    kind: Literal["classifier"]
    model: str = Field(min_length=1)   # hub id or local dir
    label: str = Field(min_length=1)   # the label that means "violates"
    threshold: float = Field(0.5, ge=0, le=1)
    max_length: int = Field(512, gt=0)
    device: str = "auto"
    plain: ClassVar[bool] = False  # the model reads the answer as written (prime scored those texts)

    def _key(self) -> tuple:
        return self.model, self.label.lower(), self.max_length, self.device

    def prime(self, texts: list[str]) -> None:
        """Score the texts not scored yet in one batched model call (classify batches by 16 within it)."""
        key = self._key()
        todo = list(dict.fromkeys(t for t in texts if (key, t) not in _SCORES))
        if not todo:
            return
        if len(_SCORES) + len(todo) > _MAX_SCORES:
            _SCORES.clear()  # a bound on memory in a long run; a cleared score is only computed again
        _SCORES.update(zip(((key, t) for t in todo),
                           classify(self.model, self.label, todo, self.max_length, self.device)))

    def passes(self, text: str, ctx: Context) -> bool:
        return self.passes_many([text])[0]

    def passes_many(self, texts: list[str]) -> list[bool]:
        self.prime(texts)
        key = self._key()
        return [_SCORES[(key, t)] < self.threshold for t in texts]
