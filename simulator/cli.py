"""`fair teachers serve`: the offline committee, a local HTTP server that SIMULATES teacher LLM APIs.

The simulator's command line; what it simulates is documented in simulator/simulator.py.

    fair teachers serve --port 8765 --log server.log        # the same flags: python -m simulator.cli
    fair teachers serve --port 0 --port-file port --config configs/simulator.yaml --p-5xx 0.05
    fair teachers serve --p-refusal 0.05 --p-truncate 0.05 --quota-after 500 --cache-min-tokens 256

Settings: `SimulatorConfig`, on the one config path of every command (fair/config.py): its defaults < a
--config YAML < flags < key=value; configs/simulator.yaml lists them. Their types are checked when the config
is built; their ranges by `OfflineServer`, where the rules live, before anything listens. `run` serves until
SIGTERM or SIGINT, then prints the counters.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fair.config import Validated, build_config, config_parser
from fair.errors import main_guard
from fair.wire.listen import is_loopback
from simulator.server import OfflineServer


@dataclass
class SimulatorConfig(Validated):
    host: str = "127.0.0.1"  # address to bind; the default answers only this machine (loopback)
    port: int = 8765  # 0 picks a free one (see port_file)
    port_file: str | None = None  # also write the port to this file once listening (for scripts and tests)
    rpm: int = 600  # requests per minute per (key, model); past it a 429 with Retry-After
    tpm: int = 1_000_000  # tokens per minute per (key, model), input and output
    latency_ms: tuple[float, float] = (0.0, 0.0)  # MIN MAX: each reply waits a uniform draw, in milliseconds
    p_5xx: float = 0.0  # rate of 500/503 replies
    p_hang: float = 0.0  # rate of replies delayed by hang_s
    hang_s: float = 30.0  # how long a hang lasts, in seconds
    p_malformed: float = 0.0  # rate of 200 replies that are not valid JSON
    p_empty: float = 0.0  # rate of 200 replies with empty content
    p_refusal: float = 0.0  # rate of bodies refused (OpenAI message.refusal, Gemini SAFETY, Anthropic refusal)
    p_thinking: float = 0.0  # rate of bodies whose thinking spends all of max_tokens: no text, cut at max_tokens
    p_truncate: float = 0.0  # rate of bodies whose reply is cut at max_tokens
    p_quota: float = 0.0  # rate of requests refused as out of quota (OpenAI 429 insufficient_quota, Anthropic 400)
    quota_after: int | None = None  # a key is out of quota after this many requests; None: never
    cache_min_tokens: int = 1024  # shortest prompt prefix the prompt cache holds (OpenAI's and Gemini's minimum)
    cache_block_tokens: int = 128  # automatic caches hold prefixes in steps of this many tokens past the minimum
    seed: int = 0  # of every draw: faults, latencies and the personas' replies
    batch_delay_s: float = 1.0  # a Batch API batch completes this long after it is created
    batch_store_mb: float = 1024.0  # the Batch API's files kept in memory; past it the oldest are dropped
    socket_timeout_s: float = 60.0  # close a connection that sends or reads nothing this long
    log: str | None = None  # append one JSON line per request here (no keys)
    data_dir: str | None = None  # benchmark data for the personas' answers; default $FAIR_DATA_DIR or ../shared/data
    tasks: tuple[str, ...] = ()  # tasks declared in YAML whose questions the personas answer too (names or paths); the built-ins' always
    personas: dict[str, Any] | None = None  # more or changed personas by model name (simulator/personas.py)

    def server(self) -> OfflineServer:
        """The simulator these settings describe, not yet listening; it checks their ranges."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["log_path"] = values.pop("log")
        del values["port_file"]
        return OfflineServer(values.pop("host"), values.pop("port"), **values)


def run(config: SimulatorConfig) -> int:
    """Serve until SIGTERM or SIGINT, then print the summary; the handlers go in first, so a parent that
    signals as soon as it reads the port still gets a clean exit."""
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        server = config.server().start()
        print(f"offline committee (simulator): {server.index.size} questions indexed from "
              f"{', '.join(server.index.loaded) or 'no data (generic replies only)'}; "
              f"models {', '.join(sorted(server.personas))}", file=sys.stderr, flush=True)
        if config.port_file:
            tmp = Path(f"{config.port_file}.tmp")
            tmp.write_text(f"{server.port}\n")
            tmp.replace(config.port_file)  # atomic: a reader never sees a half-written port
        print(f"offline committee listening on {server.url}", flush=True)
        if not is_loopback(config.host):
            print(f"fair teachers serve: warning: {config.host} is not loopback: the simulator has no token, so "
                  "anyone who can reach this address can use it", file=sys.stderr, flush=True)
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
    args = config_parser(SimulatorConfig, "python -m simulator.cli", __doc__).parse_args(argv)
    return main_guard("offline committee", lambda: run(build_config(SimulatorConfig, args)))


if __name__ == "__main__":
    sys.exit(main())
