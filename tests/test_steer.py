"""Checks steer each row (fake backend, scripted texts): targeted choice, the checked gate, still_violates /
new_violation, best-of-N, prompt-row checks, KTO labels from checks, and a re-filter that adds a check."""
import json
from collections import defaultdict
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends import Params
from cai_gen.backends.fake import REVISION_MARK, FakeBackend
from cai_gen.errors import UserError

from .conftest import make_cfg

CONST = """name: t
version: 1
principles:
  - id: no_guarantee
    critique: Find guarantees.
    revision: Rewrite without guarantees.
    checks: [{id: guarantee, kind: regex, pattern: "guarantee"}]
  - id: short
    critique: Is it too long?
    revision: Make it short.
    checks: [{id: max_words, kind: length, max: 30}]
  - id: tone
    critique: Is it rude?
    revision: Make it kind.
"""


class Scripted(FakeBackend):
    """Originals say what the prompt asks them to; the k-th revision request on one conversation (best-of-N
    sample k, submitted in index order) answers revisions[k]."""

    def __init__(self, revisions: list[str], **kw):
        super().__init__("fake", "m", max_model_len=4096, **kw)
        self.revisions, self.seen, self.sent = revisions, defaultdict(int), []

    def _text(self, conv, p: Params) -> str:
        last = conv[-1]["content"]
        if REVISION_MARK in last and not p.choices:
            k = self.seen[repr(conv)]
            self.seen[repr(conv)] += 1
            return self.revisions[min(k, len(self.revisions) - 1)]
        if len(conv) == 1 or (conv[-1]["role"] == "user" and not any(m["role"] == "assistant" for m in conv)):
            return conv[-1]["content"].split("SAY:", 1)[-1].strip()  # the original: what the prompt scripts
        return super()._text(conv, p)

    def submit(self, convs, params):
        self.sent += [(c[-1]["content"], p) for c, p in zip(convs, params)]
        return super().submit(convs, params)


def setup(tmp_path: Path, prompts: list[dict], const: str = CONST) -> tuple[str, str]:
    c, p = tmp_path / "c.yaml", tmp_path / "p.jsonl"
    c.write_text(const)
    p.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    return f"constitution.path={c}", f"prompts.path={p}"


def run(tmp_path, prompts, revisions, *over, const=CONST, out="run", gate="yes"):
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", *setup(tmp_path, prompts, const),
                   *over)
    be = Scripted(revisions, gate=gate)
    s = pipeline.run(cfg, tmp_path / out, backend=be)
    return be, s, tmp_path / out


def jl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


GUARANTEED = "SAY: I guarantee your refund will arrive today, no question about it at all."
FINE = "Your refund is on its way and should reach your card within a week."


def test_targeted_choice_picks_the_failing_principle_and_its_checks_gate_it(tmp_path):
    be, s, out = run(tmp_path, [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(6)], [FINE])
    prefs = jl(out / "preferences.jsonl")
    assert len(prefs) == 6 and all(p["principle_ids"] == ["no_guarantee"] for p in prefs)
    # the gate of a checked principle is its checks: no model YES/NO request went out
    assert not [p for _, p in be.sent if p.choices]
    assert all(p["gate"][0]["by"] == "checks" and p["gate"][0]["answer"] == "YES" for p in prefs)
    g = [c for c in prefs[0]["checks"] if c["id"] == "guarantee"][0]
    assert g == {"id": "guarantee", "principle": "no_guarantee", "kind": "regex", "original": False, "revision": True}
    assert all(p["verified"] for p in prefs)


def test_a_gate_decided_by_checks_is_not_reported_as_the_models(tmp_path):
    """Regression: the card and the terminal counted the checks' gates as the model's, so a red-team run whose
    every gate was its refusal check warned "the gate said YES to 100% of answers: on this model it barely
    filters" and "the model was asked ..." though no model gate request went out."""
    _, s, out = run(tmp_path, [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(12)], [FINE])
    g = s["report"]["gate"]
    assert g["yes"] + g["no"] == 0 and g["warning"] is None
    assert g["by_checks"] == {"no_guarantee": {"YES": 12, "NO": 0}}
    card = (out / "README.md").read_text()
    gate = card.split("## Gate", 1)[1].split("\n## ", 1)[0]
    assert "gated by them" in gate and "no_guarantee" in gate
    assert "barely filters" not in card and "the model was asked" not in gate


def test_sample_mode_draws_before_the_answer_is_seen(tmp_path):
    _, _, out = run(tmp_path, [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(12)], [FINE],
                    "principles.choose=sample", "gate.enabled=false")
    drawn = {p["principle_ids"][0] for p in jl(out / "preferences.jsonl")}
    assert drawn != {"no_guarantee"}  # with 12 rows and 3 principles, sample mode also draws the others


def test_an_answer_that_passes_every_check_goes_to_the_unchecked_principles(tmp_path):
    be, _, out = run(tmp_path, [{"id": "a", "prompt": "SAY: " + FINE}], [FINE + " Sorry for the wait."])
    p = jl(out / "preferences.jsonl")[0]
    assert p["principle_ids"] == ["tone"] and p["gate"][0].get("by") is None  # the model's gate asked
    assert [q for _, q in be.sent if q.choices] and not p["verified"]


def test_all_checked_and_all_passing_ends_no_violation(tmp_path):
    const = CONST.split("  - id: tone")[0]
    be, s, out = run(tmp_path, [{"id": "a", "prompt": "SAY: " + FINE}], [FINE], const=const)
    assert s["kept"] == 0 and s["no_violation"] == 1 and len(be.sent) == 1  # only the original was generated
    kto = jl(out / "kto.jsonl")
    assert [k["label"] for k in kto] == [True] and len(jl(out / "sft.jsonl")) == 1


def test_a_revision_that_still_violates_or_breaks_another_check_is_refused(tmp_path):
    _, s, out = run(tmp_path, [{"id": "a", "prompt": GUARANTEED}], ["I still guarantee it, you will have it today."])
    assert s["kept"] == 0 and jl(out / "rejected.jsonl")[0]["reason"] == "still_violates"
    long = ("Your refund is on its way. It should reach your card within a week, depending on your bank. You can "
            "follow every step on your order page, where each update appears as soon as we have it. If nothing "
            "has arrived by next Friday, reply here and we will look into it with the payment team for you.")
    _, s, out = run(tmp_path, [{"id": "a", "prompt": GUARANTEED}], [long], out="run2")
    assert s["kept"] == 0 and jl(out / "rejected.jsonl")[0]["reason"] == "new_violation"


def test_best_of_n_takes_the_first_passing_sample_and_resume_reuses_all_n(tmp_path):
    revs = ["I guarantee it.", "We guarantee a refund today for sure.", FINE, FINE + " Thanks!"]
    prompts = [{"id": "a", "prompt": GUARANTEED}]
    be, s, out = run(tmp_path, prompts, revs, "sampling.revise_n=4")
    p = jl(out / "preferences.jsonl")[0]
    assert s["kept"] == 1 and p["chosen"][0]["content"] == FINE  # sample 2, the first that passes
    revise = [q for t, q in be.sent if REVISION_MARK in t]
    # one at a time (sampling.revise_wave=1), each its own seed: sample 3 comes after the pick, never asked
    assert len(revise) == 3 and len({q.seed for q in revise}) == 3
    be1, s1, out1 = run(tmp_path, prompts, revs, "sampling.revise_n=4", "sampling.revise_wave=null", out="all")
    assert len([q for t, q in be1.sent if REVISION_MARK in t]) == 4  # all N at once
    assert jl(out1 / "preferences.jsonl")[0]["chosen"] == p["chosen"]
    trace = jl(out / "trace.jsonl")[0]["stages"]
    assert [e["samples"] for e in trace if "samples" in e] == [["still_violates", "still_violates", None]]
    assert [e["picked"] for e in trace if "samples" in e] == [2]
    be2, s2, _ = run(tmp_path, prompts, revs, "sampling.revise_n=4")  # same dir: everything from the ledger
    assert be2.sent == [] and s2["kept"] == 1
    # N = 1's request is sample 0 of N = 4: a run dir moving to best-of-N reuses it
    be3, s3, _ = run(tmp_path, prompts, revs, "sampling.revise_n=1", "restart=true")
    assert be3.sent == [] and s3["kept"] == 0


def test_prompt_row_checks_apply_to_its_answers(tmp_path):
    prompts = [{"id": "a", "prompt": GUARANTEED, "checks": [{"id": "ends_q", "kind": "regex", "pattern": r"\?$",
                                                              "must": "match"}]}]
    _, s, out = run(tmp_path, prompts, [FINE])  # the original fails ends_q too; the revision may, it was failing
    p = jl(out / "preferences.jsonl")[0]
    mine = [c for c in p["checks"] if c["id"] == "ends_q"][0]
    assert mine["principle"] == "prompt" and mine["original"] is False and mine["revision"] is False
    # the chosen answer still fails a check: not desirable for KTO, no SFT row
    assert [k["label"] for k in jl(out / "kto.jsonl")] == [False, False] and jl(out / "sft.jsonl") == []


def test_bad_prompt_row_checks_and_when_fields_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"p.jsonl:1: checks\[0\] \(id=x\).*pattern"):
        run(tmp_path, [{"id": "a", "prompt": "hi", "checks": [{"id": "x", "kind": "regex"}]}], [FINE])
    const = CONST.replace('pattern: "guarantee"}', 'pattern: "guarantee", when: {kind: harmful}}')
    with pytest.raises(UserError) as e:
        run(tmp_path, [{"id": "a", "prompt": "hi"}], [FINE], const=const, out="r2")
    assert str(e.value).startswith(f"{tmp_path / 'c.yaml'}:7: check 'guarantee': when: no prompt has a field 'kind'")


def test_a_refilter_adding_a_deterministic_check_starts_no_engine(tmp_path):
    from cai_gen.backends import Lazy

    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(4)]
    # every best-of-N sample generated (revise_wave=null): the re-filter finds all of them in the ledger
    _, s, out = run(tmp_path, prompts, [FINE], "sampling.revise_wave=null")
    assert s["kept"] == 4
    # the revisions say "week": a new check on the guarantee principle refuses them, from the ledger alone
    const = CONST.replace('checks: [{id: guarantee, kind: regex, pattern: "guarantee"}]',
                          'checks: [{id: guarantee, kind: regex, pattern: "guarantee"}, '
                          '{id: no_week, kind: phrases, forbidden: [week]}]')
    over = ("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", *setup(tmp_path, prompts, const))
    opened = []
    lazy = Lazy("m", True, lambda: opened.append(1) or Scripted([FINE]))
    s2 = pipeline.run(make_cfg(*over, "sampling.revise_wave=null"), out, backend=lazy)  # a re-filter, no restart
    assert not opened and s2["kept"] == 0 and s2["reasons"] == {"still_violates": 4}


def test_a_refilter_refusing_a_revision_asks_only_for_the_next_samples(tmp_path):
    """With best-of-N one sample at a time (the default), the samples after the pick were never generated: a
    re-filter that refuses the pick asks for them, and for nothing else (no answer, critique or gate again)."""
    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(4)]
    _, s, out = run(tmp_path, prompts, [FINE])
    assert s["kept"] == 4
    const = CONST.replace('checks: [{id: guarantee, kind: regex, pattern: "guarantee"}]',
                          'checks: [{id: guarantee, kind: regex, pattern: "guarantee"}, '
                          '{id: no_week, kind: phrases, forbidden: [week]}]')
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", *setup(tmp_path, prompts, const))
    be = Scripted([FINE])
    s2 = pipeline.run(cfg, out, backend=be)
    assert s2["kept"] == 0 and s2["reasons"] == {"still_violates": 4}
    assert be.sent and all(REVISION_MARK in t for t, _ in be.sent) and len(be.sent) == 4 * 3  # samples 1-3 of each


def test_the_card_and_summary_count_each_check(tmp_path):
    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(3)]
    prompts += [{"id": "b", "prompt": GUARANTEED + " Please hurry."}]
    _, s, out = run(tmp_path, prompts, [FINE])
    c = s["report"]["checks"]
    g = c["checks"]["guarantee"]
    assert (g["principle"], g["rows"], g["original_fail"], g["fixed"], g["kept_still_fail"]) == \
        ("no_guarantee", 4, 4, 4, 0)
    assert c["verified"] == 4 and c["verified_share"] == 1.0
    card = (out / "README.md").read_text()
    assert "## Checks" in card and "| guarantee | no_guarantee | regex | 4 | 4 | 4 | 0 |" in card


def test_kto_and_sft_rows_follow_the_gate_and_the_checks(tmp_path):
    """The KTO/SFT relation the real-engine e2e test asserts (run_files.check_training_rows), on a run where it is
    not 2 rows per pair: the gate says NO to some rows (no-violation: one KTO row, SFT row), a prompt-row check
    fails on some revisions (KTO False, no SFT row) and some pairs are clean."""
    from .run_files import check_training_rows

    ends_q = [{"id": "ends_q", "kind": "regex", "pattern": r"\?$", "must": "match"}]
    prompts = ([{"id": f"g{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(3)]
               + [{"id": f"q{i}", "prompt": f"{GUARANTEED} Item {i}.", "checks": ends_q} for i in range(2)]
               + [{"id": f"n{i}", "prompt": f"SAY: Your parcel {i} left the depot this morning."} for i in range(6)])
    _, s, out = run(tmp_path, prompts, [FINE], gate="mixed")
    nv, kto = jl(out / "no_violation.jsonl"), jl(out / "kto.jsonl")
    assert nv and s["kept"] >= 5 and len(kto) == 2 * s["kept"] + len(nv)
    assert sum(not k["label"] for k in kto) > s["kept"]  # a failed check made a revision undesirable too
    check_training_rows(out)
