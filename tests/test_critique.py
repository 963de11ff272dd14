"""Critiques from checks (critique_from=checks) and answers that still answer (quality.dropped_answer), through the
pipeline on the fake engine: the prompt rows carry their own checks, as prompts/instruction_following.yaml does, and
the constitution is the built-in instruction_following (its `prompt` principle owns the rows' checks)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from cai_gen import checks, constitution, pipeline
from cai_gen.backends.fake import REVISION_MARK, FakeBackend
from cai_gen.checks import Check, Context

from .conftest import ONE, make_cfg

# the fake engine's original is "Sure." + 30 words (31), its revision "Thanks for reaching out." + 24 words (28)
LIMIT = 29


class UnderWords(Check):
    """A check that explains itself, as the `instruction` kind does (registered for these tests only)."""
    kind: Literal["under_words"]
    max: int

    def passes(self, text: str, ctx: Context) -> bool:
        return len(text.split()) <= self.max

    def explain(self, text: str, ctx: Context) -> str:
        return f"it has {len(text.split())} words; at most {self.max} were asked"


class Silent(Check):
    """A check with no explanation of its own."""
    kind: Literal["silent_words"]
    max: int

    def passes(self, text: str, ctx: Context) -> bool:
        return len(text.split()) <= self.max


@pytest.fixture
def kinds():
    for k in (UnderWords, Silent):
        checks.register(k)
    yield
    for k in ("under_words", "silent_words"):
        checks.KINDS.pop(k, None)
    checks._adapter.cache_clear()


class Counting(FakeBackend):
    """The fake engine, counting the critique requests it is sent; `revision` replaces its revisions."""

    def __init__(self, *a, revision: str | None = None, **kw):
        super().__init__(*a, **kw)
        self.critiques, self.revision = 0, revision

    def _text(self, conv, p):
        last = conv[-1]["content"]
        if not p.choices and REVISION_MARK not in last and any(m["role"] == "assistant" for m in conv):
            self.critiques += 1
        if self.revision is not None and REVISION_MARK in last:
            return self.revision
        return super()._text(conv, p)


def prompts(tmp_path: Path, kind: str = "under_words", n: int = 3) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Explain how tides work, in under {LIMIT} words ({i}).",
                                     "checks": [{"id": "short", "kind": kind, "max": LIMIT}]}) + "\n"
                         for i in range(n)))
    return f


def run(tmp_path: Path, *overrides: str, kind: str = "under_words", revision: str | None = None):
    cfg = make_cfg("backend=fake", ONE, "constitution=instruction_following", f"prompts.path={prompts(tmp_path, kind)}",
                   "samples=1", *overrides)
    be = Counting("fake", cfg.model.name, max_model_len=2048, revision=revision)
    s = pipeline.run(cfg, tmp_path / "out", backend=be)
    rows = [json.loads(x) for x in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    return s, be, rows


def test_the_new_constitution_critiques_from_checks_and_the_others_from_the_model():
    assert constitution.load("instruction_following").critique_from == "checks"
    assert {constitution.load(n).critique_from for n in constitution.available() if n != "instruction_following"} \
        == {"model"}


def test_a_failing_check_writes_the_critique_and_no_critique_request_is_made(tmp_path, kinds):
    s, be, rows = run(tmp_path / "c")
    assert be.critiques == 0 and s["kept"] == len(rows) == 3
    found = "The response does not do what was asked:\n- it has 31 words; at most 29 were asked"
    assert all(r["critiques"] == [found] and r["principle_ids"] == ["prompt"] and r["verified"] for r in rows)
    # the revision request saw the findings as the critique, after the critique request turn
    trace = [json.loads(x) for x in (tmp_path / "c" / "out" / "trace.jsonl").read_text().splitlines()]
    for t in trace:
        crit = [e for e in t["stages"] if e["stage"] == "critique"]
        assert crit == [{"stage": "critique", "round": 1, "by": "checks", "output": found}]
        rev = next(e for e in t["stages"] if e["stage"] == "revise")
        assert rev["input"][-2] == {"role": "assistant", "content": found}
        assert rev["input"][-3]["content"].startswith("Identify every instruction in the user's message")

    # the run knob puts the model back: one critique request per row, the model's text as the critique
    s, be, rows = run(tmp_path / "m", "principles.critique_from=model")
    assert be.critiques == 3 and s["kept"] == 3
    assert all(r["critiques"][0].startswith("The response is vague about") for r in rows)


def test_a_check_that_cannot_explain_itself_leaves_the_critique_to_the_model(tmp_path, kinds):
    s, be, rows = run(tmp_path, kind="silent_words")
    assert be.critiques == 3 and s["kept"] == 3
    assert all(r["critiques"][0].startswith("The response is vague about") for r in rows)


def test_a_revision_that_drops_the_answer_is_refused_and_never_verified(tmp_path, kinds):
    # "Happy to help!" passes the length check the original failed: before issue 32 it was kept as a verified pair
    s, _, rows = run(tmp_path, revision="Happy to help!")
    assert rows == [] and s["kept"] == 0 and s["reasons"] == {"contentless_revision": 3}
    rej = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rej} == {"contentless_revision"} and all(r["revision"] == "Happy to help!" for r in rej)


@pytest.mark.skipif("instruction" not in checks.kinds(), reason="the `instruction` check kind comes with issue 32 item 1")
def test_the_builtin_instruction_following_run_asks_the_model_for_no_critique(tmp_path):
    cfg = make_cfg("backend=fake", ONE, "constitution=instruction_following", "prompts=instruction_following",
                   "limit=12", "samples=1")
    be = Counting("fake", cfg.model.name, max_model_len=2048)
    s = pipeline.run(cfg, tmp_path, backend=be)
    trace = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    crit = [e for t in trace for e in t["stages"] if e["stage"] == "critique"]
    assert s["rows"] == 12 and crit and be.critiques == 0
    assert all(e["by"] == "checks" and e["output"].startswith("The response does not do what was asked:\n- ")
               for e in crit)
