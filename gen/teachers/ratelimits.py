"""Rate-limit headers and 429 waits, as the three APIs send them: remaining budgets, resets, Retry-After.

    OpenAI     x-ratelimit-remaining-{requests,tokens}, x-ratelimit-reset-* as durations ("6m0s"),
               retry-after-ms and Retry-After on a 429 (Azure OpenAI sends the same headers)
    Anthropic  anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining and -reset (RFC 3339
               times): input and output tokens are limited apart (ITPM, OTPM), tokens is the tightest of them
    Gemini     no headers: the 429 body's error.details[].retryDelay ("17s")

Every parser returns None for what is absent or unreadable: a reply's headers never raise. A negative remaining
count (Azure sends x-ratelimit-remaining-tokens: -1) and a reset of zero or less (Azure's "0", a time already
past) are no information, None, never "exhausted" or "retry after 0 s": read as such they would send the same
request again at once, in a loop.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx


@dataclass(frozen=True)
class RateLimitInfo:
    """What the provider's rate-limit headers said on the latest reply (None = header absent)."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None  # seconds from now until the request budget refills
    reset_tokens_s: float | None = None
    remaining_input_tokens: int | None = None  # Anthropic's input- and output-token budgets, limited apart
    remaining_output_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    reset_output_tokens_s: float | None = None

    def budgets(self) -> tuple[tuple[int | None, float | None], ...]:
        """(remaining, reset) of requests, tokens, input tokens and output tokens."""
        return ((self.remaining_requests, self.reset_requests_s), (self.remaining_tokens, self.reset_tokens_s),
                (self.remaining_input_tokens, self.reset_input_tokens_s),
                (self.remaining_output_tokens, self.reset_output_tokens_s))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _seconds(value: str, scale: float = 1.0) -> float | None:
    """A plain number of seconds (or milliseconds with scale=1e-3); None unless finite."""
    try:
        x = float(value) * scale
    except ValueError:
        return None
    return max(x, 0.0) if math.isfinite(x) else None


def parse_duration(value: Any) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "120ms", "1h2m3.5s") or plain seconds ("1.5") -> seconds."""
    if not isinstance(value, str) or not value.strip():
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


def _remaining(value: str | None) -> int | None:
    """A remaining count; negative (Azure's -1) or unreadable is None."""
    try:
        n = int(float(value)) if value is not None else None
    except (ValueError, OverflowError):
        return None
    return n if n is not None and n >= 0 else None


def _reset(seconds: float | None) -> float | None:
    """A reset in seconds; zero or less is None (see the module docstring)."""
    return seconds if seconds is not None and seconds > 0 else None


def parse_limits(headers: httpx.Headers, now: float | None = None) -> RateLimitInfo | None:
    """OpenAI-style x-ratelimit-* headers (durations) or Anthropic's anthropic-ratelimit-* (RFC 3339 times)."""
    now = time.time() if now is None else now
    if any(k.startswith("anthropic-ratelimit-") for k in headers):
        budgets = {}
        for name in ("requests", "tokens", "input_tokens", "output_tokens"):
            h = f"anthropic-ratelimit-{name.replace('_', '-')}"
            stamp = headers.get(f"{h}-reset")
            budgets[f"remaining_{name}"] = _remaining(headers.get(f"{h}-remaining"))
            budgets[f"reset_{name}_s"] = _reset(_seconds_until(stamp, now) if stamp else None)
        return RateLimitInfo(**budgets)
    if any(k.startswith("x-ratelimit-") for k in headers):
        return RateLimitInfo(
            _remaining(headers.get("x-ratelimit-remaining-requests")),
            _remaining(headers.get("x-ratelimit-remaining-tokens")),
            _reset(parse_duration(headers.get("x-ratelimit-reset-requests"))),
            _reset(parse_duration(headers.get("x-ratelimit-reset-tokens"))),
        )
    return None


def _retry_after_from_limits(limits: RateLimitInfo | None) -> float | None:
    """Without Retry-After: wait for the exhausted budget's reset, else the sooner of the two resets."""
    if limits is None:
        return None
    exhausted = [r for n, r in limits.budgets() if n == 0 and r is not None]
    if exhausted:
        return max(exhausted)
    resets = [r for _, r in limits.budgets() if r is not None]
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


def retry_after(headers: httpx.Headers, data: Any, now: float | None = None) -> float | None:
    """How long a 429 says to wait: Retry-After, else Gemini's retryDelay, else the exhausted budget's reset."""
    now = time.time() if now is None else now
    seconds = parse_retry_after(headers, now)
    if seconds is None:
        seconds = _gemini_retry_delay(data)
    if seconds is None:
        seconds = _retry_after_from_limits(parse_limits(headers, now))
    return seconds
