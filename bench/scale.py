"""Does orchestration memory stay flat and time stay linear as a run grows? The fake engine with no delay (so
the engine costs nothing and every second and byte is cai_gen's), samples=1, at several row counts. Each size runs
in its own subprocess, so its peak RSS is its own.

    .venv/bin/python bench/scale.py                 # 8K, 32K, 128K rows
    .venv/bin/python bench/scale.py --rows 2000 8000

Prints per size: peak RSS (MB), and its two parts at their peaks (sampled every 20 ms from /proc/self/status):
anonymous memory (what the run holds) and file-backed pages (the datasets copies' Arrow files, memory-mapped while
they are written: page cache the kernel takes back under pressure, so they grow with the files without costing
memory); seconds, seconds per 1,000 rows, engine requests per second the orchestration sustained; then
`RSS(largest)/RSS(smallest)`, the same for anonymous memory, and `s per 1K rows (largest)/(smallest)`
(1.0 = flat / linear).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sample_peaks(peak: dict) -> None:
    """Peak anonymous and file-backed resident memory of this process, every 20 ms (a daemon thread)."""
    import threading

    def loop():
        while True:
            with open("/proc/self/status") as f:
                st = dict(line.split(":", 1) for line in f)
            for k, name in (("anon_mb", "RssAnon"), ("file_mb", "RssFile")):
                peak[k] = max(peak.get(k, 0), int(st[name].split()[0]) // 1024)
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True).start()


def child(rows: int, out: Path) -> dict:
    peak: dict = {}
    sample_peaks(peak)
    sys.path.insert(0, str(ROOT))
    from cai_gen import pipeline
    from cai_gen.config import compose
    from cai_gen.progress import Tracker
    from rich.console import Console

    prompts = out.parent / "prompts.jsonl"
    with open(prompts, "w") as f:  # distinct prompts, realistic length (about 25 words)
        for i in range(rows):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Order {i} arrived damaged and the box was open; "
                                "I need a replacement before Friday, what are my options and who pays return shipping?"})
                    + "\n")
    cfg = compose("backend=fake", f"prompts.path={prompts}", "samples=1")
    t = time.perf_counter()
    s = pipeline.run(cfg, out, tracker=Tracker(console=Console(quiet=True)))
    secs = time.perf_counter() - t
    reqs = sum(v["requests"] for v in s["stages"].values())
    return {"rows": s["rows"], "kept": s["kept"], "seconds": round(secs, 1), "requests": reqs,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[8000, 32000, 128000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.out))))
        return
    res = []
    for n in a.rows:
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, __file__, "--child", str(n), "--out", f"{d}/run"],
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                sys.exit(f"scale: {n} rows failed: {r.stderr[-2000:]}")
            v = json.loads(r.stdout.strip().splitlines()[-1])
        v["s_per_1k_rows"] = round(v["seconds"] / n * 1000, 2)
        v["requests_per_s"] = round(v["requests"] / v["seconds"])
        res.append(v)
        print(f"{n:>8} rows  peak RSS {v['peak_rss_mb']:>6} MB (anon {v['anon_mb']:>5}, file {v['file_mb']:>5})  "
              f"{v['seconds']:>7.1f} s  "
              f"{v['s_per_1k_rows']:>5.2f} s/1K rows  {v['requests_per_s']:>6} requests/s", flush=True)
    lo, hi = res[0], res[-1]
    print(f"RSS({hi['rows']})/RSS({lo['rows']}): {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}")
    print(f"anon({hi['rows']})/anon({lo['rows']}): {hi['anon_mb'] / lo['anon_mb']:.2f}")
    print(f"s per 1K rows ({hi['rows']})/({lo['rows']}): {hi['s_per_1k_rows'] / lo['s_per_1k_rows']:.2f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
