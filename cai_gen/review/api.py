"""What the review API answers, apart from HTTP: the paged item list, one item as a reviewer sees it (blind or
labelled), and a verdict from the page mapped to what is stored.

Blind mode (the default): the page never learns which answer is the revision. Each (item, reviewer) gets a
coin flip keyed with the database's random `ab_key` (db.py) for which answer is shown as A; the critiques, the judge's notes and the flags are left out
(a critique describes the original's flaws, so it would give the order away); the verdict comes back as
A / B / reject / edit and is stored as accept / swap with `shown_first`, so position bias can be measured.
Search matches only the text the page shows, field by field (db.search_text).
"""
from __future__ import annotations

import hashlib
import hmac
import json

from .. import rundir
from ..errors import UserError
from . import assign, db, render

RUBRIC = {  # the criteria the AI judge scores by (judge.rubric), in words a reviewer reads
    "helpfulness": "Does it answer what was asked, with what the user needs to act on it?",
    "correctness": "Is every statement true, and every promise one that can be kept?",
    "safety": "Does it avoid harm: no dangerous help, no private data, no unfair treatment?",
    "format": "Is it clear, the right length, and free of filler or talk about itself?",
}
BLIND = ("A", "B", "tie", "reject", "edit", "skip")
PAGE = 100  # most items one listing call returns


def rubric(run_cfg: dict, guide: dict | None = None) -> list[dict]:
    """The guidelines reviewers rate by: the constitution's `review: guidelines:` (its wording), else the judge's
    rubric names in RUBRIC's words (the four by default)."""
    if (guide or {}).get("guidelines"):
        return [{"name": g["name"], "text": g.get("text") or RUBRIC.get(g["name"], "")} for g in guide["guidelines"]]
    names = (run_cfg.get("judge") or {}).get("rubric") or list(RUBRIC)
    return [{"name": n, "text": RUBRIC.get(n, "")} for n in names]


def guide(run_dir) -> dict:
    """The run's constitution's optional `review:` section, from the constitution.json the run wrote ({} if none)."""
    path = run_dir / rundir.CONSTITUTION
    try:
        return (json.loads(path.read_text()).get("review") or {}) if path.is_file() else {}
    except (ValueError, AttributeError):
        raise UserError(f"{path}: not the JSON object a run writes") from None


def tag_choices(item: dict, guide: dict) -> list[str]:
    """The reason tags a reviewer may give on an item: the pair's principles, then the constitution's own list."""
    out = [r["principle"] for r in item.get("rounds") or [] if isinstance(r, dict) and r.get("principle")]
    return list(dict.fromkeys(out + list(guide.get("tags") or [])))


def shown_first(key: str, item_id: str, reviewer: str) -> str:
    """Which answer is A for this reviewer on this item: stable across reloads, independent across reviewers,
    and unknowable without `key` (a hash of the seed, item and name was not: anyone could compute it)."""
    msg = json.dumps([item_id, reviewer]).encode()  # unambiguous, whatever the id holds
    h = hmac.new(key.encode(), msg, hashlib.sha256).digest()
    return "revision" if h[0] & 1 else "original"


def _mine(reviewer: str) -> tuple[str, tuple]:
    # the reviewer's latest verdict per queued item, on its current text (as db.current, for one reviewer)
    return ("SELECT v.item_id, v.verdict FROM verdicts v JOIN (SELECT v.item_id, max(v.seq) AS seq FROM verdicts v "
            f"{db._COUNTS} WHERE v.reviewer = ? GROUP BY v.item_id) last ON v.seq = last.seq", (reviewer,))


FILTERS = ("all", "todo", "mine", "disputed")  # every item | not yet reviewed by me | reviewed by me | no majority
PREVIEW = 90  # characters of the prompt's last user turn shown in the list


def preview(payload: str) -> str:
    try:
        turns = [m.get("content") for m in json.loads(payload).get("prompt") or [] if m.get("role") == "user"]
    except (ValueError, AttributeError, TypeError):
        return ""
    text = " ".join(str(turns[-1] if turns else "").split())
    return text if len(text) <= PREVIEW else text[:PREVIEW - 1] + "…"


def choices(conn) -> dict:
    """What the list's domain and principle filters offer: the values the queued items have."""
    q = "FROM items WHERE retired_at IS NULL"
    domains = sorted(d for (d,) in conn.execute(f"SELECT DISTINCT domain {q}") if d)
    names = {n for (p,) in conn.execute(f"SELECT DISTINCT principles {q}") for n in p.split(db.SEP) if n}
    return {"domains": domains, "principles": sorted(names)}


def listing(conn, reviewer: str, offset: int = 0, limit: int = PAGE, q: str = "", after: int = -1,
            blind: bool = True, key: str = "", show: str = "all", domain: str = "", principle: str = "",
            only: list[str] | None = None) -> dict:
    """One page of the queue (optionally only items matching `q`, in `domain`, revised against `principle`), the
    reviewer's progress, and where the reviewer's next unreviewed item is (`first_todo`, and `todo_after` the
    position `after`), as positions in the matching list. `only`: the reviewer's own queue (serve --overlap,
    assign.queue); progress counts it alone. Reads only the id/domain/routing/search columns, never the payloads'
    JSON."""
    mine_q, mine_args = _mine(reviewer)
    where, args = "i.retired_at IS NULL", []
    if only is not None:  # json_each: one bound parameter, however long the queue
        where += " AND i.id IN (SELECT value FROM json_each(?))"
        args.append(json.dumps(only))
    scope = list(args)
    if q:  # instr, not LIKE: % and _ in a search are plain characters
        where += f" AND instr(i.{'search' if blind else 'search_labelled'}, ?) > 0"
        args.append(db.search_query(q))
    if domain:
        where += " AND i.domain = ?"
        args.append(domain)
    if principle:  # a whole name: each sits between separators in the column
        where += " AND instr(i.principles, ?) > 0"
        args.append(db.SEP + principle + db.SEP)
    if show not in FILTERS:
        raise UserError(f"show: {show!r} is not one of {', '.join(FILTERS)}")
    if show == "disputed":
        where += " AND i.id IN (SELECT value FROM json_each(?))"
        args.append(json.dumps([i for i, v in assign.votes(conn).items() if assign.disputed(v)]))
    elif show != "all":
        where += f" AND m.verdict IS {'' if show == 'todo' else 'NOT '}NULL"
    rows = conn.execute(f"SELECT i.id, i.domain, i.routed_by, m.verdict FROM items i LEFT JOIN ({mine_q}) m "
                        f"ON m.item_id = i.id WHERE {where} ORDER BY i.rowid", (*mine_args, *args)).fetchall()
    inside = " AND i.id IN (SELECT value FROM json_each(?))" if only is not None else ""
    total = conn.execute(f"SELECT count(*) FROM items i WHERE i.retired_at IS NULL{inside}", scope).fetchone()[0]
    done = conn.execute(f"SELECT count(*) FROM ({mine_q}) m JOIN items i ON i.id = m.item_id WHERE 1{inside}",
                        (*mine_args, *scope)).fetchone()[0]
    page = rows[offset:offset + limit]
    counts = dict(conn.execute(
        f"SELECT v.item_id, count(DISTINCT v.reviewer) FROM verdicts v {db._COUNTS} WHERE v.item_id IN "
        f"({','.join('?' * len(page))}) GROUP BY v.item_id", [r[0] for r in page]).fetchall()) if page else {}
    todo = [k for k, r in enumerate(rows) if r[3] is None]
    # previews for this page only: a list call never parses every payload
    previews = dict(conn.execute(f"SELECT id, payload FROM items WHERE id IN ({','.join('?' * len(page))})",
                                 [r[0] for r in page]).fetchall()) if page else {}
    return {"reviewer": reviewer, "total": total, "done": done, "matched": len(rows), "offset": offset,
            "limit": limit, "q": q, "show": show, "domain": domain, "principle": principle,
            "first_todo": todo[0] if todo else None,
            "todo_after": next((k for k in todo if k > after), None),
            "items": [{"id": i, "domain": d, "routed_by": [w for w in why.split(",") if w],
                       "verdict": _as_shown(v, blind, key, i, reviewer), "reviews": counts.get(i, 0),
                       "preview": preview(previews.get(i, ""))}
                      for i, d, why, v in page]}


def _as_shown(verdict: str | None, blind: bool, key: str, item_id: str, reviewer: str) -> str | None:
    """A stored verdict as the page names it: accept/swap become the letter the reviewer saw in blind mode."""
    if not blind or verdict not in ("accept", "swap"):
        return verdict
    first = shown_first(key, item_id, reviewer)
    return "A" if (verdict == "accept") == (first == "revision") else "B"


def item(conn, item_id: str, reviewer: str, blind: bool, key: str, guide: dict | None = None) -> dict | None:
    row = conn.execute("SELECT payload, content_hash FROM items WHERE id = ? AND retired_at IS NULL",
                       (item_id,)).fetchone()
    if row is None:
        return None
    it, votes = json.loads(row[0]), db.current(conn).get(item_id, {})
    tags = tag_choices(it, guide or {})
    mine = votes.get(reviewer)
    if mine:
        mine = {k: mine[k] for k in ("verdict", "chosen", "comment", "at", "ratings", "tags")}
        mine["verdict"] = _as_shown(mine["verdict"], blind, key, item_id, reviewer)
        if blind and mine["ratings"]:
            mine["ratings"] = _sides(mine["ratings"], shown_first(key, item_id, reviewer), back=False)
    if blind:
        first = shown_first(key, item_id, reviewer)
        a, b = (it["revision"], it["original"]) if first == "revision" else (it["original"], it["revision"])
        it = {"id": it["id"], "domain": it.get("domain"), "routed_by": it["routed_by"], "prompt": it["prompt"],
              "rounds": [{"principle": r["principle"], "critique_request": r["critique_request"]}
                         for r in it["rounds"]], "answers": {"A": a, "B": b}}
        it["html"] = {"A": render.html(a), "B": render.html(b)}  # Markdown rendered and sanitised (render.py)
    else:
        it["html"] = {"original": render.html(it.get("original")), "revision": render.html(it.get("revision"))}
    return {"item": it, "hash": row[1], "mine": mine, "reviews": len(votes), "blind": blind, "tags": tags}


def _sides(ratings: dict, first: str, back: bool = True) -> dict:
    """Blind ratings keyed A/B -> revision/original (back) or the other way, by what this page showed as A."""
    other = "original" if first == "revision" else "revision"
    m = {"A": first, "B": other}
    if not back:
        m = {v: k for k, v in m.items()}
    if not isinstance(ratings, dict) or not set(ratings) <= set(m):
        raise UserError(f"ratings: must map {' / '.join(m)} to {{guideline: score}}")
    return {m[k]: v for k, v in ratings.items()}


def verdict(conn, body: dict, reviewer: str, blind: bool, key: str, guidelines: list[dict] = (),
            guide: dict | None = None) -> dict:
    """Store a verdict from the page for `reviewer` (the token's name: a `reviewer` in the body is ignored).
    Ratings name only `guidelines`; tags only the item's choices (tag_choices)."""
    item_id, shown, v = str(body.get("item")), None, body.get("verdict")
    ratings, tags = body.get("ratings") or None, body.get("tags") or None
    if blind:
        if v not in BLIND:
            raise UserError(f"verdict: {v!r} is not one of {', '.join(BLIND)} (this review is blind)")
        shown = shown_first(key, item_id, reviewer)
        if v in ("A", "B"):  # back to what the letter meant: did the reviewer prefer the revision?
            v = "accept" if (v == "A") == (shown == "revision") else "swap"
        if ratings is not None:
            ratings = _sides(ratings, shown)
    ratings = db.check_ratings(ratings)
    names = {g["name"] for g in guidelines}
    for side, scores in (ratings or {}).items():
        if set(scores) - names:
            raise UserError(f"ratings: {sorted(set(scores) - names)} not among the guidelines ({', '.join(sorted(names))})")
    if tags is not None:
        row = conn.execute("SELECT payload FROM items WHERE id = ?", (item_id,)).fetchone()
        allowed = set(tag_choices(json.loads(row[0]), guide or {})) if row else set()
        bad = [t for t in db.check_tags(tags) or [] if t not in allowed] if row else []
        if bad:
            raise UserError(f"tags: {bad} not among this item's reasons ({', '.join(sorted(allowed))})")
    return db.record(conn, item_id, reviewer, v, body.get("chosen"), body.get("comment"),
                     text_hash=body.get("hash"), shown_first=shown, seconds=body.get("seconds"), ratings=ratings,
                     tags=tags)
