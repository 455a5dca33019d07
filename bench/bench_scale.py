"""make bench-scale: the committee stage at corpus scale, on the offline simulator with limits never reached.

    .venv/bin/python bench/bench_scale.py                    # 10,000 and 100,000 mistakes, a 1M-row cache
    .venv/bin/python bench/bench_scale.py --sizes 2000 --micro-rows 100000   # a quick run
    .venv/bin/python bench/bench_scale.py --sizes 0 --micro-rows 0           # only the CPU comparison

Workload: synthetic mistakes made from GSM8K's train questions, cycled with distinct ids; every cycle after
the first adds "(variant k)" to the question, so that each mistake's prompts are new (a repeated prompt would
be a cache hit, not a request) while the offline personas still find the question and answer from its gold
solution. 12 requests per mistake (3 feedback, 3 rationales, 6 peer reviews) to three simulated teachers. The
server runs in its own process (bench_gen.Server): 10^8 requests and 10^11 tokens a minute per key, zero
latency, no injected faults, a log of every request. The committee is the real `fair committee` CLI in its
own process.

Measured for each size, on one uninterrupted run:
  * peak RSS of the committee process (ru_maxrss from wait4): flat means independent of the corpus size;
  * sustained requests/s: completed requests per second in the server log over the middle 80% of the run;
  * CPU seconds per 1000 requests of the committee and of the server: the one near a whole core (the
    server's threads share one GIL) is the bottleneck; and requests per cache commit.
Resume, on the largest size: SIGKILL once half the mistakes are in committee.jsonl, then restart: seconds
until the restarted process sends its first request (server log), its total time and peak RSS, every id
present exactly once, and the requests completed both before and after the kill against the in-flight count
the restarted run reported (the promise: repeated <= reported).
Cache micro-benchmark: a ResponseCache filled to --micro-rows rows, then per request: mark_inflight and put
as the client does them, with 1, 4 or 16 requests leaving together, and get (hits and misses).
Then committee CPU per request beside curator's and litellm's, and the HTTP stacks we tried (bench/bench_cpu.py:
the paper's 387 SVAMP mistakes, CPU counted inside each client's process over its requests only).
Results: data/bench/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil
import yaml

from bench import bench_cpu
from bench.bench_gen import Server
from fair.jsonl import JsonlAppender, read_jsonl, write_json
from fair.records import StudentAnswer
from fair.tasks import get_task
from gen.teachers.cache import ResponseCache
from gen.teachers.config import load_committee
from gen.teachers.providers import ChatResponse

ROOT = Path(__file__).resolve().parents[1]
REQUESTS_PER_MISTAKE = 12
GROUPS = (1, 4, 16)  # requests leaving together, marked in flight in one commit (the committee: about 4)


# ---------------------------------------------------------------------------------------------------------
# Inputs


def write_mistakes(path: Path, task_name: str, count: int) -> None:
    task = get_task(task_name)
    examples = task.load("train")
    with JsonlAppender(path) as out:
        for start in range(0, count, 10_000):
            out.write(mistake(task, examples, i).to_json() for i in range(start, min(count, start + 10_000)))


def mistake(task, examples, i: int) -> StudentAnswer:
    ex, cycle = examples[i % len(examples)], i // len(examples)
    question = f"{ex.question} (variant {cycle})" if cycle else ex.question
    wrong = str(int(float(ex.gold)) + 1 + cycle % 7)
    return StudentAnswer(
        id=f"synthetic-{i}", index=ex.index, task=task.name, split="train", question=question, gold=ex.gold,
        prediction=f"Let's add up what the question gives.\nThe answer is {wrong}.", extracted=wrong,
        correct=False, prompt_tokens=0, generated_tokens=0, finish_reason="stop", solution=ex.solution,
    )


def write_teachers(path: Path, rpm: int, tpm: int, **fields) -> None:
    """The offline committee with limits it never reaches, so the run shows our own throughput; `fields` set
    other Teacher fields of all three (bench/soak.py: short timeouts and backoff)."""
    teachers = [dataclasses.asdict(t) | {"rpm": rpm, "tpm": tpm, **fields} for t in load_committee("offline")]
    path.write_text(yaml.safe_dump({"teachers": teachers}, sort_keys=False))


# ---------------------------------------------------------------------------------------------------------
# One committee process


@dataclasses.dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    cpu_s: float
    exit: int
    stdout: str


def committee_command(workdir: Path, task: str, url: str, window: int) -> list[str]:
    """The `fair committee` command line on workdir's mistakes.jsonl and teachers.yaml."""
    return [sys.executable, "-m", "cli.main", "committee", "--task", task, "--mistakes",
            str(workdir / "mistakes.jsonl"), "--out", str(workdir / "committee.jsonl"), "--teachers",
            str(workdir / "teachers.yaml"), "--base-url", url, "--window", str(window), "--no-progress",
            "--filter", "review"]  # every kind of request: REQUESTS_PER_MISTAKE


def committee(workdir: Path, name: str, args, server: Server, kill_at: int | None = None) -> Run:
    """Run `fair committee`; with kill_at, SIGKILL it once committee.jsonl holds that many records."""
    command = committee_command(workdir, args.task, server.url, args.window)
    out_log = workdir / f"{name}.out"
    began = time.perf_counter()
    with out_log.open("wb") as stdout:
        proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT)
        if kill_at is not None:
            wait_for_records(workdir / "committee.jsonl", kill_at, proc)
            proc.send_signal(signal.SIGKILL)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: the rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(time.perf_counter() - began, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
               proc.returncode, out_log.read_text())


def wait_for_records(path: Path, count: int, proc: subprocess.Popen) -> None:
    """Count lines as they are appended, reading only the new bytes."""
    seen, offset = 0, 0
    while seen < count:
        if proc.poll() is not None:
            raise RuntimeError(f"the committee exited before {count} records")
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            seen += chunk.count(b"\n")
        time.sleep(0.05)


def completed(log: Path, split_at: int | None = None) -> tuple[list, list]:
    """(time, body sha256) of every 200 in the server log: before line `split_at`, and from it on."""
    parts: tuple[list, list] = ([], [])
    with log.open("rb") as f:
        for number, line in enumerate(f):
            entry = orjson.loads(line)
            if entry["status"] == 200:
                parts[split_at is not None and number >= split_at].append((entry["t"], entry["body_sha256"]))
    return parts


def line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def sustained_rate(times: list[float]) -> float:
    """Requests per second over the middle 80% of them: start-up and the draining tail left out."""
    times = sorted(times)
    lo, hi = len(times) // 10, len(times) * 9 // 10
    return (hi - lo) / (times[hi] - times[lo]) if hi > lo and times[hi] > times[lo] else 0.0


def check_exactly_once(workdir: Path, count: int) -> bool:
    ids = [r["id"] for r in read_jsonl(workdir / "committee.jsonl")]
    return len(ids) == len(set(ids)) == count and set(ids) == {f"synthetic-{i}" for i in range(count)}


def server_cpu_s(server: Server) -> float:
    times = psutil.Process(server.proc.pid).cpu_times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------------------------
# One corpus size


def run_size(args, count: int, resume: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{count}-") as tmp:
        workdir = Path(tmp)
        write_mistakes(workdir / "mistakes.jsonl", args.task, count)
        write_teachers(workdir / "teachers.yaml", args.rpm, args.tpm)
        server = Server(workdir, "scale", args)
        try:
            server_cpu_before = server_cpu_s(server)  # its start-up: loading the question index
            if not resume:
                run = committee(workdir, "run", args, server)
                if run.exit != 0:
                    raise RuntimeError(f"the committee failed:\n{run.stdout[-2000:]}")
                server_cpu = server_cpu_s(server) - server_cpu_before
                ok, _ = completed(server.log)
                result = {"run": measures(run, len(ok), server_cpu), "sustained_req_s":
                          round(sustained_rate([t for t, _ in ok]), 1)}
            else:
                result = run_with_kill(workdir, args, server, count, server_cpu_before)
        finally:
            server.stop()
        result["exactly_once"] = check_exactly_once(workdir, count)
        stats = orjson.loads((workdir / "committee_stats.json").read_bytes())
        result["cache_commits_last_run"] = stats.get("cache_commits")
        result["committee_jsonl_mb"] = round((workdir / "committee.jsonl").stat().st_size / 1e6, 1)
        result["cache_mb"] = round((workdir / "requests.sqlite").stat().st_size / 1e6, 1)
        return {"mistakes": count, **result}


def run_with_kill(workdir: Path, args, server: Server, count: int, server_cpu_before: float) -> dict:
    first = committee(workdir, "first", args, server, kill_at=count // 2)
    time.sleep(1.0)  # let the server finish (and log) what the dead client had in flight
    server_cpu = server_cpu_s(server) - server_cpu_before
    kill_line = line_count(server.log)
    restarted_at = time.time()
    second = committee(workdir, "resumed", args, server)
    if second.exit != 0:
        raise RuntimeError(f"the resumed committee failed:\n{second.stdout[-2000:]}")
    before, after = completed(server.log, kill_line)
    repeated = len({sha for _, sha in before} & {sha for _, sha in after})
    stats = orjson.loads((workdir / "committee_stats.json").read_bytes())
    return {
        "first": measures(first, len(before), server_cpu) | {"killed_at_records": count // 2},
        "sustained_req_s": round(sustained_rate([t for t, _ in before]), 1),
        "resumed": measures(second, len(after), None),
        "resume_to_first_request_s": round(min(t for t, _ in after) - restarted_at, 2) if after else None,
        "repeated_requests": repeated, "reported_in_flight": stats["repeated_after_kill"],
    }


def measures(run: Run, requests: int, server_cpu: float | None) -> dict:
    out = {"seconds": round(run.seconds, 1), "requests": requests, "peak_rss_mb": round(run.peak_rss_mb, 1),
           "committee_cpu_s_per_1k": round(1000 * run.cpu_s / max(requests, 1), 2),
           "committee_cpu_util": round(run.cpu_s / run.seconds, 2), "exit": run.exit}
    if server_cpu is not None:
        out |= {"server_cpu_s_per_1k": round(1000 * server_cpu / max(requests, 1), 2),
                "server_cpu_util": round(server_cpu / run.seconds, 2)}
    return out


# ---------------------------------------------------------------------------------------------------------
# Cache micro-benchmark


def cache_micro(rows: int, probes: int = 20_000) -> dict:
    def key(i: int) -> str:
        return hashlib.sha256(str(i).encode()).hexdigest()

    reply = ChatResponse("Step 1: " + "some reasoning, " * 40 + "The answer is 42.", 180, 160)

    async def send(cache: ResponseCache, start: int, group: int) -> float:
        """Microseconds per request: marked in flight `group` at a time (requests leaving together), put."""
        began = time.perf_counter()
        for first in range(start, start + probes, group):
            keys = [key(i) for i in range(first, first + group)]
            await asyncio.gather(*(cache.mark_inflight(k, "t") for k in keys))
            for k in keys:
                cache.put(k, "t", reply)
        cache.flush()
        return 1e6 * (time.perf_counter() - began) / probes

    async def go(cache: ResponseCache) -> dict:
        began = time.perf_counter()
        for i in range(rows):  # puts commit max_pending at a time
            cache.put(key(i), "t", reply)
        cache.flush()
        fill_s = time.perf_counter() - began
        send_us = {n: round(await send(cache, rows + k * probes, n), 1) for k, n in enumerate(GROUPS)}
        rng = random.Random(0)
        hits = [key(rng.randrange(rows)) for _ in range(probes)]
        began = time.perf_counter()
        assert all(cache.get(k) is not None for k in hits)
        hit_us = 1e6 * (time.perf_counter() - began) / probes
        began = time.perf_counter()
        assert all(cache.get(key(-i)) is None for i in range(1, probes + 1))
        miss_us = 1e6 * (time.perf_counter() - began) / probes
        return {"rows": rows, "fill_s": round(fill_s, 1), "mark_and_put_us_by_group": send_us,
                "get_hit_us": round(hit_us, 1), "get_miss_us": round(miss_us, 1)}

    with tempfile.TemporaryDirectory(prefix="bench-scale-cache-") as tmp:
        with ResponseCache(Path(tmp) / "c.sqlite", max_pending=10_000) as cache:
            result = asyncio.run(go(cache))
        return result | {"db_mb": round((Path(tmp) / "c.sqlite").stat().st_size / 1e6)}


# ---------------------------------------------------------------------------------------------------------


def print_table(results: list[dict], micro: dict | None) -> None:
    print(f"\n{'mistakes':>9} {'requests':>9} {'wall s':>8} {'req/s':>7} {'peak RSS MB':>12} "
          f"{'ours CPU/1k':>11} {'server CPU/1k':>13} {'req/commit':>10} {'exactly once':>12}")
    for r in results:
        run = r.get("run") or r["first"]
        requests = run["requests"] + r.get("resumed", {}).get("requests", 0)
        seconds = run["seconds"] + r.get("resumed", {}).get("seconds", 0)
        rss = max(run["peak_rss_mb"], r.get("resumed", {}).get("peak_rss_mb", 0))
        last = r.get("resumed") or run
        per_commit = last["requests"] / (r["cache_commits_last_run"] or 1)
        print(f"{r['mistakes']:>9} {requests:>9} {seconds:>8.1f} {r['sustained_req_s']:>7.1f} {rss:>12.1f} "
              f"{run['committee_cpu_s_per_1k']:>11.2f} {run['server_cpu_s_per_1k']:>13.2f} "
              f"{per_commit:>10.1f} {r['exactly_once']!s:>12}")
    for r in results:
        if "resumed" in r:
            print(f"\nresume ({r['mistakes']} mistakes, SIGKILL at {r['first']['killed_at_records']} "
                  f"records): first new request {r['resume_to_first_request_s']} s after the restart; the "
                  f"resumed run took {r['resumed']['seconds']} s, peak RSS {r['resumed']['peak_rss_mb']} MB; "
                  f"{r['repeated_requests']} requests completed both before and after the kill, "
                  f"{r['reported_in_flight']} reported in flight")
    if micro:
        groups = ", ".join(f"{us} us {n} at a time" for n, us in micro["mark_and_put_us_by_group"].items())
        print(f"\ncache at {micro['rows']:,} rows ({micro['db_mb']} MB): per request, mark_inflight + put: "
              f"{groups}; get {micro['get_hit_us']} us (hit), {micro['get_miss_us']} us (miss)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="corpus sizes, comma-separated")
    p.add_argument("--kill", default="largest", choices=("largest", "none", "all"),
                   help="which sizes are killed at 50%% and resumed (those then give no uninterrupted run)")
    p.add_argument("--task", default="gsm8k", choices=("gsm8k", "svamp"))
    p.add_argument("--window", type=int, default=64, help="mistakes in flight (the committee's default)")
    p.add_argument("--rpm", type=int, default=100_000_000, help="per key: the server's and teachers' limit")
    p.add_argument("--tpm", type=int, default=100_000_000_000)
    p.add_argument("--micro-rows", type=int, default=1_000_000, help="cache micro-benchmark rows (0: skip)")
    bench_cpu.add_arguments(p, "--cpu-mistakes")  # 0: skip the CPU comparison
    p.add_argument("--out", default=str(ROOT / "data" / "bench" / "scale.json"))
    args = p.parse_args()
    args.latency_ms = (0, 0)  # for bench_gen.Server
    sizes = [int(s) for s in args.sizes.split(",") if int(s)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    results = []
    for count in sizes:
        resume = args.kill == "all" or (args.kill == "largest" and count == max(sizes))
        killed = ", killed at 50% and resumed" if resume else ""
        print(f"{count} mistakes x {REQUESTS_PER_MISTAKE} requests{killed} ...", flush=True)
        results.append(run_size(args, count, resume))
        print(f"  {orjson.dumps(results[-1]).decode()}", flush=True)
    micro = None
    if args.micro_rows:
        print(f"cache micro-benchmark at {args.micro_rows:,} rows ...", flush=True)
        micro = cache_micro(args.micro_rows)
    cpu = None
    if args.cpu_mistakes:
        cpu = bench_cpu.run(argparse.Namespace(**vars(args), mistakes=args.cpu_mistakes))
    if results or micro:
        print_table(results, micro)
    if cpu:
        bench_cpu.print_table(cpu)
    write_json(args.out, {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "sizes": results,
                          "cache": micro, "cpu": cpu})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
