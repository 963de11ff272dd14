"""Every deterministic check kind on answers the default model (SmolLM2-135M-Instruct) really wrote.

tests/data/checks_real.jsonl holds, per kind, real texts that pass and real texts that fail, each with the check's
arguments, the prompt it answered, the expected verdict and the run file it came from (the harmless red-team run
and the customer_service revise_n bench runs). Where no real text fails (or passes) a kind, the closest real text
is minimally edited and the row's `edited` says how. Hand-made examples test what a check was written for; these
test what it meets: the rows that fixed the refusal, contact and placeholder checks are the model's own wording.
"""
import json
from pathlib import Path

import pytest

from cai_gen import checks

ROWS = [json.loads(line) for line in (Path(__file__).parent / "data" / "checks_real.jsonl").open(encoding="utf-8")]
DETERMINISTIC = {k for k, cls in checks.kinds().items() if not cls.needs_engine and k != "classifier"}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['kind']}-{i}-{'pass' if r['expected'] else 'fail'}"
                                           for i, r in enumerate(ROWS)])
def test_real_model_text(row):
    check = checks.parse([{"id": "c", "kind": row["kind"], **row["args"]}])[0]
    ctx = checks.Context(row["prompt"], row.get("fields", {}))
    assert check.passes(row["text"], ctx) is row["expected"], (row["why"], row["source"])


def test_every_deterministic_kind_has_a_real_pass_and_a_real_fail():
    have = {(r["kind"], r["expected"]) for r in ROWS}
    assert {(k, e) for k in DETERMINISTIC for e in (True, False)} <= have
    for r in ROWS:  # provenance: a run file, and an edit is said
        assert r["source"].split()[0].endswith("trace.jsonl") and r["why"]
    assert sum(bool(r["edited"]) for r in ROWS) <= 3
