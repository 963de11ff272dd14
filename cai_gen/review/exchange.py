"""`review export --unblind`: every item labelled original / revision with the verdicts so far, as JSONL or CSV (a
record for admins; the blind task sets for annotation tools are tasks.py and tools.py), and its import.

Annotate the `reviewer`, `verdict`, `chosen` (edits) and `comment` columns, import. The other columns are context and
are ignored on import, except `hash`: the content hash of the text as exported. A row whose hash is not the
item's current text (a rerun changed the pair while it was out for annotation) is stored tied to the old text,
kept in the history and not applied. An import is checked in full before anything is stored (one bad row
stores nothing), and importing the same file twice adds nothing: a row equal to that reviewer's latest verdict
on the same text is skipped. A file with several rows for one item and reviewer (on the same text) imports only
its last one: importing all of them would make an earlier row the latest again on every re-import.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

from ..errors import UserError
from ..store import atomic_write
from ..yamlio import read_jsonl, read_text
from . import db

# a spreadsheet runs a cell starting with one of these as a formula (=HYPERLINK(...) in a model's answer would
# be a live link, or worse, in the reviewer's sheet): the export prefixes such cells with ', the import takes it off.
# A cell that already starts with ' is prefixed too, so text that begins "'=" comes back as itself.
FORMULA = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_cell(v):
    return "'" + v if isinstance(v, str) and v.startswith(FORMULA) else v


def unescape_cell(v):
    return v[1:] if isinstance(v, str) and v.startswith("'") and v[1:].startswith(FORMULA) else v


VERDICT_FIELDS = ["reviewer", "verdict", "chosen", "comment", "reviewed_at"]
CSV_FIELDS = ["id", "hash", "domain", "routed_by", "system", "prompt", "original", "revision", "principles",
              "critiques", *VERDICT_FIELDS]


def _fmt(path: Path, fmt: str | None) -> str:
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in ("jsonl", "csv"):
        raise UserError(f"{path}: say the format with --format jsonl|csv (or name the file .jsonl / .csv)")
    return fmt


def rows(conn) -> list[dict]:
    """One row per (item, reviewer) current verdict; an item nobody reviewed yet gets one row with blanks."""
    cur = db.current(conn)
    out = []
    for it in db.items(conn):
        votes = cur.get(it["id"]) or {None: None}
        for reviewer, v in votes.items():
            out.append({"item": it, "hash": db.item_hash(conn, it["id"]), "reviewer": reviewer,
                        "verdict": v and v["verdict"], "chosen": v and v["chosen"],
                        "comment": v and v["comment"], "reviewed_at": v and v["at"]})
    return out


def conversation(msgs: list[dict]) -> str:
    """Every turn after the system prompt: one turn as its text, several as "role: text" blocks, oldest first."""
    turns = [m for m in msgs if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def flat(r: dict) -> dict:
    it = r["item"]
    system = "\n".join(m["content"] for m in it["prompt"] if m["role"] == "system")
    return {"id": it["id"], "hash": r["hash"], "domain": it.get("domain") or "",
            "routed_by": ",".join(it["routed_by"]), "system": system,
            "prompt": conversation(it["prompt"]), "original": it["original"], "revision": it["revision"],
            "principles": ",".join(x["principle"] for x in it["rounds"]),
            "critiques": "\n\n".join(x["critique"] for x in it["rounds"]),
            **{k: r[k] or "" for k in VERDICT_FIELDS}}


def export(conn, path: Path, fmt: str | None = None) -> int:
    fmt, rs = _fmt(path, fmt), rows(conn)
    if fmt == "jsonl":
        atomic_write(path, "".join(json.dumps({"id": r["item"]["id"], "hash": r["hash"],
                                               **{k: r[k] for k in VERDICT_FIELDS},
                                               "item": r["item"]}, ensure_ascii=False) + "\n" for r in rs))
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: escape_cell(v) for k, v in flat(r).items()} for r in rs)
        atomic_write(path, buf.getvalue())
    return len(rs)


def _read(path: Path, fmt: str) -> list[tuple[str, dict]]:
    """[(where, record)] with `where` = 'FILE:LINE' for error messages."""
    if fmt == "jsonl":
        return [(f"{path}:{n}", rec) for n, rec in read_jsonl(path)]
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = {"id", "verdict"} - set(reader.fieldnames or [])
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))} in the header")
    try:
        return [(f"{path}:{reader.line_num}", {k: unescape_cell(v) for k, v in rec.items()}) for rec in reader]
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: {e}") from None


def load(conn, path: Path, fmt: str | None = None, reviewer: str | None = None) -> dict:
    """Import verdicts. Returns {"imported", "unchanged", "blank", "stale", "superseded"} counts (stale: imported
    rows given on text a rerun has since changed; superseded: rows a later row for the same item, reviewer and
    text replaces)."""
    path = Path(path)
    recs = _read(path, _fmt(path, fmt))
    latest = {(h["item"], h["reviewer"], h["hash"]): h for h in db.history(conn)}  # history is in seq order
    checked, blank = {}, 0  # (item, reviewer, hash) -> the file's last row for it
    for where, rec in recs:
        get = lambda k: (rec.get(k) if rec.get(k) not in ("", None) else None)  # noqa: E731  (CSV blanks = unset)
        if get("verdict") is None:
            blank += 1  # not annotated (yet)
            continue
        item_id, who = get("id"), get("reviewer") or reviewer
        if item_id is None:
            raise UserError(f"{where}: id: missing")
        if who is None:
            raise UserError(f"{where}: reviewer: missing (fill the column or pass --reviewer NAME)")
        at = get("reviewed_at")
        if at is not None:
            try:
                datetime.fromisoformat(str(at))
            except ValueError:
                raise UserError(f"{where}: reviewed_at: {at!r} is not an ISO time (e.g. 2026-11-23T12:00:00+00:00)") from None
        try:
            row = db.verdict_row(conn, str(item_id), str(who), str(get("verdict")).strip().lower(), get("chosen"),
                                 get("comment"), "import", str(at) if at else None,
                                 str(get("hash")) if get("hash") is not None else None)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        key = (row["item"], row["reviewer"], row["hash"])
        checked.pop(key, None)  # re-inserted: the dict keeps the file's order of last rows
        checked[key] = row
    superseded = len(recs) - blank - len(checked)
    todo, unchanged, stale = [], 0, 0
    for key, row in checked.items():
        old = latest.get(key)
        if old and all(old[k] == row[k] for k in ("verdict", "chosen", "comment")):
            unchanged += 1
            continue
        todo.append(row)
        stale += row["hash"] != db.item_hash(conn, row["item"])
    db.insert(conn, todo)  # all rows or none
    return {"imported": len(todo), "unchanged": unchanged, "blank": blank, "stale": stale, "superseded": superseded}
