"""The review page's HTTP server: stdlib only, localhost by default, one SQLite connection per request (the file
is checked once, at start: PRAGMA quick_check reads all of it).

GET  /, /page.js, /page.css  the page (it renders all model text with textContent, never as HTML); an invite link
                             /?token=T is the page too: it asks to confirm, the GET itself signs nobody in
POST /api/invite             {"token"} -> {"reviewer", "role"}: whose unused invite it is (the confirm page)
POST /api/signin             {"token"} -> burns the invite, sets the session cookie, {"reviewer", "role", "expires_at"}
GET  /api/state?offset=&limit=&q=&after=   one page of the queue, the reviewer's progress (api.listing)
GET  /api/item/ID            one item as this reviewer sees it (blind: answers A and B), its content `hash`
POST /api/verdict            {"item", "verdict", "chosen"?, "comment"?, "hash"?, "seconds"?} -> stored, progress
GET  /api/stats              admins only: per-reviewer counts, position bias, too-fast share, agreement
Every request must name this server in Host (and Origin, when sent), else 403; every other API call needs a
session cookie or `Authorization: Bearer SESSION`, else 401 (auth.py says why). A write must be application/json and,
with a cookie, carry the CSRF token in X-CSRF-Token, else 403. Errors are JSON {"error": "..."} with 400 (bad
verdict or body), 404 (unknown or retired item), 409 (`hash` is not the item's current text: a rerun changed
it after the page loaded it), 411 (no Content-Length), 413 (body over MAX_BODY) or 500 (details only in the
server's log: a response never carries a path or an exception's text). The body is read only after its declared
length is checked, and a client that stops sending is dropped after TIMEOUT seconds.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import UserError
from ..store import run_config
from . import api, auth, db, merge

INVALID = "this invite link is not valid (already used, expired, revoked or mistyped): ask for a new one"
MAX_BODY = 1 << 20  # an edited answer is text, not uploads
TIMEOUT = 10.0  # seconds a client may stall mid-request before its connection is dropped
DIGITS = re.compile(r"[0-9]+")  # not int() alone: it takes "-1", " 12", "+3" and "1_000"
ASSETS = {"/": ("page.html", "text/html"), "/index.html": ("page.html", "text/html"),
          "/page.js": ("page.js", "text/javascript"), "/page.css": ("page.css", "text/css")}
HEADERS = {  # no inline script or style, no framing (clickjacking a verdict button), no MIME guessing
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store"}
log = logging.getLogger("cai_gen.review")


class Refused(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def _int(q: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = q.get(key, str(default))
    if not re.fullmatch(r"-?[0-9]{1,9}", v) or not lo <= int(v) <= hi:
        raise UserError(f"{key}: {v!r} is not a whole number from {lo} to {hi}")
    return int(v)


class Handler(BaseHTTPRequestHandler):
    server: "ReviewServer"

    def setup(self):
        self.timeout = self.server.client_timeout  # StreamRequestHandler.setup puts it on the socket
        super().setup()

    def log_message(self, fmt, *args):  # quiet: the terminal shows the URL and verdict count, not every GET
        pass

    def _send(self, code: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _check_site(self) -> None:
        """403 unless Host (and Origin, when present) name this server: a DNS-rebound or foreign page is not."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.server.hosts:
            raise Refused(403, "Host: not this review server")
        origins = self.headers.get_all("Origin") or []
        if origins and (len(origins) > 1 or origins[0].strip().lower() not in self.server.origins):
            raise Refused(403, "Origin: requests from other sites are refused")

    def _json_only(self) -> None:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":  # a form or text/plain post is what another site can send unasked
            raise Refused(403, "Content-Type: a write must be application/json")

    def _who(self, conn, write: bool) -> auth.Who:
        bearer = self.headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            who = auth.by_session(conn, bearer[len("Bearer "):].strip())
            who = who and auth.Who(who.name, who.role, who.token_id)  # no cookie, so no CSRF token needed
        else:
            session = auth.cookie_value(self.headers.get("Cookie"))
            who = session and auth.by_session(conn, session)
        if not who:
            raise Refused(401, "not signed in, or your session ended: open a new invite link "
                               "(python -m cai_gen.review invite)")
        if write:
            self._json_only()
            if who.csrf is not None and not hmac.compare_digest(self.headers.get(auth.CSRF_HEADER, ""), who.csrf):
                raise Refused(403, f"{auth.CSRF_HEADER}: missing or wrong (reload the page)")
        return who

    def _handle(self, write: bool, fn, signed_in: bool = True) -> None:
        """fn(conn, who) after the site and sign-in checks; signed_in=False (signing in): fn(conn, None)."""
        conn = None
        try:
            self._check_site()
            # checked and migrated once when the server started: no quick_check per request
            conn = db.connect(self.server.db_path, create=False, check=False)
            if signed_in:
                fn(conn, self._who(conn, write))
            else:
                self._json_only()
                fn(conn, None)
        except Refused as e:
            if write:
                self._drain()
            self._json(e.code, {"error": str(e)})
        except UserError as e:  # our own one-line messages; a path in them is the server's business only
            msg = str(e).replace(str(self.server.run_dir.resolve()), "<run>").replace(str(self.server.run_dir), "<run>")
            self._json(404 if msg.startswith("item: unknown") else 400, {"error": msg})
        except (TimeoutError, ConnectionError):
            raise  # a client that stalled or went away: http.server drops the connection, nothing to answer
        except Exception:  # noqa: BLE001  (logged here with its traceback; the page gets no internals)
            log.exception("review server: %s %s failed", self.command, urlparse(self.path).path)
            self._json(500, {"error": "internal error (details are in the server's log)"})
        finally:
            if conn is not None:
                conn.close()

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ASSETS:  # ?token= too: page.js asks to confirm before it signs in (login CSRF)
            return self._asset(url.path)
        if url.path == "/api/state":
            return self._handle(False, lambda c, w: self._json(200, self._state(c, w, q)))
        if url.path.startswith("/api/item/"):
            return self._handle(False, lambda c, w: self._item(c, w, unquote(url.path[len("/api/item/"):])))
        if url.path == "/api/stats":
            return self._handle(False, self._stats)
        self._handle(False, lambda c, w: self._json(404, {"error": "no such page"}))

    def _asset(self, path: str) -> None:
        try:
            self._check_site()
        except Refused as e:
            return self._json(e.code, {"error": str(e)})
        name, kind = ASSETS[path]
        self._send(200, self.server.assets[name], f"{kind}; charset=utf-8")

    def _invite(self, conn, _who) -> None:
        body = self._body()
        if body is None:
            return
        who = auth.by_invite(conn, str(body.get("token")))
        if who is None:
            return self._json(401, {"error": INVALID})
        self._json(200, {"reviewer": who.name, "role": who.role})

    def _signin(self, conn, _who) -> None:
        body = self._body()
        if body is None:
            return
        got = auth.redeem(conn, str(body.get("token")), self.server.session_hours)
        if got is None:
            return self._json(401, {"error": INVALID})
        who, session, expires = got
        out = json.dumps({"reviewer": who.name, "role": who.role, "expires_at": expires}).encode()
        self._send(200, out, "application/json; charset=utf-8",
                   {"Set-Cookie": auth.set_cookie(session, self.server.secure, self.server.session_hours)})

    def _state(self, conn, who: auth.Who, q: dict) -> dict:
        srv = self.server
        st = api.listing(conn, who.name, _int(q, "offset", 0, 0, 10**9), _int(q, "limit", api.PAGE, 1, api.PAGE),
                         q.get("q", "")[:200], _int(q, "after", -1, -1, 10**9), srv.blind, srv.ab_key)
        return {**st, "run": srv.run_dir.name, "role": who.role, "blind": srv.blind, "csrf": who.csrf,
                "rubric": srv.rubric, "fast_seconds": db.FAST}

    def _item(self, conn, who: auth.Who, item_id: str) -> None:
        out = api.item(conn, item_id, who.name, self.server.blind, self.server.ab_key)
        if out is None:
            return self._json(404, {"error": "item: unknown or no longer routed"})
        self._json(200, out)

    def _stats(self, conn, who: auth.Who) -> None:
        if who.role != "admin":
            return self._json(403, {"error": "stats: for admins (invite --role admin)"})
        cur = db.current(conn)
        self._json(200, {"reviewers": merge.per_reviewer(cur), "agreement": merge.agreement(cur)})

    def _drain(self) -> None:
        """Read a refused write's body (when its length is sane), so closing the socket with unread bytes does not
        reset the connection and lose the 401/403 the client should see."""
        n = (self.headers.get_all("Content-Length") or [""])[0]
        if DIGITS.fullmatch(n) and len(n) <= 7 and int(n) <= MAX_BODY:
            try:
                self.rfile.read(int(n))
            except OSError:  # a stalled client: the socket timeout ends it, the answer still goes out
                pass

    def _length(self) -> int | None:
        """The declared body length, or None after answering a bad one. Checked before reading: a negative length
        made rfile.read(-1) wait for a close that never came, and a non-number raised out of the handler."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._json(411, {"error": "Content-Length: missing (send the JSON body with its length)"})
            return None
        if len(set(values)) > 1 or not DIGITS.fullmatch(values[0]):
            self._json(400, {"error": "Content-Length: not a single non-negative whole number"})
            return None
        # a number too long to convert cheaply (int() refuses over 4300 digits) is too large anyway
        n = int(values[0]) if len(values[0]) <= 16 else MAX_BODY + 1
        if n > MAX_BODY:
            self._json(413, {"error": f"request too large (over {MAX_BODY} bytes)"})
            return None
        return n

    def do_POST(self):
        path = urlparse(self.path).path
        if path in ("/api/invite", "/api/signin"):  # before a session: JSON and this site only, no CSRF token yet
            return self._handle(True, self._invite if path == "/api/invite" else self._signin, signed_in=False)
        if path != "/api/verdict":
            return self._handle(True, lambda c, w: self._json(404, {"error": "no such endpoint"}))
        self._handle(True, self._post)

    def _body(self) -> dict | None:
        """The request's JSON object, or None after answering a bad one."""
        n = self._length()
        if n is None:
            return None
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested deeper than json allows
            self._json(400, {"error": f"body: not valid JSON ({type(e).__name__})"})
            return None
        return body

    def _post(self, conn, who: auth.Who) -> None:
        body = self._body()
        if body is None:
            return
        # the page sends the hash of the text it showed: a verdict on text that a rerun replaced since is
        # refused, and the stored verdict is tied to that hash so it can never count for other text
        item_id, seen = str(body.get("item")), body.get("hash")
        if isinstance(seen, str) and db.item_hash(conn, item_id) not in (None, seen):
            return self._json(409, {"error": "item: changed since this page loaded it (the run was redone); "
                                             "reload to review the new text"})
        v = api.verdict(conn, body, who.name, self.server.blind, self.server.ab_key)
        self.server.verdicts += 1
        st = api.listing(conn, who.name, limit=1, blind=self.server.blind, key=self.server.ab_key)
        self._json(200, {"ok": True, "verdict": {k: v[k] for k in ("item", "reviewer", "verdict", "at")},
                         "done": st["done"], "total": st["total"]})


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 8765, client_timeout: float = TIMEOUT,
                 blind: bool = True, public_url: str | None = None, session_hours: float = auth.SESSION_HOURS):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UserError(f"--port: {port!r} is not a port number (0 to 65535; 0 picks a free one)")
        if not 0 < session_hours <= 24 * 366:
            raise UserError(f"--session-hours: {session_hours!r} is not a number of hours above 0 (at most a year)")
        self.session_hours = float(session_hours)
        self.run_dir = Path(run_dir)
        self.client_timeout = client_timeout
        self.db_path = self.run_dir / db.FILE
        self.blind = blind
        self.public_url = auth.public_url(public_url)
        self.changes: dict[str, int] = {}  # what syncing with the run's queue did (the CLI tells the user)
        conn = db.open_run(self.run_dir, changes=self.changes)  # check/create/migrate/sync once, before serving
        try:
            invites = auth.live_invites(conn)
            self.ab_key = db.get_meta(conn, "ab_key")  # the blind A/B order's key: stays on the server
        finally:
            conn.close()
        if not auth.is_loopback(host):
            # on a shared machine or network anyone who can reach the port would be a reviewer otherwise
            if not invites:
                raise UserError(f"--host {host}: reachable from other machines, so invite reviewers first "
                                "(python -m cai_gen.review invite RUN_DIR NAME)")
            if host in auth.WILDCARD and not self.public_url:
                raise UserError(f"--host {host}: say the name reviewers open with --public-url "
                                "(e.g. https://review.example.org/)")
        cfg = run_config(self.run_dir)
        self.rubric = api.rubric(cfg)
        self.secure = bool(self.public_url and self.public_url.startswith("https:"))
        pkg = resources.files("cai_gen.review")
        self.assets = {name: pkg.joinpath(name).read_bytes() for name, _ in ASSETS.values()}
        self.verdicts = 0
        super().__init__((host, port), Handler)
        self.hosts, self.origins = auth.allowed(host, self.server_address[1], self.public_url)
        conn = db.connect(self.db_path, create=False, check=False)
        try:  # `invite` makes its links point here (the port actually bound, or --public-url)
            db.set_meta(conn, "serve_url", self.url)
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return self.public_url or f"http://{auth._netloc(self.server_address[0], self.server_address[1])}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests); the CLI calls serve_forever() itself."""
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t
