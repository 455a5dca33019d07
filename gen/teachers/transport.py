"""What every provider shares: the request, reply and failure types, and the one HTTP call that maps failures.

The three APIs (gen/teachers/providers.py, which re-exports everything here) build a body and parse a reply;
this module posts it and turns every failure into one of these:

    RateLimited     429 (a rate limit): retried, on its own budget, after its retry_after
    TransientError  5xx, 408, 409, 529, timeouts, connection errors, invalid JSON, missing fields, an empty
                    reply that gives no reason: retried
    FatalError      other 4xx: never retried
    QuotaExhausted  a FatalError the account cannot get past by waiting (out of credit or quota): never retried,
                    and it stops the run (gen/teachers/client.py); each API says which bodies are one
A reply header `x-should-retry` (OpenAI's and Anthropic's servers send it) overrides the status: "true" retries
(a 429 stays RateLimited, anything else becomes TransientError), "false" is a FatalError. A quota error stays
one whatever the header says: the providers document those bodies as final.

A reply the provider billed (a 200 that is empty, cut off or refused) carries its usage: a ChatResponse has it,
and a ProviderError raised for a billed 200 has it in `.usage`, so the client counts what was paid on every attempt.

Messages are built from the teacher's name, the status and the provider's error text only (never from the URL or
headers), redacted (gen/teachers/keys.py), then cut to one line of MAX_ERROR_CHARS.

Replies are untrusted: the parsers read them through `lookup`, so that a reply of any shape (usage a string,
counts "n/a", null objects, text a number, nested lists) becomes a TransientError for that request and never
a ValueError, TypeError or AttributeError that would end the run. Token counts that are absent or null count 0
(some local servers send none; the text is good and paid for); any other non-count is a malformed reply. Each
attempt has one deadline, timeout_s from connect to the last byte (httpx's timeouts are per read, so a server
that drips bytes would hold it forever), and a body over MAX_REPLY_BYTES is cut off.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from httpx_aiohttp import HttpxAiohttpClient

from gen.teachers.config import Teacher, Usage
from gen.teachers.keys import redact
from gen.teachers.ratelimits import RateLimitInfo, parse_limits, retry_after


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content), role in system/user/assistant
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    # Salt: a new value asks for a new sample of the same prompt instead of the cached one. Above 0 it is also sent
    # as the provider's seed where the API has one (OpenAI, Gemini; Anthropic has none): `fair committee --samples`.
    sample: int = 0

    @classmethod
    def for_teacher(cls, teacher: Teacher, messages: tuple[tuple[str, str], ...], sample: int = 0) -> ChatRequest:
        """The request with the teacher's sampling settings: the request's values are what is sent and hashed."""
        return cls(messages, teacher.temperature, teacher.top_p, teacher.max_tokens, sample)


@dataclass(frozen=True)
class ChatResponse:
    text: str  # "" for a refusal or an empty truncated reply
    input_tokens: int
    output_tokens: int
    limits: RateLimitInfo | None = field(default=None, compare=False)  # not cached: only for the limiter
    batch: bool = False  # answered through OpenAI's Batch API, billed at half price (gen/teachers/batch.py)
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    truncated: bool = False  # cut off at the output limit (OpenAI "length", Gemini MAX_TOKENS, Anthropic max_tokens)
    refusal: str | None = None  # the provider declined to answer; its reason ("SAFETY", "content_filter", "refusal")

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.cached_input_tokens, self.cache_write_tokens)


class ProviderError(Exception):
    """Base of provider failures. Messages never contain API keys or full URLs with keys."""

    usage: Usage | None = None  # what a failed but billed 200 reply cost (set by _Provider._fail)
    # The request may have reached the provider and been billed with no reply to say how much (a timeout, a
    # connection lost after the body was sent): a cost budget keeps its worst case spent (gen/teachers/budget.py).
    maybe_billed: bool = False


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds, from Retry-After / retry-after-ms / reset headers


class TransientError(ProviderError):
    """5xx, timeouts, connection errors, malformed or empty replies: worth retrying."""


class FatalError(ProviderError):
    """Other 4xx (bad request, auth, unknown model): retrying cannot help."""


class QuotaExhausted(FatalError):
    """The account is out of credit or quota: no request on this key can succeed until its owner acts."""


class ChatProvider(Protocol):
    """The seam between the shared client and one API: make the raw call, map failures, nothing else."""

    async def complete(self, request: ChatRequest) -> ChatResponse: ...


# ---------------------------------------------------------------------------------------------------------
# Reading untrusted replies

# Transport failures before the whole request reached the provider: nothing it could bill.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)
MAX_ERROR_CHARS = 300
MAX_REPLY_BYTES = 8 * 1024 * 1024  # a chat reply or a Batch API status is a few KB; more is a broken server
MAX_COUNT = 2**40  # no reply is a trillion tokens: a bigger "count" is garbage


def lookup(data: Any, *path: str | int) -> Any:
    """data[path[0]][path[1]]...: None where a step is missing or the data has another shape."""
    for step in path:
        if isinstance(step, int):
            data = data[step] if isinstance(data, list) and -len(data) <= step < len(data) else None
        else:
            data = data.get(step) if isinstance(data, dict) else None
    return data


def error_text(data: Any, raw: bytes) -> str:
    """The provider's own error message ({"error": {"message": ...}} in all three APIs), else the raw body."""
    error = lookup(data, "error")
    message = lookup(error, "message") if isinstance(error, dict) else error if isinstance(error, str) else None
    return str(message) if message else raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------
# The shared HTTP call


def http_client(max_connections: int) -> httpx.AsyncClient:
    """The HTTP client for live teacher calls: httpx's API (what providers and tests speak) over aiohttp's
    connection pool and C HTTP parser (httpx-aiohttp, the OpenAI SDK's aiohttp backend). httpx's own pool
    rescans every connection on each request and its HTTP/1.1 code is pure Python: several times the CPU a
    request of aiohttp's, on the same workload (make bench-scale; figures in docs/benchmarks.md)."""
    return HttpxAiohttpClient(limits=httpx.Limits(max_connections=max_connections))


class _Provider:
    """Posts JSON and maps failures; subclasses build the body, parse the reply and name their quota errors."""

    def __init__(self, teacher: Teacher, http: httpx.AsyncClient):
        self.teacher = teacher
        self.http = http

    def __repr__(self) -> str:  # the key is read from the environment per call and never stored here
        return f"{type(self).__name__}(teacher={self.teacher.name!r}, model={self.teacher.model!r})"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    def out_of_quota(self, status: int, data: Any, text: str) -> bool:
        """Whether an error reply says the account is out of credit or quota (each API documents its own)."""
        return False

    def _fail(self, cls: type[ProviderError], reason: str, usage: Usage | None = None, **kw: Any) -> ProviderError:
        """The error on one line, redacted before it is cut to length (a key cut in two would escape redaction)."""
        reason = " ".join(redact(reason, self.teacher.api_keys()).split())
        reason = reason[:MAX_ERROR_CHARS] + ("..." if len(reason) > MAX_ERROR_CHARS else "")
        error = cls(f"{self.teacher.name}: {reason}", **kw)
        error.usage = usage
        return error

    def malformed(self, what: str, usage: Usage | None = None) -> ProviderError:
        return self._fail(TransientError, f"malformed reply: {what}", usage)

    async def send(self, method: str, url: str, headers: dict[str, str], stream: bool = False,
                   deadline: bool = True, **kwargs: Any) -> httpx.Response:
        """One HTTP call with the teacher's timeout and extra headers; a reply below 400 is returned, transport
        failures and HTTP errors raise (see the module docstring; also used by gen/teachers/batch.py).
        The body is read (up to MAX_REPLY_BYTES) within the attempt's deadline, except that with stream=True a
        good reply's body is left unread, for the caller to iterate and close. deadline=False leaves only httpx's
        per-read timeouts: for an upload that may rightly take longer than timeout_s."""
        t = self.teacher
        # Built here, not by http.build_request: merging the client's defaults (base URL, headers, cookies), none
        # of which we use, was a tenth of the committee's CPU a request.
        request = httpx.Request(method, url, headers={**headers, **t.extra_headers},
                                extensions={"timeout": httpx.Timeout(t.timeout_s).as_dict()}, **kwargs)
        try:
            async with asyncio.timeout(t.timeout_s if deadline else None):
                resp = await self.http.send(request, stream=True)
                if resp.status_code >= 400 or not stream:
                    await self._read(resp)
        except (httpx.TimeoutException, TimeoutError) as e:
            error = self._fail(TransientError, f"timed out after {t.timeout_s:g} s ({type(e).__name__})")
            error.maybe_billed = not isinstance(e, NOT_SENT)
            raise error from None
        except httpx.RequestError as e:  # connection refused, reset, DNS: str(e) may name the URL, so redact
            error = self._fail(TransientError, f"{type(e).__name__}: {e}")
            error.maybe_billed = not isinstance(e, NOT_SENT)
            raise error from None
        if resp.status_code < 400:
            return resp
        raise self._status_error(resp)

    async def _read(self, resp: httpx.Response) -> None:
        """Read the body into resp.content, giving up past MAX_REPLY_BYTES (decoded: a gzip bomb counts too)."""
        chunks, size = [], 0
        try:
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise self._fail(TransientError, f"HTTP {resp.status_code}: reply over {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
        finally:
            await resp.aclose()
        resp._content = b"".join(chunks)  # where httpx's own aread() keeps the body; ours stops at the cap

    def _status_error(self, resp: httpx.Response) -> ProviderError:
        status = resp.status_code
        try:
            data = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            data = None
        text = f"HTTP {status}: {error_text(data, resp.content)}"
        should_retry = resp.headers.get("x-should-retry", "").strip().lower()
        if self.out_of_quota(status, data, text):
            return self._fail(QuotaExhausted, text)
        if status == 429 and should_retry != "false":
            return self._fail(RateLimited, text, retry_after=retry_after(resp.headers, data))
        if should_retry == "true" or (should_retry != "false" and (status >= 500 or status in (408, 409))):
            return self._fail(TransientError, text)  # 409: OpenAI's "conflict, try again"; 529: Anthropic overloaded
        return self._fail(FatalError, text)

    def json_object(self, resp: httpx.Response) -> dict:
        """A successful reply's JSON object; anything else is a TransientError."""
        try:
            data = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            raise self._fail(TransientError, f"HTTP {resp.status_code}: reply is not valid JSON") from None
        if not isinstance(data, dict):
            raise self._fail(TransientError, f"HTTP {resp.status_code}: reply is not a JSON object")
        return data

    async def _post(self, url: str, headers: dict[str, str], body: dict) -> tuple[dict, RateLimitInfo | None]:
        resp = await self.send("POST", url, {"content-type": "application/json", **headers}, content=orjson.dumps(body))
        return self.json_object(resp), parse_limits(resp.headers)

    def _usage(self, data: Any, *path: str) -> dict:
        """The object at `path` in the reply (a usage object or one of its details); absent or null is {}."""
        usage = lookup(data, *path)
        if usage is not None and not isinstance(usage, dict):
            raise self.malformed(f"{'.'.join(path)} is not an object")
        return usage or {}

    def _count(self, usage: dict, *names: str) -> int:
        """The sum of the named token counts: absent or null counts 0, anything but a whole number >= 0 is malformed."""
        total = 0
        for name in names:
            n = usage.get(name)
            if n is None:
                continue
            if isinstance(n, bool) or not isinstance(n, int | float) or not 0 <= n <= MAX_COUNT or n != int(n):
                raise self.malformed(f"{name} is not a token count")
            total += int(n)
        return total

    def reply(self, text: Any, usage: Usage, limits: RateLimitInfo | None, *, truncated: bool = False,
              refusal: str | None = None) -> ChatResponse:
        """The ChatResponse for a parsed reply. A refusal has no text; a truncated reply may have none (thinking
        spent the budget); any other reply without text is an empty reply, retried, its usage counted."""
        if refusal is not None:
            text = ""
        elif not isinstance(text, str):
            raise self.malformed("the text is not a string", usage)
        elif not truncated and not text.strip():
            raise self._fail(TransientError, "empty reply (no text in the response)", usage)
        cached = min(usage.cached_input_tokens, usage.input_tokens)  # a part of input_tokens, whatever a server says
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        return ChatResponse(text, usage.input_tokens, usage.output_tokens, limits, cached_input_tokens=cached,
                            cache_write_tokens=written, truncated=truncated, refusal=refusal)
