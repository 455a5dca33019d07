"""Committee CPU per request: ours beside curator's and litellm's, and each HTTP stack we tried (make bench-scale).

    .venv/bin/python bench/bench_cpu.py                          # 387 SVAMP mistakes, 3,000 requests per stack
    .venv/bin/python bench/bench_cpu.py --mistakes 50 --http-requests 500 --peers none   # a quick run
    (bench/bench_scale.py runs it after the corpus sizes; --cpu-mistakes 0 skips it there)

Clients: the paper's SVAMP mistakes (its seed file, all 387 by default) with the paper's prompts, 12 requests
each, against the offline simulator in its own process with limits out of reach (10^8 requests and 10^11 tokens
a minute), no latency and no faults, a fresh server for each client. CPU is the client's own, over its requests
only (time.process_time inside its process: imports and start-up left out, the simulator never counted),
divided by the replies the server logged:
  * ours: run_committee in this process, with a fresh cache; then again with only its HTTP client swapped back
    to httpx's own HTTP/1.1 pool (what it used before: the change measured side by side);
  * litellm's Router and curator (bench/peers/, each in its venv from bench-gen under .cache/bench-venvs/,
    built on first use), replaying the requests ours sent (bench_gen.peer_requests); curator's figure is the
    sum of its three model processes.
HTTP stacks: the same OpenAI request (a 1.3 kB prompt) and a fixed 0.5 kB reply, --http-requests requests with
48 in flight (16 for each of three teachers), client CPU per request, against a hypercorn server in its own
process (it speaks HTTP/1.1 and cleartext HTTP/2): httpx's own HTTP/1.1 with a pool per teacher (what the
committee used before), httpx with one pool of 100 (its default), httpx over HTTP/2 (a connection per teacher),
httpx over aiohttp (what the committee uses now: gen/teachers/transport.py: http_client), and aiohttp alone.
Results: data/bench/cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import aiohttp
import httpx
import orjson

from bench.bench_gen import PEERS, SEED, Server, bench_teachers, log_metrics, peer_requests, run_peer
from fair.jsonl import append_jsonl, read_jsonl, write_json
from fair.paper import import_mistakes
from fair.tasks import default_data_dir, get_task
from gen.committee import run as committee
from gen.committee.run import CommitteeConfig, run_committee
from gen.teachers.providers import http_client

ROOT = Path(__file__).resolve().parents[1]
CPU_PEERS = ("litellm-router", "curator")
TEACHERS, IN_FLIGHT = ("sim-careful", "sim-sloppy", "sim-harsh"), 16
PROMPT = "Question: Jack had 8 pens and gave 3 to Mary. How many pens does Jack have now? " * 16
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Jack had 8 pens and gave away 3, so 8 - 3 = 5. The answer is 5. " * 6,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 330, "completion_tokens": 120, "total_tokens": 450},
    }
)


# ---------------------------------------------------------------------------------------------------------
# Ours and the peers on the committee's workload


def clients(args, workdir: Path) -> dict:
    task = get_task("svamp")
    mistakes = import_mistakes(task, default_data_dir() / SEED, task.load("train"))[: args.mistakes]
    mistakes_path = workdir / "mistakes.jsonl"
    append_jsonl(mistakes_path, (a.to_json() for a in mistakes))
    results = {"ours (run_committee)": ours(args, workdir, "ours", mistakes_path)}
    # The same committee with only its HTTP client swapped back to httpx's own (the stack before this change).
    with mock.patch.object(
        committee, "http_client", lambda n: httpx.AsyncClient(limits=httpx.Limits(max_connections=n))
    ):
        results["ours over httpx's own HTTP/1.1"] = ours(args, workdir, "ours-httpx", mistakes_path)
    requests = peer_requests(
        list(read_jsonl(workdir / "ours" / "committee.jsonl")), bench_teachers("http://127.0.0.1:1", 1)
    )
    requests_path = workdir / "peer-requests.jsonl"
    requests_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    for name in [n for n in args.peers.split(",") if n and n != "none"]:
        print(f"  {name}: {len(requests)} requests ...", flush=True)
        try:
            run = run_peer(name, args, workdir, requests_path)
            results[f"{name} {run['version']}"] = per_request(
                run["ok"], run["peer_summary"]["cpu_s"], run["wall_s"], run["failures"]
            )
        except Exception as e:  # a peer that cannot install or run is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    return {"mistakes": len(mistakes), "clients": results}


def ours(args, workdir: Path, name: str, mistakes_path: Path) -> dict:
    """run_committee into workdir/name/ (committee.jsonl, a fresh cache), against a fresh server."""
    (workdir / name).mkdir()
    server = Server(workdir, name, args)
    try:
        teachers = [dataclasses.replace(t, tpm=args.tpm) for t in bench_teachers(server.url, args.rpm)]
        config = CommitteeConfig(
            task="svamp",
            mistakes=str(mistakes_path),
            out=str(workdir / name / "committee.jsonl"),
            prompts="paper",
            filter="review",  # the paper's loop, reviews included: what the peers run
            progress=False,
        )
        print(f"  {name}: {args.mistakes} mistakes ...", flush=True)
        began, cpu = time.perf_counter(), time.process_time()
        result = asyncio.run(run_committee(config, teachers))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - began
    finally:
        server.stop()
    failures = sum(s.failures for s in result["stats"].values())
    return per_request(log_metrics(server.log, args.rpm, wall)["ok"], cpu, wall, failures)


def per_request(requests: int, cpu_s: float, wall_s: float, failures: int) -> dict:
    return {
        "requests": requests,
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_request": round(1000 * cpu_s / requests, 3),
        "wall_s": round(wall_s, 1),
        "req_per_s": round(requests / wall_s, 1),
        "failures": failures,
    }


# ---------------------------------------------------------------------------------------------------------
# HTTP stacks on one fixed request


async def asgi_app(scope, receive, send) -> None:
    """hypercorn's app: read the body, answer REPLY."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(REPLY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": REPLY})


def serve(port: int) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind, config.accesslog, config.keep_alive_max_requests = [f"127.0.0.1:{port}"], None, 10**9
    asyncio.run(hypercorn_serve(asgi_app, config))


def body(i: int) -> bytes:
    return orjson.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": f"{PROMPT}#{i}"}],
            "temperature": 0.0,
            "top_p": 1.0,
            "max_tokens": 512,
        }
    )


async def with_httpx(url: str, n: int, make) -> float:
    """Client CPU seconds for n requests sent as gen/teachers/providers.py sends them: its Request, send, one orjson pass."""
    pools = [make() for _ in TEACHERS]
    slots = [asyncio.Semaphore(IN_FLIGHT) for _ in TEACHERS]
    timeout = httpx.Timeout(60.0).as_dict()

    async def one(i: int) -> str:
        async with slots[i % len(TEACHERS)]:
            request = httpx.Request(
                "POST",
                url,
                content=body(i),
                extensions={"timeout": timeout},
                headers={"content-type": "application/json", "authorization": "Bearer k"},
            )
            resp = await pools[i % len(TEACHERS)].send(request)
            return orjson.loads(resp.content)["choices"][0]["message"]["content"]

    return await timed(one, n, [pool.aclose for pool in pools])


async def with_aiohttp(url: str, n: int, _) -> float:
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) for _ in TEACHERS]

    async def one(i: int) -> str:
        headers = {"content-type": "application/json", "authorization": "Bearer k"}
        async with sessions[i % len(TEACHERS)].post(url, data=body(i), headers=headers) as resp:
            return orjson.loads(await resp.read())["choices"][0]["message"]["content"]

    return await timed(one, n, [s.close for s in sessions])


async def timed(one, n: int, closers) -> float:
    await asyncio.gather(*(one(i) for i in range(100)))  # warm-up: connections open
    began = time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu = time.process_time() - began
    for close in closers:
        await close()
    return cpu


STACKS = {
    "httpx HTTP/1.1, a pool of 16 per teacher (before)": (
        with_httpx,
        lambda: httpx.AsyncClient(limits=httpx.Limits(max_connections=IN_FLIGHT)),
    ),
    "httpx HTTP/1.1, one pool of 100 (httpx's default)": (with_httpx, None),  # one client for all three
    "httpx HTTP/2, a connection per teacher": (
        with_httpx,
        lambda: httpx.AsyncClient(http1=False, http2=True),
    ),
    "httpx over aiohttp (ours now)": (with_httpx, lambda: http_client(IN_FLIGHT)),
    "aiohttp alone": (with_aiohttp, None),
}


def http_stacks(n: int) -> dict:
    try:
        import hypercorn  # noqa: F401  (the dev extra; an HTTP/2 server for the comparison)
    except ImportError:
        return {"error": "hypercorn is not installed (pip install -e '.[dev]')"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, server)
        shared = httpx.AsyncClient()
        results = {}
        for name, (run, make) in STACKS.items():
            cpu = asyncio.run(
                run(f"http://127.0.0.1:{port}/v1/chat/completions", n, make or (lambda: shared))
            )
            results[name] = round(1000 * cpu / n, 3)
            print(f"  {name}: {results[name]} ms/request", flush=True)
        return {"requests": n, "cpu_ms_per_request": results}
    finally:
        server.terminate()
        server.wait()


def wait_for_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the hypercorn server did not start")


# ---------------------------------------------------------------------------------------------------------


def run(args) -> dict:
    """Both parts; `args` needs mistakes, peers, http_requests, rpm, tpm, latency_ms, peer_timeout and out."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        print(f"committee CPU per request: {args.mistakes} of the paper's SVAMP mistakes ...", flush=True)
        result = clients(args, Path(tmp))
    if args.http_requests:
        print(f"HTTP stacks: {args.http_requests} requests each ...", flush=True)
        result["http_stacks"] = http_stacks(args.http_requests)
    return result


def print_table(result: dict) -> None:
    ours = result["clients"]["ours (run_committee)"]["cpu_ms_per_request"]
    print(
        f"\ncommittee CPU per request, {result['mistakes']} of the paper's SVAMP mistakes x 12 requests, limits "
        f"out of reach:\n{'client':<34} {'requests':>8} {'CPU ms/request':>14} {'vs ours':>8} {'req/s':>7}"
    )
    for name, r in result["clients"].items():
        if "error" in r:
            print(f"{name:<34} failed: {r['error']}")
            continue
        print(
            f"{name:<34} {r['requests']:>8} {r['cpu_ms_per_request']:>14.3f} "
            f"{r['cpu_ms_per_request'] / ours:>7.2f}x {r['req_per_s']:>7.1f}"
        )
    stacks = result.get("http_stacks")
    if stacks and "error" in stacks:
        print(f"\nHTTP stacks: skipped: {stacks['error']}")
    elif stacks:
        mine = stacks["cpu_ms_per_request"]["httpx over aiohttp (ours now)"]
        print(f"\nHTTP client CPU per request ({stacks['requests']} requests each, 48 in flight):")
        for name, ms in stacks["cpu_ms_per_request"].items():
            print(f"  {name:<52} {ms:>6.3f} ms  {ms / mine:>5.2f}x")


def add_arguments(p: argparse.ArgumentParser, mistakes_flag: str) -> None:
    p.add_argument(
        mistakes_flag, type=int, default=387, help="the paper's SVAMP mistakes for the CPU comparison"
    )
    p.add_argument(
        "--peers", default=",".join(CPU_PEERS), help=f"comma-separated of {', '.join(PEERS)}, or none"
    )
    p.add_argument("--peer-timeout", type=int, default=900, help="seconds per peer run (venv set-up apart)")
    p.add_argument("--http-requests", type=int, default=3000, help="requests per HTTP stack (0: skip)")


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "--mistakes")
    p.add_argument("--out", default=str(ROOT / "data" / "bench" / "cpu.json"))
    args = p.parse_args()
    args.rpm, args.tpm, args.latency_ms = 100_000_000, 100_000_000_000, (0, 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print_table(result)
    write_json(args.out, {"settings": {k: v for k, v in vars(args).items() if k != "out"}, **result})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
