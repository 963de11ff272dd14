"""What `serve --overlap` costs per request on a large review queue: a top-up that hands out items (a full scan, once
per --batch verdicts of a reviewer, under the write lock), one that has nothing to do (the common case, no lock),
the reviewer's queue and list page, and the admin view's numbers.

    .venv/bin/python bench/review_assign.py [--items 20000] [--reviewers 10] [--overlap 2] [--batch 10]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cai_gen.review import api, assign, db


def timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--reviewers", type=int, default=10)
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--batch", type=int, default=10)
    a = p.parse_args()
    conn = db.connect(Path(tempfile.mkdtemp()) / db.FILE)
    db.sync(conn, [{"id": f"i{k}", "prompt": [{"role": "user", "content": f"question {k}"}], "original": "o",
                    "revision": "r", "rounds": [{"principle": "p", "critique_request": "c"}], "routed_by": ["domain"],
                    "domain": "billing"} for k in range(a.items)])
    names = [f"r{k}" for k in range(a.reviewers)]
    for r in names:  # everyone holds a batch, and half the items have a verdict
        assign.top_up(conn, r, a.overlap, a.batch)
    db.insert(conn, [db.verdict_row(conn, f"i{k}", names[k % len(names)], "accept") for k in range(a.items // 2)])
    k = a.overlap
    print(f"{a.items} items, {a.items // 2} verdicts, {a.reviewers} reviewers, --overlap {k} --batch {a.batch}")
    print(f"  top_up handing out a batch   {timed(lambda: assign.top_up(conn, 'new', k, a.batch)):.3f} s")
    print(f"  top_up with nothing to do    {timed(lambda: assign.top_up(conn, 'new', k, a.batch)):.3f} s")
    print(f"  queue                        {timed(lambda: assign.queue(conn, 'new', k)):.3f} s")
    print(f"  list page of the queue       {timed(lambda: api.listing(conn, 'new', only=assign.queue(conn, 'new', k))):.3f} s")
    print(f"  admin view (assign.team)     {timed(lambda: assign.team(conn, k)):.3f} s")


if __name__ == "__main__":
    main()
