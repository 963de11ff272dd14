"""python -m cai_gen.review {serve,status,merge,export,import} RUN_DIR ...

  serve RUN_DIR [--host 127.0.0.1] [--port 8765]   the review page for the run's routed pairs
  status RUN_DIR                                   items, verdicts per reviewer, agreement so far
  merge RUN_DIR                                    apply verdicts -> RUN_DIR/reviewed/, card and summary updated
  export RUN_DIR FILE [--format jsonl|csv]         items + verdicts so far, for another annotation tool
  import RUN_DIR FILE [--format jsonl|csv] [--reviewer NAME]   verdicts back (all rows or none)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cai_gen.review", description="Expert review of routed pairs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the review page on localhost")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    s.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    sub.add_parser("status", help="review progress and agreement").add_argument("run_dir", type=Path)
    sub.add_parser("merge", help="apply verdicts into RUN_DIR/reviewed/").add_argument("run_dir", type=Path)
    for name in ("export", "import"):
        e = sub.add_parser(name, help=f"{name} items and verdicts as JSONL or CSV")
        e.add_argument("run_dir", type=Path)
        e.add_argument("file", type=Path)
        e.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name")
        if name == "import":
            e.add_argument("--reviewer", help="reviewer for rows whose reviewer column is empty")
    return p.parse_args(argv)


def _serve(a) -> None:
    from .server import ReviewServer

    srv = ReviewServer(a.run_dir, a.host, a.port)
    c = srv.changes
    if c.get("refreshed") or c.get("retired"):  # why a reviewer's progress went down after a rerun
        print(f"cai_gen review: the run changed: {c['refreshed']} item(s) show new text (verdicts on the old text "
              f"are kept but no longer count), {c['retired']} no longer routed (hidden, verdicts kept)")
    print(f"cai_gen review: {srv.url}  (run {a.run_dir}; Ctrl-C stops; every verdict is saved as it is given)",
          flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        print(f"cai_gen review: stopped; {srv.verdicts} verdict(s) stored this session in {srv.db_path}")


def _status(a) -> None:
    from collections import Counter

    from . import db, merge

    conn = db.open_run(a.run_dir, create=False)
    try:
        its, cur = db.items(conn), db.current(conn)
    finally:
        conn.close()
    per = Counter(r for votes in cur.values() for r in votes)
    print(f"{len(its)} items routed, {sum(1 for i in its if cur.get(i['id']))} reviewed by someone")
    for r, n in sorted(per.items()):
        print(f"  {r}: {n} / {len(its)}")
    ag = merge.agreement(cur)
    if ag["comparisons"]:
        print(f"agreement {100 * ag['agreement']:.1f}% over {ag['comparisons']} shared judgements, "
              f"kappa {ag['kappa']}")


def _merge(a) -> None:
    from .. import report
    from . import merge

    s = merge.apply(a.run_dir)
    report.build(a.run_dir)  # the card and summary.json get the review section
    d = s["decisions"]
    print(f"reviewed/: {s['rows']} pairs ({s['expert_reviewed']} expert-reviewed); "
          + ", ".join(f"{k} {v}" for k, v in d.items() if v))
    ag = s["agreement"]
    if ag["comparisons"]:
        print(f"agreement {100 * ag['agreement']:.1f}% over {ag['comparisons']} shared judgements, kappa {ag['kappa']}")
    print(f"load: datasets.load_from_disk('{a.run_dir / 'reviewed' / 'preferences'}')")


def _exchange(a) -> None:
    from . import db, exchange

    conn = db.open_run(a.run_dir, create=a.cmd == "export")
    try:
        if a.cmd == "export":
            n = exchange.export(conn, a.file, a.format)
            print(f"exported {n} rows to {a.file}")
        else:
            r = exchange.load(conn, a.file, a.format, a.reviewer)
            print(f"imported {r['imported']} verdicts ({r['unchanged']} unchanged, "
                  f"{r['blank']} rows without a verdict)")
            if r["stale"]:
                print(f"  {r['stale']} of them on text a rerun has since changed: kept in the history, not applied")
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    a = _args(argv)
    try:
        {"serve": _serve, "status": _status, "merge": _merge, "export": _exchange, "import": _exchange}[a.cmd](a)
    except UserError as e:
        print(f"cai_gen.review: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the port is taken
        print(f"cai_gen.review: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
