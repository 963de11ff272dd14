"""Who is asking, and whether the request may come from where it comes from.

Reviewers: `python -m cai_gen.review invite RUN NAME` makes a random token; review.sqlite keeps only its SHA-256,
so a copied database file lets nobody in. The invite link works once, and only within `invite --valid-hours`
(72): a link forgotten in a mailbox is not a standing credential. Opening it (a GET) only shows whose link it is
and asks to confirm: a GET never signs anyone in, so a hostile page that sends a reviewer's browser to
`/?token=<its own invite>` (login CSRF) sets no session. The confirmation is a JSON POST (which another site
cannot send without a CORS preflight this server never grants); it burns the invite and sets up a session (a
second random secret, also stored hashed, ending after --session-hours) in an HttpOnly, SameSite=Strict cookie.
The page then sends a CSRF token derived from the session with every write. Scripts sign in with the same POST
and send the session as `Authorization: Bearer SESSION`: a browser never attaches that header on its own, so it
needs no CSRF token. `revoke` ends a reviewer's unused links and live sessions. A verdict's reviewer is always
the session's name, never a name in the request.

Requests from other sites: a hostile page in the reviewer's browser can send simple requests (form posts,
text/plain fetches) with the reviewer's cookies, or rebind its own DNS name to 127.0.0.1 and read the answers.
So every request must name this server in `Host` (the bound host:port, `localhost` when bound to loopback, or
the --public-url), `Origin` must be this server when a browser sends one, and a write must be
application/json with the CSRF token: none of which another site can produce without a CORS preflight that
this server never grants.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from ..errors import UserError
from . import db

ROLES = ("reviewer", "admin")
WILDCARD = ("0.0.0.0", "::", "")
COOKIE = "cai_review"
CSRF_HEADER = "X-CSRF-Token"
SESSION_HOURS = 24.0  # a working day and a night: a reviewer asks for a new link after that


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Who:
    name: str
    role: str
    token_id: int
    session: str | None = None  # the raw session id when the request came with the cookie

    @property
    def csrf(self) -> str | None:
        # derived, not stored: only a holder of the HttpOnly session id can compute it
        return None if self.session is None else hmac.new(self.session.encode(), b"csrf", hashlib.sha256).hexdigest()


def invite(conn: sqlite3.Connection, name: str, role: str = "reviewer", hours: float = db.INVITE_HOURS) -> str:
    """A new single-use token for NAME (a reviewer may hold several, e.g. one per machine, or a new one after
    their session ended), usable for `hours`; returns the raw token."""
    if not hours > 0:
        raise UserError(f"--valid-hours: must be > 0, got {hours}")
    if not isinstance(name, str) or not db.NAME.match(name) or name != name.strip():
        raise UserError(f"name: {name!r} is not a name (1-64 letters, digits, space . @ - _)")
    if role not in ROLES:
        raise UserError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    with db._tx(conn):
        at = datetime.now(timezone.utc)
        conn.execute("INSERT INTO tokens(name, role, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                     (name, role, _hash(token), _iso(at), _iso(at + timedelta(hours=hours))))
    return token


def revoke(conn: sqlite3.Connection, name: str) -> tuple[int, int]:
    """Revoke every token of NAME, used or not, and end their sessions; (tokens revoked, sessions ended)."""
    with db._tx(conn):
        ids = [i for (i,) in conn.execute("SELECT id FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,))]
        conn.executemany("UPDATE tokens SET revoked_at = ? WHERE id = ?", [(db.now(), i) for i in ids])
        # deleted, not only hidden by the join on revoked_at: a revoked session is nothing anyone needs again
        ended = conn.execute("DELETE FROM sessions WHERE token_id IN (SELECT id FROM tokens WHERE name = ?)",
                             (name,)).rowcount
    if not ids:
        raise UserError(f"revoke: no live invite for {name!r} (see `python -m cai_gen.review reviewers RUN_DIR`)")
    return len(ids), ended


def reviewers(conn: sqlite3.Connection) -> list[dict]:
    q = ("SELECT t.name, t.role, t.created_at, t.used_at, t.revoked_at, t.expires_at, (SELECT count(*) FROM "
         "verdicts v WHERE v.reviewer = t.name) FROM tokens t ORDER BY t.id")
    return [dict(zip(("name", "role", "created_at", "used_at", "revoked_at", "expires_at", "verdicts"), r))
            for r in conn.execute(q)]


def live_invites(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM tokens WHERE revoked_at IS NULL").fetchone()[0]


def _token_row(conn: sqlite3.Connection, token: str):
    h = _hash(token)
    row = conn.execute("SELECT id, name, role, token_hash FROM tokens WHERE token_hash = ? AND revoked_at IS NULL "
                       "AND used_at IS NULL AND expires_at > ?", (h, db.now())).fetchone()
    # the lookup is by hash already; compare_digest keeps the final check constant-time all the same
    return row if row is not None and hmac.compare_digest(row[3], h) else None


def by_invite(conn: sqlite3.Connection, token: str) -> Who | None:
    """Whose unused, unrevoked invite this is (the confirmation page names them); uses nothing up."""
    row = _token_row(conn, token)
    return row and Who(row[1], row[2], row[0])


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def redeem(conn: sqlite3.Connection, token: str, hours: float = SESSION_HOURS) -> tuple[Who, str, str] | None:
    """Burn an unused invite and start its session: (who, raw session id, expires_at), or None when the invite
    is unknown, revoked or used. One transaction: two tabs confirming the same link get one session."""
    session = secrets.token_urlsafe(32)
    at = datetime.now(timezone.utc)
    expires = _iso(at + timedelta(hours=hours))
    with db._tx(conn):
        row = _token_row(conn, token)
        if row is None:
            return None
        conn.execute("UPDATE tokens SET used_at = ? WHERE id = ?", (_iso(at), row[0]))
        conn.execute("INSERT INTO sessions(session_hash, token_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (_hash(session), row[0], _iso(at), expires))
    return Who(row[1], row[2], row[0]), session, expires


def by_session(conn: sqlite3.Connection, session: str) -> Who | None:
    """The reviewer of a live session: not expired, its token not revoked."""
    h = _hash(session)
    # ISO times in UTC with the same format compare as text
    row = conn.execute("SELECT t.id, t.name, t.role, s.session_hash FROM sessions s JOIN tokens t ON t.id = "
                       "s.token_id WHERE s.session_hash = ? AND t.revoked_at IS NULL AND s.expires_at > ?",
                       (h, _iso(datetime.now(timezone.utc)))).fetchone()
    if row is None or not hmac.compare_digest(row[3], h):
        return None
    return Who(row[1], row[2], row[0], session)


def cookie_value(header: str | None) -> str | None:
    """The session cookie from a Cookie header (hand-parsed: http.cookies rejects whole headers on odd input)."""
    for part in (header or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == COOKIE and v:
            return v
    return None


def set_cookie(session: str, secure: bool, hours: float) -> str:
    # Max-Age: the browser drops the cookie when the session ends on the server anyway
    return (f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max(1, int(hours * 3600))}"
            + ("; Secure" if secure else ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def public_url(url: str | None) -> str | None:
    """--public-url checked and normalised to scheme://host[:port]/ (the path, if any, is not supported)."""
    if url is None:
        return None
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.username:
        raise UserError(f"--public-url: {url!r} is not like https://review.example.org/ (scheme and host, no path)")
    return f"{u.scheme}://{u.netloc.lower()}/"


def allowed(host: str, port: int, public: str | None) -> tuple[set[str], set[str]]:
    """(Host header values, Origin values) that name this server."""
    # a wildcard bind (0.0.0.0, ::) is not a name anyone opens: there only --public-url counts
    hosts = set() if host in WILDCARD else {_netloc(host, port)}
    if is_loopback(host):  # the same machine under its other loopback names; no other site can use these
        hosts |= {_netloc(h, port) for h in ("localhost", "127.0.0.1", "::1")}
    origins = {f"http://{h}" for h in hosts}
    if public:
        u = urlsplit(public)
        hosts.add(u.netloc)
        origins.add(f"{u.scheme}://{u.netloc}")
    return {h.lower() for h in hosts}, {o.lower() for o in origins}
