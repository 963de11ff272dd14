"""AI-judge verification of (revision, original) pairs: does the revision actually beat the original?

Each pair is judged twice, once with the original as answer A and once with the revision as answer A, so a
judge that prefers a position (common in small and large models alike) shows up as `inconsistent` instead of
as a fake agreement. The answer is forced to one of CHOICES (vLLM structured outputs), never parsed from prose.
"""
from __future__ import annotations

from collections import Counter

from . import turns

CHOICES = ("A HIGH", "A LOW", "B HIGH", "B LOW", "TIE HIGH", "TIE LOW")
ORDERS = ("original_first", "revision_first")  # which answer is shown as A
OUTCOMES = ("judge_agrees", "judge_disagrees", "judge_tie", "inconsistent", "low_confidence", "unparsed")


def conversation(const, row, order: str, rubric: list[str]) -> list[dict]:
    """The judge request for one order. Constitution-aware: the principles the row was revised against are
    part of the rubric."""
    revision, original = row.revisions[-1], row.original
    a, b = (original, revision) if order == "original_first" else (revision, original)
    principles = [const.principle(pid).critique.strip() for pid in dict.fromkeys(row.revised())]
    text = turns.render("judge", rubric=rubric, principles=principles, constitution=const.name,
                        system=row.prompt.system or "", context=row.prompt.turns(), prompt=row.prompt.prompt,
                        a=a, b=b)
    return [{"role": "user", "content": text}]


def parse(raw: str) -> tuple[str, str] | None:
    """'B HIGH' -> ('B', 'HIGH'); None when the text is not one of CHOICES (a backend without constraints)."""
    words = raw.strip().upper().split()
    if len(words) != 2 or " ".join(words) not in CHOICES:
        return None
    return words[0], words[1]


def winner(raw: str, order: str) -> tuple[str, str] | None:
    """Map a verdict to ('revision' | 'original' | 'tie', confidence) for the given order."""
    v = parse(raw)
    if v is None:
        return None
    pick, conf = v
    if pick == "TIE":
        return "tie", conf
    revision_is = "B" if order == "original_first" else "A"
    return ("revision" if pick == revision_is else "original"), conf


def outcome(raw_original_first: str, raw_revision_first: str) -> str:
    """Consistency first (the orders disagree: position bias), then who won, then confidence. Confidence only
    qualifies a revision win: an original that won both orders is `judge_disagrees` however unsure the judge
    was, so a LOW never lets a losing revision through as chosen."""
    w1, w2 = winner(raw_original_first, "original_first"), winner(raw_revision_first, "revision_first")
    if w1 is None or w2 is None:
        return "unparsed"
    if w1[0] != w2[0]:
        return "inconsistent"
    if w1[0] != "revision":
        return {"original": "judge_disagrees", "tie": "judge_tie"}[w1[0]]
    return "low_confidence" if "LOW" in (w1[1], w2[1]) else "judge_agrees"


def action(outcome_: str, cfg) -> str:
    """'keep', 'drop' or 'swap' for an outcome under the judge config."""
    return {"judge_agrees": "keep", "judge_disagrees": cfg.on_disagrees, "judge_tie": cfg.on_tie,
            "inconsistent": cfg.on_inconsistent, "low_confidence": cfg.on_low_confidence,
            "unparsed": cfg.on_unparsed}[outcome_]


def rates(outcomes: list[str]) -> dict:
    """Share of judged pairs per outcome, and the agreement rate the card headlines."""
    n = len(outcomes)
    c = Counter(outcomes)
    return {"judged": n, "counts": {o: c.get(o, 0) for o in OUTCOMES if c.get(o)},
            "agreement": round(c.get("judge_agrees", 0) / n, 4) if n else None,
            "position_bias": round(c.get("inconsistent", 0) / n, 4) if n else None}
