"""Routing: which kept pairs an expert should see, and the review item each becomes.

A pair is routed when any rule of the `review:` config matches; every matching rule is recorded, so a
reviewer (and the card) can tell a random audit sample from a pair sent because the judge was unsure.
Top-level, below store.py (which writes review_queue.jsonl at the end of a run) and the review package (which
serves and merges the queue): the lowest I/O layer imports nothing above it.
"""
from __future__ import annotations

import hashlib
import re

from .backends import last_text

# judge outcomes that mean "the model could not tell" (see judge.py): both go to a human when asked
UNSURE = ("judge_low_confidence", "judge_inconsistent")


def sampled(seed: int, item_id: str, rate: float) -> bool:
    """A stable coin flip per (seed, id): a rerun or resume routes the same pairs, and a higher rate adds
    pairs without removing any."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "big")
    return h / 2**64 < rate


def base_flag(flag: str) -> str:
    return re.sub(r"_r\d+$", "", flag)  # preface_stripped_r2 -> preface_stripped


def reasons(pref: dict, cfg, seed: int) -> list[str]:
    why = []
    if pref.get("domain") in cfg.domains:
        why.append(f"domain:{pref['domain']}")
    flags = {base_flag(f) for f in pref.get("flags", [])}
    if cfg.judge_low_confidence:
        why += [f"judge:{f}" for f in UNSURE if f in flags]
    why += [f"flag:{f}" for f in cfg.flags if f in flags]
    if cfg.sample_rate and sampled(seed, pref["id"], cfg.sample_rate):
        why.append("sample")
    return why


def item(pref: dict, why: list[str], principles: dict[str, dict]) -> dict:
    """What the review page shows for one pair. Original and revision are named as such (not chosen/rejected),
    so a judge swap cannot confuse the expert's verdict."""
    chosen, rejected = last_text(pref["chosen"]), last_text(pref["rejected"])
    original, revision = (chosen, rejected) if "judge_swapped" in pref.get("flags", []) else (rejected, chosen)
    return {
        "id": pref["id"],
        "routed_by": why,
        "domain": pref.get("domain"),
        "prompt": pref["prompt"],
        "original": original,
        "revision": revision,
        "rounds": [{"principle": pid, "critique_request": principles.get(pid, {}).get("critique", ""),
                    "revision_request": principles.get(pid, {}).get("revision", ""), "critique": c}
                   for pid, c in zip(pref["principle_ids"], pref["critiques"])],
        "judge": pref.get("judge"),
        "flags": pref.get("flags", []),
        "created_at": pref.get("created_at"),
    }


def queue(prefs: list[dict], cfg, seed: int, const) -> list[dict]:
    """The review items for a run's kept pairs, in the run's order."""
    principles = {p.id: {"critique": p.critique.strip(), "revision": p.revision.strip()} for p in const.principles}
    out = []
    for pref in prefs:
        why = reasons(pref, cfg, seed)
        if why:
            out.append(item(pref, why, principles))
    return out
