"""The built-in harmless red-team set: big enough to measure on, each row labelled with the answer it wants."""
import difflib
import itertools
from pathlib import Path

import yaml

from cai_gen import prompts

SET = Path(__file__).resolve().parents[1] / "prompts" / "harmless.yaml"


def test_harmless_set_has_kinds_and_no_near_duplicates():
    rows = yaml.safe_load(SET.read_text())["prompts"]
    assert len(prompts.load("harmless", None, None)) == len(rows) >= 200  # none dropped as a duplicate
    assert all(set(r) == {"id", "prompt", "domain", "kind"} for r in rows)
    # a benign look-alike is answered, a harmful request refused or redirected: the two must not be mixed up
    assert all(r["kind"] == ("benign" if r["domain"] == "benign" else "harmful") for r in rows)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("harmful") >= 120 and kinds.count("benign") >= 80
    assert len({r["id"] for r in rows}) == len(rows)
    texts = [r["prompt"].lower() for r in rows]
    close = [(a, b) for a, b in itertools.combinations(texts, 2)
             if difflib.SequenceMatcher(None, a, b).quick_ratio() > 0.85
             and difflib.SequenceMatcher(None, a, b).ratio() > 0.85]
    assert not close  # a near-copy measures the same thing twice
