"""What the terminal shows during and after a run (issue 33 items 4 and 6, fake backend): the first kept pairs as
they are made, model text printed as text (never rich markup, never a control sequence); progress bars that count
rows, not best-of-N requests; one tok/s figure per run; a closing summary that fits 80 columns."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from cai_gen import pipeline
from cai_gen.preview import clean
from cai_gen.progress import Tracker

from .conftest import ROOT, make_cfg
from .test_steer import CONST, FINE, Scripted, setup

# an answer that is hostile to a terminal: rich markup, an emoji code, a clear-screen escape, a bidi override
HOSTILE = "I guarantee [bold red]your refund[/] :smile: today\x1b[2J, and \u202egnol on."


def run(tmp_path, *over, console: Console, rows: int = 3):
    prompts = [{"id": f"p{i}", "prompt": f"SAY: {HOSTILE} Order {i}."} for i in range(rows)]
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", *setup(tmp_path, prompts, CONST),
                   *over)
    return pipeline.run(cfg, tmp_path / "run", backend=Scripted([FINE]), tracker=Tracker(console=console))


def test_kept_pairs_are_shown_as_they_are_made_with_the_check_that_fixed_them(tmp_path):
    buf = io.StringIO()
    s = run(tmp_path, "preview=2", console=Console(file=buf, width=80))
    said = buf.getvalue()
    assert s["kept"] == 3
    assert said.count("pair 1") == 1 and "pair 2" in said and "pair 3" not in said  # preview=2: the first two
    first = said[said.index("pair 1"):said.index("pair 2")]
    assert "p0" in first and "no_guarantee" in first and "fixed check guarantee" in first
    for label in ("prompt", "rejected", "critique", "chosen"):
        assert re.search(rf"^{label} +\S", first, re.M), label
    assert FINE[:40] in first  # the chosen answer
    # shown before the run's closing lines: as made, not after the run
    assert said.index("pair 2") < said.index("pipelined:")


def test_model_text_is_printed_as_text_not_markup_or_control_codes(tmp_path):
    buf = io.StringIO()
    run(tmp_path, "preview=1", rows=1, console=Console(file=buf, width=200, force_terminal=True,
                                                     color_system="truecolor"))
    said = buf.getvalue()
    assert "[bold red]your refund[/] :smile: today" in said  # not styled, not an emoji
    assert "\x1b[2J" not in said and "\u202e" not in said  # cannot clear the screen or reverse the line
    assert "today\ufffd[2J" in said


def test_clean_cuts_to_one_line():
    assert clean("a\n\n b\tc") == "a b c"
    assert clean("x" * 500, 10) == "x" * 10 + "..."


def test_no_preview_when_preview_is_0(tmp_path):
    buf = io.StringIO()
    run(tmp_path, "preview=0", console=Console(file=buf, width=80))
    assert "pair 1" not in buf.getvalue()


@pytest.mark.parametrize("pipelined", ["true", "false"])
def test_progress_counts_rows_not_best_of_n_requests(tmp_path, pipelined):
    """Regression: with revise_n=4 the revise bar said "12/12 rows" for 3 rows (and "12 requests" off a terminal
    only in the pipelined schedule; the staged one printed "revise r1: 12 rows")."""
    buf = io.StringIO()
    run(tmp_path, "sampling.revise_n=4", f"pipelined={pipelined}",
        console=Console(file=buf, width=120, force_terminal=True, color_system=None))
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # the live display's cursor codes
    bars = [x for x in re.split(r"[\r\n]", screen) if x.startswith("revise r1")]
    assert bars and all(re.search(r"\b[0-3]/3 rows", b) for b in bars), bars[-3:]
    assert re.search(r"\b3/3 rows", bars[-1])

    plain = io.StringIO()  # off a terminal: one line per stage with both counts
    (tmp_path / "plain").mkdir()
    run(tmp_path / "plain", "sampling.revise_n=4", f"pipelined={pipelined}",
        console=Console(file=plain, width=200))
    line = next(x for x in plain.getvalue().splitlines() if x.startswith("revise r1:"))
    assert line.startswith("revise r1: 3 rows, ") and "tok/s" not in line


def cli(tmp_path, *args, columns=80):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", *args, f"hydra.run.dir={out}"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr, out


def test_one_tok_s_figure_and_a_summary_that_fits_80_columns(tmp_path):
    """Regression: off a terminal "pipelined: N tokens in Ts (X tok/s)" and the table's "generation time (Y tok/s)"
    gave two figures that differed; at 80 columns the table wrapped "no violation (original kept: SFT, KTO)" and
    the gate warning into ragged right-aligned continuation lines."""
    err, out = cli(tmp_path, "limit=10")  # the fake gate says YES to all: the gate warning shows
    assert err.count("tok/s") == 1, [x for x in err.splitlines() if "tok/s" in x]
    table = [x for x in err.splitlines() if x[:1] in "┏┃┡│└"]
    assert table and all(len(x) <= 80 for x in table)
    assert not [x for x in table if re.match(r"^│\s+│", x)]  # no row continued on a second line
    assert any(x.startswith("│ no violation (original kept: SFT, KTO) ") for x in table)
    assert "gate warning: the gate said YES to 100% of answers" in err
    lines = err.splitlines()
    assert f"run dir: {out}" in lines and f"card: {out / 'README.md'}" in lines  # whole, whatever their length


def test_the_card_shows_a_few_pairs_fixed_ones_first_with_model_text_fenced(tmp_path):
    """The card had one JSON row per config; now also the first pairs as a reader takes them in."""
    inject = "I guarantee it.\n```\n# Injected heading\n<script>alert(1)</script>"
    prompts = [{"id": "fine", "prompt": "SAY: Thanks for writing, we are on it. Order 0."},
               {"id": "bad", "prompt": f"SAY: {inject}"}]
    cfg = make_cfg("backend=fake", "samples=1", "few_shot=0", "filters.min_edit=0", *setup(tmp_path, prompts, CONST))
    s = pipeline.run(cfg, tmp_path / "run", backend=Scripted([FINE]), tracker=Tracker(console=Console(file=io.StringIO())))
    assert s["kept"] == 2
    card = (tmp_path / "run" / "README.md").read_text()
    part = card[card.index("## A few pairs"):card.index("## Examples")]
    assert part.index("Row `bad-s0`") < part.index("Row `fine-s0`")  # the pair a check fixed comes first
    assert "### Pair 1: fixed check `guarantee`" in part and FINE in part
    # the injected fence cannot close ours: the heading and the script stay inside a longer fence
    lines = part.splitlines()
    at = lines.index("# Injected heading")
    fences = [i for i, x in enumerate(lines) if x.startswith("````")]
    assert any(a < at < b for a, b in zip(fences[::2], fences[1::2]))
