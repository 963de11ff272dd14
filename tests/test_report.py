"""The report: card figures equal the run files' figures; plots are real PNGs; `python -m cai_gen.report`."""
import json
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends.fake import FakeBackend

from .conftest import ROOT, make_cfg


def jl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def check_card_matches_files(out: Path) -> None:
    """Every headline number in README.md recomputed from preferences.jsonl / rejected.jsonl."""
    card = (out / "README.md").read_text()
    prefs, rej = jl(out / "preferences.jsonl"), jl(out / "rejected.jsonl")
    assert f"| pairs kept | {len(prefs)} |" in card and f"| rows filtered | {len(rej)} |" in card
    for reason, n in Counter(r["reason"] for r in rej).items():
        assert f"| filtered: {reason} | {n} |" in card
    if prefs:
        cw = [len(p["chosen"][0]["content"].split()) for p in prefs]
        rw = [len(p["rejected"][0]["content"].split()) for p in prefs]
        assert re.search(rf"\| chosen \| {round(statistics.fmean(cw), 2)} \| {statistics.median(cw)} \|", card)
        assert re.search(rf"\| rejected \| {round(statistics.fmean(rw), 2)} \| {statistics.median(rw)} \|", card)
        longer = sum(c > r for c, r in zip(cw, rw)) / len(prefs)
        assert f"longer than rejected in {100 * longer:.1f}%" in card
        for pid, n in Counter(x for p in prefs for x in p["principle_ids"]).items():
            assert re.search(rf"\| {pid} \| [0-9.]+ \| {n} \|", card)
        for dom, n in Counter(p["domain"] for p in prefs).items():
            assert f"| {dom} | {n} |" in card
    summary = json.loads((out / "summary.json").read_text())
    assert summary["report"]["kept"] == summary["kept"] == len(prefs)
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", card)
    assert links and sorted(links) == sorted(summary["report"]["plots"])
    for link in links:
        data = (out / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert sorted(f"plots/{p.name}" for p in (out / "plots").glob("*.png")) == sorted(links)


def test_card_and_plots_match_the_files(tmp_path):
    cfg = make_cfg("backend=fake", "judge=self", "limit=6", "samples=3", "filters.min_edit=0.8")
    s = pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name, judge="first"))
    assert s["reasons"].get("too_similar")  # some pairs filtered, so the filter table and plot have content
    check_card_matches_files(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "| inconsistent |" in card and "plots/judge.png" in card and "plots/filters.png" in card
    assert "`customer_service@1#" in card and "| no_false_promises | 1.2 |" in card


def test_report_cli_rebuilds_the_same_card(tmp_path):
    cfg = make_cfg("backend=fake", "limit=3")
    pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name))
    before = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").unlink()
    (tmp_path / "plots" / "lengths.png").unlink()
    r = subprocess.run([sys.executable, "-m", "cai_gen.report", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "README.md").read_text() == before and (tmp_path / "plots" / "lengths.png").exists()
    assert "pairs kept" in r.stderr


@pytest.mark.parametrize("damage", ["missing_dir", "not_a_run", "bad_summary"])
def test_report_cli_bad_input_is_one_line(tmp_path, damage):
    target = tmp_path / "run"
    if damage != "missing_dir":
        target.mkdir()
    if damage == "bad_summary":
        (target / "summary.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "cai_gen.report", str(target)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(target) in r.stderr


def test_empty_run_still_gets_a_card(tmp_path):
    cfg = make_cfg("backend=fake", "limit=2", "filters.min_edit=1.0")
    s = pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name))
    assert s["kept"] == 0
    check_card_matches_files(tmp_path)


def test_summary_table_prints_the_median_similarity_rounded():
    """The median of an even count is the mean of two floats (0.0842 + 0.0843 -> 0.08424999999999999): the
    terminal shows three decimals, and n/a when no pair was kept."""
    from rich.console import Console

    from cai_gen.report import table

    def shown(median):
        rep = {"length_words": {"chosen": {"mean": 10}, "rejected": {"mean": 9}}, "chosen_longer": 0.5,
               "similarity": {"kept": {"median": median}}}
        con = Console(width=200, record=True)
        con.print(table({"kept": 2, "rows": 2, "reasons": {}, "flags": {}, "report": rep}))
        line = next(x for x in con.export_text().splitlines() if "median similarity" in x)
        return line.split("│")[2].strip()

    assert shown((0.0842 + 0.0843) / 2) == "0.084"
    assert shown(None) == "n/a"
