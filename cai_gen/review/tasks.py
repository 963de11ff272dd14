"""Blind review tasks for another annotation tool, and their annotations back into review.sqlite.

`review export RUN FILE --format label-studio|argilla|csv|jsonl` writes one task per queued item: the prompt, the
two answers as A and B, the principles it was revised for, and empty slots for a verdict (A, B, tie, reject, edit,
skip), an edit, a comment, ratings per guideline and reason tags. It is blind like the server's default view:
which answer is A comes from an HMAC of the item and its text under the database's secret `ab_key` (db.py), a
task's id is another HMAC of the same (opaque: it names neither the item nor a side), and nothing else that would
tell the order goes out (no critiques, judge notes, flags, hashes; no field named after a side).

`review import` maps each annotation back the way the server maps a page's verdict (api.verdict): the task id
names the item and the text as exported; A/B become accept/swap with `shown_first` (position bias counts imports
too); ratings by A/B become ratings of the revision/original; guideline names and tags are checked against the
run's guidelines and the item's reasons. Identity: the tool's annotator field (Label Studio's completed_by,
Argilla's user_id, the CSV/JSONL `reviewer` column; --reviewer only where it is empty); a revoked reviewer's
annotations are refused like their sign-in. Staleness: an annotation of text a rerun has changed since the export
(or of an item no longer routed) is refused, one line each, and not stored; the rest imports. Unknown task ids and
malformed rows stop the import with one line naming the row, before anything is stored. Re-importing a file adds
nothing (a row equal to that reviewer's latest verdict on the same text is skipped).
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..store import atomic_write, run_config
from ..yamlio import read_jsonl, read_text
from . import api, db
from .exchange import conversation, escape_cell, unescape_cell

FORMATS = ("label-studio", "argilla", "csv", "jsonl")
SIDES = ("A", "B")
# what each blind verdict means, in the words an annotator reads in the other tool
MEANING = {"A": "A is better", "B": "B is better", "tie": "Tie: both are fine", "reject": "Both unusable",
           "edit": "Edit: write the answer to choose", "skip": "Skip: unsure (say why in the comment)"}


def _mac(key: str, *parts: str) -> bytes:
    return hmac.new(key.encode(), json.dumps(parts).encode(), hashlib.sha256).digest()


def first(key: str, item_id: str, text_hash: str) -> str:
    """Which answer a task shows as A: stable across exports of the same text, unknowable without `key`, and
    independent of the order any reviewer sees on the server (another message under the key)."""
    return "revision" if _mac(key, "export-order", item_id, text_hash)[0] & 1 else "original"


def task_id(key: str, item_id: str, text_hash: str) -> str:
    return "t" + _mac(key, "export-task", item_id, text_hash).hex()[:20]


def slug(name: str) -> str:
    """A guideline name as a control / question name (Argilla wants lowercase letters, digits, _ and -)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name.lower())


@dataclass
class Context:
    """What export and import both need from the run and its database."""
    key: str
    guidelines: list[dict]  # [{"name", "text"}]: what ratings are given on
    guide: dict  # the constitution's `review:` section (tags)

    @classmethod
    def of(cls, conn, run_dir: Path) -> "Context":
        g = api.guide(Path(run_dir))
        return cls(db.get_meta(conn, "ab_key"), api.rubric(run_config(Path(run_dir)), g), g)

    def rating_names(self) -> dict[str, tuple[str, str]]:
        """{"a_<slug>" / "b_<slug>": (side, guideline)}: every rating slot's control / question name."""
        out = {f"{s.lower()}_{slug(g['name'])}": (s, g["name"]) for s in SIDES for g in self.guidelines}
        if len(out) != 2 * len(self.guidelines):
            raise UserError(f"review guidelines {[g['name'] for g in self.guidelines]}: two names differ only in "
                            "case or punctuation, so another tool cannot tell their ratings apart")
        return out

    def all_tags(self, conn) -> list[str]:
        """Every queued item's reasons, in order: one list for a tool whose choices are per dataset (Argilla)."""
        return list(dict.fromkeys(t for it in db.items(conn) for t in api.tag_choices(it, self.guide)))


def task(ctx: Context, it: dict, text_hash: str) -> dict:
    """One blind task: only what the server's blind view shows, plus the tag choices."""
    a, b = (it["revision"], it["original"]) if first(ctx.key, it["id"], text_hash) == "revision" \
        else (it["original"], it["revision"])
    rounds = [r for r in it.get("rounds") or [] if isinstance(r, dict)]
    return {"task": task_id(ctx.key, it["id"], text_hash), "domain": it.get("domain") or "",
            "system": "\n".join(m["content"] for m in it["prompt"] if m["role"] == "system"),
            "prompt": conversation(it["prompt"]),
            "principles": "\n".join(f"{r.get('principle')}: {r.get('critique_request') or ''}".strip() for r in rounds),
            "A": a, "B": b, "tag_options": api.tag_choices(it, ctx.guide)}


def tasks(conn, ctx: Context) -> list[dict]:
    return [task(ctx, it, db.item_hash(conn, it["id"])) for it in db.items(conn)]


# ---- annotations back ----

@dataclass
class Note:
    """One annotation as read from a tool's file, still blind (A/B)."""
    where: str  # FILE:LINE or FILE: task N, for messages
    task: str
    reviewer: str | None
    verdict: str | None  # one of api.BLIND; None: not annotated
    rewrite: str | None = None
    comment: str | None = None
    ratings: dict = field(default_factory=dict)  # {"A"|"B": {guideline: score}}
    tags: list | None = None
    seconds: float | None = None
    at: str | None = None
    any_tag: bool = False  # the tool offered every task's reasons at once (Argilla): any of them is a reason


def _index(conn, key: str) -> dict[str, tuple[str, str]]:
    """task id -> (item id, text hash) for every text any item ever showed (so an old export reads as stale)."""
    return {task_id(key, i, h): (i, h) for i, h in conn.execute("SELECT item_id, content_hash FROM item_versions")}


def _revoked(conn) -> set[str]:
    rows = conn.execute("SELECT name, min(revoked_at IS NOT NULL) FROM tokens GROUP BY name").fetchall()
    return {n for n, all_revoked in rows if all_revoked}


def _row(conn, ctx: Context, n: Note, item_id: str, text_hash: str, source: str, revoked: set[str]) -> dict:
    if n.reviewer is None:
        raise UserError("reviewer: missing (the tool's annotator field is empty: pass --reviewer NAME)")
    if n.reviewer in revoked:
        raise UserError(f"reviewer: {n.reviewer!r} was revoked (`review invite` them again to take their verdicts)")
    if n.verdict not in api.BLIND:
        raise UserError(f"verdict: {n.verdict!r} is not one of {', '.join(api.BLIND)}")
    if n.verdict == "edit" and not (isinstance(n.rewrite, str) and n.rewrite.strip()):
        raise UserError("rewrite: an edit verdict needs the answer to choose")  # the tools' name for db's `chosen`
    at = None
    if n.at is not None:  # the tools write "...Z" or microseconds: stored like the server's (merge orders by it)
        try:
            t = datetime.fromisoformat(str(n.at).replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"reviewed_at: {n.at!r} is not an ISO time") from None
        at = (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    shown = first(ctx.key, item_id, text_hash)
    verdict = n.verdict
    if verdict in SIDES:  # back to what the letter meant, as the server does
        verdict = "accept" if (verdict == "A") == (shown == "revision") else "swap"
    ratings = api._sides({s: r for s, r in n.ratings.items() if r}, shown) if any(n.ratings.values()) else None
    names = {g["name"] for g in ctx.guidelines}
    for scores in (ratings or {}).values():
        if set(scores) - names:
            raise UserError(f"ratings: {sorted(set(scores) - names)} not among the guidelines ({', '.join(sorted(names))})")
    if n.tags:
        allowed = ctx.all_tags(conn) if n.any_tag else api.tag_choices(db.version(conn, item_id, text_hash) or {}, ctx.guide)
        bad = [t for t in n.tags if t not in allowed]
        if bad:
            raise UserError(f"tags: {bad} not among this task's reasons")
    return db.verdict_row(conn, item_id, str(n.reviewer), verdict, n.rewrite, n.comment, source,
                          at, text_hash, shown, n.seconds, ratings, n.tags or None)


SAME = ("verdict", "chosen", "comment", "ratings", "tags")


def store(conn, ctx: Context, notes: list[Note], source: str, reviewer: str | None = None) -> dict:
    """Check every annotation, then store the fresh ones in one transaction. Returns counts and `stale`: one line
    per annotation refused because its text changed since the export."""
    index, revoked = _index(conn, ctx.key), _revoked(conn)
    latest = {(h["item"], h["reviewer"], h["hash"]): h for h in db.history(conn)}
    rows, stale, blank = {}, [], 0
    for n in notes:
        if n.verdict is None:
            blank += 1
            continue
        n.reviewer = n.reviewer or reviewer
        if n.task not in index:
            raise UserError(f"{n.where}: task {n.task!r} is not a task of this run's review (exported from another "
                            "run, or the id was edited)")
        item_id, h = index[n.task]
        if db.item_hash(conn, item_id) != h:  # a rerun changed the text (or stopped routing it) since the export
            stale.append(f"{n.where}: task {n.task}: stale: the pair's text changed since the export (or it is no "
                         "longer routed); not imported, review it again")
            continue
        try:
            row = _row(conn, ctx, n, item_id, h, source, revoked)
        except UserError as e:
            raise UserError(f"{n.where}: {e}") from None
        key = (item_id, row["reviewer"], h)
        rows.pop(key, None)  # the file's last annotation per item and reviewer counts
        rows[key] = row
    todo = [r for k, r in rows.items() if not (k in latest and all(latest[k][f] == r[f] for f in SAME))]
    db.insert(conn, todo)
    return {"imported": len(todo), "unchanged": len(rows) - len(todo), "blank": blank, "stale": stale}


# ---- CSV and JSONL: the same blind task, flat ----

def _columns(ctx: Context) -> list[str]:
    return ["task", "domain", "system", "prompt", "principles", "A", "B", "verdict", "rewrite", "comment", "reviewer",
            *[f"{s}: {g['name']}" for s in SIDES for g in ctx.guidelines], "tags", "tag_options"]


TAG_SEP = ";"  # tags in one CSV cell (a principle id or tag name holds no ";")


def write_flat(conn, ctx: Context, path: Path, fmt: str) -> int:
    ts = tasks(conn, ctx)
    if fmt == "jsonl":
        empty = {"verdict": None, "rewrite": None, "comment": None, "reviewer": None,
                 "ratings": {s: {g["name"]: None for g in ctx.guidelines} for s in SIDES}, "tags": []}
        atomic_write(path, "".join(json.dumps({**t, **empty}, ensure_ascii=False) + "\n" for t in ts))
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_columns(ctx), restval="")
        w.writeheader()
        w.writerows({k: escape_cell(v) for k, v in {**t, "tag_options": TAG_SEP.join(t["tag_options"])}.items()}
                    for t in ts)
        atomic_write(path, buf.getvalue())
    return len(ts)


def _blank(v):
    return None if v in ("", None) else v


def _score(where: str, name: str, v) -> int | None:
    v = _blank(v)
    if v is None:
        return None
    try:
        return int(str(v).strip()) if not isinstance(v, int) else v
    except ValueError:
        raise UserError(f"{where}: {name}: {v!r} is not a whole number") from None


def read_flat(ctx: Context, path: Path, fmt: str) -> list[Note]:
    notes = []
    if fmt == "jsonl":
        for n, rec in read_jsonl(path):
            where = f"{path}:{n}"
            ratings = rec.get("ratings") or {}
            if not isinstance(ratings, dict) or not set(ratings) <= set(SIDES):
                raise UserError(f"{where}: ratings: must map A / B to {{guideline: score}}")
            tags = rec.get("tags") or None
            if tags is not None and not isinstance(tags, list):
                raise UserError(f"{where}: tags: must be a list")
            notes.append(Note(where, str(rec.get("task")), _blank(rec.get("reviewer")), _verdict(rec.get("verdict")),
                              _blank(rec.get("rewrite")), _blank(rec.get("comment")),
                              {s: {g: _score(where, f"ratings.{s}.{g}", x) for g, x in (ratings.get(s) or {}).items()
                                   if _blank(x) is not None} for s in SIDES}, tags))
        return notes
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = {"task", "verdict"} - set(reader.fieldnames or [])
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))} in the header")
    names = {f"{s}: {g['name']}": (s, g["name"]) for s in SIDES for g in ctx.guidelines}
    try:
        for rec in reader:
            where, rec = f"{path}:{reader.line_num}", {k: unescape_cell(v) for k, v in rec.items() if k}
            ratings: dict = {s: {} for s in SIDES}
            for col, (s, g) in names.items():
                x = _score(where, col, rec.get(col))
                if x is not None:
                    ratings[s][g] = x
            tags = [t.strip() for t in (rec.get("tags") or "").split(TAG_SEP) if t.strip()] or None
            notes.append(Note(where, str(rec.get("task")), _blank(rec.get("reviewer")), _verdict(rec.get("verdict")),
                              _blank(rec.get("rewrite")), _blank(rec.get("comment")), ratings, tags))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: {e}") from None
    return notes


def _verdict(v) -> str | None:
    """A verdict as typed in a sheet: the kind (A, b, Tie) or its meaning's words ("A is better")."""
    v = _blank(v if not isinstance(v, str) else v.strip())
    if v is None:
        return None
    words = {m.lower(): k for k, m in MEANING.items()}
    return {k.lower(): k for k in api.BLIND}.get(str(v).lower()) or words.get(str(v).lower()) or str(v)
