"""Provider wire formats: one small class per API that turns a ChatRequest into an HTTP call and back.

A provider makes only the raw call and maps every failure onto three exception types; the shared wrapper
(gen/client.py) owns the cache, rate limits, retries and accounting.

    OpenAIProvider     POST {url}/chat/completions              any OpenAI-compatible server (DeepInfra,
                                                                Mistral, Together, vllm serve, llama.cpp)
    GeminiProvider     POST {url}/models/{model}:generateContent key in x-goog-api-key, never in the URL
    AnthropicProvider  POST {url}/messages                      x-api-key, anthropic-version: 2023-06-01

Failures: HTTP 429 -> RateLimited(retry_after); 5xx, 408, 409, timeouts, connection errors, invalid JSON,
missing fields, empty text -> TransientError; other 4xx -> FatalError. Messages are built from the teacher's
name, the status and the provider's error text only (never from the URL or headers), and then redacted.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson

from fair.gen.keys import redact

if TYPE_CHECKING:
    from fair.gen.teachers import Teacher


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
class RateLimitInfo:
    """What the provider's rate-limit headers said on the latest reply (None = header absent)."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None  # seconds from now until the request budget refills
    reset_tokens_s: float | None = None


@dataclass(frozen=True)
class ChatResponse:
    text: str
    input_tokens: int
    output_tokens: int
    limits: RateLimitInfo | None = field(default=None, compare=False)  # not cached: only for the limiter
    batch: bool = False  # answered through OpenAI's Batch API, billed at half price (gen/batch.py)


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
# Header parsing

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
MAX_ERROR_CHARS = 300


def _seconds(value: str, scale: float = 1.0) -> float | None:
    """A plain number of seconds (or milliseconds with scale=1e-3); None unless finite."""
    try:
        x = float(value) * scale
    except ValueError:
        return None
    return max(x, 0.0) if math.isfinite(x) else None


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "120ms", "1h2m3.5s") or plain seconds ("1.5") -> seconds."""
    if not value:
        return None
    value = value.strip()
    if (plain := _seconds(value)) is not None:
        return plain
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _seconds_until(stamp: str, now: float) -> float | None:
    """An RFC 3339 timestamp (Anthropic's resets) or an HTTP date (Retry-After) -> seconds from `now`."""
    try:
        when = datetime.fromisoformat(stamp.strip()).timestamp()
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(stamp).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
    return max(when - now, 0.0)


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """retry-after-ms (preferred, OpenAI) or Retry-After (seconds or an HTTP date) -> seconds."""
    now = time.time() if now is None else now
    if (ms := headers.get("retry-after-ms")) and (seconds := _seconds(ms, 1e-3)) is not None:
        return seconds
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    return seconds if seconds is not None else _seconds_until(value, now)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def parse_limits(headers: httpx.Headers, now: float | None = None) -> RateLimitInfo | None:
    """OpenAI-style x-ratelimit-* headers (durations) or Anthropic's anthropic-ratelimit-* (RFC 3339 times)."""
    now = time.time() if now is None else now
    if "anthropic-ratelimit-requests-remaining" in headers or "anthropic-ratelimit-tokens-remaining" in headers:
        h = "anthropic-ratelimit-"
        reset_req, reset_tok = headers.get(h + "requests-reset"), headers.get(h + "tokens-reset")
        return RateLimitInfo(
            _int(headers.get(h + "requests-remaining")), _int(headers.get(h + "tokens-remaining")),
            _seconds_until(reset_req, now) if reset_req else None,
            _seconds_until(reset_tok, now) if reset_tok else None,
        )
    if any(k.startswith("x-ratelimit-") for k in headers):
        return RateLimitInfo(
            _int(headers.get("x-ratelimit-remaining-requests")), _int(headers.get("x-ratelimit-remaining-tokens")),
            parse_duration(headers.get("x-ratelimit-reset-requests")),
            parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )
    return None


def _retry_after_from_limits(limits: RateLimitInfo | None) -> float | None:
    """Without Retry-After: wait for the exhausted budget's reset, else the sooner of the two resets."""
    if limits is None:
        return None
    exhausted = [r for n, r in ((limits.remaining_requests, limits.reset_requests_s),
                                (limits.remaining_tokens, limits.reset_tokens_s)) if n == 0 and r is not None]
    if exhausted:
        return max(exhausted)
    resets = [r for r in (limits.reset_requests_s, limits.reset_tokens_s) if r is not None]
    return min(resets) if resets else None


def _gemini_retry_delay(data: Any) -> float | None:
    """Gemini puts its wait in the 429 body: error.details[].retryDelay = "17s" (google.rpc.RetryInfo)."""
    try:
        for detail in data["error"]["details"]:
            if str(detail.get("@type", "")).endswith("RetryInfo"):
                return parse_duration(detail.get("retryDelay"))
    except (KeyError, TypeError, AttributeError):
        pass
    return None


def _error_text(data: Any, raw: bytes) -> str:
    """The provider's own error message ({"error": {"message": ...}} in all three APIs), else the raw body."""
    message = None
    if isinstance(data, dict):
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
    text = str(message) if message else raw.decode("utf-8", "replace")
    return " ".join(text.split())  # cut to length in _Provider._fail, after redaction: a cut key is no key


# ---------------------------------------------------------------------------------------------------------
# The shared HTTP call


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
        """The error, redacted before it is cut to length (a key cut in two would escape redaction)."""
        reason = redact(reason, self.teacher.api_keys())
        reason = reason[:MAX_ERROR_CHARS] + ("..." if len(reason) > MAX_ERROR_CHARS else "")
        return cls(f"{self.teacher.name}: {reason}", **kw)

    async def send(self, method: str, url: str, headers: dict[str, str], stream: bool = False,
                   **kwargs: Any) -> httpx.Response:
        """One HTTP call with the teacher's timeout and extra headers; a reply below 400 is returned, transport
        failures and HTTP errors raise RateLimited, TransientError or FatalError (also used by gen/batch.py).
        With stream=True a good reply's body is left unread, for the caller to iterate and close."""
        t = self.teacher
        request = self.http.build_request(method, url, headers={**headers, **t.extra_headers}, timeout=t.timeout_s,
                                          **kwargs)
        try:
            resp = await self.http.send(request, stream=stream)
            if resp.status_code >= 400 and stream:
                await resp.aread()  # the error text; reading to the end also closes it
        except httpx.TimeoutException as e:
            raise self._fail(TransientError, f"timed out after {t.timeout_s:g} s ({type(e).__name__})") from None
        except httpx.RequestError as e:  # connection refused, reset, DNS: str(e) may name the URL, so redact
            raise self._fail(TransientError, f"{type(e).__name__}: {e}") from None
        status = resp.status_code
        if status < 400:
            return resp
        try:
            data = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            data = None
        if status == 429:
            now = time.time()
            retry_after = parse_retry_after(resp.headers, now)
            if retry_after is None:
                retry_after = _gemini_retry_delay(data)
            if retry_after is None:
                retry_after = _retry_after_from_limits(parse_limits(resp.headers, now))
            raise self._fail(RateLimited, f"HTTP 429: {_error_text(data, resp.content)}", retry_after=retry_after)
        if status >= 500 or status in (408, 409):  # 409: OpenAI's "conflict, try again"; 529: Anthropic overloaded
            raise self._fail(TransientError, f"HTTP {status}: {_error_text(data, resp.content)}")
        raise self._fail(FatalError, f"HTTP {status}: {_error_text(data, resp.content)}")

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

    def _response(self, text: Any, input_tokens: Any, output_tokens: Any, limits: RateLimitInfo | None):
        if not isinstance(text, str) or not text.strip():
            raise self._fail(TransientError, "empty reply (no text in the response)")
        # Usage missing (some local servers) counts as 0 rather than a retry: the text is good and paid for.
        return ChatResponse(text, int(input_tokens or 0), int(output_tokens or 0), limits)


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
        """The chat-completions body: sent as is, or as one line of a Batch API input file (gen/batch.py)."""
        return {
            "model": self.teacher.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }

    def parse(self, data: dict, limits: RateLimitInfo | None = None) -> ChatResponse:
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._fail(TransientError, "malformed reply: no choices[0].message.content") from None
        usage = data.get("usage") or {}
        return self._response(text, usage.get("prompt_tokens"), usage.get("completion_tokens"), limits)


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
        try:
            parts = data["candidates"][0]["content"]["parts"]
            text = "".join(p.get("text", "") for p in parts if not p.get("thought"))  # skip thinking summaries
        except (KeyError, IndexError, TypeError, AttributeError):
            if block := (data.get("promptFeedback") or {}).get("blockReason"):
                # The same prompt is blocked again on every retry: fail fast, recorded as this teacher's error.
                raise self._fail(FatalError, f"prompt blocked ({block})") from None
            raise self._fail(TransientError, "malformed reply: no candidates[0].content.parts") from None
        usage = data.get("usageMetadata") or {}
        # Thinking tokens are billed as output tokens.
        output = (usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0)
        return self._response(text, usage.get("promptTokenCount"), output, limits)


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
        content = data.get("content")
        if not isinstance(content, list):
            raise self._fail(TransientError, "malformed reply: no content list")
        text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        usage = data.get("usage") or {}
        # Prompt-cache reads and writes are input tokens too (billed at other rates; counted at the base rate here).
        input_tokens = sum(usage.get(k) or 0 for k in
                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        return self._response(text, input_tokens, usage.get("output_tokens"), limits)


PROVIDERS: dict[str, type[_Provider]] = {
    "openai": OpenAIProvider, "gemini": GeminiProvider, "anthropic": AnthropicProvider,
}


def make_provider(teacher: Teacher, http: httpx.AsyncClient) -> ChatProvider:
    return PROVIDERS[teacher.provider](teacher, http)
