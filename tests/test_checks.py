"""Each check kind on texts that pass and texts that fail, and the constitution / prompt-row forms of checks."""
import json

import pytest

from cai_gen import checks, constitution
from cai_gen.errors import UserError

CTX = checks.Context("My order 1234 hasn't arrived.", {"domain": "shipping"})


def one(**spec):
    return checks.parse([{"id": "c", **spec}])[0]


@pytest.mark.parametrize("spec,good,bad", [
    ({"kind": "regex", "pattern": r"\bguarantee"}, "I can look into it.", "I guarantee a refund."),
    ({"kind": "regex", "pattern": r"\?\s*$", "must": "match"}, "Which order is it?", "It is on its way."),
    ({"kind": "phrases", "forbidden": ["as an AI"]}, "I can help.", "As an AI, I cannot."),
    ({"kind": "phrases", "required": ["order page"]}, "See your order page.", "See your account."),
    ({"kind": "length", "max": 5}, "One two three.", "One two three four five six."),
    ({"kind": "length", "unit": "sentences", "max": 1}, "It shipped today.", "It shipped. It arrives Monday."),
    ({"kind": "length", "unit": "paragraphs", "min": 2}, "Hi.\n\nBye.", "Hi. Bye."),
    ({"kind": "contact"}, "Open the help center from your account page.", "Call us at 1-800-555-0199."),
    ({"kind": "contact"}, "Your order 1234 is late.", "Write to help@store.com for order 1234."),
    ({"kind": "contact", "types": ["url"]}, "Email us any time.", "Visit www.store-help.com/returns today."),
    ({"kind": "placeholder"}, "Dear Sam, thank you for your order.", "Dear [Customer Name], thank you."),
    ({"kind": "placeholder"}, "See [the guide](/help).", "Your order {order_id} is late."),
    ({"kind": "refusal", "must": "not_refuse"}, "Sure, go to Account > Cancel.", "I'm sorry, but I can't help with that."),
    ({"kind": "refusal", "must": "refuse"}, "I can't help with picking someone else's lock.", "First, insert a tension wrench."),
    ({"kind": "json"}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ({"kind": "repetitive"}, "It shipped today and arrives soon.", "I am here to help you. " * 4),
    ({"kind": "meta"}, "Your refund is on its way.", "The assistant's last response was vague."),
    ({"kind": "self_reference"}, "I can help with that.", "As SmolLM, I can help."),
])
def test_each_kind_passes_and_fails(spec, good, bad):
    c = one(**spec)
    assert c.passes(good, CTX) and not c.passes(bad, CTX)


def test_contact_data_the_user_gave_is_not_invented():
    c = one(kind="contact")
    mine = checks.Context("Please call me back on 020 7946 0018 or at sam@example.org", {})
    assert c.passes("We will call you on 020 7946 0018 and e-mail sam@example.org.", mine)
    assert not c.passes("We will call you on 020 7946 0019.", mine)


def test_when_limits_a_check_to_matching_prompts():
    c = one(kind="refusal", must="refuse", when={"kind": "harmful"})
    assert c.applies(checks.Context("", {"kind": "harmful"}))
    assert not c.applies(checks.Context("", {"kind": "benign"})) and not c.applies(checks.Context("", {}))
    d = one(kind="json", when={"domain": ["billing", "refunds"]})
    assert d.applies(checks.Context("", {"domain": "refunds"})) and not d.applies(CTX)


def test_judge_verdict_reads_p_yes_against_its_threshold():
    j = one(kind="judge", proposition="The response asks for a card number.", threshold=0.7)
    assert not j.verdict(0.9) and j.verdict(0.6) and not j.verdict(None)  # a reply off the choices is no pass
    k = one(kind="judge", proposition="The response answers the question.", violation_if="no")
    assert k.verdict(0.8) and not k.verdict(0.2)
    conv = j.conversation([{"role": "user", "content": "{{ 7*7 }}"}], "Send me your card number.")
    assert "{{ 7*7 }}" in conv[0]["content"] and "card number." in conv[0]["content"]  # data, not a template


def bad_check(tmp_path, spec: dict) -> tuple[str, str]:
    """(the file, the one-line error) of loading a constitution whose one principle has the one check `spec`
    (id k1, on line 7 of the file)."""
    f = tmp_path / "c.yaml"
    f.write_text("name: t\nprinciples:\n  - id: p1\n    critique: c\n    revision: r\n    checks:\n"
                 f"      - {json.dumps({'id': 'k1', **spec})}\n")
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    return str(f), str(e.value)


@pytest.mark.parametrize("spec,msg", [
    ({"kind": "regexp", "pattern": "x"}, "does not match any of the expected tags"),
    ({"kind": "regex", "pattern": "(unclosed"}, "does not compile"),
    ({"kind": "regex", "pattern": "x", "colour": 1}, "colour"),
    ({"kind": "length"}, "give `max` and/or `min`"),
])
def test_bad_check_in_a_constitution_is_one_line_naming_file_line_and_check(tmp_path, spec, msg):
    f, line = bad_check(tmp_path, spec)
    assert line.startswith(f"{f}:7:") and "(id=k1)" in line and msg in line and "\n" not in line


def test_checks_merge_by_id_through_include(tmp_path):
    (tmp_path / "_b.yaml").write_text(
        "name: b\nprinciples:\n  - id: p\n    critique: c\n    revision: r\n    checks:\n"
        "      - {id: a, kind: length, max: 10}\n      - {id: b, kind: placeholder}\n")
    (tmp_path / "c.yaml").write_text(
        "name: c\ninclude: _b.yaml\nprinciples:\n  - id: p\n    critique: c2\n    revision: r2\n    checks:\n"
        "      - {id: a, kind: length, max: 99}\n      - {id: z, kind: json}\n")
    p = constitution.load(path=str(tmp_path / "c.yaml")).principle("p")
    assert [(c.id, getattr(c, "max", None)) for c in p.checks] == [("a", 99), ("b", None), ("z", None)]


def test_a_check_id_used_twice_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: t\nprinciples:\n" + "".join(
        f"  - id: p{i}\n    critique: c\n    revision: r\n    checks: [{{id: same, kind: json}}]\n" for i in (1, 2)))
    with pytest.raises(UserError, match="check id 'same' is used twice"):
        constitution.load(path=str(f))


def test_constitutions_without_checks_keep_their_ref():
    # the ref names the data's constitution: adding the `checks` field must not change it for files without any
    c = constitution.load("helpful_honest")
    assert not c.checked and c.generation_hash == c.hash


def test_shipped_checks_pass_the_few_shot_revisions_and_fail_their_originals():
    """Every built-in check accepts its constitution's own example revisions; each checked principle's example
    original fails one of its checks (the examples teach what the checks measure)."""
    for name in ("customer_service", "verifiable_support"):
        c = constitution.load(name)
        for ex in c.few_shot:
            ctx = checks.Context(ex.prompt, {})
            assert all(k.passes(ex.revision, ctx) for p in c.principles for k in p.checks if not k.when), (name, ex.prompt)
            mine = c.principle(ex.principle).checks
            if mine:
                assert not all(k.passes(ex.response, ctx) for k in mine), (name, ex.principle)


def test_quality_filters_are_the_registry_kinds(monkeypatch):
    """quality.Filters used to call its own repetitive/meta/self_reference functions beside the registry's kinds:
    now a revision is judged by the registry's check objects, so changing a kind changes the filter."""
    from cai_gen import quality
    from cai_gen.config import FiltersCfg

    f = quality.Filters(FiltersCfg(), constitution.load("customer_service"))
    clean = "Open a claim from your order page; we will update you there."
    assert f.revision("The revised response is more polite.", "crit", "x", "where is it?") == "revision_is_meta"
    assert f.revision(clean + " - SmolLM, by Hugging Face", "crit", "x", "where is it?") == "self_reference"
    assert f.revision(clean + " - SmolLM", "crit", "x", "is SmolLM any good?") is None  # the prompt named it
    kinds = checks.kinds()
    monkeypatch.setattr(kinds["meta"], "passes", lambda self, text, ctx: True)
    monkeypatch.setattr(kinds["repetitive"], "passes", lambda self, text, ctx: "order page" not in text)
    f = quality.Filters(FiltersCfg(), constitution.load("customer_service"))
    assert f.revision("The revised response is more polite.", "crit", "x", "where is it?") is None
    assert f.revision(clean, "crit", "x", "where is it?") == "repetitive_revision"
    assert quality.check_revision(clean, "crit", 0.6) == "repetitive_revision"


@pytest.mark.parametrize("spec,tail", [
    ({"kind": "regex"}, "checks[0] (id=k1).pattern: Field required"),
    ({"kind": "regex", "pattern": "x", "colour": 1}, "checks[0] (id=k1).colour: Extra inputs are not permitted"),
])
def test_a_bad_check_reads_the_same_in_a_constitution_and_a_prompt_row(tmp_path, spec, tail):
    """One formatter for both (yamlio.validation_error): the constitution's line used to keep pydantic's union
    tag ("checks[0] (id=k1).regex.pattern"), which is no key of the file; the prompt row's did not."""
    from cai_gen import prompts

    f, line = bad_check(tmp_path, spec)
    assert line == f"{f}:7: principles[0] (id=p1).{tail}"
    with pytest.raises(UserError) as e:
        prompts._checks([{"id": "k1", **spec}], "p.jsonl:3")
    assert str(e.value) == f"p.jsonl:3: {tail}"


@pytest.mark.parametrize("name", ["verifiable_support", "customer_service"])
def test_shipped_no_guarantee_passes_a_declined_promise_and_fails_a_made_one(name):
    """Real SmolLM2 phrasings: declining to promise is the honest answer the principle asks for, not a violation."""
    from cai_gen import checks as checks_mod, constitution as constitution_mod

    const = constitution_mod.load(name, None, ())
    (c,) = [c for p in const.principles for c in p.checks if c.id == "no_guarantee"]
    ctx = checks_mod.Context("Can you promise it arrives Friday?", {"domain": "support"})
    for ok in ("I can't make promises about the delivery date.", "I cannot make any promises, but it usually takes "
               "3 days.", "Don't be swayed by false promises of faster shipping.", "I can't guarantee Friday."):
        assert c.passes(ok, ctx), ok
    for bad in ("I promise it arrives Friday.", "We guarantee delivery by Friday.", "It will definitely arrive."):
        assert not c.passes(bad, ctx), bad
    assert not c.passes("We make promises we keep: it arrives Friday.", ctx)  # only a negated "make" is a decline


@pytest.mark.parametrize("spec,text", [
    ({"kind": "refusal", "must": "refuse"}, "I\u2019m sorry, but I can\u2019t help with that."),
    ({"kind": "phrases", "required": ["can't"]}, "We can\u2019t do that."),
    ({"kind": "regex", "pattern": r"\bI'm\b", "must": "match"}, "\uff29\u2019m here."),  # full-width I, curly quote
])
def test_typographic_quotes_and_forms_read_as_ascii_in_every_text_check(spec, text):
    """A model's curly apostrophe ("I’m sorry, but I can’t help") was no refusal to the refusal check."""
    assert one(**spec).passes(text, CTX)


@pytest.mark.parametrize("name", ["verifiable_support", "customer_service"])
def test_shipped_no_guarantee_passes_a_declined_promise_with_a_curly_apostrophe(name):
    (c,) = [c for p in constitution.load(name).principles for c in p.checks if c.id == "no_guarantee"]
    assert c.passes("I can\u2019t guarantee Friday.", CTX) and not c.passes("I guarantee Friday.", CTX)


def test_a_catastrophic_pattern_runs_in_linear_time():
    """(\\w+\\s?)+$ backtracks exponentially in Python's re: a run hung on its first answer. RE2 cannot; a child
    process bounds the test so the old engine fails it instead of hanging the suite."""
    import subprocess
    import sys

    code = ("from cai_gen import checks; c = checks.parse([{'id': 'c', 'kind': 'regex', 'pattern': r'(\\w+\\s?)+$'}])[0]; "
            "print(c.passes('a' * 64 + '!', checks.Context()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "True"


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?<!not )guarantee", r"guarantee(?! of)"])
def test_a_pattern_the_linear_engine_refuses_is_one_line_at_load(tmp_path, pattern):
    f, line = bad_check(tmp_path, {"kind": "regex", "pattern": pattern})
    assert line.startswith(f"{f}:7:") and "(id=k1).pattern" in line and "RE2" in line and "\n" not in line


def test_not_after_and_not_before_excuse_a_match_as_lookarounds_did():
    c = one(kind="regex", pattern=r"\bguarantee\b", not_after="(?:not |n't )", not_before=" of")
    assert c.passes("I can't guarantee it. A guarantee of quality.", CTX)
    assert not c.passes("I can't guarantee it, but I guarantee this.", CTX)  # the second match counts


@pytest.mark.parametrize("text,ok", [
    ("See shop.com/returns or https://www.shop.com/help.", True),
    ("Go to shop.com.refund-desk.io to claim it.", False),   # another domain that starts with the given one
    ("Call 18005550199.", False), ("Call (800)5550199 today.", False), ("Write to acme-help.info.", False),
    ("Call us on +1 800 555 0100, as the team said.", True),  # the system prompt's own number is given
    ("Call 020 7946 0018.", True),                             # the prompt's +44 number without country code
    ("Your order 1234567890 shipped.", True),                  # an order number is no phone number
])
def test_contact_finds_invented_data_and_counts_the_system_prompt_as_given(text, ok):
    ctx = checks.Context("I bought it on shop.com; call me on +44 20 7946 0018.", {},
                         "You are Shop's assistant. Our line: 1-800-555-0100.")
    assert one(kind="contact").passes(text, ctx) is ok, text


@pytest.mark.parametrize("spec", [
    {"kind": "phrases", "forbidden": [""]}, {"kind": "phrases", "required": [" "]},
    {"kind": "contact", "allow": [""]}, {"kind": "contact", "types": []},
    {"kind": "length", "max": True}, {"kind": "length", "min": False, "max": 5},
])
def test_check_arguments_that_cannot_work_are_refused(spec):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        one(**spec)


def test_a_misspelt_key_gets_a_did_you_mean(tmp_path):
    from cai_gen import prompts

    f = tmp_path / "c.yaml"
    f.write_text("name: t\nprinciples:\n  - id: p1\n    critque: c\n    revision: r\n    checks:\n"
                 "      - {id: k1, kind: regex, pattern: x}\n")
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    assert str(e.value) == (f"{f}:4: principles[0] (id=p1).critque: Extra inputs are not permitted "
                            "(did you mean critique?)")
    f.write_text(f.read_text().replace("critque", "critique").replace("pattern", "patern"))
    with pytest.raises(UserError) as e:
        constitution.load(path=str(f))
    assert str(e.value).endswith(":7: principles[0] (id=p1).checks[0] (id=k1).patern: Extra inputs are not "
                                 "permitted (did you mean pattern?)")
    with pytest.raises(UserError) as e:
        prompts._checks([{"id": "k1", "kind": "length", "mx": 5}], "p.jsonl:3")
    assert str(e.value) == "p.jsonl:3: checks[0] (id=k1).mx: Extra inputs are not permitted (did you mean max?)"


def test_preflight_refuses_a_row_check_with_a_constitution_check_id_and_says_unmatched_when_values():
    from cai_gen.prompts import PromptRecord

    const = constitution.load("customer_service")
    mine = checks.parse([{"id": "no_guarantee", "kind": "length", "max": 500}])
    rec = PromptRecord("a", "Can you promise?", "support", "t", checks=tuple(mine), where="p.jsonl:4")
    with pytest.raises(UserError) as e:
        checks.preflight(const, [rec])
    assert str(e.value).startswith("p.jsonl:4: checks: id 'no_guarantee'")
    harmless = constitution.load("harmless")
    notes = checks.preflight(harmless, [PromptRecord("b", "Hi", "support", "t", kind="harmfull")])
    assert notes and all("when: no prompt has kind:" in n for n in notes)
