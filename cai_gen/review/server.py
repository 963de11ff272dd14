"""The review page's HTTP server: a Starlette app served by uvicorn (HTTP parsing, keep-alive, IPv6 and graceful
shutdown are theirs, not ours), localhost by default, one SQLite connection per request (the file is checked once,
at start: PRAGMA quick_check reads all of it).

GET  /, /page.js, /page.css  the page (model text goes in with textContent; answers as render.py's sanitised HTML); an invite link
                             /?token=T is the page too: it asks to confirm, the GET itself signs nobody in
POST /api/invite             {"token"} -> {"reviewer", "role"}: whose unused invite it is (the confirm page)
POST /api/signin             {"token"} -> burns the invite, sets the session cookie, {"reviewer", "role", "expires_at"}
GET  /api/state?offset=&limit=&q=&after=&show=&domain=&principle=   one page of the queue (show: all | todo | mine |
                             disputed), the reviewer's progress (api.listing); with --overlap, of their own queue,
                             topped up first (assign.py)
GET  /api/item/ID            one item as this reviewer sees it (blind: answers A and B), its content `hash`; with
                             --overlap, 403 for an item not in the reviewer's queue (a verdict on it too)
POST /api/verdict            {"item", "verdict", "chosen"?, "comment"?, "hash"?, "seconds"?, "ratings"?, "tags"?}
                             -> stored, progress (ratings: {answer: {guideline: 1-5}}, A/B when blind)
GET  /api/stats              admins only (403 else): per-reviewer counts, position bias, too-fast share, agreement,
                             and the team's progress (assign.team: assigned / judged / skipped / open, disputed items)
Every request must name this server in Host (and Origin, when sent), else 403 (Guard, before any route); every
other API call needs a session cookie or `Authorization: Bearer SESSION`, else 401 (auth.py says why). A write must
be application/json and, with a cookie, carry the CSRF token in X-CSRF-Token, else 403. Errors are JSON
{"error": "..."} with 400 (bad verdict, body or HTTP), 404 (unknown or retired item), 405 (another method), 409
(`hash` is not the item's current text: a rerun changed it after the page loaded it), 411 (no Content-Length), 413
(body over MAX_BODY) or 500 (details only in the server's log: a response never carries a path or an exception's
text), and close the connection. The body is read only after its declared length is checked.

What uvicorn leaves open, transport.py adds: a request must arrive whole, headers and body, within `client_timeout`
seconds of its first byte, and at most `max_connections` are open at once (a new one past that is closed before
it is read).
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from functools import partial
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import UserError
from ..store import run_config
from . import api, assign, auth, db, merge, transport
from .transport import MAX_CONNECTIONS, TIMEOUT, Guard, json_response

INVALID = "this invite link is not valid (already used, expired, revoked or mistyped): ask for a new one"
MAX_BODY = 1 << 20  # an edited answer is text, not uploads
DIGITS = re.compile(r"[0-9]+")  # not int() alone: it takes "-1", " 12", "+3" and "1_000"
ASSETS = {"/": ("page.html", "text/html"), "/index.html": ("page.html", "text/html"),
          "/page.js": ("page.js", "text/javascript"), "/page.css": ("page.css", "text/css")}
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


class ReviewServer:
    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 8765, client_timeout: float = TIMEOUT,
                 blind: bool = True, public_url: str | None = None, session_hours: float = auth.SESSION_HOURS,
                 max_connections: int = MAX_CONNECTIONS, overlap: int | None = None, batch: int = assign.BATCH):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UserError(f"--port: {port!r} is not a port number (0 to 65535; 0 picks a free one)")
        if not 0 < session_hours <= 24 * 366:
            raise UserError(f"--session-hours: {session_hours!r} is not a number of hours above 0 (at most a year)")
        if isinstance(client_timeout, bool) or not 0 < client_timeout <= 3600:
            raise UserError(f"--request-timeout: {client_timeout!r} is not a number of seconds above 0 (at most 3600)")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise UserError(f"--max-connections: {max_connections!r} is not a whole number above 0")
        for flag, n in (("--overlap", overlap), ("--batch", batch)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise UserError(f"{flag}: {n!r} is not a whole number above 0")
        self.overlap, self.batch = overlap, batch  # None: every reviewer sees every item
        self.session_hours = float(session_hours)
        self.run_dir = Path(run_dir)
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
        self.guide = api.guide(self.run_dir)  # the constitution's `review:` section: guidelines and reason tags
        self.rubric = api.rubric(cfg, self.guide)
        self.secure = bool(self.public_url and self.public_url.startswith("https:"))
        pkg = resources.files("cai_gen.review")
        self.assets = {name: pkg.joinpath(name).read_bytes() for name, _ in ASSETS.values()}
        self.verdicts = 0
        self._count = threading.Lock()  # requests run in a thread pool
        self.socket = transport.bind(host, port)  # here, not in serve_forever: a taken port is an error before serving
        self.server_address = self.socket.getsockname()
        self.hosts, self.origins = auth.allowed(host, self.server_address[1], self.public_url)
        conn = db.connect(self.db_path, create=False, check=False)
        try:  # `invite` makes its links point here (the port actually bound, or --public-url)
            db.set_meta(conn, "serve_url", self.url)
            db.set_meta(conn, "overlap", str(overlap or ""))  # `status` reports the queues by the last serve's K
        finally:
            conn.close()
        app = Starlette(routes=self._routes(), exception_handlers={HTTPException: self._http_error})
        self._uv = transport.server(Guard(app, self.hosts, self.origins), client_timeout, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.public_url or f"http://{auth._netloc(self.server_address[0], self.server_address[1])}/"

    def serve_forever(self) -> None:
        """Serve until shutdown() (another thread) or Ctrl-C (uvicorn stops gracefully, then re-raises it)."""
        self._uv.run(sockets=[self.socket])

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests); the CLI calls serve_forever() itself."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self._thread

    def shutdown(self) -> None:
        self._uv.should_exit = True
        if self._thread is not None:
            self._thread.join()

    def server_close(self) -> None:
        self.socket.close()

    # ---- routes --------------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        def route(path: str, fn, write: bool = False, signed_in: bool = True) -> Route:
            return Route(path, partial(self._handle, write=write, fn=fn, signed_in=signed_in),
                         methods=["POST" if write else "GET"])  # HEAD comes with GET
        return [*(Route(p, self._asset, methods=["GET"]) for p in ASSETS),  # ?token= too: page.js asks to confirm
                route("/api/state", self._state), route("/api/item/{item_id:path}", self._item),
                route("/api/stats", self._stats),
                # before a session: JSON and this site only, no CSRF token yet
                route("/api/invite", self._invite, True, False), route("/api/signin", self._signin, True, False),
                route("/api/verdict", self._post, True),
                # anything else: signed in first, then 404 (an unknown path tells a stranger nothing)
                Route("/{rest:path}", self._missing, methods=["GET", "POST"])]

    async def _missing(self, request: Request) -> Response:
        write = request.method == "POST"
        msg = "no such endpoint" if write else "no such page"
        return await self._handle(request, write, lambda c, w, r, b: json_response(404, {"error": msg}))

    async def _http_error(self, request: Request, e: HTTPException) -> Response:
        return json_response(e.status_code, {"error": f"{request.method}: {e.detail}"}, e.headers)

    async def _asset(self, request: Request) -> Response:
        name, kind = ASSETS[request.url.path]
        return Response(self.assets[name], 200, media_type=f"{kind}; charset=utf-8")

    async def _handle(self, request: Request, write: bool, fn, signed_in: bool = True) -> Response:
        """fn(conn, who, request, body) in a worker thread after the sign-in checks (signed_in=False, signing in:
        who is None) and, for a write, the body's; returns its Response."""
        conn = None
        try:
            # checked and migrated once when the server started: no quick_check per request
            conn = await run_in_threadpool(db.connect, self.db_path, False, False)
            who = await run_in_threadpool(self._who, conn, request, write) if signed_in else None
            if write and not signed_in:
                self._json_only(request)
            body = await self._body(request) if write else None
            return await run_in_threadpool(fn, conn, who, request, body)
        except Refused as e:
            if write:
                await self._drain(request)
            return json_response(e.code, {"error": str(e)})
        except UserError as e:  # our own one-line messages; a path in them is the server's business only
            msg = str(e).replace(str(self.run_dir.resolve()), "<run>").replace(str(self.run_dir), "<run>")
            return json_response(404 if msg.startswith("item: unknown") else 400, {"error": msg})
        except ClientDisconnect:  # the client went away, or Guarded cut it off mid-body: nobody to answer
            return Response(status_code=400)
        except Exception:  # noqa: BLE001  (logged here with its traceback; the page gets no internals)
            log.exception("review server: %s %s failed", request.method, request.url.path)
            return json_response(500, {"error": "internal error (details are in the server's log)"})
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _json_only(request: Request) -> None:
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":  # a form or text/plain post is what another site can send unasked
            raise Refused(403, "Content-Type: a write must be application/json")

    def _who(self, conn, request: Request, write: bool) -> auth.Who:
        bearer = request.headers.get("authorization", "")
        if bearer.startswith("Bearer "):
            who = auth.by_session(conn, bearer[len("Bearer "):].strip())
            who = who and auth.Who(who.name, who.role, who.token_id)  # no cookie, so no CSRF token needed
        else:
            session = auth.cookie_value(request.headers.get("cookie"))
            who = session and auth.by_session(conn, session)
        if not who:
            raise Refused(401, "not signed in, or your session ended: open a new invite link "
                               "(python -m cai_gen.review invite)")
        if write:
            self._json_only(request)
            if who.csrf is not None and not hmac.compare_digest(request.headers.get(auth.CSRF_HEADER, ""), who.csrf):
                raise Refused(403, f"{auth.CSRF_HEADER}: missing or wrong (reload the page)")
        return who

    @staticmethod
    def _length(request: Request) -> int:
        """The declared body length, checked before reading (h11 has refused malformed ones already; a chunked
        body has none: refused, as a body of unknown size)."""
        values = request.headers.getlist("content-length")
        if not values:
            raise Refused(411, "Content-Length: missing (send the JSON body with its length)")
        if len(set(values)) > 1 or not DIGITS.fullmatch(values[0]):
            raise Refused(400, "Content-Length: not a single non-negative whole number")
        # a number too long to convert cheaply (int() refuses over 4300 digits) is too large anyway
        n = int(values[0]) if len(values[0]) <= 16 else MAX_BODY + 1
        if n > MAX_BODY:
            raise Refused(413, f"request too large (over {MAX_BODY} bytes)")
        return n

    async def _body(self, request: Request) -> dict:
        """The request's JSON object (Refused when it is not one)."""
        self._length(request)
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested deeper than json allows
            raise Refused(400, f"body: not valid JSON ({type(e).__name__})") from None
        return body

    @staticmethod
    async def _drain(request: Request) -> None:
        """Read a refused write's body (when its length is sane), so closing the connection with unread bytes does
        not reset it and lose the 401/403 the client should see."""
        n = (request.headers.getlist("content-length") or [""])[0]
        if DIGITS.fullmatch(n) and len(n) <= 7 and int(n) <= MAX_BODY:
            try:
                await request.body()
            except ClientDisconnect:  # a stalled client: Guarded's deadline ends it, the answer still goes out
                pass

    # ---- what each route does, in a worker thread: fn(conn, who, request, body) -> Response ------------------

    def _invite(self, conn, _who, _request, body: dict) -> Response:
        who = auth.by_invite(conn, str(body.get("token")))
        if who is None:
            return json_response(401, {"error": INVALID})
        return json_response(200, {"reviewer": who.name, "role": who.role})

    def _signin(self, conn, _who, _request, body: dict) -> Response:
        got = auth.redeem(conn, str(body.get("token")), self.session_hours)
        if got is None:
            return json_response(401, {"error": INVALID})
        who, session, expires = got
        return json_response(200, {"reviewer": who.name, "role": who.role, "expires_at": expires},
                     {"Set-Cookie": auth.set_cookie(session, self.secure, self.session_hours)})

    def _queue(self, conn, who: auth.Who, top_up: bool = False) -> list[str] | None:
        """The reviewer's own queue under --overlap (topped up first when asked); None: every item (no --overlap,
        or an admin, who is never assigned and sees everything)."""
        if self.overlap is None or who.role == "admin":
            return None
        if top_up:
            assign.top_up(conn, who.name, self.overlap, self.batch)
        return assign.queue(conn, who.name, self.overlap)

    def _theirs(self, conn, who: auth.Who, item_id: str) -> None:
        mine = self._queue(conn, who)
        if mine is not None and item_id not in mine:
            raise Refused(403, "item: not in your queue (each item goes to --overlap reviewers)")

    def _state(self, conn, who: auth.Who, request: Request, _body) -> Response:
        q = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        st = api.listing(conn, who.name, _int(q, "offset", 0, 0, 10**9), _int(q, "limit", api.PAGE, 1, api.PAGE),
                         q.get("q", "")[:200], _int(q, "after", -1, -1, 10**9), self.blind, self.ab_key,
                         q.get("show", "all"), q.get("domain", "")[:200], q.get("principle", "")[:200],
                         self._queue(conn, who, top_up=True))
        return json_response(200, {**st, "run": self.run_dir.name, "role": who.role, "blind": self.blind, "csrf": who.csrf,
                           "rubric": self.rubric, "fast_seconds": db.FAST,
                                    "scale": db.SCALE, "overlap": self.overlap, **api.choices(conn)})

    def _item(self, conn, who: auth.Who, request: Request, _body) -> Response:
        self._theirs(conn, who, request.path_params["item_id"])
        out = api.item(conn, request.path_params["item_id"], who.name, self.blind, self.ab_key, self.guide)
        if out is None:
            return json_response(404, {"error": "item: unknown or no longer routed"})
        return json_response(200, out)

    def _stats(self, conn, who: auth.Who, _request, _body) -> Response:
        if who.role != "admin":
            return json_response(403, {"error": "stats: for admins (invite --role admin)"})
        cur = db.current(conn)
        return json_response(200, {"reviewers": merge.per_reviewer(cur), "agreement": merge.agreement(cur),
                                   "team": assign.team(conn, self.overlap), "fast_seconds": db.FAST})

    def _post(self, conn, who: auth.Who, _request, body: dict) -> Response:
        # the page sends the hash of the text it showed: a verdict on text that a rerun replaced since is
        # refused, and the stored verdict is tied to that hash so it can never count for other text
        item_id, seen = str(body.get("item")), body.get("hash")
        self._theirs(conn, who, item_id)
        if isinstance(seen, str) and db.item_hash(conn, item_id) not in (None, seen):
            return json_response(409, {"error": "item: changed since this page loaded it (the run was redone); "
                                        "reload to review the new text"})
        v = api.verdict(conn, body, who.name, self.blind, self.ab_key, self.rubric, self.guide)
        with self._count:
            self.verdicts += 1
        st = api.listing(conn, who.name, limit=1, blind=self.blind, key=self.ab_key, only=self._queue(conn, who))
        return json_response(200, {"ok": True, "verdict": {k: v[k] for k in ("item", "reviewer", "verdict", "at")},
                           "done": st["done"], "total": st["total"]})
