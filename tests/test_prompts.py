import json
from collections import Counter
from pathlib import Path

import pytest

from cai_gen import prompts
from cai_gen.errors import UserError


def test_builtin_customer_service_set():
    recs = prompts.load("customer_service", None, None)
    by = Counter(r.domain for r in recs)
    assert len(by) == 10 and set(by.values()) == {5}
    assert len({r.id for r in recs}) == 50


def test_jsonl_fields_and_auto_ids(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "hi {{ 7*7 }}", "domain": "x", "system": "Be brief."}) + "\n\n"
                 + json.dumps({"prompt": "second", "id": 7}) + "\n")
    a, b = prompts.load(None, str(f), None)
    assert (a.prompt, a.domain, a.system) == ("hi {{ 7*7 }}", "x", "Be brief.") and a.id.startswith("p-")
    assert (b.id, b.domain) == ("7", "general")
    assert prompts.load(None, str(f), None, limit=1) == [a]


@pytest.mark.parametrize("content,msg", [
    (b'{"prompt": "ok"}\n{"prompt": "bad"\n', ":2: invalid JSON"),
    (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', ":2: missing field `prompt`"),
    (b'{"prompt": ""}\n', ":1: field `prompt` must be a non-empty string"),
    (b'{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "duplicate prompt id 'x' (rows 1 and 2)"),
    (b'\n\n', "no prompts"),
    (b'{"prompt": "caf\xe9"}\n', ":1: not valid UTF-8"),
    (b'[1, 2]\n', ":1: expected an object"),
    # valid JSON, not encodable: a lone surrogate used to pass here and crash later with a traceback
    (b'{"prompt": "ok"}\n{"prompt": "bad \\ud800 text"}\n', ":2: field `prompt` is not valid Unicode (surrogates"),
    (b'{"prompt": "ok", "id": "\\udfff"}\n', ":1: field `id` is not valid Unicode"),
])
def test_bad_jsonl(tmp_path: Path, content, msg):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(UserError) as e:
        prompts.load(None, str(f), None)
    assert msg in str(e.value) and str(f) in str(e.value)


def test_local_hf_dataset(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict({"q": ["a?", "b?"], "cat": ["x", "y"]}).save_to_disk(str(tmp_path / "ds"))
    recs = prompts.load(None, None, str(tmp_path / "ds"), column="q", domain_column="cat")
    assert [(r.prompt, r.domain) for r in recs] == [("a?", "x"), ("b?", "y")]
    with pytest.raises(UserError, match="no column 'text'"):
        prompts.load(None, None, str(tmp_path / "ds"), column="text")


def test_unknown_set():
    with pytest.raises(UserError, match="no prompt set 'nope'"):
        prompts.load("nope", None, None)
