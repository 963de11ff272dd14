"""`python -m cai_gen.review status RUN` prints the ratings and their agreement per guideline, as the card does."""
from __future__ import annotations

from cai_gen.review import db
from cai_gen.review.__main__ import main as review_main

from .test_review import base_run, run_dir  # noqa: F401  (fixtures)


def test_status_prints_mean_rating_and_agreement_per_guideline(run_dir, capsys):  # noqa: F811
    conn = db.open_run(run_dir)
    a, b = db.items(conn)[:2]
    db.record(conn, a["id"], "ann", "accept", ratings={"revision": {"helpfulness": 5, "format": 4}})
    db.record(conn, a["id"], "bo", "accept", ratings={"revision": {"helpfulness": 5, "format": 2}})
    db.record(conn, a["id"], "cy", "accept", ratings={"revision": {"helpfulness": 4}})
    db.record(conn, b["id"], "ann", "swap", ratings={"original": {"helpfulness": 3, "tone": 2}})
    conn.close()
    assert review_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 reviewed by someone" in out and "ann + bo: 1 shared" in out  # what it printed before stays
    # helpfulness on a's revision: ann-bo 0 apart, ann-cy 1, bo-cy 1 -> 1 of 3 the same, 3 of 3 within one
    assert "  helpfulness: 4.67 / 3 over 4 rating(s); same score 33.3%, within one 100.0% over 3 pair(s)" in out
    assert "  format: 3 / - over 2 rating(s); same score 0.0%, within one 0.0% over 1 pair(s)" in out
    assert "  tone: - / 2 over 1 rating(s); no answer rated by two reviewers" in out


def test_status_without_ratings_prints_no_guideline_section(run_dir, capsys):  # noqa: F811
    conn = db.open_run(run_dir)
    db.record(conn, db.items(conn)[0]["id"], "ann", "accept")
    conn.close()
    assert review_main(["status", str(run_dir)]) == 0
    assert "per guideline" not in capsys.readouterr().out
