"""make bench-serve: N committee jobs sharing one `fair serve` against N separate `fair committee` processes,
all on the same keys of the offline simulator, which enforces R requests per minute per (key, model).

    .venv/bin/python bench/bench_serve.py                       # 3 jobs of 10 mistakes, R = 120 rpm
    .venv/bin/python bench/bench_serve.py --jobs 4 --mistakes 20 --rpm 240

Both sides run the same N jobs (disjoint slices of the paper's SVAMP mistakes, three simulated teachers, 12
requests a mistake, 4 on each key) with teachers told the key's real limit R. In the server the jobs share
the gates, so together they send R a minute; the separate processes each believe they own R and together
overshoot it, so the simulator answers 429s, which they then wait out. Reported per side, measured in one run:
wall time, the requests the simulator answered per minute and key as % of R, 429s, each job's share of the
requests answered while all N were running, and p50/p99 time from submission to a job's first finished
mistake.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from fair.jsonl import append_jsonl, read_jsonl
from fair.paper import import_mistakes
from fair.tasks import default_data_dir, get_task
from simulator.server import OfflineServer

SEED = "seed/Llama-2-7b-chat-hf_svamp_false_round0.json"
OFFLINE = Path(__file__).resolve().parents[1] / "configs" / "teachers" / "offline.yaml"
TOKEN = "bench-serve-token"
MODELS = ("sim-careful", "sim-sloppy", "sim-harsh")


def workload(folder: Path, jobs: int, per_job: int, rpm: int) -> tuple[list[Path], Path]:
    task = get_task("svamp")
    answers = import_mistakes(task, default_data_dir() / SEED, task.load("train"))
    if len(answers) < jobs * per_job:
        sys.exit(f"only {len(answers)} mistakes in the seed file; ask for at most that many")
    paths = []
    for j in range(jobs):
        path = folder / f"job{j}" / "mistakes.jsonl"
        append_jsonl(path, (a.to_json() for a in answers[j * per_job : (j + 1) * per_job]))
        paths.append(path)
    teachers = folder / "teachers.yaml"
    teachers.write_text(OFFLINE.read_text().replace("rpm: 600", f"rpm: {rpm}"))
    return paths, teachers


def first_record_s(path: Path, started: float, timeout: float = 600) -> float:
    while not (path.exists() and path.stat().st_size):
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.05)
    return time.monotonic() - started


def served(folder: Path, mistakes: list[Path], teachers: Path, sim: OfflineServer) -> dict:
    port_file = folder / "serve.port"
    command = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--port-file", str(port_file),
               "--state", str(folder / "state"), "--teachers", str(teachers), "--base-url", sim.url,
               "--max-jobs", str(len(mistakes))]  # all N at once, as the N processes run: none waits queued
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=os.environ | {"FAIR_SERVE_TOKEN": TOKEN})
    try:
        while not port_file.exists():
            time.sleep(0.05)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port_file.read_text().strip()}", timeout=60,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        while True:
            try:
                http.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        started, jobs = time.monotonic(), []
        for path in mistakes:
            upload = http.post("/v1/files", files={"file": path.open("rb")}, data={"purpose": "fair-mistakes"})
            job = {"mistakes_file_id": upload.json()["id"], "task": "svamp", "window": 8, "filter": "review"}
            jobs.append(http.post("/v1/fair/jobs", json=job).json())
        outputs = [folder / "state" / "jobs" / j["id"] / "committee.jsonl" for j in jobs]
        firsts = [first_record_s(path, started) for path in outputs]
        shares = None
        status = lambda job: http.get(f"/v1/fair/jobs/{job['id']}").json()["status"]  # noqa: E731
        while (states := [status(j) for j in jobs]).count("completed") < len(jobs):
            if shares is None and "completed" in states:
                shares = [records(path) for path in outputs]
            time.sleep(0.1)
        wall = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(30)
    return {"wall_s": wall, "first_s": firsts, "shares": shares or [records(path) for path in outputs]}


def separate(folder: Path, mistakes: list[Path], teachers: Path, sim: OfflineServer) -> dict:
    def command(path: Path) -> list[str]:
        return [sys.executable, "-m", "cli.main", "committee", "--task", "svamp", "--mistakes", str(path),
                "--teachers", str(teachers), "--base-url", sim.url, "--window", "8", "--no-progress",
                "--filter", "review"]  # as the jobs: every kind of request

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    started = time.monotonic()
    processes = [subprocess.Popen(command(path), **quiet) for path in mistakes]
    outputs = [path.with_name("committee.jsonl") for path in mistakes]
    firsts = [first_record_s(path, started) for path in outputs]
    while all(p.poll() is None for p in processes):
        time.sleep(0.1)
    shares = [records(path) for path in outputs]
    for process in processes:
        process.wait()
    return {"wall_s": time.monotonic() - started, "first_s": firsts, "shares": shares}


def records(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


def measure(log: Path, since: int, result: dict, rpm: int, rate_limited: int) -> dict:
    entries = [orjson.loads(x) for x in log.read_bytes().splitlines()[since:]]
    answered = [e for e in entries if e["status"] == 200]
    per_key = len(answered) / len(MODELS) / (result["wall_s"] / 60)
    # Shares while all jobs ran: the records each had written when the first one finished.
    shares = [n / max(sum(result["shares"]), 1) for n in result["shares"]]
    firsts = sorted(result["first_s"])
    return {
        "wall_s": result["wall_s"],
        "pct_of_limit": 100 * per_key / rpm,
        "rate_limited": rate_limited,
        "shares": shares,
        "p50_first_s": statistics.median(firsts),
        "p99_first_s": firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--mistakes", type=int, default=10, help="per job")
    parser.add_argument("--rpm", type=int, default=120, help="the simulator's limit per key and model, R")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        log = Path(tmp) / "sim.log"
        with OfflineServer(port=0, rpm=args.rpm, log_path=log, latency_ms=(50, 200)) as sim:
            for name, run in (("one fair serve, N jobs", served), ("N fair committee processes", separate)):
                folder = Path(tmp) / name.split()[1]
                mistakes, teachers = workload(folder, args.jobs, args.mistakes, args.rpm)
                since, limited = (
                    len(log.read_bytes().splitlines()) if log.exists() else 0,
                    sim.counters["rate_limited"],
                )
                print(
                    f"{name}: {args.jobs} jobs x {args.mistakes} mistakes at R = {args.rpm} rpm ...",
                    flush=True,
                )
                result = run(folder, mistakes, teachers, sim)
                results[name] = measure(log, since, result, args.rpm, sim.counters["rate_limited"] - limited)
    print(
        f"\n{args.jobs} jobs x {args.mistakes} mistakes, 3 teachers, R = {args.rpm} rpm per key (12 requests a "
        f"mistake, 4 per key)\n"
    )
    print(
        "| | wall s | answered / min / key, % of R | 429s | per-job share when the first ended | "
        "p50 / p99 s to first result |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for name, r in results.items():
        shares = " / ".join(f"{100 * x:.0f}%" for x in r["shares"])
        print(
            f"| {name} | {r['wall_s']:.1f} | {r['pct_of_limit']:.1f}% | {r['rate_limited']} | {shares} | "
            f"{r['p50_first_s']:.1f} / {r['p99_first_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
