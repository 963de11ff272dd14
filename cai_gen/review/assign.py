"""Sharing the work: `serve --overlap K` gives each item to K reviewers, each reviewer a queue of their own.

A reviewer holds at most `batch` items they have not judged yet; when they ask for their list (/api/state) and
hold fewer, they get more: items that still need a reviewer, never one they hold or judged already. An item needs
K verdicts; a skip ("unsure") is no verdict, so a skipper's place goes to another reviewer (the skipper keeps the
item in their list, and never gets it back as new work); an item whose verdicts disagree with no majority
(merge.decide: disputed) needs one more reviewer than it has verdicts, until a majority settles it. A place
counts while its holder has judged the item or still may (an unrevoked invite): `revoke` gives a gone reviewer's
unjudged items back. An item with its verdicts in leaves the queues of those who hold it unjudged.

Admins are never assigned: they see every item (the admin view lists the disputed ones) and a verdict of theirs
counts like anyone's. Assignments live in review.sqlite (db.py v8), so a restarted server hands out the same
queues, and each top-up is one write transaction (BEGIN IMMEDIATE): two reviewers asking at once queue up, and
the second sees the places the first took.
"""
from __future__ import annotations

import json

from . import db, merge

BATCH = 10  # items a reviewer holds unjudged at once (serve --batch): enough for a sitting, few enough to share


def votes(conn, ids: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{item: {reviewer: their latest verdict on the item's current text}} (db.current, verdict names only), of
    every item or of `ids`."""
    only, args = "", ()
    if ids is not None:  # json_each: one bound parameter, however many items
        only, args = "WHERE v.item_id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
    q = ("SELECT v.item_id, v.reviewer, v.verdict FROM verdicts v JOIN (SELECT v.item_id, v.reviewer, max(v.seq) "
         f"AS seq FROM verdicts v {db._COUNTS} {only} GROUP BY v.item_id, v.reviewer) last ON v.seq = last.seq")
    out: dict[str, dict[str, str]] = {}
    for item_id, reviewer, verdict in conn.execute(q, args):
        out.setdefault(item_id, {})[reviewer] = verdict
    return out


def disputed(item_votes: dict[str, str]) -> bool:
    """Verdicts (skips aside) with no majority: what merge leaves out as disputed."""
    real = {r: {"verdict": v, "at": ""} for r, v in item_votes.items() if v != "skip"}
    return len(real) > 1 and merge.decide(real) is None


def needed(item_votes: dict[str, str], k: int) -> int:
    """Verdicts the item needs: K, or one more than it has while they are disputed."""
    n = sum(v != "skip" for v in item_votes.values())
    return n + 1 if disputed(item_votes) else k


def _live(conn) -> set[str]:
    return {n for (n,) in conn.execute("SELECT DISTINCT name FROM tokens WHERE revoked_at IS NULL")}


def _held(conn) -> dict[str, set[str]]:
    """{item: reviewers holding it}, queued items only."""
    out: dict[str, set[str]] = {}
    for item_id, reviewer in conn.execute("SELECT a.item_id, a.reviewer FROM assignments a JOIN items i ON "
                                          "i.id = a.item_id AND i.retired_at IS NULL"):
        out.setdefault(item_id, set()).add(reviewer)
    return out


def _done(v: dict[str, str], k: int) -> bool:
    return sum(x != "skip" for x in v.values()) >= needed(v, k)


def queue(conn, reviewer: str, k: int, vs: dict | None = None) -> list[str]:
    """The items in `reviewer`'s list, in queue order: those they hold or judged, less those whose verdicts are all
    in without one of theirs (nothing left for them to do there). `vs`: votes() already read, else only the votes
    on these items are."""
    # held, or judged without being held (a verdict from before --overlap, an import): theirs to see and change
    ids = [i for (i,) in conn.execute(
        "SELECT i.id FROM items i WHERE i.retired_at IS NULL AND (i.id IN (SELECT item_id FROM assignments WHERE "
        "reviewer = ?) OR i.id IN (SELECT v.item_id FROM verdicts v JOIN items j ON j.id = v.item_id AND "
        "v.content_hash = j.content_hash WHERE v.reviewer = ?)) ORDER BY i.rowid", (reviewer, reviewer))]
    vs = votes(conn, ids) if vs is None else vs
    return [i for i in ids if reviewer in vs.get(i, {}) or not _done(vs.get(i, {}), k)]


def _open(conn, reviewer: str, k: int, vs: dict | None = None) -> int:
    """How many items in the reviewer's queue they have not judged yet."""
    mine = queue(conn, reviewer, k, vs)
    vs = votes(conn, mine) if vs is None else vs
    return sum(reviewer not in vs.get(i, {}) for i in mine)


def top_up(conn, reviewer: str, k: int, batch: int = BATCH) -> list[str]:
    """Give `reviewer` new items until they hold `batch` unjudged ones, or no item needs anyone; the new ids.
    Disputed items first, then items others already hold (finished sooner), then queue order."""
    if _open(conn, reviewer, k) >= batch:  # the common case, read without the write lock
        return []
    with db._tx(conn):  # read and write under the write lock: no two reviewers take an item's last place
        vs, held, live = votes(conn), _held(conn), _live(conn)
        want = batch - _open(conn, reviewer, k, vs)
        if want <= 0:
            return []
        ids = [i for (i,) in conn.execute("SELECT id FROM items WHERE retired_at IS NULL ORDER BY rowid")]
        picks, fresh = [], []
        for pos, item_id in enumerate(ids):
            if item_id not in vs and item_id not in held:  # nobody has it: ranks by position alone
                if len(fresh) < want:
                    fresh.append((True, 0, pos, item_id))
                continue
            v = vs.get(item_id, {})
            if reviewer in v or reviewer in held.get(item_id, ()):
                continue
            # a place: a verdict given, or a live holder yet to judge (a skip gives the place up)
            places = {r for r, x in v.items() if x != "skip"}
            places |= {r for r in held.get(item_id, ()) if r in live and r not in v}
            if len(places) < needed(v, k):
                picks.append((not disputed(v), -len(places), pos, item_id))
        new = [i for *_, i in sorted(picks + fresh)[:want]]
        at = db.now()
        conn.executemany("INSERT INTO assignments(item_id, reviewer, assigned_at) VALUES (?, ?, ?)",
                         [(i, reviewer, at) for i in new])
    return new


def team(conn, k: int | None) -> dict:
    """The admin view's numbers: per reviewer (every invited one, and anyone with a verdict) items assigned,
    judged, skipped and still open; how many items have their verdicts in; the disputed items with their votes."""
    vs = votes(conn)  # queued items only (db._COUNTS)
    ids = [i for (i,) in conn.execute("SELECT id FROM items WHERE retired_at IS NULL ORDER BY rowid")]
    names = {n for (n,) in conn.execute("SELECT name FROM tokens WHERE role = 'reviewer'")}
    names |= {r for v in vs.values() for r in v}
    per = {r: {"assigned": 0, "judged": 0, "skipped": 0, "open": 0} for r in sorted(names)}
    for v in vs.values():
        for r, x in v.items():
            per[r]["skipped" if x == "skip" else "judged"] += 1
    if k:  # each reviewer's queue (as queue(), for all of them in one pass)
        held = _held(conn)
        for i in set(held) | set(vs):
            v = vs.get(i, {})
            done = _done(v, k)
            for r in held.get(i, set()) | set(v):
                if r in v or not done:
                    row = per.setdefault(r, dict.fromkeys(("assigned", "judged", "skipped", "open"), 0))
                    row["assigned"] += 1
                    row["open"] += r not in v
    return {"overlap": k, "items": len(ids), "complete": sum(_done(vs.get(i, {}), k or 1) for i in ids),
            "reviewers": per,
            "disputed": [{"id": i, "votes": dict(sorted(vs[i].items()))} for i in ids if disputed(vs.get(i, {}))]}
