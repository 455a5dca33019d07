"""What the offline simulator keeps per key, as the APIs it imitates do: rate limits and a prompt cache.

Limits: requests and tokens per minute per (key, model) over sliding 60 s windows; a `Window` is what a reply's
rate-limit headers report (simulator/formats.py writes them in each API's names). The prompt cache: a prompt
whose prefix this (key, model) sent before reads that prefix from the cache, as OpenAI's and Gemini's automatic
caches and Anthropic's cache_control breakpoints do. The one answer pipeline (Simulator in
simulator/simulator.py) uses both for the live routes and the Batch API alike.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0
MAX_TRACKED = 1_000_000  # prompt prefixes remembered by the cache; oldest forgotten first


def tokens(text: str) -> int:
    return len(text) // 4 + 1


def prefix_tokens(chars: int) -> int:
    """A prefix's tokens: never more than tokens() of any text that starts with it."""
    return chars // 4


def duration(seconds: float) -> str:
    """OpenAI's reset format: "120ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    secs_text = f"{round(secs, 3):g}s"
    return f"{int(minutes)}m{secs_text}" if minutes else secs_text


@dataclass(frozen=True)
class Window:
    """One (key, model)'s last minute as a reply reports it."""

    rpm: int
    tpm: int
    requests: int  # admitted in the window
    input_tokens: int
    output_tokens: int
    reset_s: float  # until the oldest admitted request leaves the window

    @property
    def remaining_requests(self) -> int:
        return max(0, self.rpm - self.requests)

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.tpm - self.input_tokens - self.output_tokens)


@dataclass
class Bucket:
    """One (key, model)'s admitted requests in the last minute, as [time, input tokens, output tokens] events."""

    events: deque = field(default_factory=deque)
    input: int = 0
    output: int = 0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            _, n_in, n_out = self.events.popleft()
            self.input -= n_in
            self.output -= n_out


class Limiter:
    """Requests and tokens per minute per (key, model), over sliding 60 s windows, as real APIs enforce them.
    A request is charged its prompt on admission and its completion once written (max_tokens is not reserved,
    so one request can never be too large to ever pass)."""

    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.lock = threading.Lock()

    def admit(self, key: str, model: str, cost: int) -> tuple[float | None, Window, list | None]:
        """(None, window, event) when admitted, else (seconds to wait, window, None)."""
        now = time.monotonic()
        with self.lock:
            b = self.buckets.setdefault((key, model), Bucket())
            b.expire(now)
            wait, event, used = None, None, b.input + b.output
            if len(b.events) >= self.rpm:
                wait = b.events[len(b.events) - self.rpm][0] + WINDOW_S - now
            elif used + cost > self.tpm:
                excess, wait = used + cost - self.tpm, WINDOW_S  # a request over the whole tpm waits a window
                for t, n_in, n_out in b.events:
                    excess -= n_in + n_out
                    if excess <= 0:
                        wait = t + WINDOW_S - now
                        break
            else:
                event = [now, cost, 0]
                b.events.append(event)
                b.input += cost
            reset = b.events[0][0] + WINDOW_S - now if b.events else 0.0
            return wait, Window(self.rpm, self.tpm, len(b.events), b.input, b.output, reset), event

    def settle(self, key: str, model: str, event: list, output: int) -> None:
        with self.lock:
            b = self.buckets.get((key, model))
            # Still in the window? Events are in time order, so it is iff it is not older than the first.
            if b is not None and b.events and event[0] >= b.events[0][0]:
                b.output += output - event[2]
                event[2] = output


class PromptCache:
    """Prompt prefixes each (key, model) sent, by sha256: what a later prompt can read from the cache.
    A prompt names the prefixes it writes (character offsets where they end: every block_tokens from
    min_tokens on for the automatic caches, the cache_control breakpoints for Anthropic's) and those it may read
    (the same, or for Anthropic also the block boundaries up to 20 blocks before a breakpoint); the longest
    prefix read that was written before is a hit."""

    def __init__(self, min_tokens: int, block_tokens: int):
        self.min_tokens, self.block_tokens = min_tokens, block_tokens
        self.seen: dict[bytes, None] = {}  # insertion-ordered: the oldest is forgotten first
        self.lock = threading.Lock()

    def automatic(self, text: str) -> list[int]:
        """The automatic caches' prefix ends: min_tokens (at least one block), then every block_tokens."""
        step = self.block_tokens * 4
        return list(range(max(self.min_tokens * 4, step), len(text) + 1, step))

    def use(self, scope: str, text: str, writes: list[int], reads: list[int] | None = None) -> tuple[int, int]:
        """(tokens read from the cache, tokens of the longest prefix written that was not there before)."""
        writes, reads = self.cacheable(writes, text), self.cacheable(writes if reads is None else reads, text)
        if not writes and not reads:
            return 0, 0
        digest = {e: hashlib.sha256(f"{scope}\0{text[:e]}".encode()).digest() for e in {*writes, *reads}}
        with self.lock:
            hits = [e for e in reads if digest[e] in self.seen]
            for e in writes:
                self.seen[digest[e]] = self.seen.pop(digest[e], None)
            while len(self.seen) > MAX_TRACKED:
                del self.seen[next(iter(self.seen))]
        read = prefix_tokens(max(hits)) if hits else 0
        return read, max(0, prefix_tokens(max(writes)) - read) if writes else 0

    def cacheable(self, ends: list[int], text: str) -> list[int]:
        return [e for e in ends if prefix_tokens(e) >= self.min_tokens and 0 < e <= len(text)]


def bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
