"""How far expert verdicts can be trusted: agreement between reviewers (percent, Cohen's kappa), and per
reviewer the position bias of blind verdicts and the share given too fast to have read both answers.

Used by `status`, the admin's /api/stats, and merge (review.json, which the card shows)."""
from __future__ import annotations

from collections import Counter
from itertools import combinations
from math import comb
from statistics import median

from .db import FAST


def kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is total (pe = 1)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return None if pe == 1 else round((po - pe) / (1 - pe), 4)


def agreement(cur: dict[str, dict[str, dict]]) -> dict:
    """Percent agreement and Cohen's kappa for every pair of reviewers who saw the same items; overall: the
    share of agreeing (item, reviewer pair) comparisons and the mean pairwise kappa (Light's kappa)."""
    reviewers = sorted({r for votes in cur.values() for r in votes})
    pairs, same, total = [], 0, 0
    for ra, rb in combinations(reviewers, 2):
        shared = [i for i, votes in cur.items() if ra in votes and rb in votes]
        if not shared:
            continue
        la = [cur[i][ra]["verdict"] for i in shared]
        lb = [cur[i][rb]["verdict"] for i in shared]
        agree = sum(x == y for x, y in zip(la, lb))
        same, total = same + agree, total + len(shared)
        pairs.append({"a": ra, "b": rb, "items": len(shared), "agreement": round(agree / len(shared), 4),
                      "kappa": kappa(la, lb)})
    ks = [p["kappa"] for p in pairs if p["kappa"] is not None]
    return {"reviewers": reviewers, "items_multi": sum(len(v) > 1 for v in cur.values()), "comparisons": total,
            "agreement": round(same / total, 4) if total else None,
            "kappa": round(sum(ks) / len(ks), 4) if ks else None, "pairs": pairs}


def binom_p(k: int, n: int) -> float | None:
    """Two-sided exact binomial test of k successes in n against p = 0.5 (None for n = 0)."""
    if not n:
        return None
    tail = sum(comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 4)


def chose_a(v: dict) -> bool | None:
    """Whether a blind A-or-B verdict picked the answer shown as A (None: not such a verdict)."""
    if v.get("shown_first") is None or v["verdict"] not in ("accept", "swap"):
        return None
    return (v["verdict"] == "accept") == (v["shown_first"] == "revision")


def too_fast(v: dict) -> bool:
    return v.get("seconds") is not None and v["seconds"] < FAST


def per_reviewer(cur: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{reviewer: counts of their current verdicts, blind A-or-B choices (a_share: 0.5 is no position bias;
    position_p: exact binomial test against 0.5), too_fast (under db.FAST seconds, of the timed ones)}."""
    by: dict[str, list[dict]] = {}
    for votes in cur.values():
        for r, v in votes.items():
            by.setdefault(r, []).append(v)
    out = {}
    for r, vs in sorted(by.items()):
        picks = [c for c in map(chose_a, vs) if c is not None]
        timed = [v["seconds"] for v in vs if v.get("seconds") is not None]
        fast = sum(map(too_fast, vs))
        out[r] = {"verdicts": len(vs), "by_verdict": dict(Counter(v["verdict"] for v in vs)),
                  "blind_ab": len(picks), "chose_a": sum(picks),
                  "a_share": round(sum(picks) / len(picks), 4) if picks else None,
                  "position_p": binom_p(sum(picks), len(picks)),
                  "timed": len(timed), "too_fast": fast,
                  "too_fast_share": round(fast / len(timed), 4) if timed else None,
                  "median_seconds": round(median(timed), 1) if timed else None}
    return out
