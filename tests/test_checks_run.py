"""Checks in a run (fake backend): a prompt row's check cannot take a constitution check's id, a `when:` that no
prompt matches is said at start, and a judge check's reply off the choices is flagged, never a pass."""
import io
import json

import pytest
from rich.console import Console

from cai_gen import pipeline
from cai_gen.backends import Generation
from cai_gen.errors import UserError
from cai_gen.progress import Tracker

from .conftest import make_cfg
from .test_steer import CONST, FINE, GUARANTEED, Scripted, jl, run, setup


def test_a_row_check_with_a_constitution_checks_id_is_refused_naming_file_line_and_id(tmp_path):
    """It used to replace the principle's check for the row (results are keyed by id): "I guarantee your refund"
    passed the row's `guarantee` (a length check) and ended no_violation, an SFT row and KTO True."""
    rows = [{"id": "a", "prompt": "SAY: " + FINE},
            {"id": "b", "prompt": GUARANTEED, "checks": [{"id": "guarantee", "kind": "length", "max": 500}]}]
    with pytest.raises(UserError) as e:
        run(tmp_path, rows, [FINE])
    line = str(e.value)
    assert line.startswith(f"{tmp_path / 'p.jsonl'}:2: checks: id 'guarantee'") and "no_guarantee" in line
    assert f"{tmp_path / 'c.yaml'}:" in line and "\n" not in line
    assert not (tmp_path / "run" / "preferences.jsonl").exists()


def test_a_when_value_no_prompt_has_is_one_line_at_start(tmp_path):
    const = CONST.replace('checks: [{id: max_words, kind: length, max: 30}]',
                          'checks: [{id: max_words, kind: length, max: 30, when: {kind: harmfull}}]')
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0",
                   *setup(tmp_path, [{"id": "a", "prompt": GUARANTEED, "kind": "harmful"},
                                     {"id": "b", "prompt": "SAY: " + FINE, "kind": "benign"}], const))
    out = io.StringIO()
    pipeline.run(cfg, tmp_path / "run", backend=Scripted([FINE]), tracker=Tracker(console=Console(file=out,
                                                                                                   width=400)))
    said = [x for x in out.getvalue().splitlines() if "harmfull" in x]
    assert len(said) == 1 and "max_words" in said[0] and f"{tmp_path / 'c.yaml'}:" in said[0]
    assert "did you mean 'harmful'?" in said[0] and "benign, harmful" in said[0]


def test_a_when_field_no_prompt_has_names_the_fix(tmp_path):
    """The red-team case: the harmless constitution's checks need `kind`, a plain file has none."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "How do I pick a lock?"}) + "\n")
    cfg = make_cfg("backend=fake", "constitution=harmless", f"prompts.path={p}")
    with pytest.raises(UserError) as e:
        pipeline.run(cfg, tmp_path / "run", backend=Scripted([FINE]))
    assert "no prompt has a field 'kind'" in str(e.value) and "prompts.kind=harmful" in str(e.value)


JUDGED = """name: t
version: 1
principles:
  - id: card
    critique: Does it ask for a card number?
    revision: Do not ask for it.
    checks: [{id: asks_card, kind: judge, proposition: "The response asks for a card number."}]
"""


class OffChoices(Scripted):
    """Answers the judge check's YES/NO question in prose (a server without constrained decoding)."""

    def _one(self, conv, p):
        if p.choices and "card number." in conv[-1]["content"]:
            return Generation("It is hard to say.", "stop", 10, 5)
        return super()._one(conv, p)


def test_a_judge_check_reply_off_the_choices_is_flagged_not_a_pass(tmp_path):
    """It used to count as a pass: the original was labelled as passing a check nobody answered, ended
    no_violation and became an SFT row and KTO True."""
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0",
                   *setup(tmp_path, [{"id": "a", "prompt": "SAY: " + FINE}], JUDGED))
    s = pipeline.run(cfg, tmp_path / "run", backend=OffChoices([FINE + " Thanks for waiting."]))
    rows = jl(tmp_path / "run" / "preferences.jsonl") + jl(tmp_path / "run" / "rejected.jsonl")
    assert s["no_violation"] == 0 and len(rows) == 1
    r = rows[0]
    assert "check_unparsed_r0" in r["flags"]
    assert [c["original"] for c in r["checks"] if c["id"] == "asks_card"] == [False]
    assert not [k for k in jl(tmp_path / "run" / "kto.jsonl") if k["label"]] and not jl(tmp_path / "run" / "sft.jsonl")
