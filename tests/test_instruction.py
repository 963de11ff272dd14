"""The `instruction` check kind: IFEval's and IFBench's own verifiers by id and kwargs, on hand-written answers; its
explanations; bad entries as one line at load; NLTK data from the wheel with no download possible."""
import json
import random
import subprocess
import sys

import pytest

from cai_gen import checks
from cai_gen.errors import UserError

from .conftest import ROOT
from .test_checks import bad_check

CTX = checks.Context("Tell me about hammocks.", {})


def one(**spec):
    return checks.parse([{"id": "c", "kind": "instruction", **spec}])[0]


def words(n: int) -> str:
    return " ".join(["hammock"] * n) + "."


@pytest.mark.parametrize("spec,good,bad,why", [
    ({"instruction": "length_constraints:number_words", "kwargs": {"relation": "at least", "num_words": 300}},
     words(300), words(120), "120 words; at least 300 asked"),
    ({"instruction": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 50}},
     words(10), words(60), "60 words; less than 50 asked"),
    ({"instruction": "length_constraints:number_sentences", "kwargs": {"relation": "less than", "num_sentences": 3}},
     "It swings. It rests.", "It swings. It rests. It sways. It sleeps.", "4 sentences; less than 3 asked"),
    ({"instruction": "punctuation:no_comma"}, "Hammocks are comfy.", "Hammocks, in short, are comfy.",
     "2 commas; none allowed"),
    ({"instruction": "keywords:existence", "kwargs": {"keywords": ["rope", "tree"]}},
     "Tie the rope to a tree.", "Tie it to a tree.", "missing 'rope'"),
    ({"instruction": "detectable_format:number_highlighted_sections", "kwargs": {"num_highlights": 2}},
     "*Rope* and *trees*.", "*Rope* and trees.", "1 *highlighted* sections; at least 2 asked"),
    ({"instruction": "count:word_count_range", "kwargs": {"min_words": 5, "max_words": 10}},  # IFBench's registry
     "One two three four five six.", "One two.", "2 words; 5 to 10 asked"),
])
def test_each_direction_passes_and_fails_with_its_explanation(spec, good, bad, why):
    c = one(**spec)
    assert c.passes(good, CTX) and c.explain(good, CTX) == ""
    assert not c.passes(bad, CTX) and c.explain(bad, CTX) == why


def test_an_instruction_without_a_measure_explains_with_its_id_and_kwargs():
    c = one(instruction="count:numbers", kwargs={"N": 3})
    assert c.benchmark == "ifbench"  # inferred from the id
    assert not c.passes("No digits here.", CTX) and c.explain("No digits here.", CTX) == "fails count:numbers (N=3)"


def test_strict_is_the_default_and_loose_is_ifevals_loose_variant():
    text = 'Here is the quote:\n"Hammocks are comfy."'  # the first line stops the strict check
    strict, loose = one(instruction="startend:quotation"), one(instruction="startend:quotation", loose=True)
    assert not strict.passes(text, CTX) and loose.passes(text, CTX)
    assert strict.explain(text, CTX) == "not wrapped in double quotation marks"
    assert not loose.passes("Hammocks are comfy.", CTX)
    assert not strict.passes("", CTX) and not loose.passes("  ", CTX)  # an empty answer follows nothing


def test_language_detection_is_seeded_and_the_callers_random_state_is_kept():
    c = one(instruction="language:response_language", kwargs={"language": "fr"})
    french = "Le hamac est un lit suspendu entre deux arbres, très agréable en été."
    random.seed(7)
    want = random.random()
    random.seed(7)
    assert all(c.passes(french, CTX) for _ in range(5)) and not c.passes("The hammock hangs between trees.", CTX)
    assert random.random() == want


def test_a_prompt_rows_checks_take_the_kind(tmp_path):
    from cai_gen import prompts

    (c,) = prompts._checks([{"id": "k", "kind": "instruction", "instruction": "punctuation:no_comma"}], "p.jsonl:1")
    assert c.passes("No commas here.", CTX) and not c.passes("Yes, commas.", CTX)
    with pytest.raises(UserError) as e:
        prompts._checks([{"id": "k", "kind": "instruction", "instruction": "nope:x"}], "p.jsonl:1")
    assert str(e.value).startswith("p.jsonl:1: checks[0] (id=k): ") and "unknown instruction 'nope:x'" in str(e.value)


@pytest.mark.parametrize("spec,msg", [
    ({"instruction": "length_constraints:number_word"}, "unknown instruction 'length_constraints:number_word' in "
     "IFEval or IFBench (did you mean length_constraints:number_words"),
    ({"instruction": "punctuation:no_comma", "benchmark": "ifbench"}, "unknown instruction 'punctuation:no_comma' in "
     "ifbench"),
    ({"instruction": "length_constraints:number_words", "kwargs": {"num_word": 3, "relation": "at least"}},
     "rejects kwargs {'num_word': 3, 'relation': 'at least'}: NumberOfWords.build_description() got an unexpected "
     "keyword argument 'num_word'"),
    ({"instruction": "length_constraints:number_words", "kwargs": {"num_words": 3, "relation": "about"}},
     "rejects kwargs"),
    ({"instruction": "length_constraints:number_words", "kwargs": {"num_words": 3}},
     "kwargs must give relation (the verifier draws what is left out at random)"),
    ({"instruction": "words:start_verb"},
     "needs NLTK data that no installed wheel ships (averaged_perceptron_tagger_eng)"),
])
def test_a_bad_instruction_is_one_line_naming_file_line_and_check(tmp_path, spec, msg):
    f, line = bad_check(tmp_path, {"kind": "instruction", **spec})
    assert line.startswith(f"{f}:7: principles[0] (id=p1).checks[0] (id=k1): ") and msg in line and "\n" not in line


OFFLINE = """
import socket, nltk, nltk.downloader
def refuse(*a, **k):
    raise AssertionError("network or download attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
nltk.downloader.Downloader.download = refuse
nltk.download = refuse
from cai_gen import checks
from cai_gen.checks.instruction import offline
ctx = checks.Context("", {})
s = checks.parse([{"id": "s", "kind": "instruction", "instruction": "length_constraints:number_sentences",
                   "kwargs": {"relation": "at least", "num_sentences": 3}}])[0]
b = checks.parse([{"id": "b", "kind": "instruction", "instruction": "ratio:stop_words",
                   "kwargs": {"percentage": 60}}])[0]
print(s.passes("One. Two. Three.", ctx), s.passes("One. Two.", ctx), b.passes("the hammock", ctx))
print(nltk.data.find("tokenizers/punkt_tab/english/").startswith(offline()))
"""


def test_nltk_data_comes_from_the_wheel_and_nothing_is_downloaded():
    """A fresh interpreter whose sockets and NLTK downloader raise: IFEval's sentence count (punkt) and IFBench's
    stop words still score (IFBench's registry calls nltk.download at import for data it lacks)."""
    r = subprocess.run([sys.executable, "-c", OFFLINE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "False", "True", "True"]


def test_a_run_records_what_the_instruction_check_says_of_the_written_answers(tmp_path):
    """Fake backend, prompt rows carrying an instruction check: each written pair's `checks` entry is the verifier's
    verdict on the text written as rejected (original) and as chosen (revision)."""
    from cai_gen import pipeline
    from cai_gen.backends.fake import FakeBackend

    from .conftest import ONE, make_cfg

    spec = {"id": "short", "kind": "instruction", "instruction": "length_constraints:number_words",
            "kwargs": {"relation": "less than", "num_words": 30}}
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Where is order {i}? Under 30 words.", "checks": [spec]})
                         + "\n" for i in range(4)))
    cfg = make_cfg("backend=fake", ONE, f"prompts.path={p}", "samples=1")
    pipeline.run(cfg, tmp_path / "out", backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    rows = [json.loads(x) for x in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    c = checks.parse([spec])[0]
    said = []
    for r in rows:
        (got,) = [x for x in r["checks"] if x["id"] == "short"]
        ctx = checks.Context(r["prompt"][-1]["content"], {})
        said.append((got["original"], got["revision"]))
        assert said[-1] == (c.passes(r["rejected"][0]["content"], ctx), c.passes(r["chosen"][0]["content"], ctx))
    assert rows and (False, True) in said  # the fake's 31-word original fails, its 28-word revision passes


def test_the_verifier_reads_the_text_as_written_not_normalised():
    """Other text checks read curly quotes as straight (issue 31 item 5); the benchmark's verifier must not: IFEval's
    startend:quotation fails an answer wrapped in typographic quotes, and so must the check that stands for it."""
    c = one(instruction="startend:quotation")
    assert c.passes('"Hammocks are comfy."', CTX)
    assert not c.passes("\u201cHammocks are comfy.\u201d", CTX)
