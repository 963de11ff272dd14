"""What the review server's transport adds to uvicorn (which parses HTTP, keeps connections alive, binds IPv6 and
stops gracefully): a deadline on each request and a cap on open connections (Guarded), and the site and header
rules every request and response passes (Guard). uvicorn bounds only the idle time between requests, so a client
that sent a byte every few seconds, or a header that never ended, was kept for ever.
"""
from __future__ import annotations

import json
import re
import socket
import sys

import h11
import uvicorn
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

TIMEOUT = 10.0  # seconds a client has to send a whole request, headers and body, from its first byte
KEEP_ALIVE = 5  # seconds an idle connection stays open between two requests (uvicorn's timeout_keep_alive)
MAX_CONNECTIONS = 128  # open at once: a team of reviewers' browsers hold a few each
HEADERS = {  # no inline script or style, no framing (clickjacking a verdict button), no MIME guessing
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store"}
RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
CLOSE = (b"connection", b"close")
BYTES = re.compile(r":? (?:bytearray\()?b['\"]")  # where h11's message starts quoting the request's bytes


def json_response(code: int, obj, headers: dict | None = None) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False), code, headers, "application/json; charset=utf-8")


class Guarded(H11Protocol):
    """uvicorn's h11 protocol with a deadline per request and a cap on open connections (the two things it lacks
    against a slow client), and its 400 for a request h11 refuses answered as JSON with our headers."""
    deadline = TIMEOUT
    cap = MAX_CONNECTIONS
    timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.cap:
            transport.close()  # connection_lost takes it out of the count again
            return
        self._arm()  # a connection that sends nothing is a request that never arrives

    def data_received(self, data: bytes) -> None:
        if self.timer is None:  # the first byte of a request (between requests, uvicorn's keep-alive timer runs)
            self._arm()
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):  # all of it is in
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self.timer = self.loop.call_later(self.deadline, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if not self.transport.is_closing():  # no answer: the request never ended, the route sees a disconnect
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        err = sys.exc_info()[1]  # uvicorn calls this in its `except h11.RemoteProtocolError`: h11's own reason
        code = getattr(err, "error_status_hint", 400)
        why = BYTES.split(str(err or msg))[0][:200]  # h11 quotes the offending bytes: not echoed back
        body = json.dumps({"error": f"request: {why} (not valid HTTP/1.1)"}).encode()
        head = [(b"content-type", b"application/json; charset=utf-8"), CLOSE, *RAW_HEADERS]
        for event in (h11.Response(status_code=code, headers=head, reason=STATUS_PHRASES[code]), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class Guard:
    """ASGI middleware around the whole app. Every request: Host (and Origin, when present) must name this server,
    else 403 before any route runs (a DNS-rebound or foreign page is not this server). Every response: the
    security headers, and `Connection: close` on an error (a refused write may leave its body unread)."""

    def __init__(self, app, hosts: set[str], origins: set[str]):
        self.app, self.hosts, self.origins = app, hosts, origins

    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        hosts = [v.decode("latin-1") for k, v in headers if k == b"host"]
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.hosts:
            return "Host: not this review server"
        origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
        if origins and (len(origins) > 1 or origins[0].strip().lower() not in self.origins):
            return "Origin: requests from other sites are refused"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def guarded(msg):
            if msg["type"] == "http.response.start":
                extra = RAW_HEADERS + ([CLOSE] if msg["status"] >= 400 else [])
                msg = {**msg, "headers": [*msg.get("headers", []), *extra]}
            await send(msg)

        why = self._refusal(scope["headers"])
        await (self.app if why is None else json_response(403, {"error": why}))(scope, receive, guarded)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, IPv6 for an IPv6 address (`::` takes IPv4 too where the system allows)."""
    six = ":" in host
    return socket.create_server((host, port), family=socket.AF_INET6 if six else socket.AF_INET, backlog=128,
                                dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6())


def server(app, deadline: float = TIMEOUT, cap: int = MAX_CONNECTIONS) -> uvicorn.Server:
    """uvicorn serving `app` through Guarded. h11 and asyncio, not httptools/uvloop: pure Python, the same on every
    machine; no lifespan, no websockets, no proxy headers; uvicorn's own log says errors only (the page's requests
    are not the terminal's business)."""
    protocol = type("Guarded", (Guarded,), {"deadline": deadline, "cap": cap})
    return uvicorn.Server(uvicorn.Config(
        app, http=protocol, loop="asyncio", ws="none", lifespan="off", interface="asgi3", proxy_headers=False,
        server_header=False, access_log=False, log_config=None, log_level="error", timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=max(1, int(deadline))))
