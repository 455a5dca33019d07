"""Provider wire formats: one small class per API that turns a ChatRequest into an HTTP call and back.

A provider makes only the raw call and maps every failure onto three exception types; the shared wrapper
(gen/teachers/client.py) owns the cache, rate limits, retries and accounting.

    OpenAIProvider     POST {url}/chat/completions              any OpenAI-compatible server (DeepInfra,
                                                                Mistral, Together, vllm serve, llama.cpp)
    GeminiProvider     POST {url}/models/{model}:generateContent key in x-goog-api-key, never in the URL
    AnthropicProvider  POST {url}/messages                      x-api-key, anthropic-version: 2023-06-01

Failures: HTTP 429 -> RateLimited(retry_after); 5xx, 408, 409, timeouts, connection errors, invalid JSON,
missing fields, empty text -> TransientError; other 4xx -> FatalError. Messages are built from the teacher's
name, the status and the provider's error text only (never from the URL or headers), redacted (gen/teachers/keys.py),
then cut to one line of MAX_ERROR_CHARS.

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
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson
from httpx_aiohttp import HttpxAiohttpClient

from gen.teachers.keys import redact
from gen.teachers.ratelimits import RateLimitInfo, parse_limits, retry_after

if TYPE_CHECKING:
    from gen.teachers.config import Teacher


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content), role in system/user/assistant
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    sample: int = 0  # salt: a new value asks for a new sample of the same prompt instead of the cached one

    @classmethod
    def for_teacher(cls, teacher: Teacher, messages: tuple[tuple[str, str], ...], sample: int = 0) -> ChatRequest:
        """The request with the teacher's sampling settings: the request's values are what is sent and hashed."""
        return cls(messages, teacher.temperature, teacher.top_p, teacher.max_tokens, sample)


@dataclass(frozen=True)
class ChatResponse:
    text: str
    input_tokens: int
    output_tokens: int
    limits: RateLimitInfo | None = field(default=None, compare=False)  # not cached: only for the limiter
    batch: bool = False  # answered through OpenAI's Batch API, billed at half price (gen/teachers/batch.py)
    truncated: bool = False  # cut off at the output limit (OpenAI finish_reason "length" and its kin)
    refusal: str | None = None  # the provider refused; its reason ("SAFETY", "content_filter", "refusal")


class ProviderError(Exception):
    """Base of provider failures. Messages never contain API keys or full URLs with keys."""


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds, from Retry-After / retry-after-ms / reset headers


class TransientError(ProviderError):
    """5xx, timeouts, connection errors, malformed or empty replies: worth retrying."""


class FatalError(ProviderError):
    """Other 4xx (bad request, auth, unknown model): retrying cannot help."""


class ChatProvider(Protocol):
    """The seam between the shared client and one API: make the raw call, map failures, nothing else."""

    async def complete(self, request: ChatRequest) -> ChatResponse: ...


# ---------------------------------------------------------------------------------------------------------
# Reading untrusted replies

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


def _error_text(data: Any, raw: bytes) -> str:
    """The provider's own error message ({"error": {"message": ...}} in all three APIs), else the raw body."""
    error = lookup(data, "error")
    message = lookup(error, "message") if isinstance(error, dict) else error if isinstance(error, str) else None
    return str(message) if message else raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------
# The shared HTTP call


def http_client(max_connections: int) -> httpx.AsyncClient:
    """The HTTP client for live teacher calls: httpx's API (what providers and tests speak) over aiohttp's
    connection pool and C HTTP parser (httpx-aiohttp, the OpenAI SDK's aiohttp backend). httpx's own pool
    rescans every connection on each request and its HTTP/1.1 code is pure Python: 1.8 ms of CPU a request
    against 0.5 ms over aiohttp, on the same workload (make bench-scale, README)."""
    return HttpxAiohttpClient(limits=httpx.Limits(max_connections=max_connections))


class _Provider:
    """Posts JSON and maps failures; subclasses build the body and parse the reply."""

    def __init__(self, teacher: Teacher, http: httpx.AsyncClient):
        self.teacher = teacher
        self.http = http

    def __repr__(self) -> str:  # the key is read from the environment per call and never stored here
        return f"{type(self).__name__}(teacher={self.teacher.name!r}, model={self.teacher.model!r})"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    def _fail(self, cls: type[ProviderError], reason: str, **kw: Any) -> ProviderError:
        """The error on one line, redacted before it is cut to length (a key cut in two would escape redaction)."""
        reason = " ".join(redact(reason, self.teacher.api_keys()).split())
        reason = reason[:MAX_ERROR_CHARS] + ("..." if len(reason) > MAX_ERROR_CHARS else "")
        return cls(f"{self.teacher.name}: {reason}", **kw)

    def malformed(self, what: str) -> ProviderError:
        return self._fail(TransientError, f"malformed reply: {what}")

    async def send(self, method: str, url: str, headers: dict[str, str], stream: bool = False,
                   deadline: bool = True, **kwargs: Any) -> httpx.Response:
        """One HTTP call with the teacher's timeout and extra headers; a reply below 400 is returned, transport
        failures and HTTP errors raise RateLimited, TransientError or FatalError (also used by gen/teachers/batch.py).
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
            raise self._fail(TransientError, f"timed out after {t.timeout_s:g} s ({type(e).__name__})") from None
        except httpx.RequestError as e:  # connection refused, reset, DNS: str(e) may name the URL, so redact
            raise self._fail(TransientError, f"{type(e).__name__}: {e}") from None
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
        text = f"HTTP {status}: {_error_text(data, resp.content)}"
        if status == 429:
            return self._fail(RateLimited, text, retry_after=retry_after(resp.headers, data))
        if status >= 500 or status in (408, 409):  # 409: OpenAI's "conflict, try again"; 529: Anthropic overloaded
            return self._fail(TransientError, text)
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

    def _usage(self, data: Any, name: str) -> dict:
        """The reply's usage object; absent or null is {} (every count 0)."""
        usage = lookup(data, name)
        if usage is not None and not isinstance(usage, dict):
            raise self.malformed(f"{name} is not an object")
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

    def _response(self, text: Any, input_tokens: int, output_tokens: int, limits: RateLimitInfo | None):
        if not isinstance(text, str):
            raise self.malformed("the text is not a string")
        if not text.strip():
            raise self._fail(TransientError, "empty reply (no text in the response)")
        return ChatResponse(text, input_tokens, output_tokens, limits)


def _split_system(request: ChatRequest) -> tuple[str | None, list[tuple[str, str]]]:
    system = [c for r, c in request.messages if r == "system"]
    return ("\n\n".join(system) if system else None), [(r, c) for r, c in request.messages if r != "system"]


# ---------------------------------------------------------------------------------------------------------
# The three APIs


class OpenAIProvider(_Provider):
    async def complete(self, request: ChatRequest) -> ChatResponse:
        data, limits = await self._post(f"{self.teacher.url}/chat/completions", self.auth(), self.body(request))
        return self.parse(data, limits)

    def auth(self) -> dict[str, str]:
        key = self.teacher.api_key()
        return {"authorization": f"Bearer {key}"} if key else {}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions body: sent as is, or as one line of a Batch API input file (gen/teachers/batch.py)."""
        return {
            "model": self.teacher.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        """A chat-completions reply (live, or a Batch API result line's body) -> ChatResponse or TransientError."""
        text = lookup(data, "choices", 0, "message", "content")
        if text is None:
            raise self.malformed("no choices[0].message.content")
        usage = self._usage(data, "usage")
        return self._response(text, self._count(usage, "prompt_tokens"), self._count(usage, "completion_tokens"),
                              limits)


class GeminiProvider(_Provider):
    async def complete(self, request: ChatRequest) -> ChatResponse:
        t, key = self.teacher, self.teacher.api_key()
        system, turns = _split_system(request)
        body: dict[str, Any] = {
            "contents": [{"role": "model" if r == "assistant" else "user", "parts": [{"text": c}]} for r, c in turns],
            "generationConfig": {
                "temperature": request.temperature,
                "topP": request.top_p,
                "maxOutputTokens": request.max_tokens,
            },
        }
        if system is not None:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        headers = {"x-goog-api-key": key} if key else {}  # a header, so the key never lands in a logged URL
        model = t.model.removeprefix("models/")
        data, limits = await self._post(f"{t.url}/models/{model}:generateContent", headers, body)
        return self.parse(data, limits)

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        parts = lookup(data, "candidates", 0, "content", "parts")
        if not isinstance(parts, list):
            if block := lookup(data, "promptFeedback", "blockReason"):
                # The same prompt is blocked again on every retry: fail fast, recorded as this teacher's error.
                raise self._fail(FatalError, f"prompt blocked ({block})")
            raise self.malformed("no candidates[0].content.parts")
        if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in parts):
            raise self.malformed("a part in candidates[0].content.parts is not an object with a text")
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))  # skip thinking summaries
        usage = self._usage(data, "usageMetadata")
        # Thinking tokens are billed as output tokens.
        output = self._count(usage, "candidatesTokenCount", "thoughtsTokenCount")
        return self._response(text, self._count(usage, "promptTokenCount"), output, limits)


class AnthropicProvider(_Provider):
    VERSION = "2023-06-01"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        t, key = self.teacher, self.teacher.api_key()
        system, turns = _split_system(request)
        body: dict[str, Any] = {
            "model": t.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": r, "content": c} for r, c in turns],
            "temperature": request.temperature,
        }
        if request.top_p != 1.0:  # recent Claude models reject temperature and top_p together; 1.0 is the default
            body["top_p"] = request.top_p
        if system is not None:
            body["system"] = system
        headers = {"anthropic-version": self.VERSION, **({"x-api-key": key} if key else {})}
        data, limits = await self._post(f"{t.url}/messages", headers, body)
        return self.parse(data, limits)

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        content = lookup(data, "content")
        if not isinstance(content, list):
            raise self.malformed("no content list")
        blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if not all(isinstance(b.get("text"), str) for b in blocks):
            raise self.malformed("a text block's text is not a string")
        usage = self._usage(data, "usage")
        # Prompt-cache reads and writes are input tokens too (billed at other rates; counted at the base rate here).
        input_tokens = self._count(usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        return self._response("".join(b["text"] for b in blocks), input_tokens, self._count(usage, "output_tokens"),
                              limits)


PROVIDERS: dict[str, type[_Provider]] = {
    "openai": OpenAIProvider, "gemini": GeminiProvider, "anthropic": AnthropicProvider,
}


def make_provider(teacher: Teacher, http: httpx.AsyncClient) -> ChatProvider:
    return PROVIDERS[teacher.provider](teacher, http)
