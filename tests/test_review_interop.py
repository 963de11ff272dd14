"""Blind review tasks for Label Studio, Argilla, CSV and JSONL, and their annotations back (issue 34 item 4); ratings
agreement per guideline on the card."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from cai_gen.errors import UserError
from cai_gen.review import auth, db, tasks, tools
from cai_gen.review.__main__ import main as review_main

from .test_review import GUIDE, base_run, jl, rerun_changes, run_dir, with_guide, write_csv  # noqa: F401  (fixtures)

KEY = "0" * 64  # a fixed ab_key: the order under test is the same on every run


def fixed_key(run_dir: Path) -> None:
    conn = db.open_run(run_dir)
    db.set_meta(conn, "ab_key", KEY)
    conn.close()


def queue(run_dir: Path) -> dict[str, dict]:
    return {it["id"]: it for it in jl(run_dir / "review_queue.jsonl")}


def side_of(item: dict, text: str) -> str:
    return "revision" if text == item["revision"] else "original"


def by_text(run_dir: Path) -> dict[tuple[str, str], dict]:
    """(A, B) -> the queued item: how a test finds which item a blind task is (the task itself does not say)."""
    out = {}
    for it in queue(run_dir).values():
        out[(it["revision"], it["original"])] = out[(it["original"], it["revision"])] = it
    return out


def export(run_dir: Path, f: Path, fmt: str) -> None:
    assert review_main(["export", str(run_dir), str(f), "--format", fmt]) == 0


def merged(run_dir: Path) -> dict[str, dict]:
    assert review_main(["merge", str(run_dir)]) == 0
    return {p["id"]: p for p in jl(run_dir / "reviewed" / "preferences.jsonl")}


# the annotations the round trips give, by position in the export: (verdict, edit text, comment)
PLAN = [("A", None, None), ("B", None, "B reads better"), ("tie", None, None), ("reject", None, None),
        ("edit", "The expert's own answer.", None), ("skip", None, "not my field")]


def check_round_trip(run_dir: Path, shown: list[dict], who: str, kinds=PLAN) -> None:
    """After import and merge: each task's verdict, edit and ratings landed on the right item and side."""
    conn = db.connect(run_dir / db.FILE)
    cur = db.current(conn)
    conn.close()
    items = by_text(run_dir)
    rows = merged(run_dir)
    dropped = {d["id"] for d in jl(run_dir / "reviewed" / "dropped.jsonl")}
    for t, (v, edit, comment) in zip(shown, kinds):
        it = items[(t["A"], t["B"])]
        a = side_of(it, t["A"])
        b = "original" if a == "revision" else "revision"
        mine = cur[it["id"]][who]
        want = {"A": "accept" if a == "revision" else "swap", "B": "accept" if b == "revision" else "swap"}.get(v, v)
        assert mine["verdict"] == want and mine["shown_first"] == a, (v, mine)
        assert mine["ratings"] == {a: {"helpfulness": 2}, b: {"helpfulness": 4, "tone": 5}}
        assert mine["comment"] == comment and mine["tags"] == ["invents facts"]
        row = rows.get(it["id"])
        if v in ("A", "B"):  # the picked text is written as chosen
            picked = t["A"] if v == "A" else t["B"]
            assert row["chosen"][0]["content"] == picked and row["expert_reviewed"] is True
            assert row["ratings"]["helpfulness"]["chosen"] == (2.0 if v == "A" else 4.0)
        elif v in ("tie", "reject"):
            assert it["id"] in dropped and row is None
        elif v == "edit":
            assert row["chosen"][0]["content"] == edit and row["rejected"][0]["content"] == it["original"]
        else:  # skip: no verdict, the pair stays pending
            assert row["expert_reviewed"] is False


# ---- Label Studio ----

def ls_annotation(t: dict, v: str, edit, comment, who, lead=12.5) -> dict:
    """One annotation in Label Studio's JSON export shape (the result items its controls write)."""
    res = [{"from_name": "a_helpfulness", "to_name": "A", "type": "rating", "value": {"rating": 2}},
           {"from_name": "b_helpfulness", "to_name": "B", "type": "rating", "value": {"rating": 4}},
           {"from_name": "b_tone", "to_name": "B", "type": "rating", "value": {"rating": 5}},
           {"from_name": "tags", "to_name": "prompt", "type": "choices", "value": {"choices": ["invents facts"]}}]
    if v in ("A", "B"):
        res.append({"from_name": "pick", "to_name": "pick", "type": "pairwise",
                    "value": {"selected": "left" if v == "A" else "right"}})
    else:
        res.append({"from_name": "pick", "to_name": "pick", "type": "pairwise", "value": {"selected": "left"}})
        res.append({"from_name": "verdict", "to_name": "prompt", "type": "choices", "value": {"choices": [v]}})
    if edit:
        res.append({"from_name": "rewrite", "to_name": "prompt", "type": "textarea", "value": {"text": [edit]}})
    if comment:
        res.append({"from_name": "comment", "to_name": "prompt", "type": "textarea", "value": {"text": [comment]}})
    return {"id": 1, "result": res, "was_cancelled": False, "ground_truth": False, "lead_time": lead,
            "created_at": "2026-12-03T10:00:00.123456Z", "updated_at": "2026-12-03T10:00:09.5Z", "completed_by": who}


def test_label_studio_export_imports_back_with_the_same_verdicts(run_dir, tmp_path):
    with_guide(run_dir, GUIDE)
    f = tmp_path / "tasks.json"
    export(run_dir, f, "label-studio")
    xml = (tmp_path / "tasks.label_config.xml").read_text()
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)  # well-formed: the team pastes it in as is
    names = {e.get("name"): e.tag for e in root.iter() if e.get("name")}
    assert names["pick"] == "Pairwise" and root.find(".//Pairwise").get("toName") == "A,B"
    assert {n for n, tag in names.items() if tag == "Rating"} == {"a_helpfulness", "b_helpfulness", "a_tone", "b_tone"}
    assert [c.get("alias") for c in root.find(".//Choices[@name='verdict']")] == ["tie", "reject", "edit", "skip"]
    assert root.find(".//Choices[@name='tags']").get("value") == "$tag_options"
    assert "Would the customer act on it?" in xml
    exported = json.loads(f.read_text())
    assert len(exported) == len(queue(run_dir)) >= len(PLAN)
    assert "invents facts" in [o["value"] for o in exported[0]["data"]["tag_options"]]
    # what Label Studio's JSON export gives back: its own task ids and fields around our data, annotations added
    back = [{"id": 100 + i, "data": t["data"], "project": 3, "predictions": [],
             "annotations": [ls_annotation(t["data"], *p, who={"id": 7, "email": "ann@example.org"})]
             if i < len(PLAN) else []} for i, (t, p) in enumerate(zip(exported, PLAN + [None] * len(exported)))]
    back[0]["annotations"].append({**ls_annotation(back[0]["data"], "A", None, None, who=9), "was_cancelled": True})
    g = tmp_path / "export.json"
    g.write_text(json.dumps(back))
    assert review_main(["import", str(run_dir), str(g), "--format", "label-studio"]) == 0
    check_round_trip(run_dir, [t["data"] for t in exported], "ann@example.org")
    conn = db.connect(run_dir / db.FILE)
    h = db.history(conn)
    assert {x["source"] for x in h} == {"import:label-studio"} and {x["seconds"] for x in h} == {12.5}
    assert h[0]["at"] == "2026-12-03T10:00:09+00:00"  # stored as the server stores times
    n = len(h)
    assert tools.load(conn, run_dir, g, "label-studio")["imported"] == 0 and len(db.history(conn)) == n


def test_label_studio_annotator_number_is_the_reviewer(run_dir, tmp_path):
    f = tmp_path / "tasks.json"
    export(run_dir, f, "label-studio")
    t = json.loads(f.read_text())[0]
    g = tmp_path / "export.json"
    a = ls_annotation(t["data"], "B", None, None, who=12)
    a["result"] = [r for r in a["result"] if r["type"] == "pairwise"]
    g.write_text(json.dumps([{**t, "annotations": [a]}]))
    conn = db.open_run(run_dir)
    assert tools.load(conn, run_dir, g, "label-studio")["imported"] == 1
    assert [x["reviewer"] for x in db.history(conn)] == ["label-studio-12"]


# ---- Argilla ----

def test_argilla_export_imports_back_with_the_same_verdicts(run_dir, tmp_path):
    with_guide(run_dir, GUIDE)
    f = tmp_path / "records.json"
    export(run_dir, f, "argilla")
    st = json.loads((tmp_path / "records.settings.json").read_text())
    assert [x["name"] for x in st["fields"]] == ["prompt", "system", "principles", "answer_a", "answer_b"]
    qs = {q["name"]: q for q in st["questions"]}
    assert [o["value"] for o in qs["verdict"]["settings"]["options"]] == ["A", "B", "tie", "reject", "edit", "skip"]
    assert qs["b_tone"]["settings"] == {"type": "rating", "options": [{"value": v} for v in range(1, 6)]}
    assert qs["a_helpfulness"]["description"] == "Would the customer act on it?"
    assert "invents facts" in [o["value"] for o in qs["tags"]["settings"]["options"]]
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in [*qs, *(x["name"] for x in st["fields"])])  # Argilla's names
    recs = json.loads(f.read_text())
    user = "3f1c9a52-1b7e-4d0a-9c53-0d7c2a6e5b11"
    for rec, (v, edit, comment) in zip(recs, PLAN):  # what dataset.records.to_json writes after annotation
        ans = {"verdict": v, "a_helpfulness": 2, "b_helpfulness": 4, "b_tone": 5, "tags": ["invents facts"]}
        if edit:
            ans["rewrite"] = edit
        if comment:
            ans["comment"] = comment
        rec["responses"] = {q: [{"value": x, "user_id": user}] for q, x in ans.items()}
    recs[len(PLAN)]["responses"] = {"verdict": [{"value": "A", "user_id": user, "status": "draft"}]}  # not submitted
    g = tmp_path / "annotated.json"
    g.write_text(json.dumps(recs))
    assert review_main(["import", str(run_dir), str(g), "--format", "argilla"]) == 0
    shown = [{"A": r["fields"]["answer_a"], "B": r["fields"]["answer_b"]} for r in recs]
    check_round_trip(run_dir, shown, user)


# ---- CSV and JSONL ----

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_export_import_back_with_the_same_verdicts(run_dir, tmp_path, fmt):
    with_guide(run_dir, GUIDE)
    f = tmp_path / f"tasks.{fmt}"
    export(run_dir, f, fmt)
    if fmt == "csv":
        recs = list(csv.DictReader(f.open(newline="")))
        assert "A: helpfulness" in recs[0] and "B: tone" in recs[0]
        for rec, (v, edit, comment) in zip(recs, PLAN):
            rec.update({"verdict": v.upper() if v in "AB" else v, "rewrite": edit or "", "comment": comment or "",
                        "A: helpfulness": "2", "B: helpfulness": "4", "B: tone": "5", "tags": "invents facts"})
        write_csv(f, recs)
    else:
        recs = jl(f)
        assert recs[0]["ratings"] == {"A": {"helpfulness": None, "tone": None}, "B": {"helpfulness": None, "tone": None}}
        for rec, (v, edit, comment) in zip(recs, PLAN):
            rec.update(verdict=v, rewrite=edit, comment=comment, tags=["invents facts"],
                       ratings={"A": {"helpfulness": 2, "tone": None}, "B": {"helpfulness": 4, "tone": 5}})
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert review_main(["import", str(run_dir), str(f), "--reviewer", "carol"]) == 0
    check_round_trip(run_dir, recs, "carol")


# ---- blind: nothing in any export says which answer is the revision ----

SIDE_WORDS = re.compile(r"\b(chosen|rejected|revision|revised|original)\b", re.I)


def keys_and_values(x, out):
    if isinstance(x, dict):
        for k, v in x.items():
            out.append(str(k))
            keys_and_values(v, out)
    elif isinstance(x, list):
        for v in x:
            keys_and_values(v, out)
    else:
        out.append(x)
    return out


def grow_queue(run_dir: Path, n: int) -> None:
    """n distinct items (as a run routes them), so the order's share can be measured."""
    base = jl(run_dir / "review_queue.jsonl")
    out = []
    for i in range(n):
        it = dict(base[i % len(base)])
        it.update(id=f"{it['id']}-x{i}", original=f"Original answer number {i}.", revision=f"Better answer number {i}.")
        out.append(it)
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in out))


@pytest.mark.parametrize("fmt", ["label-studio", "argilla", "csv", "jsonl"])
def test_no_export_says_which_answer_is_the_revision(run_dir, tmp_path, fmt):
    grow_queue(run_dir, 200)
    fixed_key(run_dir)
    f = tmp_path / ("tasks.json" if fmt in ("label-studio", "argilla") else f"tasks.{fmt}")
    export(run_dir, f, fmt)
    if fmt == "label-studio":
        shown = [t["data"] for t in json.loads(f.read_text())]
        extra = (tmp_path / "tasks.label_config.xml").read_text()
    elif fmt == "argilla":
        shown = [{"task": r["id"], **r["fields"], "A": r["fields"]["answer_a"], "B": r["fields"]["answer_b"]}
                 for r in json.loads(f.read_text())]
        extra = (tmp_path / "tasks.settings.json").read_text()
    elif fmt == "csv":
        shown = list(csv.DictReader(f.open(newline="")))
        extra = ",".join(shown[0])
    else:
        shown = jl(f)
        extra = ""
    items = queue(run_dir)
    a_is_revision = [t["A"].startswith("Better") for t in shown]
    assert len(shown) == 200 and 0.4 <= sum(a_is_revision) / 200 <= 0.6  # A is the revision in about half
    for t in shown:  # no key or value names a side, and no id names the item
        words = [w for w in keys_and_values(t, []) if isinstance(w, str) and w not in (t["A"], t["B"])]
        assert not [w for w in words if SIDE_WORDS.search(w) and w not in (t.get("principles"), t.get("prompt"),
                                                                            t.get("system"))], t
        assert not any(i in json.dumps(t) for i in items)
    assert not SIDE_WORDS.search(extra)  # nor the labelling config / settings / header
    # the order comes from the secret key: another key gives another order
    conn = db.connect(run_dir / db.FILE)
    h = {it["id"]: db.item_hash(conn, it["id"]) for it in items.values()}
    conn.close()
    other = [tasks.first("1" * 64, i, h[i]) == "revision" for i in items]
    assert other != [tasks.first(KEY, i, h[i]) == "revision" for i in items]


# ---- the server's rules on import: staleness, unknown tasks, identity ----

def test_an_annotation_of_text_changed_since_the_export_is_refused_as_stale(run_dir, tmp_path, capsys):
    f = tmp_path / "tasks.jsonl"
    export(run_dir, f, "jsonl")
    recs = jl(f)
    for r in recs[:2]:
        r.update(verdict="A", reviewer="dana")
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    changed = by_text(run_dir)[(recs[0]["A"], recs[0]["B"])]
    rerun_changes(run_dir, changed["id"], "Changed while the file was out for annotation.")
    capsys.readouterr()
    assert review_main(["import", str(run_dir), str(f)]) == 0
    out = capsys.readouterr().out
    assert "imported 1 verdicts" in out and "1 stale" in out
    stale = [line for line in out.splitlines() if "stale:" in line]
    assert len(stale) == 1 and f"{f}:1: task {recs[0]['task']}: stale" in stale[0]
    conn = db.connect(run_dir / db.FILE)
    assert [h["item"] for h in db.history(conn)] != [changed["id"]] and len(db.history(conn)) == 1


@pytest.mark.parametrize("bad, msg", [
    ({"task": "t0000"}, r":2: task 't0000' is not a task of this run"),
    ({"verdict": "better"}, r":2: verdict: 'better'"),
    ({"verdict": "skip"}, r":2: comment: a skip needs a reason"),
    ({"verdict": "edit"}, r":2: rewrite: an edit verdict needs"),
    ({"reviewer": "<script>"}, r":2: reviewer: '<script>' is not a name"),
    ({"ratings": {"A": {"helpfulness": 9}}}, r":2: ratings\.(revision|original)\.helpfulness: 9"),
    ({"ratings": {"A": {"kindness": 3}}}, r":2: ratings: \['kindness'\] not among the guidelines"),
    ({"tags": ["made up"]}, r":2: tags: \['made up'\] not among"),
])
def test_bad_annotations_name_the_row_and_store_nothing(run_dir, tmp_path, capsys, bad, msg):
    f = tmp_path / "tasks.jsonl"
    export(run_dir, f, "jsonl")
    recs = jl(f)[:2]
    recs[0].update(verdict="A", reviewer="ok")
    recs[1].update({"verdict": "B", "reviewer": "ok", **bad})
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    capsys.readouterr()
    assert review_main(["import", str(run_dir), str(f)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(re.escape(str(f)) + msg, err), err
    assert db.history(db.connect(run_dir / db.FILE)) == []  # the good first row was not stored either


def test_a_revoked_reviewers_annotations_are_refused(run_dir, tmp_path):
    f = tmp_path / "tasks.jsonl"
    export(run_dir, f, "jsonl")
    conn = db.open_run(run_dir)
    auth.invite(conn, "eve", "reviewer", 72)
    auth.revoke(conn, "eve")
    rec = {**jl(f)[0], "verdict": "A", "reviewer": "eve"}
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(UserError, match=r":1: reviewer: 'eve' was revoked"):
        tools.load(conn, run_dir, f)


def test_unblind_export_is_the_labelled_record_and_imports_as_before(run_dir, tmp_path):
    f = tmp_path / "all.csv"
    assert review_main(["export", str(run_dir), str(f), "--unblind"]) == 0
    recs = list(csv.DictReader(f.open(newline="")))
    assert "revision" in recs[0] and "original" in recs[0]
    recs[0].update(reviewer="bob", verdict="swap")
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    assert review_main(["import", str(run_dir), str(f)]) == 0
    assert db.current(db.connect(run_dir / db.FILE))[recs[0]["id"]]["bob"]["verdict"] == "swap"


def test_a_json_file_needs_its_format_said(run_dir, tmp_path, capsys):
    assert review_main(["export", str(run_dir), str(tmp_path / "t.json")]) == 2
    assert "--format label-studio|argilla|csv|jsonl" in capsys.readouterr().err


# ---- the card: ratings and agreement per guideline ----

def test_card_shows_mean_rating_and_agreement_per_guideline(run_dir):
    conn = db.open_run(run_dir)
    a, b = db.items(conn)[:2]
    db.record(conn, a["id"], "ann", "accept", ratings={"revision": {"helpfulness": 5, "format": 4}})
    db.record(conn, a["id"], "bo", "accept", ratings={"revision": {"helpfulness": 5, "format": 2}})
    db.record(conn, a["id"], "cy", "accept", ratings={"revision": {"helpfulness": 4}})
    db.record(conn, b["id"], "ann", "swap", ratings={"original": {"helpfulness": 3}})
    conn.close()
    merged(run_dir)
    s = json.loads((run_dir / "reviewed" / "review.json").read_text())["ratings"]
    # helpfulness on a's revision: ann-bo 0 apart, ann-cy 1, bo-cy 1 -> 1 of 3 the same, 3 of 3 within one
    assert s["helpfulness"] == {"revision": 4.67, "original": 3.0, "n": 4, "pairs": 3, "agreement": 0.3333,
                                "within_one": 1.0}
    assert s["format"]["pairs"] == 1 and s["format"]["agreement"] == 0.0 and s["format"]["within_one"] == 0.0
    card = (run_dir / "README.md").read_text()
    assert "| helpfulness | 4.67 | 3.0 | 4 | 33.3% | 100.0% | 3 |" in card
    assert "| format | 3.0 |  | 2 | 0.0% | 0.0% | 1 |" in card


@pytest.mark.parametrize("back, msg", [
    ({"task": 1}, r": task 1: not a Label Studio task \(no `data` object"),
    ({"data": {"task": "x"}, "annotations": {"a": 1}}, r": task 1 \(x\): annotations: not a list"),
    ({"annotations": [{"result": ["left"]}]}, r": task 1 \(t\w+\), annotation 1: result: 'left' is not"),
    ({"annotations": [{"result": [{"from_name": "pick", "type": "pairwise", "value": {"selected": "up"}}]}]},
     r"annotation 1: pick: 'up' is not left or right"),
    ({"annotations": [{"result": [{"from_name": "verdict", "type": "choices", "value": {"choices": ["meh"]}}]}]},
     r"annotation 1: verdict: 'meh' is not one of tie, reject, edit, skip"),
    ({"annotations": [{"result": [{"from_name": "a_kindness", "type": "rating", "value": {"rating": 3}}]}]},
     r"annotation 1: rating 'a_kindness' is not one of this export's"),
])
def test_a_malformed_label_studio_file_is_one_line_naming_the_task(run_dir, tmp_path, capsys, back, msg):
    f = tmp_path / "tasks.json"
    export(run_dir, f, "label-studio")
    t = json.loads(f.read_text())[0]
    g = tmp_path / "export.json"
    g.write_text(json.dumps([back if "task" in back or "data" in back else {**t, **back}]))
    capsys.readouterr()
    assert review_main(["import", str(run_dir), str(g), "--format", "label-studio"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(re.escape(str(g)) + ".*" + msg, err), err


def test_guideline_wording_with_markup_characters_stays_text_in_the_label_config(run_dir, tmp_path):
    with_guide(run_dir, {"guidelines": [{"name": "tone", "text": 'Is it "kind" & <b>calm</b>?'}]})
    f = tmp_path / "tasks.json"
    export(run_dir, f, "label-studio")
    import xml.etree.ElementTree as ET
    root = ET.fromstring((tmp_path / "tasks.label_config.xml").read_text())
    assert 'tone: Is it "kind" & <b>calm</b>?' in [h.get("value") for h in root.iter("Header")]
    assert root.find(".//b") is None  # an attribute's text, not an element


def test_blind_csv_escapes_formula_cells_and_a_formula_like_edit_comes_back_as_typed(run_dir, tmp_path):
    q = jl(run_dir / "review_queue.jsonl")
    q[0]["revision"] = '=HYPERLINK("http://evil.example","click")'
    (run_dir / "review_queue.jsonl").write_text("".join(json.dumps(it) + "\n" for it in q))
    f = tmp_path / "tasks.csv"
    export(run_dir, f, "csv")
    recs = list(csv.DictReader(f.open(newline="")))
    cells = [c for r in recs for c in r.values()]
    assert "'" + q[0]["revision"] in cells and q[0]["revision"] not in cells  # a sheet shows it as text
    recs[0].update(verdict="edit", rewrite="'=2+2 is four", reviewer="fay")  # escaped as the export escapes
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    assert review_main(["import", str(run_dir), str(f)]) == 0
    assert db.history(db.connect(run_dir / db.FILE))[0]["chosen"] == "=2+2 is four"
