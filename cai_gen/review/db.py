"""review.sqlite: review items and every verdict ever given, in a real database in the run dir.

Why SQLite: two reviewers (two browser tabs, two server threads) write at once and a closed browser or a
killed server loses nothing: each verdict is its own committed transaction (WAL journal, busy timeout).
Verdicts are never updated in place: a reviewer's current verdict on an item is their latest one, and the
history stays. The schema version lives in PRAGMA user_version and MIGRATIONS upgrade old files in order.
A file that is not a readable review database is refused and never written to.

A rerun can change a routed pair's text or stop routing it. Each verdict records the content hash of the text
it was given on; an item whose text changed is refreshed to the new text (the old one stays in item_versions)
and only verdicts on its current hash count, so a verdict never applies to text its reviewer did not see. An
item no longer routed is retired: hidden from the queue and from merge, never deleted with its verdicts.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .. import rundir
from ..errors import UserError
from ..yamlio import jsonl_rows

FILE = rundir.REVIEW_DB
# revision better | original better | neither usable | expert's text | both fine | unsure (the comment says why)
VERDICTS = ("accept", "swap", "reject", "edit", "tie", "skip")
SCALE = (1, 5)  # a rating per guideline and answer: 1 poor .. 5 excellent
ANSWERS = ("revision", "original")  # what ratings are keyed by (the blind page's A/B mapped back, api.py)
NAME = re.compile(r"^[\w][\w .@-]{0,63}$")

CONTENT = ("prompt", "original", "revision", "rounds")  # what the reviewer judges; routing and judge are context


def content_hash(item: dict) -> str:
    """Hash of the text a verdict is about. routed_by, flags, judge, created_at are left out: a rerun with other
    routing rules (a free knob) must not void the verdicts already given on unchanged text."""
    blob = json.dumps({k: item.get(k) for k in CONTENT}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    # "if missing": a file partly upgraded by hand or by another build must still migrate
    if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _v3(conn: sqlite3.Connection) -> None:
    _add_column(conn, "items", "content_hash", "TEXT")
    _add_column(conn, "items", "updated_at", "TEXT")
    _add_column(conn, "items", "retired_at", "TEXT")  # NULL: in the queue
    _add_column(conn, "verdicts", "content_hash", "TEXT")
    conn.execute("CREATE TABLE IF NOT EXISTS item_versions (item_id TEXT NOT NULL REFERENCES items(id), "
                 "content_hash TEXT NOT NULL, payload TEXT NOT NULL, added_at TEXT NOT NULL, "
                 "PRIMARY KEY (item_id, content_hash))")
    for item_id, payload, added in conn.execute("SELECT id, payload, added_at FROM items").fetchall():
        try:
            h = content_hash(json.loads(payload))
        except (ValueError, AttributeError):  # not JSON, or not an object
            h = "unreadable"  # never equal to a real hash: the next queue sync refreshes the item
        conn.execute("UPDATE items SET content_hash = ? WHERE id = ?", (h, item_id))
        conn.execute("INSERT OR IGNORE INTO item_versions VALUES (?, ?, ?, ?)", (item_id, h, payload, added))
    # before v3 an item's stored text never changed (INSERT OR IGNORE), so every old verdict was given on it
    conn.execute("UPDATE verdicts SET content_hash = (SELECT content_hash FROM items WHERE items.id = item_id) "
                 "WHERE content_hash IS NULL")


def _v4(conn: sqlite3.Connection) -> None:
    # routing as columns: the page lists and searches thousands of items without parsing every payload
    _add_column(conn, "items", "domain", "TEXT")
    _add_column(conn, "items", "routed_by", "TEXT NOT NULL DEFAULT ''")  # rules joined by ","
    for item_id, payload in conn.execute("SELECT id, payload FROM items").fetchall():
        try:
            it = json.loads(payload)
            domain, why = it.get("domain"), ",".join(it.get("routed_by") or [])
        except (ValueError, AttributeError, TypeError):
            domain, why = None, ""
        conn.execute("UPDATE items SET domain = ?, routed_by = ? WHERE id = ?", (domain, why, item_id))
    # shown_first: which answer a blind page showed as A ('revision' | 'original'; NULL: labelled view or an
    # import), for position bias; seconds: page open to verdict, for too-fast annotations
    _add_column(conn, "verdicts", "shown_first", "TEXT CHECK (shown_first IN ('revision', 'original'))")
    _add_column(conn, "verdicts", "seconds", "REAL")
    # invited reviewers: only a hash of each token is stored, so a copied database file lets nobody in
    conn.execute("CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, "
                 "role TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')), token_hash TEXT NOT NULL UNIQUE, "
                 "created_at TEXT NOT NULL, revoked_at TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS sessions (session_hash TEXT PRIMARY KEY, "
                 "token_id INTEGER NOT NULL REFERENCES tokens(id), created_at TEXT NOT NULL)")


SEP = "\x00"  # between searchable fields: no text and no query holds it, so a match never spans two fields


def search_text(item: dict, labelled: bool) -> str:
    """The text a search may match: only what the page shows (blind: no critiques, judge or flags), field by
    field. Never the stored JSON: its field names ("revision": ...) would tell a blind reviewer which answer
    is which, and neither a concatenation: a query spanning the end of one answer and the start of the other
    would tell the order."""
    rounds = item.get("rounds") or []
    fields = [item.get("id"), item.get("domain"), *(item.get("routed_by") or []),
              *(m.get("content") for m in item.get("prompt") or [] if isinstance(m, dict)),
              item.get("original"), item.get("revision"),
              *(r.get(k) for r in rounds if isinstance(r, dict) for k in ("principle", "critique_request"))]
    if labelled:  # what only the labelled view shows
        fields += [r.get("critique") for r in rounds if isinstance(r, dict)]
        fields.append((item.get("judge") or {}).get("outcome"))
    return SEP + SEP.join(f.replace(SEP, "").lower() for f in fields if isinstance(f, str) and f) + SEP


def search_query(q: str) -> str:
    return q.replace(SEP, "").lower()


def _v5(conn: sqlite3.Connection) -> None:
    # search columns (what the page shows, see search_text), a random key for the blind A/B order, single-use
    # invites (used_at) and sessions that end (expires_at)
    _add_column(conn, "items", "search", "TEXT NOT NULL DEFAULT ''")
    _add_column(conn, "items", "search_labelled", "TEXT NOT NULL DEFAULT ''")
    for item_id, payload in conn.execute("SELECT id, payload FROM items").fetchall():
        try:
            it = json.loads(payload)
            blind, labelled = search_text(it, False), search_text(it, True)
        except (ValueError, AttributeError, TypeError):
            blind = labelled = ""
        conn.execute("UPDATE items SET search = ?, search_labelled = ? WHERE id = ?", (blind, labelled, item_id))
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # the A/B order's key: random, made once per database and never sent to a page, so nobody can compute the
    # order from what they know (the run seed, the item id, their own name)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('ab_key', ?)", (secrets.token_hex(32),))
    _add_column(conn, "tokens", "used_at", "TEXT")  # NULL: the invite link has not been used to sign in yet
    _add_column(conn, "sessions", "expires_at", "TEXT")
    # sessions and tokens from before v5 never expired and could be replayed: their sessions end now, and a
    # token that already signed someone in counts as used
    at = now()
    conn.execute("UPDATE sessions SET expires_at = ? WHERE expires_at IS NULL", (at,))
    conn.execute("UPDATE tokens SET used_at = ? WHERE used_at IS NULL AND id IN (SELECT token_id FROM sessions)",
                 (at,))


INVITE_HOURS = 72.0  # an invite link not used within three days stops working (review invite --valid-hours)


def _v6(conn: sqlite3.Connection) -> None:
    # invites that end: an unused link stops working at expires_at. Links made before v6 had no end: they get
    # the default, counted from when they were made (a forgotten link from last month is dead now)
    _add_column(conn, "tokens", "expires_at", "TEXT")
    for tid, created in conn.execute("SELECT id, created_at FROM tokens WHERE expires_at IS NULL").fetchall():
        try:
            end = datetime.fromisoformat(created) + timedelta(hours=INVITE_HOURS)
        except (TypeError, ValueError):
            end = datetime.now(timezone.utc)
        conn.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (end.isoformat(timespec="seconds"), tid))


def _v7(conn: sqlite3.Connection) -> None:
    # ties and skips, ratings and reason tags. The v1 CHECK on verdict names four kinds and SQLite cannot alter a
    # CHECK, so the table is rebuilt (the documented 12-step way: new table, copy, drop, rename) keeping each seq
    conn.execute("CREATE TABLE verdicts_v7 (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "item_id TEXT NOT NULL REFERENCES items(id), reviewer TEXT NOT NULL, verdict TEXT NOT NULL "
                 f"CHECK (verdict IN ({', '.join(repr(v) for v in VERDICTS)})), chosen TEXT, comment TEXT, "
                 "created_at TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'web', content_hash TEXT, "
                 "shown_first TEXT CHECK (shown_first IN ('revision', 'original')), seconds REAL, "
                 "ratings TEXT, tags TEXT, "  # JSON: {"revision"|"original": {guideline: 1-5}}; [tag, ...]
                 "CHECK (verdict != 'edit' OR chosen IS NOT NULL))")
    cols = "seq, item_id, reviewer, verdict, chosen, comment, created_at, source, content_hash, shown_first, seconds"
    conn.execute(f"INSERT INTO verdicts_v7({cols}) SELECT {cols} FROM verdicts")
    conn.execute("DROP TABLE verdicts")
    conn.execute("ALTER TABLE verdicts_v7 RENAME TO verdicts")
    conn.execute("CREATE INDEX verdicts_item_reviewer ON verdicts(item_id, reviewer, seq)")


def principles(item: dict) -> str:
    """The pair's principles as a column the list filters by: each name between SEPs (instr finds whole names)."""
    names = [r.get("principle") for r in item.get("rounds") or [] if isinstance(r, dict)]
    names = [n.replace(SEP, "") for n in names if isinstance(n, str) and n]
    return SEP + SEP.join(dict.fromkeys(names)) + SEP if names else ""


def _v8(conn: sqlite3.Connection) -> None:
    # serve --overlap K: which reviewer holds which item (assign.py). A row is never deleted: a reviewer who
    # skipped an item keeps it (they never get it again), and an item whose text a rerun changed comes back
    # to the same reviewers. The principles column: the list's filter by principle without parsing payloads
    conn.execute("CREATE TABLE IF NOT EXISTS assignments (item_id TEXT NOT NULL REFERENCES items(id), "
                 "reviewer TEXT NOT NULL, assigned_at TEXT NOT NULL, PRIMARY KEY (item_id, reviewer))")
    conn.execute("CREATE INDEX IF NOT EXISTS assignments_reviewer ON assignments(reviewer, item_id)")
    _add_column(conn, "items", "principles", "TEXT NOT NULL DEFAULT ''")
    for item_id, payload in conn.execute("SELECT id, payload FROM items").fetchall():
        try:
            names = principles(json.loads(payload))
        except (ValueError, AttributeError, TypeError):
            names = ""
        conn.execute("UPDATE items SET principles = ? WHERE id = ?", (names, item_id))


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row and row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    with _tx(conn):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


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
    # v3: content hashes (refresh changed items, verdicts tied to the text they judged), retired items
    _v3,
    # v4: routing columns, position shown and seconds per verdict, reviewer tokens and browser sessions
    _v4,
    # v5: search columns, the A/B key, single-use invites, expiring sessions
    _v5,
    # v6: invites that expire
    _v6,
    # v7: tie and skip verdicts, ratings per guideline, reason tags
    _v7,
    # v8: who holds which item under serve --overlap, the principles column
    _v8,
]
VERSION = len(MIGRATIONS)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fail(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; the file was left as it is (move it away to start a new review database)")


def connect(path: Path, create: bool = True, check: bool = True) -> sqlite3.Connection:
    """Open (or create) the review database, checked and migrated to VERSION. One connection per thread.
    check=False skips PRAGMA quick_check (it reads the whole file: ~85 ms at 20,000 items): for the review
    server's per-request connections, after it checked the file once at start."""
    path = Path(path)
    fresh = not path.exists()
    if fresh and not create:
        raise UserError(f"{path}: no review database here (run `python -m cai_gen.review serve` or `import` first)")
    try:
        # mode=rw for an existing file: sqlite must not silently create or replace anything
        conn = sqlite3.connect(f"file:{path}?mode={'rwc' if fresh else 'rw'}", uri=True, timeout=30,
                               isolation_level=None, check_same_thread=False)
        if check and not fresh:
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
            if callable(MIGRATIONS[v]):
                MIGRATIONS[v](conn)
            else:
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def sync(conn: sqlite3.Connection, queue: list[dict]) -> dict[str, int]:
    """Make the stored items the run's current review queue, in one transaction. New items are added; an item
    whose text changed is refreshed (its old verdicts stay, tied to the old hash, and stop counting); one whose
    routing or judge notes changed gets the new payload and keeps its verdicts; one no longer routed is retired;
    a retired one routed again comes back (with its verdicts if its text is the one they were given on)."""
    n = dict.fromkeys(("added", "refreshed", "retired", "restored"), 0)
    at = now()
    with _tx(conn):
        have = {i: (p, h, r) for i, p, h, r in conn.execute("SELECT id, payload, content_hash, retired_at FROM items")}
        seen = {it["id"]: it for it in queue}  # an id listed twice (a hand-edited queue): the last one
        for item_id, it in seen.items():
            payload, h = json.dumps(it, ensure_ascii=False), content_hash(it)
            old = have.get(item_id)
            domain, why = it.get("domain"), ",".join(it.get("routed_by") or [])
            found = search_text(it, False), search_text(it, True), principles(it)
            if old is None:
                conn.execute("INSERT INTO items(id, payload, added_at, content_hash, domain, routed_by, search, "
                             "search_labelled, principles) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (item_id, payload, at, h, domain, why, *found))
                n["added"] += 1
            elif old != (payload, h, None):
                conn.execute("UPDATE items SET payload = ?, content_hash = ?, updated_at = ?, retired_at = NULL, "
                             "domain = ?, routed_by = ?, search = ?, search_labelled = ?, principles = ? WHERE id = ?",
                             (payload, h, at, domain, why, *found, item_id))
                n["refreshed"] += old[1] != h
                n["restored"] += old[2] is not None
            if old is None or old[1] != h:  # the text as shown, for reading a stale verdict later
                conn.execute("INSERT OR IGNORE INTO item_versions VALUES (?, ?, ?, ?)", (item_id, h, payload, at))
        gone = [(at, i) for i, (_, _, r) in have.items() if i not in seen and r is None]
        conn.executemany("UPDATE items SET retired_at = ? WHERE id = ?", gone)
        n["retired"] = len(gone)
    return n


class _tx:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so concurrent writers queue, never fail."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.conn.execute("ROLLBACK" if kind else "COMMIT")


def check_verdict(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None,
                  comment: str | None = None) -> None:
    if not isinstance(reviewer, str) or not NAME.match(reviewer):
        raise UserError(f"reviewer: {reviewer!r} is not a name (1-64 letters, digits, space . @ - _)")
    if verdict not in VERDICTS:
        raise UserError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
    if verdict == "edit" and not (isinstance(chosen, str) and chosen.strip()):
        raise UserError("chosen: an edit verdict needs the expert's answer text")
    if comment is not None and not isinstance(comment, str):
        raise UserError("comment: must be text")
    if verdict == "skip" and not (comment or "").strip():
        raise UserError("comment: a skip needs a reason (what makes you unsure)")
    if item_hash(conn, item_id) is None:
        raise UserError(f"item: unknown item {item_id!r} (not routed to review in this run)")


def item_hash(conn: sqlite3.Connection, item_id: str) -> str | None:
    """The content hash of a queued item's current text; None for an unknown or retired item."""
    row = conn.execute("SELECT content_hash FROM items WHERE id = ? AND retired_at IS NULL", (item_id,)).fetchone()
    return row and row[0]


ROW = ("item", "reviewer", "verdict", "chosen", "comment", "at", "source", "hash", "shown_first", "seconds", "ratings",
       "tags")


def check_ratings(ratings) -> dict | None:
    """{"revision"|"original": {guideline: whole number on SCALE}}, empty parts dropped; None when nothing rated."""
    if ratings is None:
        return None
    if not isinstance(ratings, dict) or not set(ratings) <= set(ANSWERS):
        raise UserError(f"ratings: must map {' / '.join(ANSWERS)} to {{guideline: score}}")
    out = {}
    for side, scores in ratings.items():
        if not isinstance(scores, dict):
            raise UserError(f"ratings.{side}: must map guideline names to scores")
        for g, n in scores.items():
            if not (isinstance(g, str) and NAME.match(g)):
                raise UserError(f"ratings.{side}: {g!r} is not a guideline name")
            if isinstance(n, bool) or not isinstance(n, int) or not SCALE[0] <= n <= SCALE[1]:
                raise UserError(f"ratings.{side}.{g}: {n!r} is not a whole number from {SCALE[0]} to {SCALE[1]}")
        if scores:
            out[side] = dict(scores)
    return out or None


def check_tags(tags) -> list[str] | None:
    if tags is None:
        return None
    if not isinstance(tags, list) or len(tags) > 50 or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags):
        raise UserError("tags: must be a list of short names (at most 50, each 1-64 characters)")
    return sorted(set(tags)) or None
FAST = 5.0  # seconds: a verdict given faster than this cannot have come from reading both answers


def verdict_row(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None = None,
                comment: str | None = None, source: str = "web", at: str | None = None,
                text_hash: str | None = None, shown_first: str | None = None, seconds=None, ratings=None,
                tags=None) -> dict:
    """A checked verdict, as stored: chosen text only for edits, blanks as None. `text_hash`: the content hash of
    the text the reviewer saw (an imported file made before a rerun); default: the item's current text.
    `shown_first`: the answer a blind page showed as A; `seconds`: page open to verdict."""
    check_verdict(conn, item_id, reviewer, verdict, chosen, comment)
    if text_hash is not None and not isinstance(text_hash, str):
        raise UserError("hash: must be text")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 <= seconds < 86400):
        raise UserError(f"seconds: {seconds!r} is not a duration in seconds (0 to 86400)")
    return dict(zip(ROW, (item_id, reviewer.strip(), verdict, chosen if verdict == "edit" else None,
                          comment or None, at or now(), source, text_hash or item_hash(conn, item_id),
                          shown_first, None if seconds is None else round(float(seconds), 2),
                          check_ratings(ratings), check_tags(tags))))


def insert(conn: sqlite3.Connection, rows: list[dict]) -> None:
    """Append verdicts to the history in one transaction: all of them or none."""
    with _tx(conn):
        conn.executemany("INSERT INTO verdicts(item_id, reviewer, verdict, chosen, comment, created_at, source, "
                         "content_hash, shown_first, seconds, ratings, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [tuple(_cell(r[k]) for k in ROW) for r in rows])


def _cell(v):
    return json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, (dict, list)) else v


def _json(v):
    return None if v is None else json.loads(v)


def record(conn: sqlite3.Connection, item_id: str, reviewer: str, verdict: str, chosen: str | None = None,
           comment: str | None = None, source: str = "web", at: str | None = None,
           text_hash: str | None = None, shown_first: str | None = None, seconds=None, ratings=None,
           tags=None) -> dict:
    """Store one verdict (a new history entry; the reviewer's latest verdict is the one that counts)."""
    row = verdict_row(conn, item_id, reviewer, verdict, chosen, comment, source, at, text_hash, shown_first, seconds,
                      ratings, tags)
    insert(conn, [row])
    return row


def items(conn: sqlite3.Connection) -> list[dict]:
    """The queued items (retired ones are kept in the file but not listed)."""
    return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM items WHERE retired_at IS NULL ORDER BY rowid")]


def retired(conn: sqlite3.Connection) -> list[str]:
    return [i for (i,) in conn.execute("SELECT id FROM items WHERE retired_at IS NOT NULL ORDER BY rowid")]


# a verdict counts while its item is queued and it was given on the item's current text
_COUNTS = "JOIN items i ON i.id = v.item_id AND i.retired_at IS NULL AND v.content_hash = i.content_hash"


def current(conn: sqlite3.Connection) -> dict[str, dict[str, dict]]:
    """{item id: {reviewer: their latest verdict on the item's current text}}."""
    out: dict[str, dict[str, dict]] = {}
    q = ("SELECT v.item_id, v.reviewer, v.verdict, v.chosen, v.comment, v.created_at, v.source, v.shown_first, "
         f"v.seconds, v.ratings, v.tags FROM verdicts v JOIN (SELECT v.item_id, v.reviewer, max(v.seq) AS seq FROM verdicts v {_COUNTS} "
         "GROUP BY v.item_id, v.reviewer) last ON v.seq = last.seq ORDER BY v.seq")
    for item_id, reviewer, verdict, chosen, comment, at, source, shown, secs, ratings, tags in conn.execute(q):
        out.setdefault(item_id, {})[reviewer] = {"verdict": verdict, "chosen": chosen, "comment": comment,
                                                 "at": at, "source": source, "shown_first": shown, "seconds": secs,
                                                 "ratings": _json(ratings), "tags": _json(tags)}
    return out


def outdated(conn: sqlite3.Connection) -> set[str]:
    """Queued items with verdicts given only on text a rerun has since changed (they need a new review)."""
    q = ("SELECT DISTINCT v.item_id FROM verdicts v JOIN items i ON i.id = v.item_id AND i.retired_at IS NULL "
         "AND v.content_hash IS NOT i.content_hash")
    return {i for (i,) in conn.execute(q)} - set(current(conn))


def history(conn: sqlite3.Connection, item_id: str | None = None) -> list[dict]:
    """Every verdict ever given, stale and retired ones included; `hash` names the text it was given on."""
    q = ("SELECT item_id, reviewer, verdict, chosen, comment, created_at, source, content_hash, shown_first, seconds, "
         "ratings, tags FROM verdicts")
    args: tuple = ()
    if item_id is not None:
        q, args = q + " WHERE item_id = ?", (item_id,)
    return [{**dict(zip(ROW, r)), "ratings": _json(r[10]), "tags": _json(r[11])}
            for r in conn.execute(q + " ORDER BY seq", args)]


def version(conn: sqlite3.Connection, item_id: str, text_hash: str) -> dict | None:
    """The item as it was shown with content hash `text_hash` (what a stale verdict was given on)."""
    row = conn.execute("SELECT payload FROM item_versions WHERE item_id = ? AND content_hash = ?",
                       (item_id, text_hash)).fetchone()
    return row and json.loads(row[0])


def open_run(run_dir: Path, create: bool = True, changes: dict | None = None) -> sqlite3.Connection:
    """The run's database synced to the run's current review queue (see sync; `changes` gets its counts). No
    review_queue.jsonl (a run made before routing existed) says nothing about what is routed: nothing retired."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.SUMMARY).is_file():
        raise UserError(f"{run_dir}: not a finished cai_gen run dir (no summary.json)")
    conn = connect(run_dir / FILE, create=create)
    queue = run_dir / rundir.REVIEW_QUEUE
    try:
        if queue.is_file():
            # read whole first: a bad line (named by the reader) leaves the database as it was
            (changes if changes is not None else {}).update(sync(conn, list(jsonl_rows(queue))))
    except UserError:
        conn.close()
        raise
    except (ValueError, KeyError, TypeError) as e:
        conn.close()
        raise UserError(f"{run_dir / rundir.REVIEW_QUEUE}: damaged ({e})") from None
    return conn
