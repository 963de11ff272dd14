"""Build the chat conversations for each stage. Prompts and model text are data: they go into messages as
plain strings and into templates only as variables; nothing the user or model wrote is ever rendered."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

if TYPE_CHECKING:  # annotations only: the constitution imports checks, whose judge kind renders with this module
    from .constitution import Constitution

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=None)
def _env() -> SandboxedEnvironment:
    # Sandboxed + StrictUndefined: a template typo fails loudly, and templates cannot reach Python internals.
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@lru_cache(maxsize=None)
def _template(name: str):
    return _env().from_string((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"))


def render(name: str, **data) -> str:
    return _template(name).render(**data).strip()


def critique_turn(c: Constitution, pid: str, rnd: int) -> dict:
    return {"role": "user", "content": render("critique", request=c.principle(pid).critique, principle_id=pid, round=rnd)}


def revision_turn(c: Constitution, pid: str, rnd: int, style: str = "free") -> dict:
    return {"role": "user", "content": render("revision", request=c.principle(pid).revision, principle_id=pid,
                                              round=rnd, minimal=style == "minimal")}


def gate_turn(c: Constitution, pid: str) -> dict:
    """The gate's question after a critique (a side request: never part of the row's history)."""
    return {"role": "user", "content": render("gate", request=c.principle(pid).critique.strip(), principle_id=pid)}


def check_critique(found: list[str]) -> str:
    """A critique written from the checks' findings (stages.Critique with critique_from=checks): one line each."""
    return "The response does not do what was asked:\n" + "\n".join(f"- {f.strip()}" for f in found)


def few_shot_turns(c: Constitution, k: int, style: str = "free") -> list[dict]:
    """The first k few-shot examples as whole CAI conversations. Fixed for the run (not per row), so every
    critique/revision request shares this prefix and vLLM's prefix cache computes it once."""
    turns: list[dict] = []
    for ex in c.few_shot[:k]:
        turns += [
            {"role": "user", "content": ex.prompt},
            {"role": "assistant", "content": ex.response},
            critique_turn(c, ex.principle, 1),
            {"role": "assistant", "content": ex.critique},
            revision_turn(c, ex.principle, 1, style),
            {"role": "assistant", "content": ex.revision},
        ]
    return turns


def head(system: str | None, few_shot: list[dict], prompt: str, context: list[dict] = ()) -> list[dict]:
    """System turn (if any), the few-shot prefix, then the user's conversation: the earlier turns of a
    multi-turn prompt (every stage sees the whole context) and the last user turn. The few-shot examples come
    before the user's turns so they stay one shared prefix for the prefix cache."""
    sys = [{"role": "system", "content": system}] if system else []
    return sys + few_shot + list(context) + [{"role": "user", "content": prompt}]
