"""make soak: the committee under every fault at once, killed, starved of disk and raced, then resumed: exactly once?

    .venv/bin/python bench/soak.py                          # the paper's SVAMP mistakes, 4 kills, < 15 minutes
    .venv/bin/python bench/soak.py --seed 3 --kills 6       # another draw of the kill moments
    .venv/bin/python bench/soak.py --mistakes 24 --kills 2  # a tiny soak (tests/test_soak.py runs one)

A bench script, beside bench_scale.py whose helpers it shares (the server, the committee command line, the
record counter): like the benchmarks it is a long `make` target that prints figures for docs/benchmarks.md, and the
test suite runs a tiny configuration of it through the same code.

Everything on loopback: the simulator in its own process (bench_gen.Server) injects 500/503s, hangs (past the
teachers' timeout: a timeout and a retry each), malformed JSON and empty replies at high rates, billed
non-answers (refusals, spent thinking, cut-off replies: replies, cached, never paid twice), latency, and a rate
limit below the rpm the teachers are told (429s with Retry-After). The real `fair committee` CLI works through
the paper's SVAMP mistakes in segments:

  * an action comes once the segment has written `gap` records and the server has answered `requests` more
    (amid requests, not just after a write): progress, not a clock, as a timer on a loaded machine can fire
    before any request or after the end. The segment is frozen there (SIGSTOP); it must have work left;
  * kill: SIGKILL of the frozen process;
  * disk full: its RLIMIT_FSIZE (prlimit on the running process, so that the write fails mid-run rather than
    at start-up) drops to committee.jsonl's size plus a margin, then it runs on (SIGCONT); the first write
    past it, SQLite's or the JSONL's, must stop the run with exit 1 and a one-line error;
  * rival: at one action, a second `fair committee` on the same folder must be refused at once (exit 2),
    naming the first one's pid (frozen, so the rival's slow start cannot let the first one finish first);
  * finish: the last segment resumes and runs to the end (exit 0).
After each interrupted segment the soak waits until the server has answered what the dead run left in
flight, so that each server log line belongs to one segment. Every segment must keep every record written
before it.

Measured: faults and non-answers by kind (the server's log), kills survived, records lost and duplicated, and
re-paid requests (a usable reply answered in one segment and again in a later one) against the in-flight
requests the resumed runs reported ("resuming: N request(s) ...").
Exit 1 when any record is lost or duplicated, re-paid exceeds reported, or a segment misbehaves; exit 2 when
the wall-clock cap (--cap-s) runs out: every process the soak started is killed first.

Deterministic given --seed: the segments' plan from one seeded RNG, the simulator's faults from (seed, request
body, attempt). Timing still varies, so the counts of faults and in-flight requests vary; the checks do not.
Results: data/bench/soak.json (and the work folder, kept with --keep or when a check fails).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bench.bench_gen import SEED, Server
from bench.bench_scale import committee_command, line_count, wait_for_records, write_teachers
from fair.jsonl import append_jsonl, read_jsonl, unique_ids, write_json
from fair.paper import import_mistakes
from fair.tasks import default_data_dir, get_task
from fair.wire.listen import is_loopback

ROOT = Path(__file__).resolve().parents[1]
FAULT_KINDS = ("5xx", "hang", "malformed", "empty", "429")
REPLY_KINDS = ("refusal", "thinking", "truncate")  # the simulator's log `outcome` of a billed non-answer
# The simulator's rates: faults (a hang lasts --hang-s), then billed non-answers (replies: cached, never re-sent).
RATES = {"p-5xx": 0.08, "p-hang": 0.02, "p-malformed": 0.05, "p-empty": 0.05,
         "p-refusal": 0.03, "p-thinking": 0.02, "p-truncate": 0.03}
DISK_FULL_ERROR = "fair committee: error: a write failed"


class OverCap(Exception):
    """The wall-clock cap ran out (raised from SIGALRM)."""


def over_cap(*_: object) -> None:
    raise OverCap


@dataclasses.dataclass(frozen=True)
class Step:
    action: str  # "kill", "disk_full" or "finish"
    gap: int  # records this segment writes before its action
    requests: int  # then this many more requests answered, so that the action lands amid requests
    margin: int = 0  # disk_full: bytes committee.jsonl may still grow by
    rival: bool = False  # a second run on the folder is tried while this segment runs


def plan(seed: int, mistakes: int, kills: int, max_requests: int) -> list[Step]:
    """Kills and one disk-full moment in a seeded order, then a segment that finishes. The interrupted
    segments write at most 60% of the records between them, so each one still has work when its action comes."""
    rng = random.Random(seed)
    actions = ["kill"] * kills + ["disk_full"]
    rng.shuffle(actions)
    most = max(1, int(0.6 * mistakes / len(actions)))
    rival = rng.randrange(len(actions))
    steps = [Step(a, rng.randint(1, most), 1 + int(rng.uniform(0, max_requests)),
                  rng.randint(4096, 65536) if a == "disk_full" else 0, i == rival) for i, a in enumerate(actions)]
    return [*steps, Step("finish", 0, 0)]


# ---------------------------------------------------------------------------------------------------------
# Setup


def write_inputs(workdir: Path, args: argparse.Namespace) -> list[str]:
    """The paper's SVAMP mistakes (its seed file) and the offline committee; returns the expected ids."""
    task = get_task("svamp")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    answers = [a.to_json() for a in import_mistakes(task, data_dir / SEED, task.load("train", data_dir))]
    answers = list(unique_ids(answers))[: args.mistakes or None]
    append_jsonl(workdir / "mistakes.jsonl", answers)
    # Told twice the server's rpm: they find the limit by its 429s. Retries start fast, as the soak is short.
    write_teachers(workdir / "teachers.yaml", 2 * args.rpm, 10**9, timeout_s=args.timeout_s,
                   retry_backoff_s=0.2)
    return [a["id"] for a in answers]


def start_server(workdir: Path, args: argparse.Namespace) -> Server:
    rates = [part for flag in RATES for part in (f"--{flag}", str(getattr(args, flag.replace("-", "_"))))]
    faults = (*rates, "--hang-s", str(args.hang_s))
    server = Server(workdir, "soak", argparse.Namespace(rpm=args.rpm, tpm=10**9, latency_ms=args.latency_ms),
                    extra=(*faults, "--seed", str(args.seed)))
    if not is_loopback(urlsplit(server.url).hostname or ""):
        server.stop()
        raise RuntimeError(f"the simulator is not on loopback: {server.url}")
    return server


# ---------------------------------------------------------------------------------------------------------
# One segment


def ids_in(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)] if path.exists() else []


def run_segment(workdir: Path, name: str, command: list[str], step: Step, children: list, server_log: Path) -> dict:
    """Start `fair committee`, carry out the step's action, wait for the process: what happened, and what was
    wrong (`problems`)."""
    out = workdir / "committee.jsonl"
    before = ids_in(out)
    out_log, err_log = workdir / f"{name}.out", workdir / f"{name}.err"
    seg = {"action": step.action, "records_before": len(before), "log_start": line_count(server_log), "problems": []}
    began = time.monotonic()
    with out_log.open("w") as stdout, err_log.open("w") as stderr:
        # Unbuffered: a SIGKILL must not take the "resuming: N request(s)" line with it.
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        children.append(proc)
        kept = act(proc, command, step, out, server_log, seg) if step.action != "finish" else []
        proc.wait()
    children.remove(proc)
    after = set(ids_in(out))
    seg |= {"exit": proc.returncode, "seconds": round(time.monotonic() - began, 1), "records_after": len(after),
            "in_flight_reported": in_flight_reported(out_log.read_text()), "error": err_log.read_text().strip()}
    seg["problems"] += segment_problems(step, seg, (set(before) | set(kept)) - after)
    return seg


def act(proc: subprocess.Popen, command: list[str], step: Step, out: Path, server_log: Path, seg: dict) -> list[str]:
    """The step's action on the running segment (and the rival, if it is this segment's), once it has made the
    step's progress; returns the ids written when the action came, which must all survive it."""
    try:
        wait_for_records(out, seg["records_before"] + step.gap, proc)
        wait_for_records(server_log, line_count(server_log) + step.requests, proc)  # one request a line
        proc.send_signal(signal.SIGSTOP)  # frozen: it sends and writes nothing more until killed or continued
    except RuntimeError:  # it exited first: said below
        pass
    written = ids_in(out)
    seg |= {"records_at_action": len(written), "requests_before_action": line_count(server_log) - seg["log_start"]}
    if proc.poll() is not None:
        seg["problems"].append(f"the segment ended (exit {proc.returncode}) before its {step.action}")
        return written
    if len(written) >= len(ids_in(out.with_name("mistakes.jsonl"))):
        seg["problems"].append(f"every record was written before the segment's {step.action}: nothing to interrupt")
    if step.rival:
        seg["rival"] = rival(command, proc.pid, seg["problems"])
    if step.action == "kill":
        proc.send_signal(signal.SIGKILL)
    else:  # every file the run writes may grow only this far: the next write past it fails (EFBIG)
        seg["fsize_limit"] = limit = out.stat().st_size + step.margin
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        proc.send_signal(signal.SIGCONT)
    return written


def in_flight_reported(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("resuming: "):
            return int(line.split()[1])
    return 0


def segment_problems(step: Step, seg: dict, lost: set[str]) -> list[str]:
    problems = [f"{len(lost)} record(s) written before the segment are gone"] if lost else []
    expected_exit = {"kill": -signal.SIGKILL, "disk_full": 1, "finish": 0}[step.action]
    if seg["exit"] != expected_exit:
        problems.append(f"exit {seg['exit']}, expected {expected_exit}: {seg['error'][-500:]}")
    if step.action == "disk_full" and not (seg["error"].startswith(DISK_FULL_ERROR) and "\n" not in seg["error"]):
        problems.append(f"a full disk should stop the run with one line, got: {last_line(seg['error'])!r}")
    return problems


def rival(command: list[str], holder: int, problems: list[str]) -> dict:
    """A second run on the folder while `holder` runs: refused at once, naming the holder."""
    began = time.monotonic()
    try:  # a lock that waited instead of refusing would wait for a holder that is only killed after this
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        problems.append(f"a second run was still waiting after 60 s instead of being refused (holder {holder})")
        return {"exit": None, "seconds": 60.0, "error": ""}
    seconds, error = round(time.monotonic() - began, 2), result.stderr.strip()
    if result.returncode != 2 or f"pid {holder}" not in error or "\n" in error:
        problems.append(f"a second run was not refused with the holder's pid {holder}: exit {result.returncode}, "
                        f"{error[-300:]!r}")
    return {"exit": result.returncode, "seconds": seconds, "error": error}


# ---------------------------------------------------------------------------------------------------------
# The server's log and the checks


def log_figures(log: Path, boundaries: list[int]) -> dict:
    """Faults by kind, usable replies, and re-paid requests: bodies with a usable reply (200, no fault) in
    one segment (log lines boundaries[k] to boundaries[k+1]) and again in a later one."""
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    faults = Counter("429" if e["status"] == 429 else e["fault"] for e in lines if e["status"] == 429 or "fault" in e)
    usable = [{e["body_sha256"] for e in lines[a:b] if e["status"] == 200 and "fault" not in e}
              for a, b in zip(boundaries, boundaries[1:], strict=False)]
    re_paid = sum(len(usable[k] & set().union(*usable[k + 1:])) for k in range(len(usable) - 1))
    replies = Counter(e["outcome"] for e in lines if e.get("outcome") in REPLY_KINDS)
    return {"faults": {k: faults.get(k, 0) for k in FAULT_KINDS}, "requests_logged": len(lines),
            "non_answers": {k: replies.get(k, 0) for k in REPLY_KINDS},
            "usable_replies": sum(len(u) for u in usable), "re_paid": re_paid}


def failed_requests(path: Path) -> int:
    """Requests that failed for good, recorded as errors in committee.jsonl: what the faults cost the data."""
    failed = 0
    for r in read_jsonl(path):
        failed += sum(f["error"] is not None for f in r["feedback"].values())
        for rationale in r["rationales"].values():
            failed += (rationale["error"] is not None) + sum(v["error"] is not None
                                                             for v in rationale["reviews"].values())
    return failed


def check(expected: list[str], written: list[str], re_paid: int, in_flight: int) -> tuple[dict, list[str]]:
    """The soak's promise on the final committee.jsonl and the server's log: (figures, failures)."""
    counts = Counter(written)
    lost = sorted(set(expected) - set(counts))
    foreign = sorted(set(counts) - set(expected))
    duplicated = sum(n - 1 for n in counts.values())
    figures = {"expected": len(expected), "written": len(written), "lost": len(lost), "duplicated": duplicated,
               "foreign": len(foreign), "re_paid": re_paid, "in_flight_reported": in_flight}
    failures = []
    if lost:
        failures.append(f"{len(lost)} record(s) lost, e.g. {lost[:3]}")
    if duplicated:
        failures.append(f"{duplicated} duplicate record(s), e.g. {[i for i, n in counts.items() if n > 1][:3]}")
    if foreign:
        failures.append(f"{len(foreign)} record(s) for ids that are not mistakes, e.g. {foreign[:3]}")
    if re_paid > in_flight:
        failures.append(f"{re_paid} request(s) re-paid, more than the {in_flight} reported in flight")
    return figures, failures


# ---------------------------------------------------------------------------------------------------------
# The soak


def soak(workdir: Path, args: argparse.Namespace, children: list) -> tuple[dict, list[str]]:
    """Every segment of the plan against one server; then the checks. (report, failures)"""
    began = time.monotonic()
    expected = write_inputs(workdir, args)
    steps = plan(args.seed, len(expected), args.kills, args.max_requests)
    server = start_server(workdir, args)
    children.append(server)
    segments, boundaries = [], [line_count(server.log)]
    command = committee_command(workdir, "svamp", server.url, args.window)
    try:
        for number, step in enumerate(steps, start=1):
            segments.append(run_segment(workdir, f"segment-{number}", command, step, children, server.log))
            print_segment(number, step, segments[-1])
            if step.action != "finish":  # what the stopped run left in flight: answered, or hung and answered
                time.sleep(args.hang_s + args.latency_ms[1] / 1000 + 0.5)
            boundaries.append(line_count(server.log))
    finally:
        server.stop()
        children.remove(server)
    in_flight = sum(s["in_flight_reported"] for s in segments)
    figures = log_figures(server.log, boundaries)
    records, failures = check(expected, ids_in(workdir / "committee.jsonl"), figures["re_paid"], in_flight)
    failures = [f"segment {n}: {p}" for n, s in enumerate(segments, start=1) for p in s["problems"]] + failures
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
              "plan": [dataclasses.asdict(s) for s in steps], "segments": segments, "records": records,
              "kills_survived": sum(s["action"] == "kill" and s["exit"] == -signal.SIGKILL for s in segments),
              **figures, "failed_requests": failed_requests(workdir / "committee.jsonl"),
              "wall_s": round(time.monotonic() - began, 1), "passed": not failures}
    return report, failures


def last_line(text: str) -> str:
    """A process's stderr as one line: its last, and how many came before (a traceback should not)."""
    lines = text.splitlines() or [""]
    return lines[-1] + (f" (after {len(lines) - 1} more lines)" if len(lines) > 1 else "")


def print_segment(number: int, step: Step, seg: dict) -> None:
    rival = seg.get("rival")
    note = f"; a second run refused in {rival['seconds']} s: {last_line(rival['error'])}" if rival else ""
    if step.action == "disk_full":
        note += f"; RLIMIT_FSIZE {seg.get('fsize_limit')} bytes: {last_line(seg['error'])}"
    print(f"  segment {number}: {step.action:<9} records {seg['records_before']:>4} -> {seg['records_after']:>4}, "
          f"{seg['in_flight_reported']} reported in flight at its start, exit {seg['exit']}, {seg['seconds']} s"
          f"{note}", flush=True)
    for problem in seg["problems"]:
        print(f"    PROBLEM: {problem}", flush=True)


def print_summary(report: dict, failures: list[str]) -> None:
    faults, records = report["faults"], report["records"]
    print(f"faults injected: {', '.join(f'{k} {v:,}' for k, v in faults.items())} "
          f"({sum(faults.values()):,} of {report['requests_logged']:,} requests); billed non-answers: "
          f"{', '.join(f'{k} {v:,}' for k, v in report['non_answers'].items())} (replies: re-paid counts them too)")
    full = next(s for s in report["segments"] if s["action"] == "disk_full")
    rival = next((s["rival"] for s in report["segments"] if "rival" in s), None)  # none if its segment ended first
    second = f"exit {rival['exit']} in {rival['seconds']} s" if rival else "not tried (a failure above)"
    print(f"kills survived: {report['kills_survived']}; disk full: exit {full['exit']}, "
          f"{last_line(full['error'])!r}; second run: {second}")
    print(f"records: {records['expected']} expected, {records['written']} written; lost {records['lost']}, "
          f"duplicated {records['duplicated']}; wall time {report['wall_s']} s")
    print(f"requests: {report['usable_replies']:,} usable replies, {report['failed_requests']} failed for good "
          f"(recorded as errors); re-paid {report['re_paid']} vs {records['in_flight_reported']} reported in flight")
    print("".join(f"FAILED: {failure}\n" for failure in failures), end="")
    print("soak: FAILED" if failures else "soak: passed (0 lost, 0 duplicated, re-paid within reported in flight)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fair-soak-"))
    children: list = []
    previous = signal.signal(signal.SIGALRM, over_cap)
    signal.alarm(args.cap_s)
    print(f"soak: {args.mistakes or 'all'} mistakes, seed {args.seed}, {args.kills} kills, cap {args.cap_s} s, "
          f"in {workdir}", flush=True)
    try:
        report, failures = soak(workdir, args, children)
    except OverCap:
        failures = [f"over the {args.cap_s} s wall-clock cap: every process it started was killed"]
        report = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for child in reversed(children):  # only what this soak started, by its own handle
            proc = child.proc if isinstance(child, Server) else child
            proc.kill()
            proc.wait()
    if report is None:
        print(f"soak: FAILED: {failures[0]}; work folder kept: {workdir}")
        return 2
    write_json(args.out, report | {"failures": failures})
    print_summary(report, failures)
    if failures or args.keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir)
    print(f"-> {args.out}")
    return 1 if failures else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mistakes", type=int, default=0, help="the first N of the paper's SVAMP mistakes (0: all)")
    p.add_argument("--kills", type=int, default=4, help="SIGKILLed segments (one disk-full segment besides)")
    p.add_argument("--seed", type=int, default=0, help="draws the plan and the simulator's faults")
    p.add_argument("--cap-s", type=int, default=840, help="wall-clock cap: past it, kill everything, exit 2")
    p.add_argument("--window", type=int, default=64, help="mistakes in flight (the committee's default)")
    p.add_argument("--max-requests", type=int, default=30,
                   help="an action lands 1 to this many requests after its gap (30: about a second's worth)")
    p.add_argument("--rpm", type=int, default=600, help="the server's limit per teacher (teachers are told 2x)")
    p.add_argument("--latency-ms", type=float, nargs=2, default=(20, 200))
    for flag, rate in RATES.items():
        p.add_argument(f"--{flag}", type=float, default=rate, help=f"the simulator's --{flag} (default {rate})")
    p.add_argument("--hang-s", type=float, default=3.0, help="a hang; above --timeout-s, so each one times out")
    p.add_argument("--timeout-s", type=float, default=1.5, help="the teachers' timeout per attempt")
    p.add_argument("--data-dir", default=None, help="benchmark data (default $FAIR_DATA_DIR, else shared/data)")
    p.add_argument("--out", default=str(ROOT / "data" / "bench" / "soak.json"))
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
