"""What a user sees on the terminal with the real engine: our progress and summary, not vLLM's log lines (those go
to <run dir>/engine.log), and a Ctrl-C that says what is saved and exits 130, with no traceback (slow)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

# vLLM's log format ("WARNING 11-24 13:02:11 [cpu.py:88] ..."), and the other engine noise the issue names
ENGINE_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d|Triton|NUMA|libtcmalloc|libiomp")


def test_quiet_terminal_and_ctrl_c_on_the_real_engine(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cai_gen", "limit=2", "samples=2", "backend.enforce_eager=true",
           "sampling.max_tokens.respond=48", "sampling.max_tokens.critique=32", "sampling.max_tokens.revise=48",
           f"hydra.run.dir={out}"]
    # its own session, so the Ctrl-C below reaches the engine's worker processes too, as a terminal's does
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    led = out / "work" / "generations.jsonl"
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 900:
        if led.exists() and len(led.read_text().splitlines()) >= 4:  # the answers are in: stop mid-critique
            break
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=300)
    n = len(led.read_text().splitlines())
    assert p.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"cai_gen: stopped; {n} generations saved; resume: python -m cai_gen limit=2 "), last
    assert last.endswith(f" hydra.run.dir={out.resolve()}"), last  # the command below is that one

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    terminal = (r.stdout + r.stderr).splitlines()
    noise = [line for line in terminal if ENGINE_LINE.search(line)]
    assert noise == [], noise[:5]
    assert any(line.startswith("engine: vllm loading") for line in terminal)
    assert any(line.startswith("respond: ") and "requests reused" in line for line in terminal)  # our lines stay
    log = (out / "engine.log").read_text()
    assert ENGINE_LINE.search(log)  # the engine's lines are kept, in the run dir
    keys = [json.loads(x)["key"] for x in led.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # nothing generated twice across the stop
