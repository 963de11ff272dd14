"""What a user sees on the terminal with the real engine: our progress and summary, not vLLM's log lines (those go
to <run dir>/engine.log), and a Ctrl-C that says what is saved and exits 130, with no traceback (slow)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

# vLLM's log format ("WARNING 11-24 13:02:11 [cpu.py:88] ..."), and the other engine noise the issue names
ENGINE_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d|Triton|NUMA|libtcmalloc|libiomp")


def alive_in_group(pgid: int) -> list[str]:
    """The names of the live (not zombie: an orphan's zombie waits for init) processes in a process group."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            names.append(name)
    return names


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
    # 4 rows of 48-token answers may keep no pair: then the run says so and exits 1 (test_nothing_kept.py)
    assert r.returncode == 0 or (r.returncode == 1 and "cai_gen: 0 pairs kept" in r.stderr), r.stderr[-3000:]
    terminal = (r.stdout + r.stderr).splitlines()
    noise = [line for line in terminal if ENGINE_LINE.search(line)]
    assert noise == [], noise[:5]
    assert any(line.startswith("engine: vllm loading") for line in terminal)
    assert any(line.startswith("respond: ") and "requests reused" in line for line in terminal)  # our lines stay
    log = (out / "engine.log").read_text()
    assert ENGINE_LINE.search(log)  # the engine's lines are kept, in the run dir
    keys = [json.loads(x)["key"] for x in led.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # nothing generated twice across the stop


def test_sigterm_to_the_parent_alone_leaves_no_engine_process_behind(tmp_path):
    """`kill PID` or `timeout` signals only our process. Regression: Python died at once and vLLM's engine-core and
    worker processes lived on (seen: a 4 GB orphan for an hour after its bench was killed). SIGTERM now stops the
    run like a Ctrl-C, closing the engine: nothing of its process group is left."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cai_gen", "limit=2", "samples=2", "backend.enforce_eager=true",
           "sampling.max_tokens.respond=48", "sampling.max_tokens.critique=32", "sampling.max_tokens.revise=48",
           f"hydra.run.dir={out}"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own group: what is left of it can be counted and cleaned
    led = out / "work" / "generations.jsonl"
    t0 = time.time()
    try:
        while p.poll() is None and time.time() - t0 < 900:
            if led.exists() and len(led.read_text().splitlines()) >= 4:  # the engine is up and generating
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)  # the parent only, not the group
        _, stderr = p.communicate(timeout=300)
        assert p.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("cai_gen: stopped by SIGTERM; ")
        t1 = time.time()
        while (left := alive_in_group(p.pid)) and time.time() - t1 < 60:  # give an exiting process a moment
            time.sleep(0.5)
        assert not left, f"processes outlived the run: {left}"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
