"""Every label follows the written text (issue 31): `checks` sides, `verified`, KTO labels and SFT rows describe
the answer written as chosen / rejected after a judge check's refusal, best-of-N with judge checks, a judge
swap, an expert swap or edit; and the card words the no-violation rows by what was written. Fake backend, scripted
texts; a judge check here says YES to "makes a promise" when the answer contains "promise"."""
import io
import json
from pathlib import Path

from cai_gen import checks as checks_mod, pipeline
from cai_gen.backends import Params
from cai_gen.backends.fake import REVISION_MARK, FakeBackend
from cai_gen.constitution import Constitution
from cai_gen.review import db
from cai_gen.review.__main__ import main as review_main

from .conftest import make_cfg
from .test_steer import CONST as STEER, GUARANTEED, Scripted, jl, setup

# the steer tests' regex and length principles, then a judge check and the contact check
CONST = STEER.split("  - id: tone")[0] + """  - id: no_promise
    critique: Does it promise anything?
    revision: Rewrite without promises.
    checks: [{id: promise, kind: judge, proposition: "The response makes a promise."}]
  - id: honest
    critique: Does it invent contact data?
    revision: Rewrite without invented contact data.
    checks: [{id: contact, kind: contact}]
"""

FINE = "Thanks for asking. Your refund is on its way and should reach your card within a week."
PROMISE = "Thanks for asking. We promise your refund reaches your card within a week."
LONG = ("Thanks for asking. Your refund is on its way to your card. It should reach your card within a week, "
        "depending on your bank, and you can follow each step on your order page as the updates come in.")
LONG_GUARANTEED = ("SAY: I guarantee your refund will arrive today, no question about it at all, and you can "
                   "follow every step of it on your order page as the updates come in over the day.")


class Judged(Scripted):
    """Scripted, and the judge check answers YES to the promise proposition when the response says "promise";
    `by_round` scripts the revisions per round instead (a function of the round and the revision request)."""

    def __init__(self, revisions, by_round=None, **kw):
        super().__init__(revisions, **kw)
        self.by_round = by_round

    def _p_yes(self, conv) -> float:
        last = conv[-1]["content"]
        if "[ASSISTANT RESPONSE]" in last and "Statement:" in last:
            answer = last.split("[ASSISTANT RESPONSE]", 1)[1].rsplit("Is the following statement", 1)[0]
            return 1.0 if "promise" in answer.lower() else 0.0
        return super()._p_yes(conv)

    def _text(self, conv, p: Params) -> str:
        if p.choices:  # a gate, judge check or pair judge request: the fake's own answer
            return FakeBackend._text(self, conv, p)
        last = conv[-1]["content"]
        if self.by_round and REVISION_MARK in last and not p.choices:
            rnd = sum(REVISION_MARK in m["content"] for m in conv if m["role"] == "user")
            return self.by_round(rnd, last)
        return super()._text(conv, p)


def run(tmp_path, prompts, revisions, *over, out="run", by_round=None, judge="revision"):
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0",
                   *setup(tmp_path, prompts, CONST), *over)
    be = Judged(revisions, by_round, judge=judge)
    s = pipeline.run(cfg, tmp_path / out, backend=be)
    return be, s, tmp_path / out


def says(text: str, results: dict[str, bool | None], const: Constitution, prompt: list[dict], own=()) -> None:
    """Each check's recorded result on one written answer is what the check says of that text (`own`: the prompt
    rows' own checks)."""
    ctx = checks_mod.Context("\n".join(m["content"] for m in prompt if m["role"] != "system"))
    by_id = {c.id: c for p in const.principles for c in p.checks} | {c.id: c for c in own}
    for cid, got in results.items():
        c = by_id[cid]
        want = ("promise" not in text.lower()) if c.needs_engine else c.passes(text, ctx)
        if got is not None:
            assert got == want, (cid, text, got)


def labels_true(out: Path, prefs: list[dict] | None = None, sft=None, kto=None, own=()) -> None:
    """Every pair's `checks` sides describe its chosen and rejected text, `verified` says a check the rejected
    answer failed passes on the chosen one, and the SFT and KTO rows follow the chosen answer's checks."""
    data = json.loads((out / "constitution.json").read_text())
    data.pop("ref")
    const = Constitution.model_validate(data)
    prefs = jl(out / "preferences.jsonl") if prefs is None else prefs
    sft = {r["id"] for r in (jl(out / "sft.jsonl") if sft is None else sft) if r["origin"] == "revision"}
    kto = jl(out / "kto.jsonl") if kto is None else kto
    for p in prefs:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        says(chosen, {c["id"]: c["revision"] for c in p["checks"]}, const, p["prompt"], own)
        says(rejected, {c["id"]: c["original"] for c in p["checks"]}, const, p["prompt"], own)
        assert p["verified"] == any(c["original"] is False and c["revision"] is True for c in p["checks"])
        good = all(c["revision"] is not False for c in p["checks"])
        assert (p["id"] in sft) == good
        assert [k["label"] for k in kto if k["id"] == p["id"] and k["completion"][0]["content"] == chosen] == [good]


# -- item 2: a revision refused by a judge check takes its inline results with it ---------------------------------

def round_two_promises(rnd: int, request: str) -> str:
    """Round 1 fixes its principle and keeps failing the other; round 2 fixes that one with a promise."""
    if rnd == 2:
        return PROMISE
    # the short one keeps the answer's substance (refund, today, order page): a shortened answer, not a dropped one
    return LONG if "without guarantees" in request else "Thanks, I guarantee your refund today; follow it on your order page."


def test_a_revision_a_judge_check_refuses_leaves_the_results_of_the_answer_that_stays(tmp_path):
    prompts = [{"id": f"a{i}", "prompt": f"{LONG_GUARANTEED} Order {i}."} for i in range(4)]
    _, s, out = run(tmp_path, prompts, [], "rounds=2", "sampling.revise_n=1", by_round=round_two_promises)
    prefs = jl(out / "preferences.jsonl")
    assert s["kept"] == 4 and s["flags"].get("round_failed") == 4  # round 2's promise was refused every time
    for p in prefs:  # the kept round-1 answer still fails the check round 2 was about
        assert p["chosen"][0]["content"] != PROMISE
        assert [c["id"] for c in p["checks"] if c["revision"] is False] in (["guarantee"], ["max_words"])
    labels_true(out)
    assert jl(out / "sft.jsonl") == []  # no kept answer passes every check: nothing to imitate


# -- item 4: best-of-N picks the first sample passing every check, judge checks included -------------------------

def test_best_of_n_takes_the_next_sample_when_a_judge_check_refuses_the_first(tmp_path):
    revs = ["Thanks, I guarantee it.", PROMISE, FINE, FINE + " Bye."]
    be, s, out = run(tmp_path, [{"id": "a", "prompt": GUARANTEED}], revs, "sampling.revise_n=4")
    assert s["kept"] == 1
    p = jl(out / "preferences.jsonl")[0]
    assert p["chosen"][0]["content"] == FINE and p["verified"]  # sample 2: sample 1 makes a promise
    trace = jl(out / "trace.jsonl")[0]["stages"]
    ins = [e for e in trace if e["stage"] == "inspect" and "samples" in e]
    assert ins == [{"stage": "inspect", "round": 1, "candidates": [1, 2, 3],
                    "samples": ["new_violation", None, None], "picked": 2}]
    labels_true(out)
    # a rerun takes every judge request from the ledger
    be2, s2, _ = run(tmp_path, [{"id": "a", "prompt": GUARANTEED}], revs, "sampling.revise_n=4")
    assert be2.sent == [] and s2["kept"] == 1


def test_best_of_n_with_every_passing_sample_refused_drops_the_row(tmp_path):
    revs = ["Thanks, I guarantee it.", PROMISE, PROMISE + " Bye."]
    _, s, out = run(tmp_path, [{"id": "a", "prompt": GUARANTEED}], revs, "sampling.revise_n=3")
    assert s["kept"] == 0 and s["reasons"] == {"new_violation": 1}
    r = jl(out / "rejected.jsonl")[0]
    assert all(c["revision"] is None for c in r["checks"])  # no revision stands: none of its results do


# -- item 1: a judge swap, an expert swap or edit: the labels are the written answers' ---------------------------

def test_a_judge_swap_swaps_the_check_results_with_the_answers(tmp_path):
    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(3)]
    _, s, out = run(tmp_path, prompts, [FINE], "judge=self", "judge.on_disagrees=swap", "sampling.revise_n=1",
                    judge="original")
    prefs = jl(out / "preferences.jsonl")
    assert s["kept"] == 3 and all("judge_swapped" in p["flags"] for p in prefs)
    for p in prefs:  # the original, which guarantees, is chosen now: nothing verified, nothing to imitate
        assert p["chosen"][0]["content"].startswith("I guarantee") and not p["verified"]
        g = next(c for c in p["checks"] if c["id"] == "guarantee")
        assert (g["original"], g["revision"]) == (True, False)
    labels_true(out)
    assert jl(out / "sft.jsonl") == [] and not any(k["label"] for k in jl(out / "kto.jsonl"))
    c = s["report"]["checks"]
    assert c["verified"] == 0
    g = c["checks"]["guarantee"]  # every original fails it, no kept pair fixes it, every chosen still fails it
    assert (g["original_fail"], g["fixed"], g["kept_still_fail"]) == (3, 0, 3)
    assert "| guarantee | no_guarantee | regex | 3 | 3 | 0 | 3 |" in (out / "README.md").read_text()


def test_an_expert_swap_or_edit_is_labelled_by_the_text_it_writes(tmp_path):
    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}."} for i in range(5)]
    _, s, out = run(tmp_path, prompts, [FINE], "sampling.revise_n=1", "review.sample_rate=1.0")
    assert s["kept"] == 5 and all(p["verified"] for p in jl(out / "preferences.jsonl"))
    conn = db.open_run(out)
    acc, swap, bad, phone, good = sorted(db.items(conn), key=lambda it: it["id"])
    db.record(conn, acc["id"], "ann", "accept")
    db.record(conn, swap["id"], "ann", "swap")
    db.record(conn, bad["id"], "ann", "edit", chosen="I guarantee your refund arrives within a week.")
    db.record(conn, phone["id"], "ann", "edit", chosen="Your refund is on its way; call us on 800 555 0199.")
    db.record(conn, good["id"], "ann", "edit", chosen="Your refund is on its way to your card.")
    conn.close()
    assert review_main(["merge", str(out)]) == 0
    rv = out / "reviewed"
    rows = {p["id"]: p for p in jl(rv / "preferences.jsonl")}
    labels_true(out, list(rows.values()), jl(rv / "sft.jsonl"), jl(rv / "kto.jsonl"))
    # the phone edit fixes the guarantee (verified) but invents a number: no SFT row, KTO undesirable
    assert all(rows[i]["verified"] for i in (acc["id"], good["id"], phone["id"]))
    assert not any(rows[i]["verified"] for i in (swap["id"], bad["id"]))
    failing = {i: [c["id"] for c in rows[i]["checks"] if c["revision"] is False] for i in rows}
    assert failing == {acc["id"]: [], swap["id"]: ["guarantee"], bad["id"]: ["guarantee"],
                       phone["id"]: ["contact"], good["id"]: []}
    assert {r["id"] for r in jl(rv / "sft.jsonl")} == {acc["id"], good["id"]}


# -- item 6: principles.choose=sample: the card counts a no-violation row by what was written ---------------------

def test_sample_choice_no_violation_rows_whose_original_fails_a_check_are_not_counted_as_kept(tmp_path):
    from rich.console import Console

    from cai_gen import report

    prompts = [{"id": f"a{i}", "prompt": f"SAY: I guarantee your refund today. Order {i}."} for i in range(8)]
    prompts += [{"id": "ok", "prompt": "SAY: Your refund is on its way."}]
    _, s, out = run(tmp_path, prompts, [FINE], "principles.choose=sample", "sampling.revise_n=1")
    nv = jl(out / "no_violation.jsonl")
    failing = [u for u in nv if any(c["original"] is False for c in u["checks"])]
    ok = len(nv) - len(failing)
    assert failing and ok >= 1  # another principle was drawn for some guarantees; the clean original stands
    sft_nv = [r for r in jl(out / "sft.jsonl") if r["origin"] == "no_violation"]
    kto_nv = [k for k in jl(out / "kto.jsonl") if k["id"] in {u["id"] for u in nv}]
    assert len(sft_nv) == ok == sum(k["label"] for k in kto_nv)
    card = (out / "README.md").read_text()
    assert f"| no violation (gate said NO; original kept as SFT and KTO desirable) | {ok} |" in card
    assert f"| gate said NO but the original fails a check (KTO undesirable, no SFT row) | {len(failing)} |" in card
    con = Console(width=200, record=True, file=io.StringIO())
    con.print(report.table(s))
    counts = {cells[1].strip(): cells[2].strip() for cells in
              (line.split("│") for line in con.export_text().splitlines()) if len(cells) == 4}
    assert counts["no violation (original kept: SFT, KTO)"] == str(ok)
    assert counts["gate NO, original fails a check (KTO undesirable, no SFT)"] == str(len(failing))


def test_an_expert_edit_is_checked_against_its_prompt_rows_own_checks_and_an_accept_undoes_a_judge_swap(tmp_path):
    ends_q = [{"id": "ends_q", "kind": "regex", "pattern": r"\?$", "must": "match"}]
    prompts = [{"id": f"a{i}", "prompt": f"{GUARANTEED} Order {i}.", "checks": ends_q} for i in range(2)]
    _, s, out = run(tmp_path, prompts, [FINE + " Anything else?"], "judge=self", "judge.on_disagrees=swap",
                    "sampling.revise_n=1", "review.sample_rate=1.0", judge="original")
    assert s["kept"] == 2 and not any(p["verified"] for p in jl(out / "preferences.jsonl"))  # swapped
    conn = db.open_run(out)
    acc, edit = sorted(db.items(conn), key=lambda it: it["id"])
    db.record(conn, acc["id"], "ann", "accept")  # the revision is chosen again: its results go with it
    db.record(conn, edit["id"], "ann", "edit", chosen="Your refund is on its way to your card.")
    conn.close()
    assert review_main(["merge", str(out)]) == 0
    rows = {p["id"]: p for p in jl(out / "reviewed" / "preferences.jsonl")}
    labels_true(out, list(rows.values()), jl(out / "reviewed" / "sft.jsonl"), jl(out / "reviewed" / "kto.jsonl"),
                checks_mod.parse(ends_q))
    assert rows[acc["id"]]["verified"] and {r["id"] for r in jl(out / "reviewed" / "sft.jsonl")} == {acc["id"]}
    q = next(c for c in rows[edit["id"]]["checks"] if c["id"] == "ends_q")
    assert (q["principle"], q["revision"]) == ("prompt", False)  # the edit does not end with a question
