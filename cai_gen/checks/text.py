"""Deterministic check kinds: no model, the same answer on every machine. Each says whether a text passes."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, StrictInt, StringConstraints, field_validator, model_validator

from ..backends import loop_end
from . import Check, Context, register


@lru_cache(maxsize=512)  # each check's patterns compile once, not once per answer
def _re2(pattern: str, ignore_case: bool = False):
    """A user's pattern compiled by RE2: time linear in the text whatever the pattern, so no answer can hang a run
    on a pattern like (\\w+\\s?)+$ (Python's re backtracks exponentially there). RE2 refuses what it cannot run
    in linear time (backreferences, lookarounds): a ValueError naming why. Its \\b, \\w and \\d are ASCII."""
    import re2

    opts = re2.Options()
    opts.log_errors = False  # the refusal is our one line, not RE2's log on stderr
    opts.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, opts)
    except re2.error as e:
        why = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        hint = ("; lookarounds: use not_after / not_before" if "(?<" in pattern or "(?=" in pattern
                or "(?!" in pattern else "")
        raise ValueError(f"pattern does not compile (RE2, linear time): {why}{hint}") from None


# how far before / after a match not_after / not_before look (a phrase, not the whole text: linear time stays linear)
AROUND = 100


@register
class Regex(Check):
    """A regular expression (RE2 syntax) the answer must (`must: match`) or must not (`must: not_match`) contain.
    A match right after text matching `not_after` ("I can't " before "guarantee"), or right before text matching
    `not_before`, does not count: what a lookbehind / lookahead said, which RE2 does not run."""
    kind: Literal["regex"]
    pattern: str = Field(min_length=1)
    must: Literal["match", "not_match"] = "not_match"
    ignore_case: bool = True
    not_after: str | None = Field(None, min_length=1)   # matched against the end of the text before a match
    not_before: str | None = Field(None, min_length=1)  # matched against the start of the text after a match

    @field_validator("pattern", "not_after", "not_before")
    @classmethod
    def _compiles(cls, v):
        if v is not None:
            _re2(v)
        return v

    def found(self, text: str) -> bool:
        pat = _re2(self.pattern, self.ignore_case)
        after = self.not_after and _re2(f"(?:{self.not_after})$", self.ignore_case)
        before = self.not_before and _re2(f"^(?:{self.not_before})", self.ignore_case)
        pos = 0
        while pos <= len(text):
            m = pat.search(text, pos)
            if m is None:
                return False
            s, e = m.span()
            if not ((after and after.search(text[max(0, s - AROUND):s])) or
                    (before and before.search(text[e:e + AROUND]))):
                return True
            pos = s + 1  # an excused match: look again from the next position, as a lookaround would
        return False

    def passes(self, text: str, ctx: Context) -> bool:
        return self.found(text) == (self.must == "match")


# an argument a check can use: a string with a visible character (an empty one matches everywhere)
Phrase = Annotated[str, StringConstraints(pattern=r"\S")]


def _phrase(p: str) -> re.Pattern:
    # whole words at the ends a word has ("guarantee" is not found in "guaranteed"; use a regex check for that)
    left = r"\b" if re.match(r"\w", p) else ""
    right = r"\b" if re.search(r"\w$", p) else ""
    return re.compile(left + re.escape(p) + right, re.IGNORECASE)


@register
class Phrases(Check):
    """Forbidden phrases (none may appear) and required ones (each must), case-insensitive, whole words."""
    kind: Literal["phrases"]
    forbidden: list[Phrase] = []  # "" or " " would be found in every answer (or, required, in none): refused
    required: list[Phrase] = []

    @model_validator(mode="after")
    def _some(self):
        if not self.forbidden and not self.required:
            raise ValueError("give `forbidden` and/or `required` phrases")
        return self

    def passes(self, text: str, ctx: Context) -> bool:
        return not any(_phrase(p).search(text) for p in self.forbidden) and \
            all(_phrase(p).search(text) for p in self.required)


_SENTENCE = re.compile(r"[^.!?\n]*\w[^.!?\n]*(?:[.!?]+|\n|$)")


def count(text: str, unit: str) -> int:
    if unit == "words":
        return len(re.findall(r"\w+(?:['’-]\w+)*", text))
    if unit == "sentences":
        return len(_SENTENCE.findall(text))
    return len([p for p in re.split(r"\n\s*\n", text) if p.strip()])


@register
class Length(Check):
    """At most `max` / at least `min` words, sentences or paragraphs (blank-line separated)."""
    kind: Literal["length"]
    unit: Literal["words", "sentences", "paragraphs"] = "words"
    max: StrictInt | None = Field(None, gt=0)  # strict: `max: true` is no count (pydantic would read it as 1)
    min: StrictInt | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.max is None and self.min is None:
            raise ValueError("give `max` and/or `min`")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    def passes(self, text: str, ctx: Context) -> bool:
        n = count(text, self.unit)
        return (self.max is None or n <= self.max) and (self.min is None or n >= self.min)


URL = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>()\"']+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|co|uk|de|"
                 r"help|support|store|shop|info|biz|us|ca|au|eu|nz|ie|app|site|online|xyz|ai|gov|edu)"
                 r"(?:/[^\s<>()\"']*)?\b")
EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")
# +1 (800) 555-0199, 1-800-555-0199, 0800 123 4567, 555-0199: 7+ digits with phone punctuation between them;
# (800)5550199: an area code in brackets, then the number; +8080110314: a + and the digits; 18005550199: a
# North-American number written as one run of digits (area code and exchange start 2-9, so an order number rarely
# looks like one). The number may end a sentence ("call 1-800-672-1111."): a dot after it is punctuation unless a
# digit follows (1.800.672 is one number, 2756.32.5 is none)
PHONE = re.compile(r"(?<!\w)(?<!\d\.)(?:\+\d{7,15}"
                   r"|(?:\+?\d{1,3}[\s.-]?)?\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}"
                   r"|(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,3}"
                   r"|1?[2-9]\d{2}[2-9]\d{6})(?!\w|\.\d)")
YEARS = re.compile(r"^(?:1[89]|20)\d\d\s*[-/]\s*(?:1[89]|20)\d\d$")  # "a 2023-2024 mandate" is no phone number


def _link(u: str) -> str:
    """A link as compared: lower case, no scheme, no www., no trailing punctuation or slash."""
    u = re.sub(r"^(?:https?://)?(?:www\.)?", "", u.lower().rstrip(".,;:!?"))
    return u.rstrip("/")


def contacts(text: str, types: list[str]) -> set[str]:
    """The contact data in a text: e-mail addresses and links (lower case, links without scheme or www.), phone
    numbers (their digits)."""
    out: set[str] = set()
    emails = set(EMAIL.findall(text)) if "email" in types else set()
    out |= {e.lower() for e in emails}
    if "url" in types:
        for m in URL.findall(text):
            u = _link(m)
            if u and not any(u in e for e in out):  # the domain part of an e-mail address is not a link
                out.add(u)
    if "phone" in types:
        for m in PHONE.findall(text):
            digits = re.sub(r"\D", "", m)
            if len(digits) >= 7 and not YEARS.match(m):
                out.add(digits)
    return out


def _same(c: str, g: str) -> bool:
    """Is contact `c` (from the answer) the given `g`? The same address; a link on a given link's site and path
    (shop.com/returns for shop.com, not shop.com.refund-desk.io); the same phone number with or without a country
    code or trunk 0 (+44 20 7946 0018 for 020 7946 0018)."""
    if c == g:
        return True
    if c.isdigit() and g.isdigit():
        a, b = sorted((c.lstrip("0"), g.lstrip("0")), key=len)
        return len(a) >= 7 and len(b) - len(a) <= 3 and b.endswith(a)
    short, long_ = sorted((c, g), key=len)
    return "@" not in c + g and long_.startswith(short) and long_[len(short)] in "/?#"


@register
class Contact(Check):
    """Contact data (links, e-mail addresses, phone numbers) that neither the prompt nor its system prompt
    contains: an assistant that invents a support number or a URL sends the customer somewhere that does not
    exist."""
    kind: Literal["contact"]
    types: list[Literal["url", "email", "phone"]] = Field(["url", "email", "phone"], min_length=1)
    allow: list[Phrase] = []  # real addresses the domain may give (links, e-mail addresses, phone numbers)

    def passes(self, text: str, ctx: Context) -> bool:
        given = contacts(f"{ctx.system}\n{ctx.prompt}", self.types)
        for a in self.allow:
            given |= contacts(a, ["url", "email", "phone"]) or {_link(a)}
        return all(any(_same(c, g) for g in given) for c in contacts(text, self.types))


PLACEHOLDER = re.compile(
    r"\[(?:your |the |customer'?s? |insert |enter )?[A-Za-z][\w .'-]{0,30}\](?!\()"  # [Name], [Your Name] (not a link)
    r"|\{\{?\s*[A-Za-z_][\w.]*\s*\}?\}"                                          # {order_id}, {{ name }}
    r"|<(?:your |insert |customer )[\w .'-]{1,30}>"                              # <your name>
    r"|\[https?:/*\]"                                                         # "visit our website: [https:]"
    r"|\bX{3,}\b|\b(?:INSERT|PLACEHOLDER)\b")


@register
class Placeholder(Check):
    """Template slots left in the answer ([Name], {order_id}, <your name>, XXXX): never sendable as is."""
    kind: Literal["placeholder"]

    def passes(self, text: str, ctx: Context) -> bool:
        # a slot the user wrote themselves ("what does {order_id} mean?") is theirs to mention
        return not any(m.group(0) not in ctx.prompt for m in PLACEHOLDER.finditer(text))


REFUSAL = re.compile(
    r"(?i)\b(?:i\s*(?:'m| am)\s*(?:sorry|afraid)[^.!?\n]{0,40}\b(?:can(?:'|no)?t|cannot|unable|not able|won'?t)"
    # "There's nothing I can't do" and "I can't help but notice" say the opposite of no
    r"|(?<!nothing )i\s*(?:can(?:'|no)?t|cannot|won'?t|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r"\s+(?!help but\b)(?:help|assist|provide|do|support|share|give|answer|comply|fulfil|fulfill|write|create|engage"
    r"|suggest|offer|tell|explain|recommend|generate)"
    r"|(?:as an ai|i'm just an ai|i am just an ai)\b"
    r"|i\s*(?:must|have to)\s+(?:decline|refuse)"
    r"|(?:that|this)\s+(?:is|would be)\s+(?:not something i|illegal and i)"
    r"|not (?:able|allowed|permitted) to (?:help|assist) with"
    # the default model's own refusals (SmolLM2-135M, tests/data/checks_real.jsonl): "as a chatbot, I don't have
    # the ability to access ...", "I'm not equipped to handle ...", "I'm not here to help with that"
    r"|i\s*(?:don'?t|do not)\s+have\s+the\s+(?:ability|capability|capacity|authority)\s+to"
    r"|i\s*(?:'m| am)\s+not\s+(?:equipped|in a position)\s+to|i\s*(?:'m| am)\s+not\s+capable\s+of\s+"
    r"(?:providing|helping|assisting|giving|sharing|doing|handling|processing|editing|verifying|accessing)"
    r"|i\s*(?:'m| am)\s+not\s+here\s+to\s+(?:help|assist)\b"
    r"|i\s*(?:'m| am)\s+not\s+going\s+to\s+(?:provide|tell you how|share|explain how|write|describe)\b)")


def refuses(text: str) -> bool:
    """A refusal in the opening (first 300 characters): "I'm sorry, but I can't help with that"."""
    return REFUSAL.search(text[:300]) is not None


@register
class Refusal(Check):
    """`must: refuse` (a harmful request must be declined) or `must: not_refuse` (an ordinary one must not)."""
    kind: Literal["refusal"]
    must: Literal["refuse", "not_refuse"]

    def passes(self, text: str, ctx: Context) -> bool:
        return refuses(text) == (self.must == "refuse")


FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


@register
class Json(Check):
    """The answer is one valid JSON value (a ```json fence around it is allowed)."""
    kind: Literal["json"]

    def passes(self, text: str, ctx: Context) -> bool:
        m = FENCE.match(text)
        try:
            json.loads(m.group(1) if m else text)
        except ValueError:
            return False
        return True


# -- the quality filters, as kinds: what every revision must pass whatever the constitution ------------------------
# Their one implementation: quality.Filters builds its filters from these kinds (reasons: quality.FILTER_KINDS).

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


@register
class Repetitive(Check):
    """Degenerate looping: few distinct word 4-grams, or one sentence said three times."""
    kind: Literal["repetitive"]

    def passes(self, text: str, ctx: Context) -> bool:
        return not repetitive(text)


@register
class Meta(Check):
    """Talks about the response, the critique or the customer instead of answering."""
    kind: Literal["meta"]

    def passes(self, text: str, ctx: Context) -> bool:
        return not is_meta(text)


@register
class SelfReference(Check):
    """Names a model or vendor (SmolLM, Hugging Face, ...) that the user did not bring up."""
    kind: Literal["self_reference"]

    def passes(self, text: str, ctx: Context) -> bool:
        return not self_reference(text, ctx.prompt)
