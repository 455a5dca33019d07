"""The offline committee's HTTP side (gen/offline/server.py runs it): routes, request bodies, replies.

`Handler` reads a request, finds its route (the live OpenAI and Gemini routes here, the Batch API's in
gen/offline/batch.py) and answers through the simulator it belongs to (`server.sim`, an OfflineServer): its one
answer pipeline (`answer`) holds the personas, limits, faults and the request log; this side only sends.
"""

from __future__ import annotations

import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from gen.offline.api import GEMINI_RE, INTERNAL, bearer
from gen.offline.batch import route_batch

if TYPE_CHECKING:
    from gen.offline.server import OfflineServer, Reply

MAX_BODY = 4 << 20


class Server(ThreadingHTTPServer):
    # The standard library's threaded server: no extra dependency, and a thread per connection is plenty for a
    # simulator at a few hundred requests per second. Daemon threads never keep the process alive on exit.
    daemon_threads = True
    request_queue_size = 256
    sim: OfflineServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of real APIs
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, 40 ms stalls
    server: Server

    def setup(self) -> None:
        # Without a timeout, a client that stalls mid-request (or idles on a keep-alive connection) holds its
        # thread forever; the standard handler closes the connection when a read or write times out.
        self.timeout = self.server.sim.socket_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # the default prints URLs, which may hold ?key=
        pass

    def send(self, status: int, body: bytes | dict, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        try:
            self.send_response(status)
            # A connection closed after this reply must say so, or a keep-alive client reuses it and fails.
            closing = {"connection": "close"} if self.close_connection else {}
            for k, v in {"content-type": "application/json", "content-length": str(len(data)),
                         "x-fair-simulator": "1", **closing, **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timed out on a hang)
            self.close_connection = True

    def body_length(self) -> int:
        """The request's content-length; 0 when it is missing or not a whole number."""
        return int(n) if (n := self.headers.get("content-length", "")).isdigit() else 0

    def error(self, status: int, message: str, gemini: bool, kind: str = "invalid_request_error",
              code: str | None = None) -> None:
        """A request refused before the answer pipeline: no route, no body, or a bug in the simulator."""
        self.reply(self.server.sim.refuse(status, message, gemini, {}, kind, code))

    def reply(self, reply: Reply) -> None:
        self.server.sim.tally(reply)
        self.send(reply.status, reply.body, reply.headers)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        names = sorted(self.server.sim.personas)
        if path == "/health":
            self.send(200, {"ok": True})
        elif path in ("/v1/models", "/models"):
            self.send(200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "fair-simulator"} for n in names]})
        elif path == "/v1beta/models":
            self.send(200, {"models": [{"name": f"models/{n}", "displayName": f"{n} (simulated)"} for n in names]})
        elif not route_batch(self, "GET", path):
            self.error(404, f"no route GET {path}", False, code="not_found")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if route_batch(self, "POST", path):
            return
        gemini_route = GEMINI_RE.match(path)
        gemini_model = gemini_route.group(1) if gemini_route else None  # Gemini names the model in the URL
        gemini = gemini_model is not None
        if not gemini and path not in ("/v1/chat/completions", "/chat/completions"):
            self.error(404, f"no route POST {path}", False, code="not_found")
            return
        length = self.body_length()
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self.error(400, "a JSON body with a content-length of at most 4 MiB is required", gemini)
            return
        raw = self.rfile.read(length)
        if gemini:
            key = self.headers.get("x-goog-api-key") or parse_qs(url.query).get("key", [""])[0]
        else:
            key = bearer(self.headers.get("authorization", ""))
        try:
            reply = self.server.sim.answer(raw, gemini_model=gemini_model, key=key or "anonymous")
        except Exception:  # a bug in the simulator: say so rather than drop the connection
            traceback.print_exc()
            self.error(500, INTERNAL, gemini, kind="server_error")
            return
        if reply is not None:  # None: the server is stopping
            self.reply(reply)
