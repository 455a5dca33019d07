"""make bench-gen: teacher-stage throughput against the offline simulator, side by side in one run.

    .venv/bin/python bench/bench_gen.py                 # 300 mistakes, 600 RPM per teacher, all peers
    .venv/bin/python bench/bench_gen.py --quick         # 24 mistakes, a smoke run
    .venv/bin/python bench/bench_gen.py --mistakes 300 --rpm 600 --paper-subset 10 --peers litellm-router,curator

Workload: the paper's real SVAMP mistakes (its seed file, via import_mistakes), the paper's prompts, three
simulated teachers (sim-careful, sim-sloppy, sim-harsh), 12 requests per mistake (3 feedback, 3 rationales,
6 peer reviews). Every client gets a fresh `simulator.server` process with its own request log:
RPM/TPM enforced per (key, model) over sliding 60 s windows (--rpm, 1M TPM), latency uniform 50-500 ms, no
injected faults. Each teacher has its own API key.

    1. ours: gen.committee.run.run_committee (streaming, fresh cache), teachers at --rpm
    2. the paper's loop: one synchronous request at a time (httpx.Client), as its collect_teacher_res.py:
       per mistake gpt, gemini, mistral feedback, then the rationales, then each review; run on
       --paper-subset mistakes and scaled linearly to --mistakes
    3. peers from PyPI, each in its own venv under .cache/bench-venvs/ (never ours; torch is forbidden by a
       pip constraint): they replay the same requests (ours' feedback and rationale prompts, and the review
       prompts built from the rationales our run got) through the OpenAI wire format for all three models,
       with no dependencies between requests (which favours them). Scripts in bench/peers/.

Measured from each server's log: 200s, 429s, other errors (ours also reports its client-side retries), and
per teacher the achieved rate over its active period (first to last request of that model in the log) as %
of --rpm; with the client's wall time, the total req/min as % of 3 x --rpm. Results: data/bench/gen.json.
The simulator's limit is a pure sliding 60 s window, so a client that bursts a whole minute's quota at once
(litellm-acompletion) can finish 2 x RPM requests in about a minute; real providers also enforce limits over
shorter periods, which such bursts would trip. Ours and curator pace at RPM/60 per second: 2 minutes here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from fair.jsonl import append_jsonl, read_jsonl, write_json
from fair.paper import import_mistakes
from fair.records import StudentAnswer
from fair.tasks import default_data_dir, get_task
from gen.committee.prompts import PROMPT_SETS
from gen.committee.run import CommitteeConfig, run_committee
from gen.teachers.config import Teacher, load_committee

ROOT = Path(__file__).resolve().parents[1]
SEED = "seed/Llama-2-7b-chat-hf_svamp_false_round0.json"
PAPER_ORDER = ("careful", "harsh", "sloppy")  # stand-ins for the paper's gpt, gemini, mistral
PEERS = {  # name: (venv, pip requirements, script and its flags); pinned to the versions this bench was written against
    "litellm-router": ("litellm", ["litellm==1.110.2"], ["litellm_peer.py", "--mode", "router"]),
    "litellm-acompletion": ("litellm", ["litellm==1.110.2"], ["litellm_peer.py", "--mode", "acompletion"]),
    "curator": ("curator", ["bespokelabs-curator==0.1.31"], ["curator_peer.py"]),
}
PROMPTS = PROMPT_SETS["paper"]


class Server:
    """A fresh offline_server process with its own log; stopped with SIGTERM."""

    def __init__(self, workdir: Path, name: str, args: argparse.Namespace, extra: tuple[str, ...] = ()):
        """`extra`: more offline_server flags (bench/soak.py's fault rates)."""
        self.log = workdir / f"server-{name}.log"
        port_file = workdir / f"port-{name}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "--port", "0", "--port-file", str(port_file),
             "--rpm", str(args.rpm), "--tpm", str(args.tpm), "--latency-ms", *map(str, args.latency_ms),
             "--seed", "0", "--log", str(self.log), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):  # at most 60 s to start
            if port_file.exists():
                self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the offline server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def log_metrics(path: Path, rpm: int, wall: float) -> dict:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    per_model, totals = {}, {"ok": 0, "429": 0, "other": 0}
    for e in lines:
        kind = "ok" if e["status"] == 200 and not e.get("fault") else "429" if e["status"] == 429 else "other"
        totals[kind] += 1
        if "model" in e:
            m = per_model.setdefault(e["model"], {"ok": 0, "429": 0, "other": 0, "times": []})
            m[kind] += 1
            m["times"].append(e["t"])
    for m in per_model.values():
        times = sorted(m.pop("times"))
        m["active_s"] = round(times[-1] - times[0], 2)
        m["req_per_min"] = round((m["ok"] - 1) / m["active_s"] * 60, 1) if m["active_s"] > 0 else 0.0
        m["pct_of_limit"] = round(100 * m["req_per_min"] / rpm, 1)
    limit = rpm * max(len(per_model), 3)
    rate = totals["ok"] / wall * 60 if wall else 0.0
    return {**totals, "wall_s": round(wall, 2), "req_per_min": round(rate, 1),
            "pct_of_committee_limit": round(100 * rate / limit, 1), "per_model": dict(sorted(per_model.items()))}


def bench_teachers(url: str, rpm: int) -> list[Teacher]:
    """The offline committee at `rpm`, each teacher with its own key (the server's buckets are per key)."""
    teachers = []
    for t in load_committee("offline", url):
        os.environ[f"BENCH_KEY_{t.name.upper()}"] = f"bench-key-{t.name}"
        teachers.append(dataclasses.replace(t, rpm=rpm, api_key_env=f"BENCH_KEY_{t.name.upper()}"))
    return teachers


def run_ours(args, workdir: Path, mistakes_path: Path) -> tuple[dict, list[dict]]:
    server = Server(workdir, "ours", args)
    try:
        config = CommitteeConfig(task="svamp", mistakes=str(mistakes_path), out=str(workdir / "committee.jsonl"),
                                 cache=str(workdir / "ours.sqlite"), prompts="paper", filter="review",
                                 progress=False)  # the paper's loop, reviews included: what the peers run
        began = time.perf_counter()
        result = asyncio.run(run_committee(config, bench_teachers(server.url, args.rpm)))
        wall = time.perf_counter() - began
    finally:
        server.stop()
    stats = result["stats"].values()
    metrics = log_metrics(server.log, args.rpm, wall) | {
        "failures": sum(s.failures for s in stats), "retries": sum(s.retries for s in stats),
        "client_429s": sum(s.rate_limited for s in stats), "client_wait_s": round(sum(s.wait_s for s in stats), 1)}
    return metrics, list(read_jsonl(config.out_path))


def send_sync(http: httpx.Client, teacher: Teacher, messages) -> str | None:
    """One blocking call in the teacher's own wire format; None on any failure (the paper's loop has no retry)."""
    key = teacher.api_key()
    try:
        if teacher.provider == "gemini":
            body = {"contents": [{"role": "user", "parts": [{"text": c}]} for _, c in messages],
                    "generationConfig": {"temperature": teacher.temperature, "maxOutputTokens": teacher.max_tokens}}
            reply = http.post(f"{teacher.url}/models/{teacher.model}:generateContent", json=body,
                              headers={"x-goog-api-key": key})
            reply.raise_for_status()
            return reply.json()["candidates"][0]["content"]["parts"][0]["text"]
        body = {"model": teacher.model, "messages": [{"role": r, "content": c} for r, c in messages],
                "temperature": teacher.temperature, "max_tokens": teacher.max_tokens}
        reply = http.post(f"{teacher.url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def run_paper_loop(args, workdir: Path, mistakes: list[StudentAnswer]) -> dict:
    task, server = get_task("svamp"), Server(workdir, "paper", args)
    try:
        teachers = {t.name: t for t in bench_teachers(server.url, args.rpm)}
        failures, began = 0, time.perf_counter()
        with httpx.Client(timeout=60.0) as http:
            for answer in mistakes:
                for name in PAPER_ORDER:
                    failures += send_sync(http, teachers[name], PROMPTS.feedback(task, answer)) is None
                rationales = {n: send_sync(http, teachers[n], PROMPTS.rationale(task, answer)) for n in PAPER_ORDER}
                for author in PAPER_ORDER:
                    failures += rationales[author] is None
                    for reviewer in (n for n in PAPER_ORDER if n != author and rationales[author] is not None):
                        review = PROMPTS.review(task, answer, rationales[author])
                        failures += send_sync(http, teachers[reviewer], review) is None
        wall = time.perf_counter() - began
    finally:
        server.stop()
    scale = args.mistakes / len(mistakes)
    return log_metrics(server.log, args.rpm, wall) | {"failures": failures, "subset_mistakes": len(mistakes),
                                                       "scaled_wall_s": round(wall * scale, 1)}


def peer_requests(records: list[dict], teachers: list[Teacher]) -> list[dict]:
    """The requests our run sent, as OpenAI-format bodies: feedback, rationales, and reviews of our rationales."""
    task, model = get_task("svamp"), {t.name: t.model for t in teachers}
    out = []

    def add(rid: str, teacher: str, messages) -> None:
        out.append({"id": rid, "model": model[teacher], "temperature": 0.0, "max_tokens": 512,
                    "messages": [{"role": r, "content": c} for r, c in messages]})

    for record in records:
        answer = StudentAnswer.from_json(record["mistake"], "committee record")
        for name in model:
            add(f"{answer.id}|feedback|{name}", name, PROMPTS.feedback(task, answer))
            add(f"{answer.id}|rationale|{name}", name, PROMPTS.rationale(task, answer))
        for author, rationale in record["rationales"].items():
            for reviewer in (n for n in model if n != author and rationale["text"] is not None):
                add(f"{answer.id}|review|{reviewer}|{author}", reviewer, PROMPTS.review(task, answer, rationale["text"]))
    return out


def peer_env(workdir: Path, venv: Path) -> dict[str, str]:
    """Nothing but 127.0.0.1: proxies for everything else point at a closed port; telemetry and hubs off;
    tiktoken reads the encodings litellm ships instead of downloading them."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    for tokenizers in venv.glob("lib/python3*/site-packages/litellm/litellm_core_utils/tokenizers"):
        env["TIKTOKEN_CACHE_DIR"] = str(tokenizers)
    dead = "http://127.0.0.1:9"
    return env | {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead, "http_proxy": dead,
                  "https_proxy": dead, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                  "TELEMETRY_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                  "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(workdir / "hf"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                  "CURATOR_VIEWER": "0", "CURATOR_DISABLE_RICH_DISPLAY": "1", "PYTHONUNBUFFERED": "1"}


def ensure_venv(name: str, requirements: list[str], workdir: Path) -> Path:
    """.cache/bench-venvs/<name>, created with python3 -m venv and reused while its requirements match."""
    venv = ROOT / ".cache" / "bench-venvs" / name
    python, stamp = venv / "bin" / "python", venv / ".bench-requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == " ".join(requirements):
        return python
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True, timeout=300)
    constraints = workdir / "no-torch.txt"
    constraints.write_text("torch==0.0.0\n")  # no such version: anything that needs torch fails to resolve
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), *requirements],
                         capture_output=True, text=True, timeout=1200)
    if pip.returncode != 0:
        tail = pip.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"pip install {' '.join(requirements)} failed (a torch requirement would fail here "
                           f"too): {' | '.join(tail)}")
    stamp.write_text(" ".join(requirements))
    return python


def run_peer(name: str, args, workdir: Path, requests_path: Path) -> dict:
    venv, requirements, (script, *flags) = PEERS[name]
    python = ensure_venv(venv, requirements, workdir)
    server = Server(workdir, name, args)
    keys = {f"sim-{n}": f"bench-key-{n}" for n in ("careful", "sloppy", "harsh")}
    command = [str(python), str(ROOT / "bench" / "peers" / script), "--requests", str(requests_path),
               "--out", str(workdir / f"{name}-out.jsonl"), "--base-url", f"{server.url}/v1", "--keys",
               json.dumps(keys), "--rpm", str(args.rpm), "--tpm", str(args.tpm), *flags]
    if name == "curator":
        command += ["--workdir", str(workdir / "curator-work")]
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=peer_env(workdir, python.parents[1]), start_new_session=True, cwd=workdir)
    try:
        out, err = proc.communicate(timeout=args.peer_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the peer's own process group, which we started
        out, err = proc.communicate()
        raise RuntimeError(f"timed out after {args.peer_timeout} s") from None
    finally:
        process_s = time.perf_counter() - began
        server.stop()
    (Path(args.out).parent / f"gen-{name}.stderr.log").write_text(err[-200_000:])  # its tail, for a look afterwards
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(err.strip().splitlines()[-3:])}")
    summary = json.loads(out.strip().splitlines()[-1])
    return log_metrics(server.log, args.rpm, summary["wall_s"]) | {
        "failures": summary["failures"], "version": summary["version"], "process_wall_s": round(process_s, 1),
        "peer_summary": summary}


def print_table(results: dict, ours_wall: float, rpm: int) -> None:
    print(f"\n{'client':<34} {'requests':>8} {'wall s':>8} {'req/min':>8} {'% 3xRPM':>8} {'429s':>6} "
          f"{'other':>6} {'retries':>7} {'failures':>8} {'vs ours':>8}   per-teacher % of {rpm} RPM")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<34} failed: {r['error']}")
            continue
        wall = r.get("scaled_wall_s", r["wall_s"])
        ratio = f"{wall / ours_wall:>7.2f}x" if not r["failures"] else "     n/a"  # did not finish the work
        teachers = " ".join(f"{m.removeprefix('sim-')} {v['pct_of_limit']:.0f}%" for m, v in r["per_model"].items())
        print(f"{name:<34} {r['ok']:>8} {wall:>8.1f} {r['req_per_min']:>8.1f} {r['pct_of_committee_limit']:>7.1f}% "
              f"{r['429']:>6} {r['other']:>6} {r.get('retries', '-'):>7} {r['failures']:>8} {ratio}   {teachers}")


def run_peers(args: argparse.Namespace, workdir: Path, requests_path: Path, n_requests: int,
              results: dict[str, dict]) -> None:
    """Each named peer replays our requests; one that cannot install or run is reported, not fatal."""
    for name in [n for n in args.peers.split(",") if n and n != "none"]:
        if name not in PEERS:
            results[name] = {"error": f"unknown peer (known: {', '.join(PEERS)})"}
            continue
        print(f"peer {name}: {n_requests} requests ...", flush=True)
        try:
            results[name] = run_peer(name, args, workdir, requests_path)
            print(f"  {results[name]['wall_s']:.1f} s", flush=True)
        except Exception as e:  # reported in the table
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  skipped: {results[name]['error']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mistakes", type=int, default=None, help="default 300 (24 with --quick)")
    p.add_argument("--rpm", type=int, default=600, help="per teacher: the server's limit and our teachers' rpm")
    p.add_argument("--tpm", type=int, default=1_000_000)
    p.add_argument("--latency-ms", type=int, nargs=2, default=[50, 500])
    p.add_argument("--paper-subset", type=int, default=None, help="mistakes the paper's loop runs, then scaled "
                   "up (default 10, 2 with --quick)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated, or 'none'")
    p.add_argument("--peer-timeout", type=int, default=900, help="seconds per peer run (venv set-up apart)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 24 mistakes, a 2-mistake paper subset")
    p.add_argument("--out", default=str(ROOT / "data" / "bench" / "gen.json"))
    args = p.parse_args()
    args.mistakes = args.mistakes or (24 if args.quick else 300)
    args.paper_subset = args.paper_subset or (2 if args.quick else 10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    task = get_task("svamp")
    mistakes = import_mistakes(task, default_data_dir() / SEED, task.load("train"))
    if args.mistakes > len(mistakes):
        sys.exit(f"only {len(mistakes)} SVAMP mistakes in the paper's seed file; ask for at most that many")
    mistakes = mistakes[: args.mistakes]
    print(f"{len(mistakes)} of the paper's SVAMP mistakes x 12 requests = {12 * len(mistakes)} requests; 3 teachers "
          f"at {args.rpm} RPM each (floor {12 * len(mistakes) / (3 * args.rpm):.1f} min at the limit), server latency "
          f"{args.latency_ms[0]}-{args.latency_ms[1]} ms, paper prompts", flush=True)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        workdir = Path(tmp)
        mistakes_path = workdir / "mistakes.jsonl"
        append_jsonl(mistakes_path, (a.to_json() for a in mistakes))
        print("ours: run_committee ...", flush=True)
        results["ours (run_committee)"], records = run_ours(args, workdir, mistakes_path)
        ours_wall = results["ours (run_committee)"]["wall_s"]
        print(f"  {ours_wall:.1f} s", flush=True)
        subset = mistakes[: args.paper_subset]
        print(f"paper loop: {len(subset)} mistakes, one request at a time ...", flush=True)
        paper = results[f"paper loop (scaled from {len(subset)})"] = run_paper_loop(args, workdir, subset)
        print(f"  {paper['wall_s']:.1f} s for {len(subset)}", flush=True)
        requests_path = workdir / "peer-requests.jsonl"
        requests = peer_requests(records, bench_teachers("http://127.0.0.1:1", args.rpm))
        requests_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
        run_peers(args, workdir, requests_path, len(requests), results)

    print_table(results, ours_wall, args.rpm)
    print(f"\npaper loop: measured {paper['wall_s']:.1f} s for {paper['subset_mistakes']} mistakes "
          f"({paper['ok']} requests, one at a time); linear estimate for {args.mistakes}: "
          f"{paper['scaled_wall_s']:.0f} s = {paper['scaled_wall_s'] / ours_wall:.1f}x ours")
    print("peers replay our requests with no dependencies between them, all through the OpenAI wire format "
          "(sim-harsh too); ours sends sim-harsh in Gemini's format and waits for each rationale before its reviews.\n"
          "per-teacher % is over that model's active period (first to last request in the server log); it can pass "
          "100% when a run is shorter than the 60 s window, which admits a burst of up to RPM. 'other' counts "
          "non-429 errors (curator's start-up probe sends an empty message list: one 400 per model).\n"
          "the simulator's limit is a pure sliding 60 s window: bursting a minute's quota at once is admitted here, "
          "which real providers' sub-minute enforcement would not do; pacing at RPM/60 per second takes 2 min.")
    write_json(args.out, {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "clients": results})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
