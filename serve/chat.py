"""`fair serve`'s chat proxy: POST /v1/chat/completions, answered by a teacher of the server's committee.

    client = OpenAI(base_url="http://127.0.0.1:8765/v1", api_key=TOKEN)
    client.chat.completions.create(model="careful", messages=[...])                        # one JSON reply
    client.chat.completions.create(model="careful", messages=[...], stream=True,
                                   stream_options={"include_usage": True})                 # server-sent events

Every request goes through the server's own TeacherClient for its teacher (gen/teachers/client.py): its response
cache (STATE/proxy/requests.sqlite), the key's limits and retries, and the interactive turn in the shared gates'
fair queues (serve/budget.py). A body the server would not honour is a 400 before anything else happens, in
OpenAI's error shape; a teacher that fails for good is a 502.

Streaming (`stream: true`) is OpenAI's wire format, not the teacher's: the call upstream stays the committee's
one non-streaming request (cached, rate-limited, retried, billed once), and the proxy streams its completed reply.
The response starts as soon as the body is accepted, with the chunk that names the role; the content follows
word by word once the whole reply is in, then the finish (its reason "length" for a truncated reply,
"content_filter" for a refusal), the usage chunk when `stream_options.include_usage`, and `data: [DONE]`.
What that buys a client: code written for OpenAI's streaming works unchanged; the headers come at once and a
comment line every PING_S seconds keeps the connection open however long the request waits for its turn at a busy key,
so no idle timeout cuts it; and a client that leaves while its request still waits takes it out of the queue.
What it does not buy: the first word comes no sooner than the last (time to first token is the whole reply's
time), and it costs the same. A teacher that fails once the stream has started ends it with OpenAI's error
event, `data: {"error": {...}}` (the SDKs raise it), and no [DONE].

Each request runs in a task of its own, which is cancelled only while the request has not been sent: from the
moment it is marked in flight (gen/teachers/cache.py) its reply is paid for, so it runs to its end, retries
included, and the reply lands in the cache for whoever asks next. A streaming client that disconnects stops its
stream at once (nothing more is written to it) and cancels its request if it is still waiting; so does the client
of a plain request (its connection is watched every GONE_POLL_S while it waits). A request too large ever to fit
its teacher's tpm is a 400 before it waits at all (serve/wire.py). A stop of the server cancels the requests
still waiting and waits up to STOP_WAIT_S for the ones sent.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from sse_starlette.sse import EventSourceResponse

from fair.wire.errors import ApiError
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import MAX_TEMPERATURE, Teacher
from gen.teachers.providers import ChatRequest, ChatResponse, ProviderError
from serve.budget import Tenant
from serve.wire import (
    ROLES,
    STREAM_OPTIONS,
    STREAMING,
    Chunks,
    StreamOptions,
    chat_completion,
    chat_request,
    stream_options,
)

PING_S = 15  # sse-starlette's comment line while a stream waits: under the usual idle timeouts of proxies
STOP_WAIT_S = 10.0
GONE_POLL_S = 0.5  # how often a plain request's wait asks whether its client is still there
# Each proxied request's task sees, in a context of its own, the event its cache sets when the request is about
# to go upstream: the cache sees only keys, and two clients may wait on the same one.
UPSTREAM: contextvars.ContextVar[asyncio.Event] = contextvars.ContextVar("upstream")


def openapi(teachers: dict[str, Teacher]) -> dict[str, Any]:
    """The route's body and replies in its OpenAPI schema, for clients and for the fuzz test (which then sends
    bodies this server takes, streams included, besides the ones it refuses)."""
    tokens = {"type": "integer", "minimum": 1, "maximum": min(t.max_tokens for t in teachers.values())}
    body = {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "enum": list(teachers)},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "additionalProperties": False,
                    "properties": {"role": {"enum": sorted(ROLES)}, "content": {"type": "string"}},
                },
            },
            # The widest of the providers' ranges: a model's own (Anthropic's temperature to 1) is checked per request.
            "temperature": {"type": "number", "minimum": 0, "maximum": max(MAX_TEMPERATURE.values())},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "max_tokens": tokens,
            "max_completion_tokens": tokens,
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {name: {"type": "boolean"} for name in sorted(STREAM_OPTIONS)},
            },
        },
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "a chat.completion, or with `stream: true` its chat.completion.chunk events",
                "content": {"application/json": {}, "text/event-stream": {}},
            }
        },
    }


async def watch_client(gone: Callable[[], Awaitable[bool]]) -> None:
    """Return once the client has disconnected (polled: an ASGI app hears of it only when it asks)."""
    while not await gone():
        await asyncio.sleep(GONE_POLL_S)


class ProxyCache(ResponseCache):
    """The proxy's response cache, which also tells a request's task when that request is about to be sent."""

    async def mark_inflight(self, key: str, teacher: str) -> None:
        # Before the mark, not after: a request cancelled between its mark and its send would leave a row
        # that the next start counts as a request that may have been sent twice.
        if (sent := UPSTREAM.get(None)) is not None:
            sent.set()
        await super().mark_inflight(key, teacher)


class Proxy:
    """The proxy's clients of the teachers, their cache, and the requests running (clients gone or not)."""

    def __init__(self, folder: Path, teachers: dict[str, Teacher], http: httpx.AsyncClient, tenant: Tenant):
        self.teachers = teachers
        self.cache = ProxyCache(folder / "requests.sqlite")
        self.clients = {n: TeacherClient(t, self.cache, http, admission=tenant) for n, t in teachers.items()}
        self.running: set[asyncio.Task] = set()  # held: the event loop keeps only weak references to tasks

    async def answer(self, body: Any, gone: Callable[[], Awaitable[bool]]) -> dict[str, Any] | EventSourceResponse:
        """A reply, or a stream that starts at once; ApiError before either. `gone`: whether the client of a plain
        request has disconnected (its request is then cancelled if it still waits)."""
        teacher, request = chat_request(body, self.teachers, also=STREAMING)
        options = stream_options(body)
        if options is None:
            return chat_completion(teacher, request, await self._unless_gone(teacher, request, gone))
        # sep "\n": OpenAI frames its events with bare newlines (sse-starlette's default is "\r\n").
        return EventSourceResponse(self._stream(teacher, request, options), ping=PING_S, sep="\n")

    async def close(self) -> None:
        if self.running:
            await asyncio.wait(self.running, timeout=STOP_WAIT_S)
            for task in self.running:  # what is still running now is lost with the process
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)
        self.cache.close()

    async def _complete(self, teacher: Teacher, request: ChatRequest) -> ChatResponse:
        try:
            return await self.clients[teacher.name].complete(request)
        except ProviderError as e:  # the client's message: redacted, one line
            raise ApiError(502, str(e), code="teacher_failed") from None

    async def _stream(self, teacher: Teacher, request: ChatRequest, options: StreamOptions):
        """The events; cancelled (by sse-starlette) when the client disconnects or the server stops."""
        chunks = Chunks(teacher, request, options)
        yield orjson.dumps(chunks.opening()).decode()
        try:
            response = await self._outliving(teacher, request)
        except ApiError as e:
            yield orjson.dumps(e.body()).decode()
            return
        for chunk in chunks.reply(response):
            yield orjson.dumps(chunk).decode()
        yield "[DONE]"

    async def _unless_gone(self, teacher: Teacher, request: ChatRequest,
                           gone: Callable[[], Awaitable[bool]]) -> ChatResponse:
        """The reply, unless the client leaves first: its wait is then cancelled, and with it the request if it has
        not been sent (a 499 that nobody reads)."""
        waiting = asyncio.ensure_future(self._outliving(teacher, request))
        watch = asyncio.ensure_future(watch_client(gone))
        try:
            await asyncio.wait({waiting, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this route is cancelled (the server stops)
            watch.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if waiting.cancelled():
            raise ApiError(499, "the client closed the request before its reply", code="client_closed")
        return waiting.result()

    async def _outliving(self, teacher: Teacher, request: ChatRequest) -> ChatResponse:
        """The reply, from a task of its own: cancelling the wait cancels the request only if it was not sent."""
        sent = asyncio.Event()
        context = contextvars.copy_context()
        context.run(UPSTREAM.set, sent)
        task = asyncio.create_task(self._complete(teacher, request), context=context)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not sent.is_set():
                task.cancel()
            raise
