"""backend=openai against an in-process OpenAI-compatible stub (fast): the same output as the fake engine,
the concurrency bound, retries with backoff, giving up cleanly, and resuming. The real vLLM API server,
killed and restarted mid-run, is in test_openai_server.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import pipeline
from cai_gen.backends import Params, make_backend
from cai_gen.backends.fake import FakeBackend
from cai_gen.errors import Resumable, UserError

from .conftest import ROOT, make_cfg
from .openai_stub import Stub

NAME = "SmolLM2-135M-Instruct"


@pytest.fixture
def stub():
    s = Stub(NAME)
    yield s
    s.close()


def cfg_for(stub, *overrides):
    return make_cfg("backend=openai", f"backend.base_url={stub.url}", "backend.count_tokens=none",
                    "backend.backoff=0.01", "backend.max_model_len=2048", "limit=6", *overrides)


def backend_for(cfg):
    return make_backend("openai", "unused", cfg.model.name, cfg.backend.options(cfg.model, cfg.seed))


def files(d: Path) -> dict:
    """The run's data files, row by row, without created_at (when each generation finished), the one thing two
    independent runs differ in; reruns of one dir are compared byte for byte (test_resume.py)."""
    return {f: [{k: v for k, v in json.loads(line).items() if k != "created_at"}
                for line in (d / f).read_text().splitlines()]
            for f in ("preferences.jsonl", "rejected.jsonl", "kto.jsonl")}


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """The reference: the same config on the fake engine in-process."""
    cfg = make_cfg("backend=fake", "limit=6", "judge=self")
    out = tmp_path_factory.mktemp("fake")
    pipeline.run(cfg, out, backend=FakeBackend("fake", cfg.model.name, max_model_len=2048))
    return files(out)


@pytest.mark.parametrize("pipelined", ["true", "false"])
def test_same_output_as_the_engine_it_serves(stub, tmp_path, fake_run, pipelined):
    cfg = cfg_for(stub, "judge=self", f"pipelined={pipelined}")
    pipeline.run(cfg, tmp_path)  # the CLI path: pipeline builds the backend from the config
    assert files(tmp_path) == fake_run
    assert any("structured_outputs" in r for r in stub.requests)  # the judge's choices were forced
    assert {r["model"] for r in stub.requests} == {NAME}


def test_concurrency_is_bounded(tmp_path):
    stub = Stub(NAME, delay=0.03)
    try:
        pipeline.run(cfg_for(stub, "backend.concurrency=3", "limit=8"), tmp_path)
    finally:
        stub.close()
    assert stub.max_inflight == 3  # requests overlap, never more than the bound


def test_429_5xx_and_dropped_connections_are_retried(stub, tmp_path, fake_run):
    stub.script = ["503", "429:0", "500", "drop", "502", "429:0"]
    cfg = cfg_for(stub, "judge=self")
    be = backend_for(cfg)
    try:
        pipeline.run(cfg, tmp_path, backend=be)
    finally:
        be.close()
    assert be.retries == 6
    assert files(tmp_path) == fake_run  # retried requests came back the same: nothing lost, nothing doubled


def test_retry_after_is_capped(stub, tmp_path):
    """A server asking to wait a day is waited on for at most backoff_max."""
    stub.script = ["429:86400"]
    cfg = cfg_for(stub, "backend.backoff_max=0.05", "limit=1", "samples=1")
    be = backend_for(cfg)
    waits = []
    real = be.stop.wait
    be.stop.wait = lambda t=None: (waits.append(t), real(0))[1]
    try:
        be.generate([[{"role": "user", "content": "hi"}]], [Params(0.7, 0.9, 12, 1, None)])
    finally:
        be.close()
    assert waits == [0.05] and be.retries == 1


def test_gives_up_with_one_line_then_resumes_where_it_stopped(stub, tmp_path, fake_run):
    cfg = cfg_for(stub, "judge=self", "backend.max_retries=2")
    stub.script = [None] * 10  # ten answers, then the server is down for good
    stub.down = True
    with pytest.raises(Resumable, match=r"failed 3 times \(last: 503 scripted 503\)$"):  # __main__ adds the resume
        pipeline.run(cfg, tmp_path)
    kept = len((tmp_path / "work" / "generations.jsonl").read_text().splitlines())
    assert 1 <= kept <= stub.completed == 10  # the answers in hand when it gave up are kept
    stub.down = False
    be = backend_for(cfg)
    try:
        pipeline.run(cfg, tmp_path, backend=be)
    finally:
        be.close()
    assert files(tmp_path) == fake_run
    keys = [json.loads(x)["key"] for x in (tmp_path / "work" / "generations.jsonl").read_text().splitlines()]
    # only the missing requests were sent again: counted on the resumed run's own client (the stub's counter
    # also sees the first run's last retries landing late, which made this flaky), and nothing is in twice
    assert be.next == len(keys) - kept and len(keys) == len(set(keys))


def test_giving_up_on_the_command_line_prints_the_command_that_resumes(stub, tmp_path):
    """The default run dir is a new timestamped one: the give-up line names the command that continues this one
    (rerunning the same command would not); run as printed, it finishes there. httpx's INFO line per request
    stays off the terminal (Hydra's job logging showed every one)."""
    import os
    import shlex

    env = dict(os.environ, PYTHONPATH=str(ROOT))  # outputs/ lands in tmp_path, the code is this checkout's
    cmd = [sys.executable, "-m", "cai_gen", "backend=openai", f"backend.base_url={stub.url}", "backend.count_tokens=none",
           "backend.backoff=0.01", "backend.max_model_len=2048", "limit=6", "backend.max_retries=2"]
    stub.script = [None] * 10  # ten answers, then the server is down for good
    stub.down = True
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    runs = list(tmp_path.glob("outputs/*/*/work"))
    n = len((runs[0] / "generations.jsonl").read_text().splitlines())
    assert r.returncode == 2 and len(runs) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert last.startswith(f"cai_gen: error: backend: {stub.url}/chat/completions failed 3 times (last: 503 scripted "
                           f"503); {n} generations saved; resume: python -m cai_gen "), last
    assert "HTTP Request" not in r.stdout + r.stderr
    stub.down = False
    again = shlex.split(last.partition("; resume: ")[2])
    r = subprocess.run([sys.executable, *again[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(tmp_path.glob("outputs/*/*/work")) == runs and (runs[0].parent / "preferences.jsonl").is_file()
    keys = [json.loads(x)["key"] for x in (runs[0] / "generations.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) and len(keys) > n


def test_client_errors_fail_at_once_with_the_servers_message(stub, tmp_path):
    cfg = cfg_for(stub, "backend.served_model=no-such-model")
    with pytest.raises(UserError, match=r"answered 404: The model `no-such-model` does not exist"):
        pipeline.run(cfg, tmp_path)
    sent = [json.dumps([r["messages"], r["seed"]]) for r in stub.requests]
    assert len(set(sent)) == len(sent)  # no request was retried


def test_request_body_key_and_choice_modes(stub, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    p = Params(0.7, 0.9, 12, 42, ("A", "B"))
    for via, check in (("structured_outputs", lambda b: b["structured_outputs"] == {"choice": ["A", "B"]}),
                       ("guided_choice", lambda b: b["guided_choice"] == ["A", "B"]),
                       ("none", lambda b: "guided_choice" not in b and "structured_outputs" not in b)):
        cfg = cfg_for(stub, "backend.api_key_env=MY_KEY", f"backend.choices_via={via}", "+backend.extra_body.top_k=5")
        be = backend_for(cfg)
        try:
            be.generate([[{"role": "user", "content": "Pick {{ one }}"}]], [p])
        finally:
            be.close()
        body = stub.requests[-1]
        assert check(body) and body["top_k"] == 5
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.9, 12, 42)
        assert body["messages"][0]["content"] == "Pick {{ one }}"
    assert set(stub.auth) == {"Bearer sk-test"}


def test_url_and_retry_knobs_are_free_on_resume(stub, tmp_path):
    pipeline.run(cfg_for(stub), tmp_path)
    n = len(stub.requests)
    other = Stub(NAME)
    try:  # the same run moved to another server with other knobs: nothing regenerated
        pipeline.run(cfg_for(other, "backend.concurrency=2", "backend.max_retries=1"), tmp_path)
        assert other.requests == [] and len(stub.requests) == n
    finally:
        other.close()


def test_context_check_counts_real_tokens_and_skips_an_overlong_prompt(stub, tmp_path, default_model_dir):
    """Regression: count_tokens took len() of transformers 5's BatchEncoding (2 for every conversation), so an
    over-long prompt went to the server, got a 400 and stopped the whole run. Now it is skipped as
    prompt_too_long before sending, and the rest of the run goes on."""
    f = tmp_path / "p.jsonl"
    rows = [{"id": "long", "prompt": "Please summarise this: " + "the order arrived late again " * 500},
            {"id": "short", "prompt": "Where is my order?"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stub.context_words = 1500
    cfg = make_cfg("backend=openai", f"backend.base_url={stub.url}", "backend.count_tokens=tokenizer",
                   "backend.backoff=0.01", "backend.max_model_len=2048", f"prompts.path={f}", "samples=1")
    be = make_backend("openai", default_model_dir, cfg.model.name, cfg.backend.options(cfg.model, cfg.seed))
    try:
        n = be.count_tokens([[{"role": "user", "content": rows[0]["prompt"]}]])[0]
        assert n > 2048
        s = pipeline.run(cfg, tmp_path / "out", backend=be)
    finally:
        be.close()
    assert s["reasons"].get("prompt_too_long") == 1
    assert not any("the order arrived late again" in r["messages"][-1]["content"] for r in stub.requests)
    prefs = [json.loads(x) for x in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prefs] == ["short-s0"]


def test_a_run_moves_between_a_local_engine_and_a_server(stub, tmp_path):
    """Regression: backend.kind (and the engines' own knobs) were in the run dir's fingerprint, so a run begun on
    the local vLLM engine could not be resumed on a server of the same model, or the other way round. The
    ledger keys hold the model name, not the engine: moving reuses every finished request in both directions."""
    # local engine -> server: the vLLM config (its generations come from a stand-in engine object)
    a = tmp_path / "a"
    vcfg = make_cfg("backend=vllm", "limit=3", "backend.max_num_seqs=8")
    pipeline.run(vcfg, a, backend=FakeBackend("fake", vcfg.model.name, max_model_len=2048))
    before, first = files(a), (a / "preferences.jsonl").read_bytes()
    s = pipeline.run(cfg_for(stub, "limit=3"), a)
    assert stub.requests == [] and (a / "preferences.jsonl").read_bytes() == first and s["engine_started"] is False
    s = pipeline.run(cfg_for(stub, "limit=6"), a)        # and the server finishes the rest of the run
    assert len(stub.requests) > 0 and s["rows"] == 12
    # server -> local engine: everything is in the ledger, so the vLLM engine never even starts
    b = tmp_path / "b"
    pipeline.run(cfg_for(stub, "limit=3"), b)
    s = pipeline.run(make_cfg("backend=vllm", "limit=3"), b)
    assert s["engine_started"] is False and files(b) == before


def test_a_separate_judge_goes_to_its_own_server_and_is_checked_first(stub, tmp_path):
    """Regression: a separate judge over backend=openai was sent to the generator's base_url (and served_model),
    and nothing checked it before generation, so a typo cost the whole run and ended in a traceback."""
    jstub = Stub("qwen-judge", judge="revision")
    try:
        args = ("judge=qwen25_7b", f"judge.base_url={jstub.url}", "judge.served_model=qwen-judge", "limit=3")
        s = pipeline.run(cfg_for(stub, *args), tmp_path / "ok")
        asks_judge = lambda r: "[Answer A]" in r["messages"][-1]["content"]  # noqa: E731
        assert len(jstub.requests) == 2 * s["kept"] > 0 and all(map(asks_judge, jstub.requests))
        assert {r["model"] for r in jstub.requests} == {"qwen-judge"}
        assert not any(map(asks_judge, stub.requests))  # the generator's server judged nothing
        # a typo'd judge name or an endpoint that is down: one line at the start, nothing generated
        n = len(stub.requests)
        with pytest.raises(UserError, match=r"^judge: .* does not serve 'qwen-jugde' \(it serves: qwen-judge\)$"):
            pipeline.run(cfg_for(stub, *args[:2], "judge.served_model=qwen-jugde", "limit=3"), tmp_path / "typo")
        with pytest.raises(UserError, match=r"^judge: http://127.0.0.1:9/v1/models unreachable"):
            pipeline.run(cfg_for(stub, "judge=qwen25_7b", "judge.base_url=http://127.0.0.1:9/v1"), tmp_path / "down")
        assert len(stub.requests) == n
    finally:
        jstub.close()


HANG = """
import socket, sys, threading, time
from cai_gen.backends import Params
from cai_gen.backends.openai import OpenAIBackend
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
held = []
threading.Thread(target=lambda: [held.append(s.accept()) for _ in range(8)], daemon=True).start()
be = OpenAIBackend("x", "m", base_url=f"http://127.0.0.1:{s.getsockname()[1]}/v1", max_model_len=100,
                   count_tokens="none")
be.submit([[{"role": "user", "content": "hi"}]], [Params(0.5, 0.9, 4, 1)])
time.sleep(0.5)
be.close()
"""


def test_a_request_stuck_on_a_silent_server_does_not_hold_the_process_open():
    """Regression: request threads were the stdlib pool's, joined at interpreter exit, so a server that accepted a
    request and never answered kept a finished run's process (and this test session) alive for the read timeout
    (600 s by default). Found as a hung pytest exit."""
    r = subprocess.run([sys.executable, "-c", HANG], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


JUDGED = """name: t
version: 1
principles:
  - id: no_promise
    critique: Find promises.
    revision: Rewrite without promises.
    checks: [{id: promise, kind: judge, proposition: "The response makes a promise."}]
  - id: tone
    critique: Is it rude?
    revision: Make it kind.
"""


def test_judge_checks_go_to_the_judge_server_with_its_keys(stub, tmp_path):
    """Issue 23: a `judge` check is asked of a separate judge model when one is served (judge.model over
    backend=openai), not of the generator: every check request reaches the judge's server, none the generator's,
    and the ledger keys them on the judge's identity (a rerun without the judge server asks the generator)."""
    c = tmp_path / "c.yaml"
    c.write_text(JUDGED)
    jstub = Stub("qwen-judge", judge="revision")
    try:
        args = ("judge=qwen25_7b", f"judge.base_url={jstub.url}", "judge.served_model=qwen-judge", "limit=3",
                f"constitution.path={c}", "samples=1")
        s = pipeline.run(cfg_for(stub, *args), tmp_path / "run")
        is_check = lambda r: "Statement: The response makes a promise." in r["messages"][-1]["content"]  # noqa: E731
        checks = [r for r in jstub.requests if is_check(r)]
        assert len(checks) >= 3 and {r["model"] for r in checks} == {"qwen-judge"}  # one per original at least
        assert not any(map(is_check, stub.requests))
        trace = [json.loads(x) for x in (tmp_path / "run" / "trace.jsonl").read_text().splitlines()]
        inspect = [st for t in trace for st in t["stages"] if st.get("stage") == "inspect" and "output" in st]
        assert len(inspect) == len(checks)
        # the same run dir on the generator alone: the check requests are not the judge's, so they are asked again
        n = len(stub.requests)
        pipeline.run(cfg_for(stub, f"constitution.path={c}", "samples=1", "limit=3", "restart=true"),
                     tmp_path / "run")
        assert sum(map(is_check, stub.requests[n:])) == len(checks)
        assert s["rows"] == 3
    finally:
        jstub.close()


def test_judge_checks_on_a_local_engine_say_where_they_run(tmp_path, capsys):
    """judge.model with a local engine: the judge checks stay on the generating model (two local engines rarely
    fit), and the run says so in one line instead of silently ignoring judge.model for them."""
    from cai_gen.progress import Tracker
    from rich.console import Console
    import io

    c = tmp_path / "c.yaml"
    c.write_text(JUDGED)
    cfg = make_cfg("backend=fake", "judge=qwen25_7b", f"constitution.path={c}", "limit=2", "samples=1")
    out = io.StringIO()
    from cai_gen import constitution
    const = constitution.load(None, str(c), ())
    assert pipeline.judge_server(cfg, const, Tracker(console=Console(file=out))) is None
    assert "judge checks run on the generating model" in out.getvalue()
    assert pipeline.judge_server(make_cfg("backend=fake", f"constitution.path={c}"), const,
                                 Tracker(console=Console(file=io.StringIO()))) is None
