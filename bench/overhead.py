"""cai_gen end to end vs the raw vLLM engine, same engine, same process, same requests.

1. cai_gen: pipeline.run over the built-in prompts (respond -> critique -> revise, one batch per stage),
   recording every batch it sends to the engine.
2. raw: one LLM.chat call over exactly those recorded conversations and sampling params: the ceiling, with no
   stage dependencies, no filters, no ledger, no output files.
The prefix cache is reset before each timed part. Order is cai_gen, raw, cai_gen (a fresh run dir) and the two
cai_gen timings are averaged, so drift on a noisy machine hits both sides. Prints a table, the ratio line
`cai_gen tok/s of raw: X`, and JSON.

    .venv/bin/python bench/overhead.py --limit 12 --samples 2          # ~8 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Recorder:
    """Backend wrapper that records each batch (conversations, params) the pipeline sends."""

    def __init__(self, inner):
        self.inner, self.model, self.max_model_len = inner, inner.model, inner.max_model_len
        self.calls: list[tuple[list, list]] = []

    def count_tokens(self, convs):
        return self.inner.count_tokens(convs)

    def generate(self, convs, params, on_done=None):
        self.calls.append((convs, params))
        return self.inner.generate(convs, params, on_done)

    # the pipelined schedule's interface (cai_gen's default on vLLM)
    def submit(self, convs, params):
        self.calls.append((convs, params))
        return self.inner.submit(convs, params)

    def poll(self):
        return self.inner.poll()

    def close(self):
        pass


def start_engine(cfg, eager: bool):
    """The run config's vLLM engine, wrapped in a Recorder; returns (recorder, engine start seconds)."""
    from cai_gen.backends import make_backend
    from cai_gen.models import resolve

    opts = cfg.backend.options(cfg.model, cfg.seed) | {"enforce_eager": eager}
    t = time.perf_counter()
    engine = make_backend("vllm", resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir), cfg.model.name, opts)
    return Recorder(engine), time.perf_counter() - t


def cai_gen_pass(cfg, backend) -> dict:
    from cai_gen import pipeline
    from cai_gen.progress import Tracker

    backend.inner.llm.reset_prefix_cache()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        s = pipeline.run(cfg, Path(d), backend=backend, tracker=Tracker())
        dt = time.perf_counter() - t
    gen = sum(st["completion_tokens"] for st in s["stages"].values())
    revised = s["stages"].get(f"revise r{cfg.rounds}", {}).get("rows", 0)
    return {"seconds": dt, "tokens": gen, "requests": sum(st["requests"] for st in s["stages"].values()),
            "pairs": s["kept"], "pairs_made": revised, "cached_prompt_tokens": sum(st["cached_tokens"] for st in s["stages"].values()),
            "prompt_tokens": sum(st["prompt_tokens"] for st in s["stages"].values())}


def raw_pass(backend, calls) -> dict:
    from vllm import SamplingParams

    convs = [c for cs, _ in calls for c in cs]
    sps = [SamplingParams(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=p.seed)
           for _, ps in calls for p in ps]
    llm = backend.inner.llm
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.chat(convs, sps, use_tqdm=False)
    dt = time.perf_counter() - t
    return {"seconds": dt, "tokens": sum(len(o.outputs[0].token_ids) for o in outs), "requests": len(outs),
            "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outs),
            "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=12, help="prompts from the built-in set")
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    ap.add_argument("--eager", action="store_true", help="enforce_eager (skip compile; slower steps)")
    a = ap.parse_args()

    from cai_gen.config import compose as make_cfg

    cfg = make_cfg(f"limit={a.limit}", f"samples={a.samples}")
    rec, start = start_engine(cfg, a.eager)
    engine = rec.inner
    first = cai_gen_pass(cfg, rec)
    raw = raw_pass(rec, rec.calls)
    rec.calls.clear()
    second = cai_gen_pass(cfg, rec)
    engine.close()

    cg = {k: (first[k] + second[k]) / 2 for k in ("seconds", "tokens", "requests")}
    cg_tps, raw_tps = cg["tokens"] / cg["seconds"], raw["tokens"] / raw["seconds"]
    rows = [("engine start (s)", f"{start:.0f}", ""),
            ("requests", f"{cg['requests']:.0f}", f"{raw['requests']}"),
            ("generated tokens", f"{cg['tokens']:.0f}", f"{raw['tokens']}"),
            ("seconds", f"{cg['seconds']:.1f}", f"{raw['seconds']:.1f}"),
            ("tokens/s", f"{cg_tps:.1f}", f"{raw_tps:.1f}"),
            ("pairs kept", f"{first['pairs']} / {second['pairs']}", ""),
            ("prompt tokens from prefix cache", f"{first['cached_prompt_tokens']} of {first['prompt_tokens']}", "")]
    print(f"{'':34}{'cai_gen':>16}{'raw engine':>14}")
    for name, x, y in rows:
        print(f"{name:34}{x:>16}{y:>14}")
    print(f"cai_gen tok/s of raw: {cg_tps / raw_tps:.2f}")
    print(json.dumps({"cai_gen": [first, second], "raw": raw, "engine_start_s": start,
                      "of_raw": round(cg_tps / raw_tps, 3), "limit": a.limit, "samples": a.samples, "eager": a.eager}))


if __name__ == "__main__":
    main()
