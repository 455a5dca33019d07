"""The offline committee's HTTP side (simulator/server.py runs it): Starlette routes on uvicorn, in a thread.

The routes read the request (body, key, format) and hand it to the simulator's one answer pipeline
(Simulator.admit, then .write after the latency or hang, which waits here without holding a thread); the
Batch API's routes are fair/wire/batch_api.py's, over simulator/batch.py's store. uvicorn runs with uvloop and
httptools where installed, no access log and no logging setup of its own (the simulator often runs inside another
program's process).
A connection is closed when it sends nothing for socket_timeout_s while a request or its body is awaited, or
reads nothing of a reply for as long (`Patient`), and after socket_timeout_s idle between requests (uvicorn's
keep-alive timeout).
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fair.errors import FairError
from fair.wire import batch_api
from fair.wire.errors import ApiError
from fair.wire.listen import listen
from simulator.api import bearer
from simulator.formats import INTERNAL, Format
from simulator.http import json_response, read_body
from simulator.replies import HttpReply
from simulator.simulator import Simulator, Ticket

MAX_BODY = 4 << 20
MAX_JSON = 1 << 20  # a POST /v1/batches body
STARTUP_S = 30.0


class Routes:
    """The live routes of one simulator."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.stop_event: asyncio.Event | None = None  # made in the server's loop (lifespan)
        self.loop: asyncio.AbstractEventLoop | None = None

    def app(self) -> Starlette:
        chat = [Route(p, self.openai, methods=["POST"]) for p in ("/v1/chat/completions", "/chat/completions")]
        chat += [Route(p, self.anthropic, methods=["POST"]) for p in ("/v1/messages", "/messages")]
        chat += [Route(f"{p}/models/{{call}}", self.gemini, methods=["POST"]) for p in ("/v1beta", "/v1", "")]
        listing = [Route(p, self.models, methods=["GET"]) for p in ("/v1/models", "/models", "/v1beta/models")]
        batches = batch_api.routes(self.sim.batches.api, self.guarded, read_json)
        routes = [Route("/health", self.health, methods=["GET"]), *chat, *listing, *batches]
        handlers = {404: self.no_route, 405: self.no_route, ApiError: self.api_error, Exception: self.internal}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    @asynccontextmanager
    async def lifespan(self, app: Any):
        self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
        yield
        await self.sim.batches.api.close()  # the batches die with the server (simulator/batch.py)

    def wake(self) -> None:
        """Called from another thread on stop: requests waiting out a latency or a hang return at once."""
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_event.set)

    def error(self, e: ApiError) -> Response:
        """A request refused before the answer pipeline, counted among the errors."""
        self.sim.count("errors")
        return json_response(e.status, e.body(), {"connection": "close"} if e.close else None)

    def guarded(self, handler: batch_api.Handler) -> batch_api.Handler:
        """A Batch API route whose ApiError becomes its error reply (after a POST the connection closes: its
        body may be unread), and a bug a 500 rather than a dropped connection, as on the live routes."""
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                e.close = e.close or request.method == "POST"
                return self.error(e)
            except Exception:
                traceback.print_exc()
                return self.error(ApiError(500, INTERNAL, code="server_error", close=True))
        return route

    async def no_route(self, request: Request, exc: Exception) -> Response:
        return self.error(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    async def api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return self.error(exc)

    async def internal(self, request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc)  # a bug in the simulator: say so rather than drop the connection
        return self.error(ApiError(500, INTERNAL, code="server_error", close=True))

    async def health(self, request: Request) -> Response:
        return json_response(200, {"ok": True})

    async def models(self, request: Request) -> Response:
        names = sorted(self.sim.personas)
        if request.url.path.startswith("/v1beta"):
            return json_response(200, {"models": [{"name": f"models/{n}", "displayName": f"{n} (simulated)"}
                                                  for n in names]})
        return json_response(200, {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "fair-simulator"} for n in names]})

    async def openai(self, request: Request) -> Response:
        return await self.chat(request, "openai", bearer(request.headers.get("authorization", "")))

    async def anthropic(self, request: Request) -> Response:
        return await self.chat(request, "anthropic", request.headers.get("x-api-key", ""))

    async def gemini(self, request: Request) -> Response:
        model, _, call = request.path_params["call"].partition(":")
        if call not in ("generateContent", "streamGenerateContent"):
            raise ApiError(404, f"no route POST {request.url.path}", code="not_found")
        if call == "streamGenerateContent" and request.query_params.get("alt") != "sse":
            raise ApiError(400, "the simulator streams Gemini replies with ?alt=sse only", close=True)
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key", "")
        return await self.chat(request, "gemini", key, model, call == "streamGenerateContent")

    async def chat(self, request: Request, fmt: Format, key: str, gemini_model: str | None = None,
                   gemini_stream: bool = False) -> Response:
        try:
            raw = await read_body(request, MAX_BODY)
        except ApiError as e:
            reply = self.sim.refuse(fmt, e.status, str(e), {})
            self.sim.tally(reply)
            return self.respond(reply, {"connection": "close"})
        try:
            reply = self.sim.admit(raw, fmt, gemini_model=gemini_model, gemini_stream=gemini_stream,
                                   key=key or "anonymous")
            if isinstance(reply, Ticket):
                if reply.pause and await self.sleep(reply.pause):
                    return json_response(503, {"error": {"message": "the simulator is stopping"}},
                                         {"connection": "close"})
                reply = self.sim.write(reply)
        except Exception:  # a bug in the simulator: say so in the request's format, rather than drop it
            traceback.print_exc()
            reply = self.sim.refuse(fmt, 500, INTERNAL, {}, kind="server_error")
        self.sim.tally(reply)
        return self.respond(reply)

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when the server stops meanwhile."""
        assert self.stop_event is not None
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def respond(reply: HttpReply, extra: dict[str, str] | None = None) -> Response:
        headers = {**reply.headers, **(extra or {})}
        if reply.events is not None and reply.status == 200:
            return StreamingResponse(each(reply.events), 200, {"x-fair-simulator": "1", **headers},
                                     "text/event-stream")
        return json_response(reply.status, reply.body, headers)


async def read_json(request: Request) -> Any:
    try:
        return orjson.loads(await read_body(request, MAX_JSON))
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None


async def each(events: list[bytes]) -> AsyncIterator[bytes]:
    """A stream's events, one write each (an async iterator: Starlette runs a plain one in a thread pool)."""
    for event in events:
        yield event


def protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools where installed) that closes a connection which sends nothing for
    timeout_s while a request or its body is awaited, or reads nothing of its reply for timeout_s; once the
    request is whole, the reply may take its time (a latency, a hang)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class Patient(Base):  # type: ignore[misc, valid-type]
        idle: asyncio.TimerHandle | None = None
        stalled: asyncio.TimerHandle | None = None  # the client stopped reading the reply

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.watch()

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self.idle, self.stalled):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:  # the send buffer is full: the client has timeout_s to read again
            super().pause_writing()
            self.stalled = self.loop.call_later(timeout_s, self.transport.abort)  # close() would flush first

        def resume_writing(self) -> None:
            if self.stalled is not None:
                self.stalled.cancel()
                self.stalled = None
            super().resume_writing()

        def watch(self) -> None:
            if self.idle is not None:
                self.idle.cancel()
                self.idle = None
            cycle = self.cycle
            if cycle is None or cycle.response_complete or cycle.more_body:  # awaiting a request or its body
                self.idle = self.loop.call_later(timeout_s, self.transport.close)

    return Patient


class Listener:
    """uvicorn serving one simulator's routes on a socket bound here (so port 0 is known at once), in a daemon
    thread with its own event loop."""

    def __init__(self, sim: Simulator):
        self.sim, self.routes = sim, Routes(sim)
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> Listener:
        sock = listen(self.sim.host, self.sim.requested_port, backlog=1024)  # a bench connects by the hundred
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.routes.app(), http=protocol(self.sim.socket_timeout_s), log_config=None,
                                log_level="warning", access_log=False, timeout_keep_alive=self.sim.socket_timeout_s,
                                timeout_graceful_shutdown=2, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name="offline-committee")
        self.thread.start()
        deadline = time.monotonic() + STARTUP_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise FairError(f"the offline simulator did not start on {self.sim.host}:{self.port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.routes.wake()
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
