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

from .checks import Context, kinds
# the registry's filters (one implementation, in checks/text.py), named here too for behaviour.py and the tests
from .checks.text import is_meta, repetitive, self_reference  # noqa: F401
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


# The filters that are check kinds of the registry, with the reason a revision failing one is dropped with.
# repetitive and meta come first (check_revision), self_reference last (Filters.revision): the first failing
# filter names the reason, so the order is part of what a run writes.
FILTER_KINDS = {"repetitive": "repetitive_revision",
                "meta": "revision_is_meta",  # talks about the response/critique/customer instead of answering
                "self_reference": "self_reference"}


def filter_check(kind: str):
    """The registry's check of a filter kind (no `when:`: a filter applies to every revision)."""
    return kinds()[kind](id=kind, kind=kind)


def failed(checks, text: str, ctx: Context) -> str | None:
    """The reason of the first of `checks` (check, reason) that `text` fails, or None."""
    return next((why for c, why in checks if not c.passes(text, ctx)), None)


def check_revision(revision: str, critique: str, max_critique_similarity: float, base=None) -> str | None:
    """The checks every revision gets whatever the run's constitution (see Filters for the ones that need it).
    `base`: the (check, reason) pairs of repetitive and meta (Filters passes its own; default: built here)."""
    if base is None:
        base = [(filter_check(k), FILTER_KINDS[k]) for k in ("repetitive", "meta")]
    why = failed(base, revision, Context())
    if why:
        return why
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
        # the text filters, as the registry's check kinds (the same objects a constitution's checks are)
        self.base = [(filter_check(k), FILTER_KINDS[k]) for k in ("repetitive", "meta")]
        self.late = [(filter_check("self_reference"), FILTER_KINDS["self_reference"])] if cfg.self_reference else []

    def critique(self, text: str) -> str | None:
        if len(text) < self.cfg.min_chars:
            return "empty_critique"
        if shares_span(text, self.few_shot, self.cfg.few_shot_span):
            return "copies_few_shot"
        return None

    def revision(self, text: str, critique: str, principle: str, prompt: str, answer: str = "") -> str | None:
        """`answer`: what the revision rewrites (the original, or the last revision in a later round)."""
        why = check_revision(text, critique, self.cfg.max_critique_similarity, self.base)
        if why:
            return why
        if shares_span(text, self.few_shot, self.cfg.few_shot_span):
            return "copies_few_shot"
        if shares_span(text, self.instruction.get(principle, set()), self.cfg.instruction_span) or \
                re.match(r"^\W*rewrite\b", text, re.IGNORECASE):
            return "leaked_instruction"
        why = failed(self.late, text, Context(prompt=prompt))
        if why or not answer:
            return why
        return dropped_answer(text, answer, prompt, self.cfg.min_content_words, self.cfg.min_kept_terms)


# -- answers that still answer: a revision may fix a violation, not drop the answer --------------------------------
# "Happy to help!" for a 90-word answer passes a length limit, a refusal check and every filter above; written as the
# chosen answer it teaches deletion. What a revision must keep is the answer's substance: its content words (not
# function words, not the politeness and help-talk a small model pads with), and the terms that carry it.

FUNCTION = set("""the and for are but not you your yours our ours out was were has have had having can could would
should will shall may might must its it's this that these those there their they them then than with without from
into onto upon about above below over under again once here when where why how all any both each few more most other
some such only own same too very just also even still yet which who whom whose what whats while because until does
did doing done been being get got gets let lets like well able i'm i've i'll i'd you're you've you'll we're we've
we'll they're it'll that's there's don't doesn't didn't can't won't isn't aren't wasn't weren't haven't hasn't
one ones two three first next then now yes okay""".split())
# help-talk: says nothing about the user's request ("I'm sorry for any confusion. I'm here to help!")
FILLER = set("""sorry apologize apologise apologies confusion inconvenience happy glad help helps helped helping
assist assistance assisting thanks thank welcome pleasure please feel free hesitate reach reaching question
questions anything else know hope great sure certainly course absolutely understand appreciate patience
concern concerns today always day here there things thing something lot really""".split())


def stem(w: str) -> str:
    """A crude, consistent stem: one of -ing -ed -es -s off (a root of 4+ letters left), then a final -e, so
    "selling"/"sell", "changed"/"change" and "phones"/"phone" meet. Only ever compared with another stem."""
    for suf in ("ing", "ed", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 4 and not (suf == "s" and w.endswith("ss")):
            w = w[:-len(suf)]
            break
    return w[:-1] if len(w) >= 5 and w.endswith("e") else w


def content_words(text: str) -> list[str]:
    """Content words in order, lower-cased and stemmed (so "passwords" keeps "password")."""
    out = []
    for w in re.findall(r"[a-z][a-z']+", text.lower()):
        w = w.strip("'")
        if len(w) < 3 or w in FUNCTION or w in FILLER:
            continue
        out.append(stem(w))
    return out


def key_terms(text: str, k: int = 10) -> set[str]:
    """The answer's k most used content words (ties: the earlier first): what its substance is about."""
    ws = content_words(text)
    order = sorted(set(ws), key=lambda w: (-ws.count(w), ws.index(w)))
    return set(order[:k])


def dropped_answer(revision: str, answer: str, prompt: str, floor: int = 5, keep: float = 0.25) -> str | None:
    """Does the revision drop the answer it rewrites? `contentless_revision`: fewer than `floor` content words
    where the answer had at least that many. `gutted_revision`: under half the answer's content words AND under
    `keep` of its key terms and of the prompt's terms kept. A principle that asks for brevity can still shorten
    an answer that keeps its substance (the terms stay), and a longer or equally full rewrite is never refused.
    A refusal is judged by the refusal checks, not here (declining a harmful request is the fix), and a short
    answer in the prompt's own words is the one the user dictated."""
    from .checks.text import refuses

    if floor <= 0 or refuses(revision):
        return None
    mine, theirs = content_words(revision), content_words(answer)
    if len(theirs) < floor:
        return None  # nothing much to lose
    if len(mine) < floor:
        # words the user dictated ("Answer with: My answer is yes.") are the answer they asked for
        return None if set(words(revision)) <= set(words(prompt)) else "contentless_revision"
    if len(mine) >= 0.5 * len(theirs):
        return None
    have, asked = set(mine), set(content_words(prompt))
    kept = max(len(have & key_terms(answer)) / len(key_terms(answer)),
               len(have & asked) / len(asked) if asked else 0.0)
    return "gutted_revision" if kept < keep else None


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
