"""Quality filters. Each check returns a reason string (the row is dropped and logged with it) or None.

Small models fail at critique and revision in ways a reader spots at once (seen reading SmolLM2-135M's pairs
blind, issue 12): they repeat the critique, talk *about* the answer or the customer instead of *to* the
customer ("The customer's request was ambiguous, but the assistant's last response asked..."), paste text from
the few-shot examples, repeat the revision request's own words, sign off as their model or vendor, or preface
the answer with "Here is a revised response:". Prefaces are stripped when a clean answer remains; the rest are dropped.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher

from .backends import loop_end
from .turns import render

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

_QUAL = r"(?:(?:original|previous|revised|rewritten|last|above|initial|first|new|assistant'?s?|ai'?s?|model'?s?)\s+)"
# An opening that discusses an answer (its own or another's) or talks about the customer in the third person,
# instead of answering. Narrow on purpose: "The answer is 42", "Your answer will reach billing today", "You are
# right to be worried" and "This response time is usually 2 days." are answers and must pass.
META_OPENING = re.compile(
    r"^\W*(?:"
    rf"(?:the|this|my|your|that)\s+{_QUAL}*(?:response|revision|critique|reply)\b(?:'s)?"
    r"(?!\s+(?:time|times|rate|rates|team|window|center|centre|form|code|email|number|address)\b)"
    rf"|(?:the|this|my|that)\s+{_QUAL}+answer\b"
    r"|(?:the|this)\s+(?:customer|user|client|buyer|person|requester)(?:'s)?\b"
    r"(?!\s+(?:service|support|care|portal|account|center|centre|team|id|number|agreement|experience)\b)"
    r"|(?:the|this)\s+(?:ai\s+)?assistant(?:'s)?\b"
    rf"|in\s+(?:the|this|my|your)\s+{_QUAL}*(?:response|answer|revision)\b"
    r"|(?:you(?:'re| are)\s+(?:right|correct)|i agree)\s*[,.!]"
    r"|thank(?:s| you)\s+for\s+(?:the|your)\s+(?:feedback|critique)"
    r")",
    re.IGNORECASE,
)
# The same discussion anywhere near the start: "..., but the assistant's last response asked ...".
META_ANYWHERE = re.compile(
    r"\b(?:the|my)\s+(?:assistant'?s?\s+)?(?:last|original|previous|initial|above|revised|rewritten)\s+"
    r"(?:response|answer|reply)\b"
    r"|\bthe\s+(?:ai\s+)?assistant\b"
    r"|\bthe\s+(?:previous|above|earlier)\s+example\b"
    r"|\bthe critique\b"
    r"|\bthe\s+(?:customer|user)s?(?:'s)?\b(?!\s+(?:service|support|care|manual|guide|settings|account|portal|"
    r"interface|agreement|name|id|number|team|center|centre|experience|reviews?)\b)"
    r"|\b(?:the|your)\s+(?:revision|critique)\s+request\b",
    re.IGNORECASE,
)
# Model or vendor names that have no place in a reply (a "- SmolLM, by Hugging Face" sign-off).
SELF_NAMES = re.compile(
    r"\b(?:smol\s*lm\w*|hugging\s*face|huggingface|open\s*ai|chat\s*gpt|gpt-?[345]\w*|llama\s*\d*|"
    r"anthropic|claude|qwen\w*|mistral|gemini|language model|ai model)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped), the unit of every span and edit measure here."""
    return _WORD.findall(text.lower())


def similarity(a: str, b: str) -> float:
    """Word-level difflib ratio in [0, 1]: 1.0 means the same words in the same order."""
    wa, wb = a.lower().split(), b.lower().split()
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def edit_ratio(revision: str, original: str) -> float:
    """Word-level edit share: 0 = identical words, 1 = all new (1 - similarity)."""
    return round(1.0 - similarity(revision, original), 4)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def shares_span(text: str, spans: set[tuple[str, ...]], n: int) -> bool:
    """Does `text` contain any n consecutive words of the given n-gram set?"""
    return bool(spans) and n > 0 and not ngrams(text, n).isdisjoint(spans)


def strip_preface(text: str) -> tuple[str, bool]:
    """Remove leading revision prefaces (possibly several lines of them). Returns (text, stripped?)."""
    out, changed = text.strip(), False
    for _ in range(3):
        m = PREFACE.match(out)
        if not m or m.end() == 0:
            break
        out, changed = out[m.end():].strip().strip('"').strip(), True
    return out, changed


def trim(text: str) -> str:
    """A text cut by max tokens, back to its last complete sentence or line (the cut fragment removed)."""
    # a sentence end: . ! or ? after a word (not "2." opening a list item), then space or the end
    ends = [m.end() for m in re.finditer(r"(?<=[^\d\s])[.!?](?:[\"')\]]*)(?=\s|$)", text)]
    line = text.rfind("\n")
    cut = max(ends[-1] if ends else 0, line if line > 0 else 0)
    return text[:cut].rstrip()


def check_text(text: str, finish: str, what: str, min_chars: int, drop_truncated: bool) -> str | None:
    if len(text.strip()) < min_chars:
        return f"empty_{what}"
    if drop_truncated and finish == "length":
        return f"truncated_{what}"
    return None


def repetitive(text: str, n: int = 4, min_unique: float = 0.5) -> bool:
    """Degenerate looping ("It's not supported. It's not supported. ..."): few distinct word n-grams, or one
    sentence of 4+ words said three times ("I'm here to help." as filler between every other sentence)."""
    w = text.lower().split()
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if len(grams) >= 12 and len(set(grams)) / len(grams) < min_unique:
        return True
    return loop_end(text + "\n", 3) is not None  # the last sentence counts too, closed or not


# Unmistakable anywhere in a reply, not only near its start: the revision request or its own commentary
# ("... Rewrite the response to remove any harmful part.", "(This is the original response, as is ...)").
META_LATE = re.compile(
    r"\brewrite\s+(?:the|this|my|your)\s+(?:assistant'?s?\s+)?(?:last\s+|original\s+|previous\s+)?(?:response|answer|reply)\b"
    r"|\b(?:the|this\s+is\s+the)\s+(?:original|previous|revised|rewritten)\s+(?:response|answer|reply)\b"
    r"|\bthe critique\b",
    re.IGNORECASE,
)


def is_meta(text: str) -> bool:
    head = text[:300]
    return bool(META_OPENING.match(head) or META_ANYWHERE.search(head) or META_LATE.search(text))


def self_reference(text: str, prompt: str) -> bool:
    """Names a model or vendor that the user's prompt did not bring up."""
    return any(m.group(0).lower() not in prompt.lower() for m in SELF_NAMES.finditer(text))


def check_revision(revision: str, critique: str, max_critique_similarity: float) -> str | None:
    """The checks every revision gets whatever the run's constitution (see Filters for the ones that need it)."""
    if repetitive(revision):
        return "repetitive_revision"
    if is_meta(revision):
        return "revision_is_meta"  # talks about the response/critique/customer instead of answering
    if similarity(revision, critique) > max_critique_similarity:
        return "revision_echoes_critique"
    return None


def check_pair(chosen: str, rejected: str, min_edit: float, max_edit: float = 1.0) -> tuple[str | None, float]:
    """Pair-level checks; returns (reason or None, similarity)."""
    sim = similarity(chosen, rejected)
    if chosen.strip() == rejected.strip():
        return "identical", sim
    if 1.0 - sim < min_edit:
        return "too_similar", sim
    if 1.0 - sim > max_edit:
        return "too_different", sim
    return None, sim


class Filters:
    """The run's filters with what they need from the constitution precomputed: the few-shot examples' word
    spans and each principle's revision-request spans."""

    def __init__(self, cfg, const):
        self.cfg = cfg
        n, m = cfg.few_shot_span, cfg.instruction_span
        self.few_shot: set[tuple[str, ...]] = set()
        if n:
            for ex in const.few_shot:
                for t in (ex.response, ex.critique, ex.revision):
                    self.few_shot |= ngrams(t, n)
        # the whole revision turn as sent (principle request + the template's own lines, minimal style included)
        self.instruction = {p.id: ngrams(render("revision", request=p.revision, principle_id=p.id, round=1,
                                                minimal=True), m) if m else set() for p in const.principles}

    def critique(self, text: str) -> str | None:
        if len(text) < self.cfg.min_chars:
            return "empty_critique"
        if shares_span(text, self.few_shot, self.cfg.few_shot_span):
            return "copies_few_shot"
        return None

    def revision(self, text: str, critique: str, principle: str, prompt: str) -> str | None:
        why = check_revision(text, critique, self.cfg.max_critique_similarity)
        if why:
            return why
        if shares_span(text, self.few_shot, self.cfg.few_shot_span):
            return "copies_few_shot"
        if shares_span(text, self.instruction.get(principle, set()), self.cfg.instruction_span) or \
                re.match(r"^\W*rewrite\b", text, re.IGNORECASE):
            return "leaked_instruction"
        if self.cfg.self_reference and self_reference(text, prompt):
            return "self_reference"
        return None


def length_balance(pairs: list[tuple[str, int, int]], seed: int, band: float = 0.05) -> set[str]:
    """Ids to drop so the share of pairs whose chosen answer is longer (words) lands within 0.5 +- band:
    the fewest pairs of the majority side go, picked by a seeded hash of the id (the same pairs on every rerun).
    `pairs`: (id, chosen words, rejected words)."""
    import hashlib

    longer = [i for i, c, r in pairs if c > r]
    other = [i for i, c, r in pairs if c <= r]
    big, small = (longer, other) if len(longer) > len(other) else (other, longer)
    keep = int((0.5 + band) / (0.5 - band) * len(small))  # the most of the majority the band allows
    if len(big) <= keep:
        return set()
    order = sorted(big, key=lambda i: hashlib.sha256(f"{seed}:balance:{i}".encode()).hexdigest())
    return set(order[: len(big) - keep])
