"""The behavioural pass end to end: DPO on a small run dir, then the reference, trained and shuffled models answer
the held-out prompts through the real vLLM engine, and the constitution's checks score every answer."""
import json
import subprocess
import sys

import pytest

from cai_gen import pipeline

from .conftest import ROOT, make_cfg

pytestmark = pytest.mark.slow


def test_behavioural_pass_on_a_small_run_with_the_real_engine(tmp_path, default_model_dir):
    out = tmp_path / "run"
    # the data's text comes from the fake engine (seconds); training and every answer are the real default model's
    pipeline.run(make_cfg("backend=fake", "constitution=verifiable_support", "prompts=verifiable_support",
                          "limit=24", "samples=1", "output.test_size=0.3",
                          "principles.checks=false"), out)  # the fake's answers pass every check: let its gate decide
    r = subprocess.run([sys.executable, "-m", "cai_gen.evaluate", str(out), "--steps", "2", "--batch-size", "2",
                        "--max-length", "192", "--samples", "2", "--max-new-tokens", "48", "--answer-backend", "vllm",
                        "--gpu-memory-utilization", "0.3", "--bootstrap", "200"],
                       capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "eval" / "eval.json").read_text())
    b = res["behaviour"]
    assert set(b["models"]) == {"reference", "trained", "shuffled"} and b["samples"] == 2 and b["prompts"] >= 3
    answers = [json.loads(x) for x in (out / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 * b["prompts"] and all(a["reference"] and a["trained"] for a in answers)
    for m in b["models"].values():
        assert 0 <= m["overall"]["rate"] <= 1 and m["overall"]["ci"][0] <= m["overall"]["rate"] <= m["overall"]["ci"][1]
        assert set(m["per_principle"]) == set(b["principles"]) and len(b["principles"]) == 6
    assert "behaviour on" in r.stdout and b["verdict"] in r.stdout
    # the engine's own log lines go to eval/engine.log, not the terminal (three engines started: one log each)
    log = (out / "eval" / "engine.log").read_text()
    assert log.count("Loading safetensors checkpoint shards") >= 3
    assert "INFO" not in r.stderr + r.stdout and "Loading safetensors" not in r.stderr + r.stdout
    card = (out / "README.md").read_text()
    assert "### Behaviour: violations of the constitution" in card and "eval/behaviour.png" in card
    assert (out / "eval" / "behaviour.png").is_file() and (out / "eval" / "dpo" / "model" / "config.json").is_file()
