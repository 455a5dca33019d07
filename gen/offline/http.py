"""The offline committee's HTTP side (gen/offline/server.py runs it): routes, request bodies, replies.

`Handler` reads a request, finds its route (the live OpenAI and Gemini routes here, the Batch API's in
gen/offline/batch.py) and answers through the simulator it belongs to (`server.sim`, an OfflineServer):
personas, limits, faults and the request log all live there.
"""

from __future__ import annotations

import hashlib
import math
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from gen.offline.api import (
    GEMINI_RE,
    GEMINI_STATUS,
    SHAPE_ERRORS,
    bearer,
    gemini_text,
    openai_text,
    response,
    tokens,
)
from gen.offline.batch import route_batch

if TYPE_CHECKING:
    from gen.offline.server import OfflineServer

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

    def error(self, status: int, message: str, gemini: bool, kind: str = "invalid_request_error",
              code: str | None = None, headers: dict[str, str] | None = None, log: dict | None = None) -> None:
        sim = self.server.sim
        sim.count("rate_limited" if status == 429 else "fault_5xx" if log and log.get("fault") else "errors")
        if gemini:
            body = {"error": {"code": status, "status": GEMINI_STATUS.get(status, "UNKNOWN"), "message": message}}
        else:
            body = {"error": {"message": message, "type": kind, "code": code}}
        sim.log({"status": status, **(log or {})})
        self.send(status, body, headers)

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
        gemini = gemini_route is not None
        if not gemini and path not in ("/v1/chat/completions", "/chat/completions"):
            self.error(404, f"no route POST {path}", False, code="not_found")
            return
        length = int(n) if (n := self.headers.get("content-length", "")).isdigit() else 0
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self.error(400, "a JSON body with a content-length of at most 4 MiB is required", gemini)
            return
        raw = self.rfile.read(length)
        try:
            body = orjson.loads(raw)
            if gemini:
                model, text, max_tokens = gemini_route.group(1), *gemini_text(body)
                key = self.headers.get("x-goog-api-key") or parse_qs(url.query).get("key", [""])[0]
            else:
                model, text, max_tokens = str(body["model"]), *openai_text(body)
                key = bearer(self.headers.get("authorization", ""))
        except SHAPE_ERRORS:
            self.error(400, "could not read the request body: not the expected JSON shape (streaming is not "
                            "simulated)", gemini)
            return
        try:
            self.answer(raw, model, key or "anonymous", text, max_tokens, gemini)
        except Exception:  # a bug in the simulator: say so rather than drop the connection
            traceback.print_exc()
            self.error(500, "internal error in the offline committee simulator (see its stderr)", gemini,
                       kind="server_error")

    def answer(self, raw: bytes, model: str, key: str, text: str, max_tokens: int, gemini: bool) -> None:
        sim = self.server.sim
        body_sha = hashlib.sha256(raw).hexdigest()
        log: dict[str, Any] = {"model": model, "body_sha256": body_sha}
        if (persona := sim.personas.get(model)) is None:
            known = ", ".join(sorted(sim.personas))
            self.error(404, f"The model `{model}` does not exist (simulated models: {known})", gemini,
                       code="model_not_found", log=log)
            return
        log["attempt"] = attempt = sim.attempt(model, body_sha)
        prompt_tokens = tokens(text)
        wait, limit_headers, event = sim.limiter.admit(key, model, prompt_tokens)
        headers = {} if gemini else limit_headers
        if wait is not None:
            wait = max(wait, 0.001)
            retry = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
            self.error(429, f"Rate limit reached for {model} (simulated): retry after {wait:.3f}s", gemini,
                       kind="requests", code="rate_limit_exceeded", headers=retry | headers, log=log)
            return
        fault = sim.fault(model, body_sha, attempt)
        if fault == "5xx":
            status = sim.error_status(model, body_sha, attempt)
            self.error(status, "The server had an error while processing your request (simulated).", gemini,
                       kind="server_error", log=log | {"fault": fault})
            return
        rng, latency = sim.reply_draws(model, body_sha)
        pause = latency + (sim.hang_s if fault == "hang" else 0.0)
        if pause and sim.stopping.wait(pause):
            return
        reply, finish, kind = sim.compose(persona, text, max_tokens, rng)
        if fault == "empty":
            reply = ""
        completion_tokens = tokens(reply) if reply else 0
        sim.limiter.settle(key, model, event, prompt_tokens + completion_tokens)
        sim.count(f"fault_{fault}" if fault else "completed")
        sim.log({"status": 200, **log, "kind": kind, "prompt_tokens": prompt_tokens,
                 "completion_tokens": completion_tokens, **({"fault": fault} if fault else {})})
        if fault == "malformed":
            self.send(200, b'{"id": "chatcmpl-sim", "choices": [{"index": 0, "message": {"role": "assi', headers)
        else:
            reply_body = response(model, reply, completion_tokens, prompt_tokens, finish, gemini, body_sha)
            self.send(200, reply_body, headers)
