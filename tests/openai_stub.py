"""A small OpenAI-compatible server for fast tests of the openai backend's logic (batching, concurrency bound,
retries, resume). It answers with the fake engine's text, so a run against it must equal a backend=fake run.
Failures are scripted: the next N requests get a status, a dropped connection, or the server is `down`.
The real thing (vLLM's API server, killed and restarted mid-run) is tested in test_openai_server.py."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cai_gen.backends import Params
from cai_gen.backends.fake import FakeBackend


class Handler(BaseHTTPRequestHandler):
    server: "Stub"
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, code: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            return self._reply(200, {"object": "list", "data": [{"id": self.server.served, "object": "model"}]})
        self._reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.requests.append(body)
            s.auth.append(self.headers.get("Authorization"))
            action = s.script.pop(0) if s.script else ("503" if s.down else None)
            s.inflight += 1
            s.max_inflight = max(s.max_inflight, s.inflight)
        try:
            time.sleep(s.delay)
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(2)  # no response at all: a crashed server
                return
            if action is not None:
                code = int(action.split(":")[0])
                hdr = {"Retry-After": action.split(":")[1]} if ":" in action else {}
                return self._reply(code, {"error": {"message": f"scripted {code}"}}, hdr)
            words = sum(len(m["content"].split()) for m in body["messages"])
            if words > s.context_words:  # what vLLM's server answers to a prompt over its context
                return self._reply(400, {"error": {"message": "This model's maximum context length is exceeded"}})
            if body["model"] != s.served:
                return self._reply(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            choices = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice")
            p = Params(body["temperature"], body["top_p"], body["max_tokens"], body["seed"],
                       tuple(choices) if choices else None)
            g = s.fake._one(body["messages"], p)
            with s.lock:
                s.completed += 1
            self._reply(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                           "finish_reason": g.finish_reason}],
                              "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                                        "total_tokens": g.prompt_tokens + g.completion_tokens}})
        finally:
            with s.lock:
                s.inflight -= 1


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, served: str, delay: float = 0.0, judge: str = "revision"):
        super().__init__(("127.0.0.1", 0), Handler)
        self.served, self.delay = served, delay
        self.fake = FakeBackend("fake", served, max_model_len=2048, judge=judge)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.script: list[str] = []
        self.down = False
        self.context_words = 10**9  # prompts over this many words get vLLM's 400 (context length)
        self.inflight = self.max_inflight = self.completed = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address):
        pass  # a scripted "drop" resets the connection on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
