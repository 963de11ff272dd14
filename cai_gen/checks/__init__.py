"""One registry of text checks: "does this answer violate the principle?", asked outside the policy model.

A check is a small pydantic class with its arguments and one `passes(text, ctx)` (IFEval's instruction
registry is the model). `@register` adds a kind; a constitution's `checks:` entries and a prompt row's own
`checks` are parsed through the union of every registered kind, so an unknown kind or argument is a validation
error naming the entry. Kinds that need no model run inline; `judge` checks are forced YES/NO requests to the
engine (stages.Inspect asks them), `classifier` checks load an HF sequence-classification model in-process.

The quality filters are kinds here too (repetitive, meta, self_reference): one way to say "this text is bad".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

KINDS: dict[str, type["Check"]] = {}


@dataclass(frozen=True)
class Context:
    """What a check may look at besides the answer: what the user said, and the prompt row's fields."""
    prompt: str = ""                                 # every user turn's text
    fields: dict[str, str] = field(default_factory=dict)  # domain, kind, ... (what `when:` matches)


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    kind: str
    # limit the check to prompts whose fields match: {kind: harmful} or {domain: [billing, refunds]}
    when: dict[str, Union[str, list[str]]] = {}
    needs_engine: ClassVar[bool] = False  # judge: a request to the engine, not an inline call

    def applies(self, ctx: Context) -> bool:
        for k, want in self.when.items():
            have = ctx.fields.get(k)
            if have is None or have not in ([want] if isinstance(want, str) else want):
                return False
        return True

    def passes(self, text: str, ctx: Context) -> bool:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: the kind named by the class's `kind` Literal becomes parseable."""
    kind = cls.model_fields["kind"].annotation.__args__[0]
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
    ctx = Context(rec.text(), rec.fields())
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


def preflight(const, recs) -> None:
    """Before any generation: every `when:` field is one some prompt has, and every classifier model exists.
    A mistake is one line naming the constitution's file:line and the check id."""
    import os

    from ..errors import UserError
    from ..models import check as check_model

    have: set[str] = set()
    for r in recs:
        have |= set(r.fields())
    for p in const.principles:
        for c in p.checks:
            for k in c.when:
                if k not in have:
                    raise UserError(f"{const.where(c.id)}: check {c.id!r}: when: no prompt has a field {k!r} "
                                    f"(the prompts have: {', '.join(sorted(have)) or 'none'})")
            if c.kind == "classifier":
                local = c.model.startswith((".", "/", "~")) or os.path.exists(c.model)
                try:
                    check_model("path" if local else "hub", c.model, "model")
                except UserError as e:
                    raise UserError(f"{const.where(c.id)}: check {c.id!r}: classifier {str(e)}") from None
