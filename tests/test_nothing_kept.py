"""A run that keeps no pair is no success (issue 33 item 4): `python -m cai_gen` says in one line what became of
the rows and exits 1, its files and card written all the same; the summary table shows no "None / None"."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cai_gen import pipeline, report
from cai_gen.backends.fake import FakeBackend

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent


def test_a_cli_run_that_keeps_nothing_says_why_and_exits_1(tmp_path):
    """Regression: it exited 0 with "mean words chosen / rejected: None / None" in the table."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "limit=3", "filters.min_edit=1",
                        f"hydra.run.dir={out}"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"})
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"cai_gen: 0 pairs kept of 3 rows: filtered too_similar: 3. Each filtered row's stage and " \
                   f"reason: {out / 'rejected.jsonl'}"
    assert "None / None" not in r.stderr and (out / "README.md").is_file() and (out / "rejected.jsonl").is_file()
    from huggingface_hub import DatasetCard

    assert "configs" not in DatasetCard.load(out / "README.md").data.to_dict()  # no data file to map (was `[]`)


def test_the_line_names_what_the_gate_ended(tmp_path):
    cfg = make_cfg("backend=fake", "sampling.revise_n=1", "limit=5")
    s = pipeline.run(cfg, tmp_path, backend=FakeBackend("fake", cfg.model.name, gate="no", max_model_len=2048))
    assert report.nothing_kept(s, tmp_path).startswith(
        "0 pairs kept of 10 rows: the gate found no violation in 10 (originals kept as SFT and KTO rows). ")
    assert report.nothing_kept({**s, "kept": 1}, tmp_path) is None
    assert report.nothing_kept({**s, "rows": 0}, tmp_path) == "0 pairs kept: there were no prompts to run " \
                                                                "(prompts, limit, shard)"
