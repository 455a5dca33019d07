"""The offline committee's answer pipeline: what a local HTTP server that SIMULATES teacher LLM APIs answers
(simulator/server.py serves it: `fair teachers serve`).

It is a simulator for demos, tests and benchmarks, not a model: every response carries the header
`x-fair-simulator: 1`. It speaks three wire formats (simulator/formats.py), streaming included:

    OpenAI     POST /v1/chat/completions (or /chat/completions)      "stream": true -> server-sent events
    Gemini     POST /v1beta/models/{model}:generateContent           :streamGenerateContent?alt=sse
    Anthropic  POST /v1/messages                                     "stream": true -> server-sent events
    GET /health -> {"ok": true};  GET /v1/models (or /v1beta/models) lists the persona models
    OpenAI's Batch API: /v1/files, /v1/batches, ... (simulator/batch.py), done after --batch-delay-s

and answers as one of several personas (simulator/personas.py: sim-careful, sim-sloppy, sim-harsh) from the
benchmarks' gold solutions. Like a real API it enforces requests and tokens per minute per (key, model) over
sliding 60 s windows (429 with Retry-After and each API's rate-limit headers), reports prompt-cache reads on
repeated prefixes (simulator/api.py), and at set rates it sends what real APIs send when things go wrong:
faults drawn per attempt (5xx, or 529 for Anthropic; hangs; malformed JSON; empty replies), replies drawn per
body (refusals, thinking that spent the whole budget, truncation at max_tokens: billed like the real ones) and
an exhausted quota (after --quota-after requests of a key, or at a rate; live requests only). A keyless request
is the bucket "anonymous"; keys are bucket ids only and never logged. The HTTP side (Starlette on uvicorn, in a
thread of its own) is simulator/app.py, started by simulator/server.py; the command line simulator/cli.py.

A server may run for weeks: a connection that stalls (or idles) for socket_timeout_s is closed, the Batch API's
files are kept up to batch_store_mb (oldest dropped first), and a malformed request, live or in a batch, gets a
400 rather than a crashed handler or a batch left in progress.

Determinism: replies depend only on (seed, model, sha256 of the body); a fault is drawn from (seed, model,
body hash, attempt), where `attempt` counts how often this exact body arrived, so a retry can succeed and a
rerun of the same client sees the same sequence of faults. Refusals, spent thinking and truncations are drawn
per body: the same request is refused again, as a real model at temperature 0 would. A body with a temperature
above 0 is sampled as a real model samples it: its reply is drawn from (seed, model, body hash, attempt), a new
one at each arrival, and worded variously (simulator/personas.py); that is how `fair committee --samples` gets
distinct samples from an API that takes no seed (Anthropic's: its K requests are one body). A fresh server
draws the same sequence of replies for the same arrivals.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError
from simulator.api import Limiter, PromptCache, Window, tokens
from simulator.batch import BatchStore
from simulator.formats import (
    MALFORMED,
    SHAPE_ERRORS,
    UNREADABLE,
    Answer,
    Chat,
    Format,
    body,
    error_body,
    limit_headers,
    read_chat,
)
from simulator.personas import Persona, QuestionIndex, merge_personas
from simulator.replies import OUTCOMES, QUOTA, HttpReply, compose, thoughts
from simulator.stream import events

FAULTS = ("5xx", "hang", "malformed", "empty")
MAX_TRACKED = 1_000_000  # bodies whose attempts are counted


def draw(*parts: Any) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big"))


@dataclass
class Ticket:
    """An admitted request: it waits out `pause` (latency, a hang) on the route, then `write` answers it."""

    fmt: Format
    chat: Chat
    persona: Persona
    key: str
    body_sha: str
    log: dict[str, Any]
    headers: dict[str, str]
    event: list | None  # the rate limiter's record of it, settled with the reply's tokens
    fault: str | None
    pause: float


class Simulator:
    """The answer pipeline and its settings (simulator/server.py's OfflineServer serves it over HTTP).
    `personas` maps model names to Persona objects or to overrides of a built-in's fields ({"p_wrong": 0})."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rpm: int = 600, tpm: int = 1_000_000,
                 latency_ms: tuple[float, float] = (0, 0), p_5xx: float = 0, p_hang: float = 0, hang_s: float = 30,
                 p_malformed: float = 0, p_empty: float = 0, p_refusal: float = 0, p_thinking: float = 0,
                 p_truncate: float = 0, p_quota: float = 0, quota_after: int | None = None,
                 cache_min_tokens: int = 1024, cache_block_tokens: int = 128, seed: int = 0,
                 log_path: str | Path | None = None, data_dir: str | Path | None = None,
                 personas: dict[str, Any] | None = None, batch_delay_s: float = 1.0, batch_store_mb: float = 1024,
                 socket_timeout_s: float = 60, tasks: tuple[str, ...] = ()):
        self.fault_rates = dict(zip(FAULTS, (p_5xx, p_hang, p_malformed, p_empty), strict=True))
        self.outcome_rates = dict(zip(OUTCOMES, (p_refusal, p_thinking, p_truncate), strict=True))
        for kind, rates in (("fault", self.fault_rates), ("reply", self.outcome_rates)):
            if not all(0 <= p <= 1 for p in rates.values()) or sum(rates.values()) > 1:
                raise FairError(f"the {kind} rates {', '.join(f'p_{n}' for n in rates)} must each be in 0..1, "
                                "and together at most 1")
        if rpm < 1 or tpm < 1 or hang_s < 0 or batch_delay_s < 0 or not 0 <= latency_ms[0] <= latency_ms[1]:
            raise FairError("rpm and tpm must be >= 1, hang_s and batch_delay_s >= 0, and latency_ms MIN MAX "
                            "with 0 <= MIN <= MAX")
        if not 0 <= p_quota <= 1 or (quota_after is not None and quota_after < 0):
            raise FairError(f"p_quota must be in 0..1 and quota_after >= 0, got {p_quota} and {quota_after}")
        if cache_min_tokens < 0 or cache_block_tokens < 1:
            raise FairError("cache_min_tokens must be >= 0 and cache_block_tokens >= 1")
        if not 0 <= port <= 65535:
            raise FairError(f"port must be in 0..65535 (0 picks a free one), got {port}")
        if batch_store_mb <= 0 or socket_timeout_s <= 0:
            raise FairError(f"batch_store_mb and socket_timeout_s must be positive, got {batch_store_mb} and "
                            f"{socket_timeout_s}")
        self.host, self.requested_port, self.seed, self.hang_s = host, port, seed, hang_s
        self.socket_timeout_s = socket_timeout_s  # a client that stalls or idles longer is disconnected
        self.latency_ms = (float(latency_ms[0]), float(latency_ms[1]))
        self.p_quota, self.quota_after = p_quota, quota_after
        self.limiter = Limiter(rpm, tpm)
        self.cache = PromptCache(cache_min_tokens, cache_block_tokens)
        self.personas: dict[str, Persona] = merge_personas(personas)
        self.index = QuestionIndex.build(data_dir, tasks)
        self.counters = {"completed": 0, "rate_limited": 0, "errors": 0, **{f"fault_{f}": 0 for f in FAULTS},
                         **{o: 0 for o in (*OUTCOMES, "quota")}, "batch_files": 0, "batches": 0, "batch_lines": 0,
                         "batch_line_errors": 0}
        self.attempts: dict[str, int] = {}  # "model|body sha256" -> times received; oldest forgotten past a bound
        self.key_requests: dict[str, int] = {}  # key -> live chat requests, for quota_after
        self.lock = threading.Lock()
        self.batches = BatchStore(self.answer, self.count, batch_delay_s, int(batch_store_mb * 2**20))
        self.log_path, self.log_file = log_path, None

    def summary(self) -> str:
        c = self.counters
        faults = ", ".join(f"{f} {c[f'fault_{f}']}" for f in FAULTS)
        return (f"offline committee: {c['completed']} completed, {c['rate_limited']} rate-limited (429), "
                f"faults: {faults}, {c['errors']} other errors; replies: refusal {c['refusal']}, thinking "
                f"{c['thinking']}, truncate {c['truncate']}, quota {c['quota']}; {c['batches']} batches of "
                f"{c['batch_lines']} requests ({c['batch_line_errors']} failed)")

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line per request, built from explicit fields only: never a key, a header or a URL."""
        with self.lock:
            if self.log_file:
                self.log_file.write(orjson.dumps({"t": round(time.time(), 3), **record}).decode() + "\n")
                self.log_file.flush()

    def attempt(self, model: str, body_sha: str) -> int:
        key = f"{model}|{body_sha}"
        with self.lock:
            n = self.attempts[key] = self.attempts.pop(key, 0) + 1  # re-inserted: the dict stays in LRU order
            if len(self.attempts) > MAX_TRACKED:
                del self.attempts[next(iter(self.attempts))]
            return n

    # --- the one answer pipeline: admit (every refusal), then write (after the route's wait) ------------------

    def answer(self, raw: bytes, *, batch: str) -> HttpReply:
        """A Batch API line: no limit, no latency, no quota; any fault fails it with a 500."""
        ticket = self.admit(raw, "openai", batch=batch)
        return ticket if isinstance(ticket, HttpReply) else self.write(ticket)

    def admit(self, raw: bytes, fmt: Format, *, gemini_model: str | None = None, gemini_stream: bool = False,
              key: str = "anonymous", batch: str | None = None) -> HttpReply | Ticket:
        """Read the body (400), find the persona (404), count the attempt, check the quota (OpenAI and Gemini
        429, Anthropic 400), admit it past the rate limit (429), draw a fault (5xx). Every refusal is logged;
        a Ticket is what was admitted. A live request (`batch` None) is charged to `key`'s bucket."""
        live = batch is None
        try:
            chat = read_chat(raw, fmt, gemini_model, gemini_stream)
        except SHAPE_ERRORS:
            return self.refuse(fmt, 400, UNREADABLE, {} if live else {"batch": batch})
        body_sha = hashlib.sha256(raw).hexdigest()
        log: dict[str, Any] = {"model": chat.model, "body_sha256": body_sha, **({} if live else {"batch": batch})}
        if (persona := self.personas.get(chat.model)) is None:
            known = ", ".join(sorted(self.personas))
            return self.refuse(fmt, 404, f"The model `{chat.model}` does not exist (simulated models: {known})",
                               log, code="model_not_found")
        log["attempt"] = attempt = self.attempt(chat.model, body_sha)
        headers, event = {}, None
        if live:
            if self.out_of_quota(key, chat.model, body_sha, attempt):
                status, message, kind = QUOTA[fmt]
                return self.refuse(fmt, status, message, log | {"outcome": "quota"}, kind=kind, code=kind)
            wait, window, event = self.limiter.admit(key, chat.model, tokens(chat.text))
            headers = limit_headers(fmt, window)
            if wait is not None:
                return self.rate_limited(fmt, chat.model, wait, window, log)
        fault = self.fault(chat.model, body_sha, attempt)
        if fault == "5xx" or (fault and not live):
            status = self.error_status(fmt, chat.model, body_sha, attempt) if live else 500
            return self.refuse(fmt, status, "The server had an error while processing your request (simulated).",
                               log | {"fault": fault}, kind="server_error")
        # The body's first draw (write draws after it); a draw costs about 10 us, so none is taken without latency.
        latency = draw(self.seed, chat.model, body_sha).uniform(*self.latency_ms) / 1000 if self.latency_ms[1] else 0.0
        pause = (latency + (self.hang_s if fault == "hang" else 0.0)) if live else 0.0
        return Ticket(fmt, chat, persona, key, body_sha, log, headers, event, fault, pause)

    def write(self, t: Ticket) -> HttpReply:
        """Compose the persona's reply (or the drawn refusal, spent thinking, truncation), read the prompt cache,
        settle the rate limit, log it and render it in the request's format."""
        rng = draw(self.seed, t.chat.model, t.body_sha)
        rng.random()  # the latency's draw (admit): the reply's draws come after it, on the live path and in a batch
        if t.chat.temperature > 0:  # sampled: each arrival of the body its own draw (the module docstring)
            rng = draw(self.seed, t.chat.model, t.body_sha, "sample", t.log["attempt"])
        outcome = self.outcome(t.chat.model, t.body_sha)
        thought = 0
        if t.chat.thinking_budget and not outcome:
            thought = thoughts(t.chat, draw(self.seed, "thoughts", t.chat.model, t.body_sha))
        text, finish, thoughts_tokens, kind = compose(self.index, t.fmt, t.chat, t.persona, outcome, rng, thought)
        if t.fault == "empty":
            text, finish, thoughts_tokens = "", "stop", 0
        read, written = self.prompt_cache(t)
        answer = Answer(t.body_sha[:24], t.chat.model, text, finish, tokens(t.chat.text),
                        (tokens(text) if text else 0) + thoughts_tokens, thoughts_tokens, read,
                        written if t.chat.breakpoints is not None else 0)  # only Anthropic bills cache writes
        if t.event is not None:
            self.limiter.settle(t.key, t.chat.model, t.event, answer.completion_tokens)
        self.log({"status": 200, **t.log, "kind": kind, "prompt_tokens": answer.prompt_tokens,
                  "completion_tokens": answer.completion_tokens, **({"cached_tokens": read} if read else {}),
                  **({"fault": t.fault} if t.fault else {}), **({"outcome": outcome} if outcome else {})})
        stream = events(t.fmt, answer, t.chat.include_usage) if t.chat.stream else None
        if t.fault == "malformed":  # cut off mid-JSON: a stream after half its events, with no end
            stream = stream[: len(stream) // 2] + [b"data: " + MALFORMED + b"\n\n"] if stream else None
            return HttpReply(200, MALFORMED, t.headers, t.fault, outcome, stream)
        return HttpReply(200, body(t.fmt, answer), t.headers, t.fault, outcome, stream)

    def prompt_cache(self, t: Ticket) -> tuple[int, int]:
        """(tokens read, tokens written): Anthropic's cache at its breakpoints, each looked up at the 20 block
        boundaries before it too; the automatic caches of OpenAI and Gemini at every block."""
        scope, marks = f"{t.key}|{t.chat.model}", t.chat.breakpoints
        if marks is None:
            return self.cache.use(scope, t.chat.text, self.cache.automatic(t.chat.text))
        bounds = t.chat.boundaries
        reads = {b for mark in marks for b in [b for b in bounds if b <= mark][-20:]}
        return self.cache.use(scope, t.chat.text, list(marks), sorted(reads | set(marks)))

    def refuse(self, fmt: Format, status: int, message: str, log: dict[str, Any],
               kind: str = "invalid_request_error", code: str | None = None,
               headers: dict[str, str] | None = None) -> HttpReply:
        """An error reply in the request's wire format, logged with `log` (never a key: see log)."""
        self.log({"status": status, **log})
        return HttpReply(status, error_body(fmt, status, message, kind, code), headers or {}, log.get("fault"),
                     log.get("outcome"))

    def rate_limited(self, fmt: Format, model: str, wait: float, window: Window, log: dict[str, Any]) -> HttpReply:
        wait = max(wait, 0.001)
        retry = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
        return self.refuse(fmt, 429, f"Rate limit reached for {model} (simulated): retry after {wait:.3f}s", log,
                           kind="requests", code="rate_limit_exceeded", headers=retry | limit_headers(fmt, window))

    def tally(self, reply: HttpReply) -> None:
        """The live routes' counters (a batch counts its lines itself)."""
        if reply.outcome:
            self.count(reply.outcome)
            if reply.outcome == "quota":
                return
        self.count("rate_limited" if reply.status == 429 else f"fault_{reply.fault}"
                   if reply.fault else "completed" if reply.status == 200 else "errors")

    def out_of_quota(self, key: str, model: str, body_sha: str, attempt: int) -> bool:
        with self.lock:
            n = self.key_requests[key] = self.key_requests.get(key, 0) + 1
        if self.quota_after is not None and n > self.quota_after:
            return True
        return bool(self.p_quota) and draw(self.seed, "quota", model, body_sha, attempt).random() < self.p_quota

    def error_status(self, fmt: Format, model: str, body_sha: str, attempt: int) -> int:
        return draw(self.seed, "status", model, body_sha, attempt).choice((500, 529 if fmt == "anthropic" else 503))

    def fault(self, model: str, body_sha: str, attempt: int) -> str | None:
        return pick(draw(self.seed, "fault", model, body_sha, attempt).random(), self.fault_rates)

    def outcome(self, model: str, body_sha: str) -> str | None:
        if not any(self.outcome_rates.values()):
            return None
        return pick(draw(self.seed, "outcome", model, body_sha).random(), self.outcome_rates)


def pick(u: float, rates: dict[str, float]) -> str | None:
    """The name whose slice of [0, 1) holds u, the slices laid end to end in order; None past them all."""
    edge = 0.0
    for name, p in rates.items():
        edge += p
        if u < edge:
            return name
    return None
