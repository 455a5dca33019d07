"""`fair teachers serve`: the offline committee, a local HTTP server that SIMULATES teacher LLM APIs.

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
formats and the limiter live in gen/offline/api.py, the HTTP routes in gen/offline/http.py.

A server may run for weeks: a connection that stalls (or idles) for socket_timeout_s is closed, the Batch API's
files are kept up to batch_store_mb (oldest dropped first), and a malformed request, live or in a batch, gets a
400 rather than a crashed handler or a batch left in progress.

Determinism: replies depend only on (seed, model, sha256 of the body); a fault is drawn from (seed, model,
body hash, attempt), where `attempt` counts how often this exact body arrived, so a retry can succeed and a
rerun of the same client sees the same sequence of faults.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from fair.config import load_yaml
from fair.errors import FairError
from gen.offline.api import Limiter, tokens
from gen.offline.batch import BatchStore
from gen.offline.http import Handler, Server
from gen.offline.personas import Kind, Persona, QuestionIndex, classify, merge_personas, write_reply

FAULTS = ("5xx", "hang", "malformed", "empty")
MAX_TRACKED = 1_000_000  # bodies whose attempts are counted


def draw(*parts: Any) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big"))


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

    def error_status(self, model: str, body_sha: str, attempt: int) -> int:
        return draw(self.seed, "status", model, body_sha, attempt).choice((500, 503))

    def fault(self, model: str, body_sha: str, attempt: int) -> str | None:
        u, edge = draw(self.seed, "fault", model, body_sha, attempt).random(), 0.0
        for name, p in self.fault_rates.items():
            edge += p
            if u < edge:
                return name
        return None


# --- command line ----------------------------------------------------------------------------------------

SETTINGS = {"rpm": int, "tpm": int, "latency_ms": list, "p_5xx": float, "p_hang": float, "hang_s": float,
            "p_malformed": float, "p_empty": float, "seed": int, "log": str, "data_dir": str, "personas": dict,
            "batch_delay_s": float, "batch_store_mb": float, "socket_timeout_s": float}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    p.add_argument("--port-file", default=None, help="also write the port to this file once listening")
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"YAML of settings ({', '.join(SETTINGS)}); flags override it")
    p.add_argument("--rpm", type=int, default=None, help="requests per minute per (key, model) (default 600)")
    p.add_argument("--tpm", type=int, default=None, help="tokens per minute per (key, model) (default 1000000)")
    p.add_argument("--latency-ms", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="uniform latency per reply in milliseconds (default 0 0)")
    p.add_argument("--p-5xx", type=float, default=None, help="rate of 500/503 replies")
    p.add_argument("--p-hang", type=float, default=None, help="rate of replies delayed by --hang-s")
    p.add_argument("--hang-s", type=float, default=None, help="how long a hang lasts (default 30)")
    p.add_argument("--p-malformed", type=float, default=None, help="rate of 200 replies that are not valid JSON")
    p.add_argument("--p-empty", type=float, default=None, help="rate of 200 replies with empty content")
    p.add_argument("--seed", type=int, default=None, help="seed of every draw (default 0)")
    p.add_argument("--batch-delay-s", type=float, default=None,
                   help="a Batch API batch completes this long after it is created (default 1)")
    p.add_argument("--batch-store-mb", type=float, default=None,
                   help="the Batch API's files kept in memory, oldest dropped first past it (default 1024)")
    p.add_argument("--socket-timeout-s", type=float, default=None,
                   help="close a connection that stalls (sends or reads nothing) this long (default 60)")
    p.add_argument("--log", default=None, metavar="PATH", help="append one JSON line per request (no keys)")
    p.add_argument("--data-dir", default=None, help="benchmark data (default $FAIR_DATA_DIR, else shared/data)")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """OfflineServer's keyword arguments: built-in defaults < the --config YAML < flags."""
    values = load_yaml(args.config, set(SETTINGS)) if args.config else {}
    for key, value in values.items():
        kind = SETTINGS[key]
        if isinstance(value, bool) or not (isinstance(value, kind) or (kind is float and isinstance(value, int))):
            raise FairError(f"config file {args.config}: {key} must be {kind.__name__}, got {value!r}")
    values |= {k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None}
    if "latency_ms" in values:
        if len(values["latency_ms"]) != 2:
            raise FairError("latency_ms must be two numbers, MIN and MAX")
        values["latency_ms"] = tuple(values["latency_ms"])
    if "log" in values:
        values["log_path"] = values.pop("log")
    return values


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then print the summary; the handlers go in first, so a parent that
    signals as soon as it reads the port still gets a clean exit."""
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        server = OfflineServer(args.host, args.port, **settings(args)).start()
        print(f"offline committee (simulator): {server.index.size} questions indexed from "
              f"{', '.join(server.index.loaded) or 'no data (generic replies only)'}; "
              f"models {', '.join(sorted(server.personas))}", file=sys.stderr, flush=True)
        if args.port_file:
            tmp = Path(f"{args.port_file}.tmp")
            tmp.write_text(f"{server.port}\n")
            tmp.replace(args.port_file)  # atomic: a reader never sees a half-written port
        print(f"offline committee listening on {server.url}", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
            print(server.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen.offline.server", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FairError as e:
        print(f"offline committee: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
