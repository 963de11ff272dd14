"""The review page's HTTP server: stdlib only, localhost by default, one SQLite connection per request.

GET  /                       the page (page.html; it renders all model text with textContent, never as HTML)
GET  /api/state?reviewer=N   the run, every item's id/domain/routing, N's verdicts so far, progress
GET  /api/item/ID?reviewer=N one item in full, N's current verdict and the item's verdict count
POST /api/verdict            {"item", "reviewer", "verdict", "chosen"?, "comment"?} -> stored, new progress
Errors are JSON {"error": "..."} with 400 (bad verdict, bad name), 404 (unknown item) or 500.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import UserError
from . import db

MAX_BODY = 1 << 20  # an edited answer is text, not uploads


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
        row = conn.execute("SELECT payload FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return self._json(404, {"error": f"item: unknown item {item_id!r}"})
        votes = db.current(conn).get(item_id, {})
        self._json(200, {"item": json.loads(row[0]), "mine": votes.get(reviewer) if reviewer else None,
                         "reviews": len(votes)})

    def do_POST(self):
        if urlparse(self.path).path != "/api/verdict":
            return self._json(404, {"error": f"no such endpoint {self.path}"})
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            return self._json(413, {"error": "request too large"})
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return self._json(400, {"error": f"body: not valid JSON ({e})"})

        def post(conn):
            v = db.record(conn, str(body.get("item")), body.get("reviewer"), body.get("verdict"),
                          body.get("chosen"), body.get("comment"))
            self.server.verdicts += 1
            st = state(conn, self.server.run_dir, v["reviewer"])
            self._json(200, {"ok": True, "verdict": v, "done": st["done"], "total": st["total"]})
        self._handle(post)


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 8765):
        self.run_dir = Path(run_dir)
        self.db_path = self.run_dir / db.FILE
        db.open_run(self.run_dir).close()  # create/migrate once and add the run's queue, before serving
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
