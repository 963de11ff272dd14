"""Quality filters. Each check returns a reason string (the row is dropped and logged with it) or None.

Small models often fail at revision in recognisable ways (see ENVIRONMENT.md): they repeat the critique,
talk *about* the revision ("The revised response is more polite..."), or preface the answer with
"Here is a revised response:". Prefaces are stripped when a clean answer remains; the rest are dropped.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher

# A leading line that announces a revision instead of being one. Stripped when what follows is a real answer.
PREFACE = re.compile(
    r"^\s*(?:\*\*)?(?:"
    r"(?:sure|okay|ok|certainly|of course|absolutely)[,!.]?\s*(?:here(?:'s| is)[^\n:]*)?"
    r"|here(?:'s| is| are)\s+(?:a|an|the|my)?\s*(?:revised|rewritten|improved|updated|new|corrected|better)[^\n:]*"
    r"|(?:i(?:'ve| have)\s+)?(?:revised|rewritten|rewrote|updated|improved)[^\n:]*(?:response|answer|version)[^\n:]*"
    r"|(?:revised|rewritten|improved|updated|final)\s+(?:response|answer|version)"
    r"|revision"
    r")\s*[:.!]?(?:\*\*)?[ \t]*(?:\n+|$|:\s*)",
    re.IGNORECASE,
)
# Text that discusses the response or the critique rather than answering the user.
META = re.compile(
    r"^\s*(?:the|this|my|your)\s+(?:original\s+|previous\s+|revised\s+|rewritten\s+|assistant'?s?\s+|ai'?s?\s+)?"
    r"(?:response|answer|revision|critique)\b"
    r"|\b(?:the|my)\s+(?:last\s+|original\s+|previous\s+|revised\s+|rewritten\s+)?response\b"
    r"|\bthe critique\b"
    r"|^\s*(?:you(?:'re| are) (?:right|correct)|i agree|thank you for (?:the|your) (?:feedback|critique))\b",
    re.IGNORECASE,
)


def similarity(a: str, b: str) -> float:
    """Word-level difflib ratio in [0, 1]: 1.0 means the same words in the same order."""
    wa, wb = a.lower().split(), b.lower().split()
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def strip_preface(text: str) -> tuple[str, bool]:
    """Remove leading revision prefaces (possibly several lines of them). Returns (text, stripped?)."""
    out, changed = text.strip(), False
    for _ in range(3):
        m = PREFACE.match(out)
        if not m or m.end() == 0:
            break
        out, changed = out[m.end():].strip().strip('"').strip(), True
    return out, changed


def check_text(text: str, finish: str, what: str, min_chars: int, drop_truncated: bool) -> str | None:
    if len(text.strip()) < min_chars:
        return f"empty_{what}"
    if drop_truncated and finish == "length":
        return f"truncated_{what}"
    return None


def repetitive(text: str, n: int = 4, min_unique: float = 0.5) -> bool:
    """Degenerate looping ("It's not supported. It's not supported. ..."): few distinct word n-grams."""
    w = text.lower().split()
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(grams) >= 12 and len(set(grams)) / len(grams) < min_unique


def check_revision(revision: str, critique: str, max_critique_similarity: float) -> str | None:
    if repetitive(revision):
        return "repetitive_revision"
    if META.search(revision[:300]):
        return "revision_is_meta"  # talks about the response/critique instead of answering
    if similarity(revision, critique) > max_critique_similarity:
        return "revision_echoes_critique"
    return None


def check_pair(chosen: str, rejected: str, max_similarity: float) -> tuple[str | None, float]:
    sim = similarity(chosen, rejected)
    if chosen.strip() == rejected.strip():
        return "identical", sim
    if sim > max_similarity:
        return "too_similar", sim
    return None, sim
