from pathlib import Path

import pytest

from cai_gen import constitution, turns
from cai_gen.errors import UserError


@pytest.mark.parametrize("name", constitution.available())
def test_every_constitution_loads_and_renders(name):
    c = constitution.load(name)
    assert c.principles and c.few_shot, "each shipped constitution needs few-shot examples (small models need them)"
    for p in c.principles:
        assert turns.critique_turn(c, p.id, 1)["content"].startswith(p.critique.strip())
        assert p.revision.strip() in turns.revision_turn(c, p.id, 1)["content"]
    fs = turns.few_shot_turns(c, len(c.few_shot))
    assert len(fs) == 6 * len(c.few_shot) and [m["role"] for m in fs[:6]] == ["user", "assistant"] * 3
    # few-shot revisions model the behaviour we want: no preface such as "Here is a revised response"
    from cai_gen.quality import strip_preface
    assert all(not strip_preface(ex.revision)[1] for ex in c.few_shot)


def test_shipped_sets_cover_the_required_domains():
    assert len(constitution.load("harmless").principles) == 16
    cs = {p.id for p in constitution.load("customer_service").principles}
    assert {"clarify_ambiguity", "conflicting_goals", "no_false_promises", "policy_accuracy", "over_refusal"} <= cs


def test_include_merges_base_and_local_wins(tmp_path: Path):
    (tmp_path / "_b.yaml").write_text(
        "name: b\nversion: 1\ndescription: base\nprinciples:\n"
        "  - {id: a, critique: base a, revision: base a}\n  - {id: b, critique: base b, revision: base b}\n")
    (tmp_path / "d.yaml").write_text(
        "include: _b.yaml\nname: d\nversion: 2\nprinciples:\n"
        "  - {id: b, critique: local b, revision: local b, weight: 3}\n  - {id: c, critique: c, revision: c}\n")
    c = constitution.load(path=str(tmp_path / "d.yaml"))
    assert (c.name, c.version, c.description) == ("d", 2, "base")
    assert [p.id for p in c.principles] == ["a", "b", "c"]
    assert c.principle("b").critique == "local b" and c.principle("b").weight == 3
    assert c.ref.startswith("d@2#") and len(c.hash) == 12


def test_hash_changes_with_content(tmp_path: Path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\nprinciples:\n  - {id: a, critique: q, revision: r}\n")
    h1 = constitution.load(path=str(f)).hash
    f.write_text("name: x\nprinciples:\n  - {id: a, critique: q2, revision: r}\n")
    assert constitution.load(path=str(f)).hash != h1


def test_principle_sampling_is_seeded_weighted_and_distinct_per_round():
    c = constitution.load("customer_service")
    a = [c.sample(3, 0, f"p{i}", 0) for i in range(200)]
    assert a == [c.sample(3, 0, f"p{i}", 0) for i in range(200)]
    assert a != [c.sample(3, 1, f"p{i}", 0) for i in range(200)]
    assert all(len(set(x)) == 3 for x in a)
    first = [x[0] for x in a]
    assert len(set(first)) >= 6  # all principles get used


@pytest.mark.parametrize("text,msg", [
    ("name: x\nprinciples: []\n", "principles: List should have at least 1 item"),
    ("name: x\nprinciples:\n  - {id: a, critique: q, revision: r}\n  - {id: a, critique: q, revision: r}\n",
     "duplicate principle id 'a'"),
    ("name: x\nprinciples:\n  - {id: a, critique: q, revision: r}\nfew_shot:\n"
     "  - {prompt: p, response: r, principle: zz, critique: c, revision: v}\n", "unknown principle 'zz'"),
    ("name: x\nprinciples:\n  - {id: a, revision: r}\n", "principles[0] (id=a).critique: Field required"),
    ("name: x\nprinciples:\n  - {id: a, critique: [1], revision: r}\n", "critique: Input should be a valid string"),
    ("name: x\nprinciples:\n  - {id: a, critique: q, revision: r\n", ":4: invalid YAML"),
    ("name: !!python/object/apply:os.system ['echo pwned']\nprinciples: []\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: x\nbogus: 1\nprinciples:\n  - {id: a, critique: q, revision: r}\n", "bogus: Extra inputs"),
])
def test_bad_constitutions_get_one_line_errors(tmp_path: Path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    assert msg in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_unknown_name_and_missing_file():
    with pytest.raises(UserError, match="no constitution named 'nope'.*have: customer_service"):
        constitution.load("nope")
    with pytest.raises(UserError, match="file not found"):
        constitution.load(path="/nonexistent/c.yaml")


def test_templates_treat_principle_text_as_data(tmp_path: Path):
    f = tmp_path / "j.yaml"
    f.write_text("name: j\nprinciples:\n  - {id: a, critique: 'Is {{ 7*7 }} {% if x %}ok{% endif %}?', revision: r}\n")
    c = constitution.load(path=str(f))
    assert "Is {{ 7*7 }} {% if x %}ok{% endif %}?" in turns.critique_turn(c, "a", 1)["content"]


@pytest.mark.parametrize("body,line,words", [
    ("  - id: a\n    critique: x\n   revision: y\n", 5, "bad indentation"),
    ("  - id: a\n    critique: x\n      revision: y\n", 5, "indented deeper than the key above it"),
    ("\t- id: a\n", 3, "a tab in the indentation"),
])
def test_a_yaml_indentation_error_says_so_in_words(tmp_path: Path, body, line, words):
    """The parser's "expected <block end>, but found '<block mapping start>'" said nothing to the person who
    indented a line by three spaces instead of four."""
    f = tmp_path / "c.yaml"
    f.write_text("name: t\nprinciples:\n" + body)
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: invalid YAML: ") and words in msg and "\n" not in msg and "<block" not in msg


def test_a_misspelt_top_level_key_gets_a_did_you_mean_and_its_line(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("name: t\nprincples:\n  - {id: a, critique: x, revision: y}\n")
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    assert str(e.value) == f"{f}:2: princples: Extra inputs are not permitted (did you mean principles?)"
