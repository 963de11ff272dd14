"""review.sqlite: review items and every verdict ever given, in a real database in the run dir.

Why SQLite: two reviewers (two browser tabs, two server threads) write at once and a closed browser or a
killed server loses nothing: each verdict is its own committed transaction (WAL journal, busy timeout).
Verdicts are never updated in place: a reviewer's current verdict on an item is their latest one, and the
history stays. The schema version lives in PRAGMA user_version and MIGRATIONS upgrade old files in order.
A file that is not a readable review database is refused and never written to.
"""
from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError

FILE = "review.sqlite"
VERDICTS = ("accept", "swap", "reject", "edit")  # revision better | original better | neither usable | expert's text
NAME = re.compile(r"^[\w][\w .@-]{0,63}$")

MIGRATIONS = [
    # v1: the items shown to reviewers (payload = route.item JSON) and the append-only verdict history
    """
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        payload TEXT NOT NULL,
        added_at TEXT NOT NULL
    );
    CREATE TABLE verdicts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id TEXT NOT NULL REFERENCES items(id),
        reviewer TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'swap', 'reject', 'edit')),
        chosen TEXT,
        comment TEXT,
        created_at TEXT NOT NULL,
        CHECK (verdict != 'edit' OR chosen IS NOT NULL)
    );
    """,
    # v2: where a verdict came from (the web page or an imported annotation file), and the lookup the page
    # makes on every load (latest verdict per item and reviewer)
    """
    ALTER TABLE verdicts ADD COLUMN source TEXT NOT NULL DEFAULT 'web';
    CREATE INDEX verdicts_item_reviewer ON verdicts(item_id, reviewer, seq);
    """,
]
VERSION = len(MIGRATIONS)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fail(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; the file was left as it is (move it away to start a new review database)")


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """Open (or create) the review database, checked and migrated to VERSION. One connection per thread."""
    path = Path(path)
    fresh = not path.exists()
    if fresh and not create:
        raise UserError(f"{path}: no review database here (run `python -m cai_gen.review serve` or `import` first)")
    try:
        # mode=rw for an existing file: sqlite must not silently create or replace anything
        conn = sqlite3.connect(f"file:{path}?mode={'rwc' if fresh else 'rw'}", uri=True, timeout=30,
                               isolation_level=None, check_same_thread=False)
        if not fresh:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise _fail(path, f"damaged review database ({ok})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise _fail(path, f"not a readable review database ({e})") from None
    if version > VERSION:
        conn.close()
        raise _fail(path, f"schema version {version} is newer than this cai_gen knows ({VERSION}); upgrade cai_gen")
    if version == 0 and not fresh and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        conn.close()
        raise _fail(path, "an SQLite file that is not a cai_gen review database")
    conn.execute("PRAGMA foreign_keys = ON")
    if fresh:
        conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer; persistent in the file
    migrate(conn, version)
    return conn


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply each missing migration in its own transaction (DDL is transactional in SQLite)."""
    for v in range(version, VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[v].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def add_items(conn: sqlite3.Connection, items: list[dict]) -> int:
    """Add new items; an item already in the database keeps its stored text (verdicts were given on it)."""
    with _tx(conn):
        before = conn.total_changes
        conn.executemany("INSERT OR IGNORE INTO items(id, payload, added_at) VALUES (?, ?, ?)",
                         [(it["id"], json.dumps(it, ensure_ascii=False), now()) for it in items])
        return conn.total_changes - before


class _tx:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so concurrent writers queue, never fail."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.conn.execute("ROLLBACK" if kind else "COMMIT")


def check_verdict(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None) -> None:
    if not isinstance(reviewer, str) or not NAME.match(reviewer):
        raise UserError(f"reviewer: {reviewer!r} is not a name (1-64 letters, digits, space . @ - _)")
    if verdict not in VERDICTS:
        raise UserError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
    if verdict == "edit" and not (isinstance(chosen, str) and chosen.strip()):
        raise UserError("chosen: an edit verdict needs the expert's answer text")
    if conn.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
        raise UserError(f"item: unknown item {item_id!r} (not routed to review in this run)")


ROW = ("item", "reviewer", "verdict", "chosen", "comment", "at", "source")


def verdict_row(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None = None,
                comment: str | None = None, source: str = "web", at: str | None = None) -> dict:
    """A checked verdict, as stored: chosen text only for edits, blanks as None."""
    check_verdict(conn, item_id, reviewer, verdict, chosen)
    return dict(zip(ROW, (item_id, reviewer.strip(), verdict, chosen if verdict == "edit" else None,
                          comment or None, at or now(), source)))


def insert(conn: sqlite3.Connection, rows: list[dict]) -> None:
    """Append verdicts to the history in one transaction: all of them or none."""
    with _tx(conn):
        conn.executemany("INSERT INTO verdicts(item_id, reviewer, verdict, chosen, comment, created_at, source) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", [tuple(r[k] for k in ROW) for r in rows])


def record(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None = None,
           comment: str | None = None, source: str = "web", at: str | None = None) -> dict:
    """Store one verdict (a new history entry; the reviewer's latest verdict is the one that counts)."""
    row = verdict_row(conn, item_id, reviewer, verdict, chosen, comment, source, at)
    insert(conn, [row])
    return row


def items(conn: sqlite3.Connection) -> list[dict]:
    return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM items ORDER BY rowid")]


def current(conn: sqlite3.Connection) -> dict[str, dict[str, dict]]:
    """{item id: {reviewer: their latest verdict}}."""
    out: dict[str, dict[str, dict]] = {}
    q = ("SELECT v.item_id, v.reviewer, v.verdict, v.chosen, v.comment, v.created_at, v.source FROM verdicts v "
         "JOIN (SELECT item_id, reviewer, max(seq) AS seq FROM verdicts GROUP BY item_id, reviewer) last "
         "ON v.seq = last.seq ORDER BY v.seq")
    for item_id, reviewer, verdict, chosen, comment, at, source in conn.execute(q):
        out.setdefault(item_id, {})[reviewer] = {"verdict": verdict, "chosen": chosen, "comment": comment,
                                                 "at": at, "source": source}
    return out


def history(conn: sqlite3.Connection, item_id: str | None = None) -> list[dict]:
    q = "SELECT item_id, reviewer, verdict, chosen, comment, created_at, source FROM verdicts"
    args: tuple = ()
    if item_id is not None:
        q, args = q + " WHERE item_id = ?", (item_id,)
    return [dict(zip(ROW, r)) for r in conn.execute(q + " ORDER BY seq", args)]


def open_run(run_dir: Path, create: bool = True) -> sqlite3.Connection:
    """The run's database with the run's current review queue added (new routed pairs appear on reload)."""
    from ..stats import read_jsonl

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise UserError(f"{run_dir}: not a finished cai_gen run dir (no summary.json)")
    conn = connect(run_dir / FILE, create=create)
    try:
        add_items(conn, read_jsonl(run_dir / "review_queue.jsonl"))
    except ValueError as e:
        conn.close()
        raise UserError(f"{run_dir / 'review_queue.jsonl'}: damaged ({e})") from None
    return conn
