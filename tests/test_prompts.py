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


CONV = [{"role": "system", "content": "You are the store's support assistant."},
        {"role": "user", "content": "My order 1234 has not arrived."},
        {"role": "assistant", "content": "Sorry to hear that. Do you have the tracking number?"},
        {"role": "user", "content": "It says delivered but nothing is here."}]


def test_multi_turn_jsonl_rows(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": CONV, "domain": "shipping"}) + "\n"
                 + json.dumps({"messages": CONV[1:]}) + "\n" + json.dumps({"prompt": CONV[-1]["content"]}) + "\n")
    a, b, c = prompts.load(None, str(f), None)
    assert a.system == CONV[0]["content"] and a.prompt == CONV[-1]["content"] and a.domain == "shipping"
    assert a.turns() == CONV[1:3] and a.messages() == CONV and b.messages() == CONV[1:]
    # ids are content hashes: stable across files, and a different context is a different prompt
    assert len({a.id, b.id, c.id}) == 3 and a.id == prompts.load(None, str(f), None)[0].id


@pytest.mark.parametrize("msgs,msg", [
    (CONV[:3], ":1: messages must end with a user turn (the assistant answers it), not 'assistant'"),
    ([{"role": "tool", "content": "x"}, CONV[1]], ":1: messages[0]: unknown role 'tool'"),
    ([CONV[1], {"role": "assistant", "content": "  "}, CONV[3]], ":1: messages[1]: empty content"),
    ([CONV[1], CONV[0], CONV[3]], ":1: messages[1]: a system turn may only come first"),
    ([], ":1: field `messages` must be a non-empty list"),
    ([{"role": "user"}], ":1: messages[0] must be an object with exactly `role` and `content`"),
])
def test_bad_messages_are_one_line_naming_the_row(tmp_path: Path, msgs, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(UserError) as e:
        prompts.load(None, str(f), None)
    assert str(e.value).startswith(str(f)) and msg in str(e.value) and "\n" not in str(e.value)


def test_exact_duplicates_are_dropped_and_counted_unless_kept(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "Where is my order?"}, {"prompt": "Refund please"}, {"prompt": "Where is my order?"},
            {"messages": CONV}, {"messages": CONV}, {"messages": CONV[1:]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = prompts.load(None, str(f), None)
    assert [r.prompt for r in recs] == ["Where is my order?", "Refund please", CONV[-1]["content"],
                                        CONV[-1]["content"]] and recs.duplicates == 2
    kept = prompts.load(None, str(f), None, keep_duplicates=True)
    assert len(kept) == 6 and kept.duplicates == 0 and len({r.id for r in kept}) == 6
    f.write_text(json.dumps({"prompt": "a", "id": "x"}) + "\n" + json.dumps({"prompt": "b", "id": "x"}) + "\n")
    with pytest.raises(UserError, match="duplicate prompt id 'x'"):  # one id for two prompts: ambiguous
        prompts.load(None, str(f), None)


def test_hf_dataset_options_on_local_data(tmp_path: Path):
    import datasets

    d = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"q": [f"q{i}?" for i in range(10)]}),
                          "test": datasets.Dataset.from_dict({"q": ["t?"]})}).save_to_disk(str(d))
    for split, want in (("train[:3]", ["q0?", "q1?", "q2?"]), ("train[-2:]", ["q8?", "q9?"]),
                        ("train[50%:70%]", ["q5?", "q6?"]), ("test", ["t?"])):
        assert [r.prompt for r in prompts.load(None, None, str(d), split=split, column="q")] == want, split
    with pytest.raises(UserError, match=r"prompts.split: 'train\[x\]' is not a split"):
        prompts.load(None, None, str(d), split="train[x]", column="q")
    # a messages column: multi-turn prompts from a dataset
    conv = tmp_path / "conv"
    datasets.Dataset.from_dict({"conversation": [CONV, CONV[1:]]}).save_to_disk(str(conv))
    a, b = prompts.load(None, None, str(conv), messages_column="conversation")
    assert a.messages() == CONV and b.messages() == CONV[1:]
    # load_dataset's own options on local files: a subset (config) from the folder's README, data_files, slices
    sub = tmp_path / "subsets"
    sub.mkdir()
    (sub / "a.jsonl").write_text("".join(json.dumps({"prompt": f"a{i}"}) + "\n" for i in range(4)))
    (sub / "b.jsonl").write_text("".join(json.dumps({"prompt": f"b{i}"}) + "\n" for i in range(4)))
    (sub / "README.md").write_text("---\nconfigs:\n- config_name: a\n  data_files: a.jsonl\n"
                                   "- config_name: b\n  data_files: b.jsonl\n---\n")
    assert [r.prompt for r in prompts.load(None, None, str(sub), config="b", split="train[1:3]")] == ["b1", "b2"]
    got = prompts.load(None, None, "json", data_files=str(sub / "a.jsonl"), split="train[:2]")
    assert [r.prompt for r in got] == ["a0", "a1"]
    with pytest.raises(UserError, match=r"prompts.dataset: cannot load .* split 'train'"):
        prompts.load(None, None, str(sub), config="nope")


def test_line_separators_inside_json_strings_are_not_line_ends(tmp_path: Path):
    # JSON allows U+2028, U+2029, U+0085 (and \x1c-\x1e, \x0b, \x0c) raw inside a string; only "\n" ends a line
    odd = "one\u2028two\u2029three\u0085four\x1cfive\x0csix"
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": odd, "id": "a"}, ensure_ascii=False) + "\r\n"
                 + json.dumps({"prompt": "second", "id": "b"}) + "\n", encoding="utf-8")
    assert "\u2028" in f.read_text(encoding="utf-8")  # written raw, as the test means
    a, b = prompts.load(None, str(f), None)
    assert (a.prompt, b.prompt) == (odd, "second")


def test_auto_id_covers_system_and_every_turn(tmp_path: Path):
    """The same question under two system prompts, or after two different earlier turns, is two prompts (issue
    24 item 5): each gets its own id. It used to hash the last turn only, so the file was refused as "duplicate
    prompt id"."""
    import hashlib

    q = "Where is my order?"
    rows = [{"prompt": q}, {"prompt": q, "system": "Be brief."}, {"prompt": q, "system": "Be thorough."},
            {"messages": [{"role": "system", "content": "Be formal."}, {"role": "user", "content": q}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": q}]},
            {"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey."},
                          {"role": "user", "content": q}]}]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = prompts.load(None, str(f), None)
    assert len(recs) == 6 and len({r.id for r in recs}) == 6 and recs.duplicates == 0
    # a plain prompt (one turn, no system) keeps the id it always had: existing ledgers and splits stay valid
    assert recs[0].id == "p-" + hashlib.sha256(q.encode()).hexdigest()[:12]
    # and the same conversation gets the same id from another file (content-derived, not positional)
    g = tmp_path / "q.jsonl"
    g.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    assert [r.id for r in prompts.load(None, str(g), None)] == [r.id for r in reversed(recs)]


def test_an_id_reused_for_other_content_is_refused_even_if_that_content_came_before(tmp_path: Path):
    """Rows 1 and 3 share an id but not a prompt; row 3's text is row 2's. keep_duplicates once took row 3 for a
    copy of row 1 ("a-dup2"), grouping it with row 1's split and shard though it is another question."""
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in
                         [{"prompt": "X?", "id": "a"}, {"prompt": "Y?", "id": "b"}, {"prompt": "Y?", "id": "a"}]))
    with pytest.raises(UserError, match=r"duplicate prompt id 'a' \(rows 1 and 3\)"):
        prompts.load(None, str(f), None, keep_duplicates=True)


def test_a_check_id_used_twice_in_one_row_is_refused(tmp_path: Path):
    """A row's results are keyed by check id: the second check would overwrite the first's result."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n' + json.dumps({"prompt": "b", "checks": [
        {"id": "k", "kind": "length", "max": 5}, {"id": "k", "kind": "json"}]}) + "\n")
    with pytest.raises(UserError) as e:
        prompts.load(None, str(f), None)
    assert str(e.value) == f"{f}:2: checks[1]: check id 'k' is used twice in the row"


def test_the_same_text_with_other_checks_or_kind_is_another_row_not_a_duplicate(tmp_path: Path):
    """Issue 31 item 17: exact-duplicate dedup compared the text alone, so a row asking the same question under
    another check (max 30 words against max 200) or another kind was dropped as a duplicate of the first, and its
    check never ran. Rows with their own ids are both kept (one split side: the same question); rows that would
    share an id (no `id`: a hash of the text) are one line asking for ids."""
    check = lambda n: [{"id": "short", "kind": "length", "max": n}]  # noqa: E731
    rows = [{"id": "a", "prompt": "Explain refunds.", "checks": check(30)},
            {"id": "b", "prompt": "Explain refunds.", "checks": check(200)},
            {"id": "c", "prompt": "Explain refunds.", "kind": "benign", "checks": check(30)},
            {"id": "d", "prompt": "Explain refunds.", "checks": check(30)}]  # a true duplicate of row 1
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = prompts.load(None, str(f), None)
    assert [r.id for r in recs] == ["a", "b", "c"] and recs.duplicates == 1
    assert len({r.group for r in recs}) == 1  # one question: one split side
    f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows[:2]))
    with pytest.raises(UserError, match=r"rows 1 and 2 are the same prompt \(id 'p-[0-9a-f]+'\) with another "
                                        r"`kind` or `checks`: give each row its own `id`"):
        prompts.load(None, str(f), None)
