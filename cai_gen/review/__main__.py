"""python -m cai_gen.review {invite,revoke,reviewers,serve,status,merge,export,import} RUN_DIR ...

  invite RUN_DIR NAME [--role reviewer|admin] [--public-url URL] [--valid-hours 72]   a single-use sign-in link
                                                   for NAME (shown once), dead after --valid-hours if unused
  revoke RUN_DIR NAME                              NAME's links and sessions stop working
  reviewers RUN_DIR                                who is invited, role, used, revoked, verdicts
  serve RUN_DIR [--host 127.0.0.1] [--port 8765] [--public-url URL] [--unblind] [--session-hours 24]   the page
        [--request-timeout 10] [--max-connections 128] [--overlap K [--batch 10]]   --overlap: each item to K
                                                   reviewers, each reviewer a queue of their own
  status RUN_DIR                                   items, per reviewer: verdicts, position bias, too fast; agreement;
                                                   ratings and their agreement per guideline; queues (--overlap)
  merge RUN_DIR [--ignore-too-fast]                apply verdicts -> RUN_DIR/reviewed/, card and summary updated
  export RUN_DIR FILE [--format label-studio|argilla|csv|jsonl]   blind tasks for another annotation tool
        [--unblind]                                (CSV/JSONL labelled original/revision, verdicts so far)
  import RUN_DIR FILE [--format label-studio|argilla|csv|jsonl] [--reviewer NAME]   annotations back
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArgParser, UserError

LOCAL = "http://127.0.0.1:8765/"


def _invites(a) -> None:
    from . import auth, db

    conn = db.open_run(a.run_dir, create=a.cmd == "invite")
    try:
        if a.cmd == "invite":
            # the address `serve` last used (its real port, or its --public-url), unless told another
            base = auth.public_url(a.public_url) or db.get_meta(conn, "serve_url") or LOCAL
            token = auth.invite(conn, a.name, a.role, a.valid_hours)
            print(f"{base}?token={token}")
            print(f"  ({a.role} {a.name}: send this link privately; only its hash is stored, so it is shown once. "
                  f"It signs in once, after a confirmation click, within {a.valid_hours:g} hours; `revoke {a.run_dir} {a.name}` ends it)",
                  file=sys.stderr)
        elif a.cmd == "revoke":
            n, ended = auth.revoke(conn, a.name)
            print(f"revoked {n} link(s) of {a.name}; {ended} session(s) ended")
        else:
            rs = auth.reviewers(conn)
            if not rs:
                print("no reviewers invited yet (python -m cai_gen.review invite RUN_DIR NAME)")
            for r in rs:
                state = (f"revoked {r['revoked_at']}" if r["revoked_at"] else
                         f"signed in {r['used_at']}" if r["used_at"] else
                         f"expired {r['expires_at']}" if r["expires_at"] <= db.now() else
                         f"not used yet (until {r['expires_at']})")
                print(f"  {r['name']:<20} {r['role']:<8} invited {r['created_at']}  {state}  {r['verdicts']} verdict(s)")
    finally:
        conn.close()


def _args(argv: list[str]) -> argparse.Namespace:
    p = ArgParser(prog="python -m cai_gen.review", description="Expert review of routed pairs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("invite", help="make a sign-in link for a reviewer (the link is shown once)")
    i.add_argument("run_dir", type=Path)
    i.add_argument("name")
    i.add_argument("--role", choices=["reviewer", "admin"], default="reviewer", help="admin: also sees the admin view (team progress, agreement, disputed items) and every item")
    i.add_argument("--public-url", help=f"the address reviewers open (default {LOCAL})")
    i.add_argument("--valid-hours", type=float, default=72.0,
                   help="an unused link stops working after this long (default 72)")
    r = sub.add_parser("revoke", help="revoke a reviewer's links and sessions")
    r.add_argument("run_dir", type=Path)
    r.add_argument("name")
    sub.add_parser("reviewers", help="list invited reviewers").add_argument("run_dir", type=Path)
    s = sub.add_parser("serve", help="serve the review page on localhost")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    s.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    s.add_argument("--public-url", help="the address reviewers open, behind a TLS reverse proxy (Host check)")
    s.add_argument("--unblind", action="store_true", help="label the answers original/revision (default: A/B)")
    s.add_argument("--session-hours", type=float, default=24.0,
                   help="a sign-in lasts this long; then the reviewer needs a new invite (default 24)")
    s.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds a client has to send a whole request, from its first byte (default 10)")
    s.add_argument("--max-connections", type=int, default=128,
                   help="connections open at once; a new one past this is closed unread (default 128)")
    s.add_argument("--overlap", type=int, metavar="K",
                   help="give each item to K reviewers, each with a queue of their own (a skip passes the item on; "
                        "a disputed item goes to one more reviewer); default: everyone sees every item")
    s.add_argument("--batch", type=int, default=10,
                   help="with --overlap: items a reviewer holds unreviewed at a time (default 10)")
    sub.add_parser("status", help="review progress and agreement").add_argument("run_dir", type=Path)
    m = sub.add_parser("merge", help="apply verdicts into RUN_DIR/reviewed/")
    m.add_argument("run_dir", type=Path)
    m.add_argument("--ignore-too-fast", action="store_true", help="verdicts given in under 5 s are not votes")
    for name in ("export", "import"):
        e = sub.add_parser(name, help=f"{name} blind review tasks for Label Studio, Argilla, a sheet (CSV) or JSONL"
                           if name == "export" else "import annotations made in Label Studio, Argilla, CSV or JSONL")
        e.add_argument("run_dir", type=Path)
        e.add_argument("file", type=Path)
        e.add_argument("--format", choices=["label-studio", "argilla", "csv", "jsonl"],
                       help="default: from the file name (.csv, .jsonl)")
        if name == "import":
            e.add_argument("--reviewer", help="reviewer for annotations whose annotator field is empty")
        else:
            e.add_argument("--unblind", action="store_true",
                           help="CSV/JSONL of every item labelled original/revision with the verdicts so far (a "
                                "record for admins, not a blind task)")
    return p.parse_args(argv)


def _serve(a) -> None:
    from .server import ReviewServer

    srv = ReviewServer(a.run_dir, a.host, a.port, blind=not a.unblind, public_url=a.public_url,
                       session_hours=a.session_hours, client_timeout=a.request_timeout,
                       max_connections=a.max_connections, overlap=a.overlap, batch=a.batch)
    c = srv.changes
    if c.get("refreshed") or c.get("retired"):  # why a reviewer's progress went down after a rerun
        print(f"cai_gen review: the run changed: {c['refreshed']} item(s) show new text (verdicts on the old text "
              f"are kept but no longer count), {c['retired']} no longer routed (hidden, verdicts kept)")
    from .auth import is_loopback

    if not is_loopback(a.host):
        print(f"cai_gen review: listening on {a.host}: traffic is plain HTTP (tokens and answers readable on the "
              "network); put it behind a TLS reverse proxy and give its https address as --public-url")
    share = f"each item to {a.overlap} reviewer(s), {a.batch} at a time" if a.overlap else "everyone sees every item"
    print(f"cai_gen review: {srv.url}  (run {a.run_dir}; {'blind A/B' if srv.blind else 'labelled'} view; {share}; open an "
          "invite link from `python -m cai_gen.review invite`; Ctrl-C stops; every verdict is saved as it is given)",
          flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        print(f"cai_gen review: stopped; {srv.verdicts} verdict(s) stored this session in {srv.db_path}")


def _status(a) -> None:
    from . import assign, db, merge

    conn = db.open_run(a.run_dir, create=False)
    try:
        n_items = conn.execute("SELECT count(*) FROM items WHERE retired_at IS NULL").fetchone()[0]
        cur = db.current(conn)
        k = db.get_meta(conn, "overlap")
        team = assign.team(conn, int(k) if k else None)  # the queues as the last `serve --overlap` shares them
    finally:
        conn.close()
    print(f"{n_items} items routed, {len(cur)} reviewed by someone, {team['complete']} with their verdicts in, "
          f"{len(team['disputed'])} disputed" + (f" (serve --overlap {k})" if k else ""))
    for r, t in team["reviewers"].items() if k else ():
        print(f"  {r}: queue {t['assigned']}, judged {t['judged']}, skipped {t['skipped']}, open {t['open']}")
    for r, s in merge.per_reviewer(cur).items():
        bias = (f"; chose A {s['chose_a']} of {s['blind_ab']} blind A/B ({100 * s['a_share']:.0f}%, "
                f"p={s['position_p']})" if s["blind_ab"] else "")
        fast = f"; too_fast (<{db.FAST:g} s) {s['too_fast']} of {s['timed']}" if s["timed"] else ""
        print(f"  {r}: {s['verdicts']} / {n_items}{bias}{fast}")
    for p in merge.agreement(cur)["pairs"]:
        print(f"  {p['a']} + {p['b']}: {p['items']} shared, agreement {100 * p['agreement']:.1f}%, kappa {p['kappa']}")
    ag = merge.agreement(cur)
    if ag["comparisons"]:
        print(f"agreement {100 * ag['agreement']:.1f}% over {ag['comparisons']} shared judgements, "
              f"kappa {ag['kappa']}")
    rated = merge.rating_summary(cur)  # the card's per-guideline figures, from the same votes
    if rated:
        print("ratings per guideline (revision / original mean; of two reviewers rating one answer: same score, "
              "within one):")
    for g, x in rated.items():
        agree = (f"same score {100 * x['agreement']:.1f}%, within one {100 * x['within_one']:.1f}% over "
                 f"{x['pairs']} pair(s)" if x["pairs"] else "no answer rated by two reviewers")
        mean = " / ".join("-" if m is None else f"{m:g}" for m in (x["revision"], x["original"]))
        print(f"  {g}: {mean} over {x['n']} rating(s); {agree}")


def _merge(a) -> None:
    from .. import report
    from . import merge

    s = merge.apply(a.run_dir, ignore_too_fast=a.ignore_too_fast)
    report.build(a.run_dir)  # the card and summary.json get the review section
    d = s["decisions"]
    print(f"reviewed/: {s['rows']} pairs ({s['expert_reviewed']} expert-reviewed); "
          + ", ".join(f"{k} {v}" for k, v in d.items() if v))
    ag = s["agreement"]
    if ag["comparisons"]:
        print(f"agreement {100 * ag['agreement']:.1f}% over {ag['comparisons']} shared judgements, kappa {ag['kappa']}")
    fast = sum(r["too_fast"] for r in s["reviewers"].values())
    if fast:
        print(f"too_fast: {fast} verdict(s) given in under {s['fast_seconds']:g} s "
              + (f"({s['too_fast_ignored']} left out: --ignore-too-fast)" if a.ignore_too_fast
                 else "(counted; --ignore-too-fast leaves them out)"))
    print(f"load: datasets.load_from_disk('{a.run_dir / 'reviewed' / 'preferences'}')")


def _exchange(a) -> None:
    from . import db, exchange, tools

    conn = db.open_run(a.run_dir)  # import too: verdicts may come from another tool before any serve/export
    try:
        if a.cmd == "export" and a.unblind:
            if a.format not in (None, "csv", "jsonl"):
                raise UserError("--unblind: writes CSV or JSONL only (the tools get blind tasks)")
            n = exchange.export(conn, a.file, a.format)
            print(f"exported {n} rows to {a.file}")
        elif a.cmd == "export":
            n, files = tools.export(conn, a.run_dir, a.file, a.format)
            print(f"exported {n} blind task(s) to {', '.join(map(str, files))}")
        elif not tools.labelled(a.file, a.format):
            r = tools.load(conn, a.run_dir, a.file, a.format, a.reviewer)
            print(f"imported {r['imported']} verdicts ({r['unchanged']} unchanged, {r['blank']} without a verdict, "
                  f"{len(r['stale'])} stale)")
            for line in r["stale"]:
                print(f"  {line}")
        else:
            r = exchange.load(conn, a.file, a.format, a.reviewer)
            print(f"imported {r['imported']} verdicts ({r['unchanged']} unchanged, "
                  f"{r['blank']} rows without a verdict)")
            if r["superseded"]:
                print(f"  {r['superseded']} row(s) skipped: a later row of the file is for the same item and "
                      "reviewer (the last one counts)")
            if r["stale"]:
                print(f"  {r['stale']} of them on text a rerun has since changed: kept in the history, not applied")
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    a = _args(argv)
    try:
        {"serve": _serve, "status": _status, "merge": _merge, "export": _exchange, "import": _exchange,
         "invite": _invites, "revoke": _invites, "reviewers": _invites}[a.cmd](a)
    except UserError as e:
        print(f"cai_gen.review: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the port is taken
        print(f"cai_gen.review: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
