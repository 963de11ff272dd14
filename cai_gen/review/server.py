"""The review page's HTTP server: stdlib only, localhost by default, one SQLite connection per request.

GET  /                       the page (page.html; it renders all model text with textContent, never as HTML)
GET  /api/state?reviewer=N   the run, every item's id/domain/routing, N's verdicts so far, progress
GET  /api/item/ID?reviewer=N one item in full, its content `hash`, N's current verdict, the item's verdict count
POST /api/verdict            {"item", "reviewer", "verdict", "chosen"?, "comment"?, "hash"?} -> stored, progress
Errors are JSON {"error": "..."} with 400 (bad verdict, bad name, bad body), 404 (unknown or retired item),
409 (`hash` is not the item's current text: a rerun changed it after the page loaded it), 411 (no
Content-Length), 413 (body over MAX_BODY) or 500. The body is read only after its declared length is checked,
and a client that stops sending is dropped after TIMEOUT seconds, so no request can hold a thread forever.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import UserError
from . import db

MAX_BODY = 1 << 20  # an edited answer is text, not uploads
TIMEOUT = 10.0  # seconds a client may stall mid-request before its connection is dropped
DIGITS = re.compile(r"[0-9]+")  # not int() alone: it takes "-1", " 12", "+3" and "1_000"


def state(conn, run_dir: Path, reviewer: str | None) -> dict:
    cur = db.current(conn)
    its = db.items(conn)
    mine = {i: v[reviewer] for i, v in cur.items() if reviewer in v} if reviewer else {}
    return {"run": str(run_dir), "reviewer": reviewer, "total": len(its), "done": len(mine),
            "reviewers": sorted({r for v in cur.values() for r in v}),
            "items": [{"id": it["id"], "domain": it.get("domain"), "routed_by": it["routed_by"],
                       "verdict": mine.get(it["id"], {}).get("verdict"), "reviews": len(cur.get(it["id"], {}))}
                      for it in its]}


class Handler(BaseHTTPRequestHandler):
    server: "ReviewServer"

    def setup(self):
        self.timeout = self.server.client_timeout  # StreamRequestHandler.setup puts it on the socket
        super().setup()

    def log_message(self, fmt, *args):  # quiet: the terminal shows the URL and verdict count, not every GET
        pass

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _handle(self, fn) -> None:
        conn = None
        try:
            conn = db.connect(self.server.db_path)
            fn(conn)
        except UserError as e:
            self._json(404 if str(e).startswith("item: unknown") else 400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001  (the page shows it; the server keeps serving)
            self._json(500, {"error": f"{type(e).__name__}: {e}"})
        finally:
            if conn is not None:
                conn.close()

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ("/", "/index.html"):
            return self._send(200, self.server.page, "text/html; charset=utf-8")
        if url.path == "/api/state":
            return self._handle(lambda c: self._json(200, state(c, self.server.run_dir, q.get("reviewer"))))
        if url.path.startswith("/api/item/"):
            return self._handle(lambda c: self._item(c, unquote(url.path[len("/api/item/"):]), q.get("reviewer")))
        self._json(404, {"error": f"no such page {url.path}"})

    def _item(self, conn, item_id: str, reviewer: str | None) -> None:
        row = conn.execute("SELECT payload FROM items WHERE id = ? AND retired_at IS NULL", (item_id,)).fetchone()
        if row is None:
            return self._json(404, {"error": f"item: unknown item {item_id!r}"})
        votes = db.current(conn).get(item_id, {})
        self._json(200, {"item": json.loads(row[0]), "hash": db.item_hash(conn, item_id),
                         "mine": votes.get(reviewer) if reviewer else None, "reviews": len(votes)})

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
        if urlparse(self.path).path != "/api/verdict":
            return self._json(404, {"error": f"no such endpoint {self.path}"})
        n = self._length()
        if n is None:
            return
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested deeper than json allows
            return self._json(400, {"error": f"body: not valid JSON ({e})"})

        def post(conn):
            # the page sends the hash of the text it showed: a verdict on text that a rerun replaced since is
            # refused, and the stored verdict is tied to that hash so it can never count for other text
            item_id, seen = str(body.get("item")), body.get("hash")
            if isinstance(seen, str) and db.item_hash(conn, item_id) not in (None, seen):
                return self._json(409, {"error": f"item: {item_id!r} changed since this page loaded it "
                                                 "(the run was redone); reload to review the new text"})
            v = db.record(conn, item_id, body.get("reviewer"), body.get("verdict"),
                          body.get("chosen"), body.get("comment"), text_hash=seen)
            self.server.verdicts += 1
            st = state(conn, self.server.run_dir, v["reviewer"])
            self._json(200, {"ok": True, "verdict": v, "done": st["done"], "total": st["total"]})
        self._handle(post)


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 8765, client_timeout: float = TIMEOUT):
        self.run_dir = Path(run_dir)
        self.client_timeout = client_timeout
        self.db_path = self.run_dir / db.FILE
        self.changes: dict[str, int] = {}  # what syncing with the run's queue did (the CLI tells the user)
        db.open_run(self.run_dir, changes=self.changes).close()  # create/migrate/sync once, before serving
        self.page = resources.files("cai_gen.review").joinpath("page.html").read_bytes()
        self.verdicts = 0
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests); the CLI calls serve_forever() itself."""
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t
