"""Peer client for `make bench-gen`: bespokelabs-curator, run inside its own venv (never ours).

    python curator_peer.py --requests in.jsonl --out out.jsonl --base-url http://127.0.0.1:PORT/v1 \
        --keys '{"sim-careful": "k1", ...}' --rpm 600 --tpm 1000000 --workdir DIR

A curator.LLM serves one model, so each model gets its own LLM in its own process, all three at once (the best
case for curator; run one after another they would take three times as long). backend="openai" with base_url,
max_requests_per_minute and max_tokens_per_minute set to the server's limits, require_all_responses=False,
and a fresh working dir; the rest are curator's defaults. Wall time runs from the first LLM's construction
(which sends curator's start-up probe for rate-limit headers) to the last one's end. Prints one JSON line, with
the CPU seconds the three model processes spent over the same span (make bench-scale compares them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
from importlib.metadata import version


def cpu_s() -> float:
    """CPU seconds of this process and of any children it has reaped (curator may fork helpers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_model(model: str, rows: list[dict], args: dict, key: str) -> dict:
    from bespokelabs import curator

    class Replay(curator.LLM):
        def prompt(self, row):
            return row["messages"]

        def parse(self, row, response):
            return {"id": row["id"], "response": response}

    began, cpu = time.time(), cpu_s()  # after the import: start-up is left out
    llm = Replay(model_name=model, backend="openai",
                 generation_params={"temperature": rows[0]["temperature"], "max_tokens": rows[0]["max_tokens"]},
                 backend_params={"base_url": args["base_url"], "api_key": key, "require_all_responses": False,
                                 "max_requests_per_minute": args["rpm"], "max_tokens_per_minute": args["tpm"]})
    data = [{"id": r["id"], "messages": r["messages"]} for r in rows]
    result = llm(data, working_dir=os.path.join(args["workdir"], model))
    dataset = result.dataset if hasattr(result, "dataset") else result
    ok = {row["id"]: row["response"] for row in dataset}
    return {"model": model, "began": began, "ended": time.time(), "cpu_s": cpu_s() - cpu, "replies": ok}


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--requests", "--out", "--base-url", "--keys", "--workdir"):
        p.add_argument(flag, required=True)
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--tpm", type=int, default=1_000_000)
    args = p.parse_args()
    keys = json.loads(args.keys)
    with open(args.requests) as f:
        requests = [json.loads(line) for line in f]
    by_model: dict[str, list[dict]] = {}
    for r in requests:
        by_model.setdefault(r["model"], []).append(r)
    shared = {"base_url": args.base_url, "rpm": args.rpm, "tpm": args.tpm, "workdir": args.workdir}
    with multiprocessing.get_context("spawn").Pool(len(by_model)) as pool:
        jobs = [pool.apply_async(run_model, (m, rows, shared, keys[m])) for m, rows in by_model.items()]
        done = [j.get() for j in jobs]
    replies = {k: v for d in done for k, v in d["replies"].items()}
    with open(args.out, "w") as f:
        for r in requests:
            reply = replies.get(r["id"])
            f.write(json.dumps({"id": r["id"], "text": reply} if reply is not None else
                               {"id": r["id"], "error": "no response row"}) + "\n")
    wall = max(d["ended"] for d in done) - min(d["began"] for d in done)
    print(json.dumps({"client": "curator", "version": version("bespokelabs-curator"), "wall_s": wall,
                      "cpu_s": sum(d["cpu_s"] for d in done),
                      "ok": len(replies), "failures": len(requests) - len(replies),
                      "per_model_s": {d["model"]: d["ended"] - d["began"] for d in done}}))


if __name__ == "__main__":
    main()
