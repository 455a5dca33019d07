"""`fair teachers serve`: the offline committee, a local HTTP server that SIMULATES teacher LLM APIs.

The simulator's command line; what it simulates is documented in gen/offline/server.py.

    fair teachers serve --port 8765 --log server.log        # the same flags: python -m gen.offline.cli
    fair teachers serve --port 0 --port-file port --config sim.yaml --p-5xx 0.05
    fair teachers serve --p-refusal 0.05 --p-truncate 0.05 --quota-after 500 --cache-min-tokens 256

Settings: built-in defaults < a --config YAML of SETTINGS < flags. `run` serves until SIGTERM or SIGINT, then
prints the counters; `main` (python -m gen.offline.cli) prints a FairError as one line and exits 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fair.config import load_yaml
from fair.errors import FairError
from gen.offline.server import OfflineServer

SETTINGS = {"rpm": int, "tpm": int, "latency_ms": list, "p_5xx": float, "p_hang": float, "hang_s": float,
            "p_malformed": float, "p_empty": float, "p_refusal": float, "p_thinking": float, "p_truncate": float,
            "p_quota": float, "quota_after": int, "cache_min_tokens": int, "cache_block_tokens": int, "seed": int,
            "log": str, "data_dir": str, "personas": dict,
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
    p.add_argument("--p-refusal", type=float, default=None,
                   help="rate of bodies refused (OpenAI message.refusal, Gemini SAFETY, Anthropic stop_reason refusal)")
    p.add_argument("--p-thinking", type=float, default=None,
                   help="rate of bodies whose thinking spends all of max_tokens: no text, cut at max_tokens")
    p.add_argument("--p-truncate", type=float, default=None, help="rate of bodies whose reply is cut at max_tokens")
    p.add_argument("--p-quota", type=float, default=None,
                   help="rate of requests refused as out of quota (OpenAI 429 insufficient_quota, Anthropic 400)")
    p.add_argument("--quota-after", type=int, default=None, metavar="N",
                   help="a key is out of quota after N requests (default: never)")
    p.add_argument("--cache-min-tokens", type=int, default=None,
                   help="shortest prompt prefix the prompt cache holds (default 1024, as OpenAI's and Gemini's)")
    p.add_argument("--cache-block-tokens", type=int, default=None,
                   help="automatic caches hold prefixes in steps of this many tokens past the minimum (default 128)")
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
    parser = argparse.ArgumentParser(prog="python -m gen.offline.cli", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FairError as e:
        print(f"offline committee: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
