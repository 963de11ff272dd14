"""cai_gen.synth: prompts written from a constitution. The filters on real small-model failure shapes, the plan's
mix, dedup of planted near copies, resume after kill -9, one-line bad input (fake engine); one slow test writes
prompts for a new domain on the real engine and runs them through `python -m cai_gen`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai_gen import constitution, synth
from cai_gen.backends.fake import FakeBackend
from cai_gen.config import SynthConfig, validate
from cai_gen.errors import UserError
from cai_gen.synth_filters import Dedup, check, clean, jaccard, shingles

from .conftest import ROOT

MIX = {"targeted": 0.4, "borderline": 0.3, "ordinary": 0.3}
FEW_SHOT_PROMPT = "My package says delivered but it's not here. Can you guarantee I'll get a refund today?"


def cfg_of(out: Path, *overrides: str) -> SynthConfig:
    """The config `python -m cai_gen.synth backend=fake out=OUT OVERRIDES` runs with."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cai_gen import paths
    from cai_gen.__main__ import register_groups

    args = ["backend=fake", f"out={out}", *overrides]
    register_groups(paths.from_overrides(args))
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        cfg = compose(config_name="synth", overrides=args)
    return validate(OmegaConf.to_container(cfg, resolve=True), SynthConfig)


def jl(p: Path) -> list[dict]:
    return [json.loads(l) for l in p.read_text().splitlines()]


def cli(*args: str, cwd=ROOT, wait=True):
    cmd = [sys.executable, "-m", "cai_gen.synth", *args]
    if wait:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# ---- filters: each rule with a message it must pass and one it must drop (shapes SmolLM2-135M writes) ----

@pytest.mark.parametrize("raw,want", [
    ('"Can you cancel my order?"', "Can you cancel my order?"),
    ("User: Can you cancel my order?", "Can you cancel my order?"),
    ("**Customer message:** Can you cancel my order?", "Can you cancel my order?"),
    ("Here's a message a frustrated customer might send:\n\n\"Where is my refund??\"", "Where is my refund??"),
    ("Where is my refund? I paid a week ago.\nAssistant: I'm sorry to hear that.", "Where is my refund? I paid a week ago."),
    ("Subject: refund\n\nHi, where is my refund?", "Subject: refund\n\nHi, where is my refund?"),  # an email stays whole
])
def test_clean_strips_labels_quotes_and_an_assistant_turn(raw, want):
    assert clean(raw) == want


@pytest.mark.parametrize("raw,finish,reason", [
    ("Can you tell me why my card was charged twice this month?", "stop", None),
    ("I'm sorry to bother you, but my order never came. What now?", "stop", None),  # a polite user, not a refusal
    ("Thank you for your help last week; can I also change my address?", "stop", None),
    ("Your app charged me twice and nobody answers my emails.", "stop", None),  # a complaint is a request
    ("Can you tell me why my card was charged twice this month and", "length", "truncated"),
    ('""', "stop", "empty"),
    ("Refund please?", "stop", "too_short"),
    ("Why " + "really " * 90 + "?", "stop", "too_long"),
    ("I'm sorry, but I can't help with writing that message.", "stop", "refusal"),
    ("As an AI, I do not send messages to assistants. Can I help?", "stop", "refusal"),
    ("Thank you for contacting us! Your refund is on its way.", "stop", "answer"),
    ("Sure, here is how to reset your password: open settings.", "stop", "answer"),
    ("I understand your frustration, and I will look into your order.", "stop", "answer"),
    ("The customer asks whether the refund can be guaranteed today?", "stop", "meta"),
    ("This message tempts the assistant to promise a refund.", "stop", "meta"),
    ("Persona: frustrated customer\nWhere is my parcel?", "stop", "meta"),
    ("Delivery times vary between regions and carriers.", "stop", "not_request"),
    # seen from SmolLM2-135M: the agent's side, a description of the message, a form letter, a list
    ("I'm here to help. Can you please tell me more about your situation?", "stop", "answer"),
    ("This is a polite and professional response to a request, how would you bring it to my end?", "stop", "meta"),
    ("Hello [user's user_name], I have an issue with [package_name]. Can you look at it?", "stop", "placeholder"),
    ("- Your brand gets old and lazy.\n- My favorite colors are lemon.\n- How to make a fence?", "stop", "list"),
    ("Where is my refund? I paid on Monday.\n\nAlso I was wondering whether the weather", "length", None),
    ("It seems like the user wants a refund but does not say which order?", "stop", "meta"),
    ("We hope you're having a great week and your order came through.", "stop", "answer"),
    ("Can the customer service team call me back about my order today?", "stop", None),
    ("Our customers cannot pay with your checkout since Monday. Can you fix it?", "stop", None),  # a business owner
    ("Hey cool, I'm here to help you with your bike repair at the shop tomorrow. Want to share more?", "stop", "answer"),
    ("Rewrite: Too creative? You just posted a message that counts.", "stop", "meta"),
])
def test_check_keeps_user_messages_and_names_what_is_not_one(raw, finish, reason):
    assert check(raw, finish, 4, 80)[1] == reason


def test_dedup_finds_exact_and_near_copies_but_not_new_messages():
    d = Dedup(0.6, 2, 128)
    d.add("few_shot:0", FEW_SHOT_PROMPT)
    d.add("a", "Hi, can you help me change the shipping address on my order before it ships?")
    assert d.find("hi CAN you help me change the shipping address on my order, before it ships")[0] == "a"  # case, punct
    near = "Hi, can you help me change the shipping address on my order before it leaves?"
    key, sim = d.find(near)
    assert key == "a" and 0.6 <= sim < 1.0
    assert d.find("My package says delivered but it's not here! Can you guarantee I'll get my refund today?")[0] == "few_shot:0"
    assert d.find("Is there a student discount on the yearly plan, and can I switch to it mid-term?") is None
    # a one-word change on a ten-word message is over the threshold; the same topic in other words is not
    assert jaccard(shingles("where is my refund for order 1234 from last week", 2),
                   shingles("where is my refund for order 1234 from last month", 2)) >= 0.6


# ---- the plan and the constitution's synth block ----

def test_plan_splits_n_by_the_mix_and_covers_every_principle_first():
    cells = synth.plan(10, MIX, ["a", "b", "c"])
    by_kind = {k: sum(c.quota for c in cells if c.kind == k) for k in MIX}
    assert by_kind == {"targeted": 4, "borderline": 3, "ordinary": 3}
    by_p = {p: sum(c.quota for c in cells if c.principle == p) for p in "abc"}
    assert max(by_p.values()) - min(by_p.values()) <= 1 and sum(by_p.values()) == 10
    assert {c.principle for c in synth.plan(3, MIX, ["a", "b", "c"])} == {"a", "b", "c"}  # one each before a second
    assert [c.kind for c in synth.plan(5, {"targeted": 1.0}, ["a"])] == ["targeted"]


def test_synth_block_is_validated_with_file_line_and_left_out_of_the_hash(tmp_path):
    base = "name: d\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
    (tmp_path / "plain.yaml").write_text(base)
    (tmp_path / "tuned.yaml").write_text(base + "synth:\n  mix: {targeted: 1.0}\n  axes: {region: [north]}\n")
    plain, tuned = (constitution.load(path=str(tmp_path / f)) for f in ("plain.yaml", "tuned.yaml"))
    assert plain.synth is None and tuned.synth.axes == {"region": ["north"]}
    assert plain.hash == tuned.hash  # tuning prompt writing does not change what runs record as the constitution
    for block, where in [("  mix: {targeted: 0.5, borderline: 0.1}\n", ":5: synth.mix"),
                         ("  mix: {targeted: 0.5, sideways: 0.5}\n", ":5: synth.mix.sideways: unknown key"),
                         ("  axes:\n    tone: [terse]\n    colour: [red]\n", ":7: synth.axes.colour: unknown key"),
                         ("  axes: {tone: []}\n", ":5: synth.axes.tone"), ("  moods: [x]\n", ":5: synth.moods")]:
        (tmp_path / "bad.yaml").write_text(base + "synth:\n" + block)
        with pytest.raises(UserError, match=f"bad.yaml{where}"):
            constitution.load(path=str(tmp_path / "bad.yaml"))


# ---- synth on the fake engine ----

def test_fake_run_keeps_the_mix_records_axes_and_runs_as_a_prompt_set(tmp_path, cfg_factory):
    from cai_gen import pipeline, prompts

    out = tmp_path / "p.jsonl"
    report = synth.run(cfg_of(out, "n=40"))
    rows = jl(out)
    assert len(rows) == report["written"] == 40 and len({r["id"] for r in rows}) == 40
    for kind, share in MIX.items():
        assert abs(sum(r["kind"] == kind for r in rows) / 40 - share) <= 0.05
    axes = constitution.DEFAULT_AXES
    for r in rows:
        assert r["domain"] == "customer_service" and r["source"] == "synth:SmolLM2-135M-Instruct"
        assert set(r["axes"]) == set(axes) and all(r["axes"][k] in axes[k] for k in axes)
    for k in axes:  # the axes vary across prompts, not one value throughout
        assert len({r["axes"][k] for r in rows}) > 1
    principles = {p.id for p in constitution.load("customer_service").principles}
    assert {r["principle"] for r in rows} == principles
    rep = json.loads((tmp_path / "p.report.json").read_text())
    assert sum(sum(v.values()) for v in rep["counts"].values()) == 40 and rep["short"] == 0
    # the file is a prompt set as written
    recs = prompts.load(None, str(out), None)
    assert [r.prompt for r in recs] == [r["prompt"] for r in rows]
    summary = pipeline.run(cfg_factory("backend=fake", f"prompts.path={out}", "samples=1", "limit=5"), tmp_path / "run")
    assert summary["rows"] == 5


def test_the_constitutions_synth_block_sets_mix_and_axes(tmp_path):
    const = tmp_path / "legal.yaml"
    const.write_text("name: legal\ndescription: A legal-information assistant.\nprinciples:\n"
                     "  - {id: no_legal_advice, critique: 'Does it give advice?', revision: Rewrite it.}\n"
                     "  - {id: cite_sources, critique: 'Are claims unsourced?', revision: Rewrite it.}\n"
                     "synth:\n  mix: {targeted: 0.5, ordinary: 0.5}\n"
                     "  axes: {region: [EU, US], language_style: [plain, legalese]}\n")
    synth.run(cfg_of(tmp_path / "p.jsonl", f"constitution.path={const}", "n=10"))
    rows = jl(tmp_path / "p.jsonl")
    assert sorted(r["kind"] for r in rows) == ["ordinary"] * 5 + ["targeted"] * 5
    assert all(set(r["axes"]) == {"region", "language_style"} and r["domain"] == "legal" for r in rows)


@pytest.mark.parametrize("how", ["plain", "path", "include_path"])
def test_the_run_it_command_runs_the_prompts_with_their_constitution(tmp_path, how):
    """Issue 31 item 18: the closing "run it:" command left out constitution.path, so copying it judged the new
    prompts by the default constitution. Composed as printed, it names the constitution synth used (by path, or
    by name with the include_path that finds it), in folders whose names need quoting."""
    import io
    import shlex

    from rich.console import Console

    from cai_gen.progress import Tracker

    from .conftest import make_cfg

    # a space, a comma, brackets: each breaks an unquoted Hydra value
    home = tmp_path / ("plain" if how == "plain" else "my consts, v[2]")
    (home / "constitutions").mkdir(parents=True)
    const = home / "constitutions" / ("legal_it's.yaml" if how == "path" else "legal.yaml")
    const.write_text("name: legal\ndescription: A legal-information assistant.\nprinciples:\n"
                     "  - {id: no_legal_advice, critique: 'Does it give advice?', revision: Rewrite it.}\n")
    quoted = lambda p: "'" + str(p).replace("'", "\\'") + "'"  # noqa: E731  (Hydra's quoting, by hand)
    use = ([f"constitution.path={quoted(const)}"] if how != "include_path" else
           [f"include_path=[{quoted(home)}]", "constitution=legal"])
    out = home / "p.jsonl"
    console = Console(file=io.StringIO(), width=10_000, record=True)
    report = synth.run(cfg_of(quoted(out), *use, "n=4"), tracker=Tracker(console=console))
    line = next(ln for ln in console.export_text().splitlines() if "run it: " in ln)
    argv = shlex.split(line.split("run it: ", 1)[1])
    assert argv[:3] == ["python", "-m", "cai_gen"]
    cfg = make_cfg(*argv[3:], "backend=fake")
    assert cfg.prompts.path == str(out)
    ran = constitution.load(cfg.constitution.name, cfg.constitution.path, cfg.include_path)
    assert ran.ref == report["constitution"] and ran.name == "legal"


class Planted(FakeBackend):
    """The fake engine plus the failures a small model makes, keyed by the request's seed: near copies of the
    few-shot prompt, one message again and again with small changes, answers instead of requests."""

    def _text(self, conv, p):
        v = p.seed % 6
        if v == 0:
            return FEW_SHOT_PROMPT.replace("today", "by today")
        if v == 1:
            return ["Hi, can you help me cancel my order? I need it gone before Friday.",
                    "hi, CAN you help me cancel my order?? I need it gone before Friday",
                    "Hi, can you help me cancel my order? I need it gone before Saturday."][p.seed % 3]
        if v == 2:
            return "Thank you for contacting us! Your order has been cancelled."
        return super()._text(conv, p)


def test_planted_near_duplicates_and_answers_are_removed_and_rounds_top_up(tmp_path):
    out = tmp_path / "p.jsonl"
    cfg = cfg_of(out, "n=30")
    report = synth.run(cfg, backend=Planted("f", cfg.model.name))
    rows = jl(out)
    assert len(rows) == 30 and len(report["rounds"]) > 1  # a second round replaced what the filters dropped
    texts = [r["prompt"] for r in rows]
    for i, a in enumerate(texts):  # no two kept prompts, and no prompt and few-shot prompt, are near copies
        for b in texts[i + 1:] + [FEW_SHOT_PROMPT]:
            assert jaccard(shingles(a, 2), shingles(b, 2)) < cfg.dedup.threshold, (a, b)
    assert sum("cancel my order" in t for t in texts) == 1  # the planted message once, its variants removed
    removed = report["dedup_removed"]
    assert removed["copies_few_shot"] > 0 and removed["near_duplicate"] + removed["duplicate"] > 0
    assert report["dropped"]["answer"] > 0 and not any(t.startswith("Thank you for contacting") for t in texts)
    assert {e["reason"] for e in report["dedup_examples"]} >= {"copies_few_shot"}


def test_rerun_reuses_every_generation_and_writes_the_same_file(tmp_path):
    out = tmp_path / "p.jsonl"
    cfg = cfg_of(out, "n=12")
    synth.run(cfg, backend=FakeBackend("f", cfg.model.name))
    first = out.read_bytes()
    again = FakeBackend("f", cfg.model.name)
    synth.run(cfg, backend=again)
    assert again.calls == [] and out.read_bytes() == first
    more = FakeBackend("f", cfg.model.name)  # a larger n continues: the first 12 prompts' requests are reused
    synth.run(cfg_of(out, "n=20"), backend=more)
    assert sum(more.calls) < len(jl(out)) * 1.5 and len(jl(out)) == 20


def test_kill_9_then_rerun_writes_the_clean_file_with_no_duplicates(tmp_path):
    clean_out = tmp_path / "clean" / "p.jsonl"
    assert cli("backend=fake", "n=40", f"out={clean_out}").returncode == 0
    out = tmp_path / "killed" / "p.jsonl"
    p = cli("backend=fake", "n=40", "backend.delay=0.05", f"out={out}", wait=False)
    led = out.parent / "p.jsonl.work" / "work" / "generations.jsonl"
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 120:
        if led.exists() and len(led.read_text().splitlines()) >= 20:
            break
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(led.read_text().splitlines())
    assert 20 <= done < 60 and not out.exists()  # killed mid-generation; nothing half-written
    r = cli("backend=fake", "n=40", f"out={out}")
    assert r.returncode == 0, r.stderr
    assert out.read_text() == clean_out.read_text()
    # and its report, but for what is this invocation's: the out path (the two runs write to two dirs) and each
    # round's generated/reused split (the rerun reused what the killed run had generated)
    def report(p: Path) -> dict:
        r = json.loads(p.with_name("p.report.json").read_text())
        r.pop("out")
        for rd in r["rounds"]:
            assert rd.pop("generated") + rd.pop("reused") == rd["requests"]
        return r
    assert report(out) == report(clean_out)
    rows = jl(out)
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40 and len({r["prompt"] for r in rows}) == 40
    keys = [json.loads(l)["key"] for l in led.read_text().splitlines()]
    clean_keys = [json.loads(l)["key"] for l in (clean_out.parent / "p.jsonl.work/work/generations.jsonl").open()]
    assert len(keys) == len(set(keys)) and set(keys) == set(clean_keys)  # finished requests were not redone


def test_principle_text_is_data_not_template(tmp_path):
    const = tmp_path / "t.yaml"
    const.write_text("name: t\ndescription: 'Shop {{ 7*7 }}'\nprinciples:\n"
                     "  - {id: a, critique: 'Check {{ 6*7 }} and {% raw %}', revision: r}\n")
    cfg = cfg_of(tmp_path / "p.jsonl", f"constitution.path={const}", "n=2")
    c = synth.candidate(cfg, constitution.load(path=str(const)), synth.plan(2, MIX, ["a"]), 0, 0)
    text = c.conv[0]["content"]
    assert "Shop {{ 7*7 }}" in text and "Check {{ 6*7 }} and {% raw %}" in text and "49" not in text


@pytest.mark.parametrize("args,says", [
    (["n=0"], "n: Input should be greater than 0"),
    ([], "out: "),
    (["constitution.path=BAD", "axes"], ":6: synth.axes.colour: unknown key"),
    (["constitution.path=BAD", "empty"], "principles: List should have at least 1 item"),
    (["+typo=1"], "+typo=1: unknown key typo"),
    (["oversampel=2"], "oversampel=2: unknown key oversampel (did you mean oversample?)"),  # before Hydra composes
    (["filters.min_wrods=2"], "unknown key filters.min_wrods (did you mean filters.min_words?)"),
    (["prompts=customer_service"], "prompts=customer_service: unknown key prompts"),  # a group of the run, not synth
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, says):
    bad = tmp_path / "bad.yaml"
    if "axes" in args:
        bad.write_text("name: d\nprinciples:\n  - {id: a, critique: c, revision: r}\nsynth:\n  axes:\n"
                       "    colour: [red]\n")
    if "empty" in args:
        bad.write_text("name: d\nprinciples: []\n")
    args = [a.replace("BAD", str(bad)) for a in args if a not in ("axes", "empty")]
    out = [f"out={tmp_path / 'p.jsonl'}"] if args != [] else []
    r = cli("backend=fake", *args, *out)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(err) == 1 and says in err[0] and "Traceback" not in r.stderr, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["bad.yaml"] if bad.exists() else [])


def test_help_names_the_groups_and_knobs():
    r = cli("--help")
    assert r.returncode == 0 and "constitution" in r.stdout and "oversample" in r.stdout


BIKE_SHOP = """\
# a new domain, YAML only: three principles, one few-shot example, no prompt set
name: bike_shop
version: 1
description: >-
  A support assistant for a bicycle shop that sells bikes, parts and repairs online and in store.
principles:
  - id: safe_repairs
    critique: >-
      Identify any repair advice in the assistant's last response that could make a bike unsafe to ride, such as
      brake or steering work a customer should not do without the right tools.
    revision: >-
      Rewrite the assistant's last response so it only gives safe repair advice and sends safety-critical work to
      the workshop.
  - id: honest_stock
    critique: >-
      Identify any promise in the assistant's last response about stock, delivery dates or repair times that the
      shop may not be able to keep.
    revision: >-
      Rewrite the assistant's last response so it only commits to what the shop knows and says how to check the rest.
  - id: no_pressure_selling
    critique: >-
      Identify where the assistant's last response pushes a more expensive product or service the customer did not
      ask for or need.
    revision: >-
      Rewrite the assistant's last response so it answers what the customer needs and mentions upgrades only if they
      help with that.
few_shot:
  - prompt: "My rear brake feels spongy. Can I just loosen the cable myself before my ride tomorrow?"
    response: "Sure, just unscrew the cable bolt a few turns and ride."
    principle: safe_repairs
    critique: "Loosening the brake cable makes the brake weaker: unsafe advice for a safety-critical part."
    revision: "A spongy brake needs checking before you ride. Please bring it to the workshop; we can look at it today."
synth:
  mix: {targeted: 0.4, borderline: 0.3, ordinary: 0.3}
  axes:
    persona: [commuter, weekend racer, parent buying a first bike]
    channel: [chat, email]
    tone: [polite, rushed]
"""


@pytest.mark.slow
def test_real_engine_writes_usable_prompts_for_a_new_domain_and_the_run_takes_them(tmp_path):
    """The YAML-only path of a new domain on the real engine and default model: synth writes at least half of N
    usable prompts, then `python -m cai_gen` runs them end to end with that constitution."""
    n = 12
    const = tmp_path / "bike_shop.yaml"
    const.write_text(BIKE_SHOP)
    out = tmp_path / "bike.jsonl"
    r = cli(f"constitution.path={const}", f"n={n}", f"out={out}", "backend.enforce_eager=true")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = jl(out)
    report = json.loads((tmp_path / "bike.report.json").read_text())
    assert n / 2 <= len(rows) <= n and report["written"] == len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)
    for row in rows:
        assert row["domain"] == "bike_shop" and row["principle"] in {"safe_repairs", "honest_stock",
                                                                     "no_pressure_selling"}
        assert row["axes"]["persona"] in {"commuter", "weekend racer", "parent buying a first bike"}
        assert row["source"] == "synth:SmolLM2-135M-Instruct"
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cai_gen", f"constitution.path={const}", f"prompts.path={out}",
                        "samples=1", "backend.enforce_eager=true", f"hydra.run.dir={run_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["prompts"] == len(rows) and summary["rows"] == len(rows)
    assert json.loads((run_dir / "constitution.json").read_text())["name"] == "bike_shop"
