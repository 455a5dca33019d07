"""Peer client for `make bench-gen`: litellm's Router, run inside its own venv (never ours).

    python litellm_peer.py --requests in.jsonl --out out.jsonl --base-url http://127.0.0.1:PORT/v1 \
        --keys '{"sim-careful": "k1", ...}' --rpm 600 --tpm 1000000

--mode router: one Router deployment per model with rpm/tpm in litellm_params and the documented
optional_pre_call_checks=["enforce_model_rate_limits"], num_retries=--retries.
--mode acompletion: plain litellm.acompletion(num_retries=--retries), no client-side rate limit: the server's
429s (with Retry-After) are what slows it down.
Either way every request goes at once through asyncio.gather, with a semaphore of --concurrency per model (ours
allows 16 in flight per teacher). Prints one JSON summary line, with the CPU seconds this process spent on the
requests (make bench-scale compares them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from importlib.metadata import version

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import
import litellm  # noqa: E402
from litellm import Router  # noqa: E402


async def run(args: argparse.Namespace, requests: list[dict]) -> tuple[list[dict], float]:
    keys = json.loads(args.keys)
    models = sorted({r["model"] for r in requests})
    model_list = [{"model_name": m, "litellm_params": {
        "model": f"openai/{m}", "api_base": args.base_url, "api_key": keys[m], "rpm": args.rpm, "tpm": args.tpm,
    }} for m in models]
    router = Router(model_list=model_list, num_retries=args.retries, timeout=args.timeout,
                    optional_pre_call_checks=["enforce_model_rate_limits"]) if args.mode == "router" else None
    slots = {m: asyncio.Semaphore(args.concurrency) for m in models}

    async def one(r: dict) -> dict:
        async with slots[r["model"]]:
            try:
                common = {"messages": r["messages"], "temperature": r["temperature"], "max_tokens": r["max_tokens"]}
                if router is not None:
                    reply = await router.acompletion(model=r["model"], **common)
                else:
                    reply = await litellm.acompletion(
                        model=f"openai/{r['model']}", api_base=args.base_url, api_key=keys[r["model"]],
                        num_retries=args.retries, timeout=args.timeout, **common)
                return {"id": r["id"], "text": reply.choices[0].message.content}
            except Exception as e:  # a peer failure is counted, never fatal
                return {"id": r["id"], "error": f"{type(e).__name__}: {str(e)[:300]}"}

    began = time.perf_counter()
    results = await asyncio.gather(*(one(r) for r in requests))
    return list(results), time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--requests", "--out", "--base-url", "--keys"):
        p.add_argument(flag, required=True)
    p.add_argument("--mode", choices=("router", "acompletion"), default="router")
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--tpm", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--retries", type=int, default=8)
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()
    litellm.suppress_debug_info = True
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False
    with open(args.requests) as f:
        requests = [json.loads(line) for line in f]
    cpu = time.process_time()
    results, wall = asyncio.run(run(args, requests))
    cpu = time.process_time() - cpu  # this process's CPU over the requests: imports and file reading left out
    with open(args.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    errors = [r["error"] for r in results if "error" in r]
    print(json.dumps({"client": f"litellm {args.mode}", "version": version("litellm"), "wall_s": wall, "cpu_s": cpu,
                      "ok": len(results) - len(errors), "failures": len(errors), "first_errors": errors[:3]}))


if __name__ == "__main__":
    main()
