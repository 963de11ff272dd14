"""Blind read of a run's kept pairs: shuffle chosen/rejected into A/B, hide the key, score the reader's verdicts.

    .venv/bin/python bench/blind.py deal RUN_DIR OUT_DIR [--n 30] [--seed 0]
        OUT_DIR/pairs.md   what the reader sees: the prompt, answer A, answer B (no ids, no labels)
        OUT_DIR/key.json   which letter is the revision (do not open before deciding)
    .venv/bin/python bench/blind.py score OUT_DIR/key.json VERDICTS
        VERDICTS: one line per item, "N: A|B|TIE" (the better answer, or TIE when neither is better)
        -> revision better / original better / tie counts
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path


def deal(run: Path, out: Path, n: int, seed: int) -> None:
    prefs = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    pick = rng.sample(prefs, min(n, len(prefs)))
    out.mkdir(parents=True, exist_ok=True)
    md, key = [], {}
    for i, p in enumerate(pick, 1):
        rev_first = rng.random() < 0.5
        a, b = (p["chosen"], p["rejected"]) if rev_first else (p["rejected"], p["chosen"])
        key[str(i)] = {"revision": "A" if rev_first else "B", "id": p["id"]}
        prompt = "\n".join(f"[{m['role']}] {m['content']}" for m in p["prompt"])
        md += [f"## Item {i}", "", "**Prompt**", "", prompt, "", "**Answer A**", "", a[-1]["content"], "",
               "**Answer B**", "", b[-1]["content"], ""]
    (out / "pairs.md").write_text("\n".join(md))
    (out / "key.json").write_text(json.dumps(key, indent=1))
    print(f"{len(pick)} items -> {out / 'pairs.md'} (key: {out / 'key.json'})")


def score(key_file: Path, verdicts: Path) -> None:
    key = json.loads(key_file.read_text())
    got = dict(re.findall(r"^\s*(\d+)\s*[:.)-]\s*(A|B|TIE)\b", verdicts.read_text(), re.MULTILINE | re.IGNORECASE))
    counts = {"revision better": 0, "original better": 0, "tie": 0}
    for i, k in key.items():
        v = got.get(i, "").upper()
        if not v:
            sys.exit(f"{verdicts}: no verdict for item {i}")
        counts["tie" if v == "TIE" else "revision better" if v == k["revision"] else "original better"] += 1
    print(" / ".join(f"{k}: {v}" for k, v in counts.items()), f"(of {len(key)})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deal")
    d.add_argument("run", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--n", type=int, default=30)
    d.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("key", type=Path)
    s.add_argument("verdicts", type=Path)
    a = ap.parse_args()
    deal(a.run, a.out, a.n, a.seed) if a.cmd == "deal" else score(a.key, a.verdicts)
