"""The default run as a new user sees it: `python -m cai_gen` end to end, one fresh process per setting.

For each setting: engine start, the first kept pair on screen (the terminal preview's "pair 1" line), the whole
run's wall time, generated tokens, tok/s, kept pairs and tokens per kept pair. The first setting is the baseline;
every other prints its ratios against it (wall, first pair, tok/s, kept). Run it on an idle machine: a second
engine or a test suite beside it changes every figure.

    .venv/bin/python bench/first_run.py                                  # in_flight 32 (auto on CPU) vs 64 vs all
    .venv/bin/python bench/first_run.py --set "samples=1" --set "samples=1 limit=40"   # any override sets
    .venv/bin/python bench/first_run.py --keep /tmp/fr                  # keep the run dirs to read

Each setting is one default run: about 5.5 min on 2 CPU cores (samples=2: about 10).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETS = ["in_flight=auto", "in_flight=64", "in_flight=null"]


def one(overrides: str, out: Path) -> dict:
    """Run the default run with these overrides into out; time what the terminal shows."""
    cmd = [sys.executable, "-m", "cai_gen", f"hydra.run.dir={out}", *shlex.split(overrides)]
    env = dict(os.environ, COLUMNS="100")
    t0 = time.perf_counter()
    up = first = None
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:
            now = time.perf_counter() - t0
            if up is None and line.startswith("engine: up"):
                up = now
            if first is None and line.startswith("pair 1 "):
                first = now
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"set": overrides, "rc": p.returncode}
    s = json.loads((out / "summary.json").read_text())
    gen = sum(v.get("completion_tokens", 0) for v in s["stages"].values())
    return {"set": overrides, "rc": 0, "engine_up_s": up, "first_pair_s": first, "wall_s": wall,
            "generation_s": s["generation_seconds"], "tokens": gen, "tok_s": gen / max(s["generation_seconds"], 1e-9),
            "rows": s["rows"], "kept": s["kept"], "tokens_per_kept": gen / max(s["kept"], 1),
            "reasons": s.get("reasons", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", help="one setting: space-separated overrides (repeatable; the "
                    "first is the baseline). Default: " + " | ".join(DEFAULT_SETS))
    ap.add_argument("--keep", type=Path, help="keep the run dirs here")
    a = ap.parse_args()
    sets = a.set or DEFAULT_SETS
    base = a.keep or Path(tempfile.mkdtemp(prefix="first_run-"))
    base.mkdir(parents=True, exist_ok=True)
    res = []
    for i, s in enumerate(sets):
        r = one(s, base / f"run{i}")
        res.append(r)
        print(json.dumps(r), flush=True)
    b = res[0]
    print(f"\n{'setting':32} {'engine':>7} {'1st pair':>9} {'wall':>7} {'tok/s':>6} {'kept':>5} {'tok/kept':>9}")
    for r in res:
        if r["rc"]:
            print(f"{r['set']:32} failed (rc {r['rc']})")
            continue
        fp = f"{r['first_pair_s']:.0f}s" if r["first_pair_s"] else "none"
        print(f"{r['set']:32} {r['engine_up_s'] or 0:6.0f}s {fp:>9} {r['wall_s']:6.0f}s {r['tok_s']:6.0f} "
              f"{r['kept']:5d} {r['tokens_per_kept']:9.0f}")
    for r in res[1:]:
        if r["rc"] or b["rc"]:
            continue
        fp = (f"{r['first_pair_s'] / b['first_pair_s']:.2f}" if r["first_pair_s"] and b["first_pair_s"] else "n/a")
        print(f"{r['set']} of {b['set']}: wall {r['wall_s'] / b['wall_s']:.2f}, first pair {fp}, "
              f"tok/s {r['tok_s'] / b['tok_s']:.2f}, kept {r['kept'] / max(b['kept'], 1):.2f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
