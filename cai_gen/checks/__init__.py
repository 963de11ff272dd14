"""One registry of text checks: "does this answer violate the principle?", asked outside the policy model.

A check is a small pydantic class with its arguments and one `passes(text, ctx)` (IFEval's instruction
registry is the model). `@register` adds a kind; a constitution's `checks:` entries and a prompt row's own
`checks` are parsed through the union of every registered kind, so an unknown kind or argument is a validation
error naming the entry. Kinds that need no model run inline; `judge` checks are forced YES/NO requests to the
engine (stages.Inspect asks them), `classifier` checks load an HF sequence-classification model in-process.

The quality filters are kinds here too (repetitive, meta, self_reference): one way to say "this text is bad".

Every text check reads the answer and the prompt normalised (`normal`: NFKC, curly quotes straight), once, in
`register`: "I’m sorry, but I can’t help" is the refusal "I'm sorry, but I can't help" to every kind's patterns.
"""
from __future__ import annotations

import difflib
import functools
import unicodedata
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Annotated, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

KINDS: dict[str, type["Check"]] = {}


@dataclass(frozen=True)
class Context:
    """What a check may look at besides the answer: what the user said, and the prompt row's fields."""
    prompt: str = ""                                 # every user turn's text
    fields: dict[str, str] = field(default_factory=dict)  # domain, kind, ... (what `when:` matches)
    system: str = ""                                 # the system prompt: contact data it gives is given, too

    @classmethod
    def of(cls, rec) -> "Context":
        """A prompt record's context: its turns' text, its fields and its system prompt."""
        return cls(rec.text(), rec.fields(), rec.system or "")


# Typographic forms a model writes for the ASCII ones every pattern here is written with (NFKC keeps them)
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})


@lru_cache(maxsize=4096)
def normal(text: str) -> str:
    """The form every text check reads: NFKC (full-width letters, no-break spaces, ligatures) and straight quotes.
    Cached: each answer is normalised once however many checks read it."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    kind: str
    # limit the check to prompts whose fields match: {kind: harmful} or {domain: [billing, refunds]}
    when: dict[str, Union[str, list[str]]] = {}
    needs_engine: ClassVar[bool] = False  # judge: a request to the engine, not an inline call
    plain: ClassVar[bool] = True          # reads normalised text (`normal`); a model reads the text as written

    def applies(self, ctx: Context) -> bool:
        for k, want in self.when.items():
            have = ctx.fields.get(k)
            if have is None or have not in ([want] if isinstance(want, str) else want):
                return False
        return True

    def passes(self, text: str, ctx: Context) -> bool:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: the kind named by the class's `kind` Literal becomes parseable, and its `passes` reads the
    answer and the context normalised (a kind cannot forget to: it is done here, for every kind)."""
    kind = cls.model_fields["kind"].annotation.__args__[0]
    own = cls.__dict__.get("passes")
    if own is not None and cls.plain:
        @functools.wraps(own)
        def passes(self, text: str, ctx: Context) -> bool:
            return own(self, normal(text), replace(ctx, prompt=normal(ctx.prompt), system=normal(ctx.system)))
        cls.passes = passes
    KINDS[kind] = cls
    _adapter.cache_clear()
    return cls


def _load_kinds() -> None:
    from . import instruction, model, text  # noqa: F401  (their @register calls fill KINDS)


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter:
    _load_kinds()
    union = Union[tuple(KINDS.values())]  # type: ignore[valid-type]
    return TypeAdapter(list[Annotated[union, Field(discriminator="kind")]])


def parse(specs) -> list[Check]:
    """Check objects from YAML/JSON data; raises pydantic.ValidationError (callers name the file and entry)."""
    return _adapter().validate_python(specs)


def annotation():
    """The type of one check entry (every registered kind, told apart by `kind`), for pydantic models."""
    _load_kinds()
    return Annotated[Union[tuple(KINDS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]


def kinds() -> dict[str, type[Check]]:
    _adapter()
    return dict(KINDS)


def applicable(const, rec) -> list[tuple[str, Check]]:
    """The checks that apply to a prompt record: every principle's checks whose `when:` matches, then the row's
    own ("prompt"), as (principle id, check)."""
    ctx = Context.of(rec)
    out = [(p.id, c) for p in const.principles for c in p.checks if c.applies(ctx)]
    return out + [("prompt", c) for c in rec.checks if c.applies(ctx)]


def prime(pairs) -> None:
    """Batch the model-run checks of many answers before each is checked alone: (check, text) pairs; every
    check with a `prime` (classifier) scores all its texts in one call. Deterministic checks need nothing."""
    by: dict = {}
    for c, t in pairs:
        if hasattr(c, "prime"):
            by.setdefault(id(c), (c, []))[1].append(t)  # by object: a check's `when` dict makes it unhashable
    for c, texts in by.values():
        c.prime(texts)


# -- what a row's checks said: pass/fail per answer, and what that makes each answer ------------------------------

def outcome(results: list[dict], answer: str) -> bool:
    """Did every check pass on `answer` ("original" or "revision")? A check not run on it counts as passed."""
    return all(r.get(answer) is not False for r in results)


def desirable(row: dict, answer: str) -> bool:
    """A written row's answer is desirable (KTO True, an SFT row) unless one of its checks failed on it."""
    return outcome(row.get("checks") or [], answer)


def _some(values: set[str], n: int = 8) -> str:
    v = sorted(values)
    return ", ".join(v[:n]) + (f", ... ({len(v)} in all)" if len(v) > n else "")


def preflight(const, recs) -> list[str]:
    """Before any generation: every `when:` field is one some prompt has, every classifier model exists, and no
    prompt row's own check takes the id of a constitution's check (a row's results are keyed by check id: the
    row's check would replace the principle's). A mistake is one line naming the file:line and the check id.
    Returns notices, one line each: a `when:` value no prompt has (the check applies to none of them)."""
    import os

    from ..errors import UserError
    from ..models import check as check_model

    have: dict[str, set[str]] = {}
    for r in recs:
        for k, v in r.fields().items():
            have.setdefault(k, set()).add(v)
    mine = {c.id: p.id for p in const.principles for c in p.checks}
    for r in recs:
        for c in r.checks:
            if c.id in mine:
                where = getattr(r, "where", "") or f"prompt {r.id!r}"
                raise UserError(f"{where}: checks: id {c.id!r} is the id of principle {mine[c.id]!r}'s check "
                                f"({const.where(c.id)}); give the row's check another id (a row's results are "
                                "keyed by check id)")
    notes = []
    for p in const.principles:
        for c in p.checks:
            for k, want in c.when.items():
                if k not in have:
                    fix = (f"; set prompts.kind={want if isinstance(want, str) else want[0]} for prompts all of "
                           "one kind, or give each row a `kind`" if k == "kind" else "")
                    raise UserError(f"{const.where(c.id)}: check {c.id!r}: when: no prompt has a field {k!r} "
                                    f"(the prompts have: {', '.join(sorted(have)) or 'none'}){fix}")
                for v in [want] if isinstance(want, str) else want:
                    if v not in have[k]:
                        close = difflib.get_close_matches(v, sorted(have[k]), n=1, cutoff=0.75)
                        notes.append(f"{const.where(c.id)}: check {c.id!r}: when: no prompt has {k}: {v!r}"
                                     f"{f' (did you mean {close[0]!r}?)' if close else ''} (the prompts have "
                                     f"{k}: {_some(have[k])})")
            if c.kind == "classifier":
                local = c.model.startswith((".", "/", "~")) or os.path.exists(c.model)
                try:
                    check_model("path" if local else "hub", c.model, "model")
                except UserError as e:
                    raise UserError(f"{const.where(c.id)}: check {c.id!r}: classifier {str(e)}") from None
    return notes
