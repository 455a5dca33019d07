"""The offline committee: a local HTTP server that SIMULATES teacher LLM APIs (`fair teachers serve`).

It is a simulator for demos, tests and benchmarks, not a model: every response carries the header
`x-fair-simulator: 1`. It speaks two wire formats,

    OpenAI   POST /v1/chat/completions (or /chat/completions)      key: Authorization: Bearer KEY
    Gemini   POST /v1beta/models/{model}:generateContent           key: x-goog-api-key or ?key=
    GET /health -> {"ok": true};  GET /v1/models (or /v1beta/models) lists the persona models
    OpenAI's Batch API: /v1/files, /v1/batches, ... (gen/offline/batch.py), done after --batch-delay-s

and answers as one of several personas (gen/offline/personas.py: sim-careful, sim-sloppy, sim-harsh) from the
benchmarks' gold solutions. Like a real API it enforces requests and tokens per minute per (key, model) over
sliding 60 s windows (429 with Retry-After), and it injects faults at set rates: 5xx, hangs, malformed JSON,
empty replies. A keyless request is the bucket "anonymous"; keys are bucket ids only and never logged. The wire
formats and the limiter live in gen/offline/api.py, the HTTP routes in gen/offline/http.py, the command line
in gen/offline/cli.py.

A server may run for weeks: a connection that stalls (or idles) for socket_timeout_s is closed, the Batch API's
files are kept up to batch_store_mb (oldest dropped first), and a malformed request, live or in a batch, gets a
400 rather than a crashed handler or a batch left in progress.

Determinism: replies depend only on (seed, model, sha256 of the body); a fault is drawn from (seed, model,
body hash, attempt), where `attempt` counts how often this exact body arrived, so a retry can succeed and a
rerun of the same client sees the same sequence of faults.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError
from gen.offline.api import (
    MALFORMED,
    SHAPE_ERRORS,
    UNREADABLE,
    Limiter,
    error_body,
    read_chat,
    response,
    tokens,
)
from gen.offline.batch import BatchStore
from gen.offline.http import Handler, Server
from gen.offline.personas import Kind, Persona, QuestionIndex, classify, merge_personas, write_reply

FAULTS = ("5xx", "hang", "malformed", "empty")
MAX_TRACKED = 1_000_000  # bodies whose attempts are counted


def draw(*parts: Any) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big"))


@dataclass(frozen=True)
class Reply:
    """The simulator's answer to one chat request, live or a batch line: what the route sends or files."""

    status: int
    body: dict | bytes  # bytes: the malformed fault's cut-off JSON
    headers: dict[str, str] = field(default_factory=dict)  # rate limits and retry-after (live routes only)
    fault: str | None = None


class OfflineServer:
    """The simulator in a background thread: `with OfflineServer(port=0) as s: httpx.post(s.url + ...)`.
    `personas` maps model names to Persona objects or to overrides of a built-in's fields ({"p_wrong": 0})."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rpm: int = 600, tpm: int = 1_000_000,
                 latency_ms: tuple[float, float] = (0, 0), p_5xx: float = 0, p_hang: float = 0, hang_s: float = 30,
                 p_malformed: float = 0, p_empty: float = 0, seed: int = 0, log_path: str | Path | None = None,
                 data_dir: str | Path | None = None, personas: dict[str, Any] | None = None,
                 batch_delay_s: float = 1.0, batch_store_mb: float = 1024, socket_timeout_s: float = 60):
        self.fault_rates = dict(zip(FAULTS, (p_5xx, p_hang, p_malformed, p_empty), strict=True))
        if not all(0 <= p <= 1 for p in self.fault_rates.values()) or sum(self.fault_rates.values()) > 1:
            raise FairError("the fault rates p_5xx, p_hang, p_malformed, p_empty must each be in 0..1, "
                            "and together at most 1")
        if rpm < 1 or tpm < 1 or hang_s < 0 or batch_delay_s < 0 or not 0 <= latency_ms[0] <= latency_ms[1]:
            raise FairError("rpm and tpm must be >= 1, hang_s and batch_delay_s >= 0, and latency_ms MIN MAX "
                            "with 0 <= MIN <= MAX")
        if not 0 <= port <= 65535:
            raise FairError(f"port must be in 0..65535 (0 picks a free one), got {port}")
        if batch_store_mb <= 0 or socket_timeout_s <= 0:
            raise FairError(f"batch_store_mb and socket_timeout_s must be positive, got {batch_store_mb} and "
                            f"{socket_timeout_s}")
        self.host, self.requested_port, self.seed, self.hang_s = host, port, seed, hang_s
        self.socket_timeout_s = socket_timeout_s  # a client that stalls or idles longer is disconnected
        self.latency_ms = (float(latency_ms[0]), float(latency_ms[1]))
        self.limiter = Limiter(rpm, tpm)
        self.personas: dict[str, Persona] = merge_personas(personas)
        self.index = QuestionIndex.build(data_dir)
        self.counters = {"completed": 0, "rate_limited": 0, "errors": 0, **{f"fault_{f}": 0 for f in FAULTS},
                         "batch_files": 0, "batches": 0, "batch_lines": 0, "batch_line_errors": 0}
        self.batches = BatchStore(self, batch_delay_s, int(batch_store_mb * 2**20))
        self.attempts: dict[str, int] = {}  # "model|body sha256" -> times received; oldest forgotten past a bound
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.log_path, self.log_file = log_path, None
        self.httpd: Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> OfflineServer:
        if self.httpd is None:
            try:
                self.httpd = Server((self.host, self.requested_port), Handler)
            except OSError as e:
                raise FairError(f"cannot listen on {self.host}:{self.requested_port}: {e.strerror or e}") from None
            self.httpd.sim = self
            if self.log_path:
                self.log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
            self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True,
                                           name="offline-committee")
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers that sleep in a latency or a hang
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            if self.thread:
                self.thread.join(timeout=5)
        with self.lock:
            if self.log_file:
                self.log_file.close()
                self.log_file = None

    def __enter__(self) -> OfflineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1] if self.httpd else self.requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def summary(self) -> str:
        c = self.counters
        faults = ", ".join(f"{f} {c[f'fault_{f}']}" for f in FAULTS)
        return (f"offline committee: {c['completed']} completed, {c['rate_limited']} rate-limited (429), "
                f"faults: {faults}, {c['errors']} other errors; {c['batches']} batches of {c['batch_lines']} "
                f"requests ({c['batch_line_errors']} failed)")

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

    def reply_draws(self, model: str, body_sha: str) -> tuple[random.Random, float]:
        """A body's latency in seconds, then the rng its reply is written from: the same body gets the same reply
        on the live path and in a batch."""
        rng = draw(self.seed, model, body_sha)
        return rng, rng.uniform(*self.latency_ms) / 1000

    def compose(self, persona: Persona, text: str, max_tokens: int, rng: random.Random) -> tuple[str, str, Kind]:
        """The persona's reply to a prompt, cut at max_tokens: (reply, finish reason, kind of request)."""
        entry = self.index.find(text)
        kind = classify(text, entry)
        reply, finish = write_reply(kind, entry, persona, text, rng), "stop"
        if tokens(reply) > max_tokens:
            reply, finish = reply[: max(4, (max_tokens - 1) * 4)], "length"  # tokens(reply) <= max_tokens
        return reply, finish, kind

    def answer(self, raw: bytes, *, gemini_model: str | None = None, key: str = "anonymous",
               batch: str | None = None) -> Reply | None:
        """The one answer pipeline, for the live routes and each Batch API line alike: read the body (400), find
        the persona (404), count the attempt, admit it past the rate limit (429), draw a fault (5xx), wait out the
        latency, compose the reply; every outcome is logged. A live request (`batch` None) is charged to `key`'s
        bucket and waits; a batch line has no limit and no latency (the draw is taken, not waited for), and any
        fault fails it with a 500. None: the server stopped during the wait, and nothing is sent."""
        gemini, live = gemini_model is not None, batch is None
        try:
            model, text, max_tokens = read_chat(raw, gemini_model)
        except SHAPE_ERRORS:
            return self.refuse(400, UNREADABLE, gemini, {} if live else {"batch": batch})
        body_sha = hashlib.sha256(raw).hexdigest()
        log: dict[str, Any] = {"model": model, "body_sha256": body_sha, **({} if live else {"batch": batch})}
        if (persona := self.personas.get(model)) is None:
            known = ", ".join(sorted(self.personas))
            return self.refuse(404, f"The model `{model}` does not exist (simulated models: {known})", gemini, log,
                               code="model_not_found")
        log["attempt"] = attempt = self.attempt(model, body_sha)
        prompt_tokens, headers, event = tokens(text), {}, None
        if live:
            wait, limit_headers, event = self.limiter.admit(key, model, prompt_tokens)
            headers = {} if gemini else limit_headers
            if wait is not None:
                wait = max(wait, 0.001)
                retry = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
                return self.refuse(429, f"Rate limit reached for {model} (simulated): retry after {wait:.3f}s",
                                   gemini, log, kind="requests", code="rate_limit_exceeded", headers=retry | headers)
        fault = self.fault(model, body_sha, attempt)
        if fault == "5xx" or (fault and not live):
            status = self.error_status(model, body_sha, attempt) if live else 500
            return self.refuse(status, "The server had an error while processing your request (simulated).",
                               gemini, log | {"fault": fault}, kind="server_error")
        rng, latency = self.reply_draws(model, body_sha)
        pause = (latency + (self.hang_s if fault == "hang" else 0.0)) if live else 0.0
        if pause and self.stopping.wait(pause):
            return None
        reply, finish, kind = self.compose(persona, text, max_tokens, rng)
        if fault == "empty":
            reply = ""
        completion_tokens = tokens(reply) if reply else 0
        if event is not None:
            self.limiter.settle(key, model, event, prompt_tokens + completion_tokens)
        self.log({"status": 200, **log, "kind": kind, "prompt_tokens": prompt_tokens,
                  "completion_tokens": completion_tokens, **({"fault": fault} if fault else {})})
        if fault == "malformed":
            return Reply(200, MALFORMED, headers, fault)
        return Reply(200, response(model, reply, completion_tokens, prompt_tokens, finish, gemini, body_sha),
                     headers, fault)

    def refuse(self, status: int, message: str, gemini: bool, log: dict[str, Any],
               kind: str = "invalid_request_error", code: str | None = None,
               headers: dict[str, str] | None = None) -> Reply:
        """An error reply in the request's wire format, logged with `log` (never a key: see log)."""
        self.log({"status": status, **log})
        return Reply(status, error_body(status, message, gemini, kind, code), headers or {}, log.get("fault"))

    def tally(self, reply: Reply) -> None:
        """The live routes' counters (a batch counts its lines itself)."""
        self.count("rate_limited" if reply.status == 429 else f"fault_{reply.fault}" if reply.fault
                   else "completed" if reply.status == 200 else "errors")

    def error_status(self, model: str, body_sha: str, attempt: int) -> int:
        return draw(self.seed, "status", model, body_sha, attempt).choice((500, 503))

    def fault(self, model: str, body_sha: str, attempt: int) -> str | None:
        u, edge = draw(self.seed, "fault", model, body_sha, attempt).random(), 0.0
        for name, p in self.fault_rates.items():
            edge += p
            if u < edge:
                return name
        return None
