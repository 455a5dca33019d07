"""One training run in its own process tree, measured from outside, the same way whichever trainer it is.

bench_train.py uses it for ours, TRL's SFTTrainer and ZeRO. The trainer must print "training ..." when its
loop starts and "step i/N ..." after each optimizer step, and write log.jsonl into --out. Measured here:
  - step_line_s: when each "step" line arrived (s since start): step times include all the loop does.
  - step_line_cpu_s: the tree's CPU time (user + system) then, sampled within 0.1 s of each line: on a shared
    machine a step's CPU seconds vary less than its wall time, which waits for cores other processes hold.
  - peak_rss_gib: VmHWM (the kernel's peak RSS) of every process of the tree, polled every 0.1 s, taken when
    the last step line arrives (before ours writes its final checkpoint and exports); several workers: summed.
  - peak_gpu_gib: on a GPU host, the most GPU memory nvidia-smi showed for the tree's processes (polled 0.5 s).
  - foreign_cpu_load_cores: CPU time used outside the tree per second of the run: high means disturbed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fair.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_SMI = shutil.which("nvidia-smi")


@dataclass(frozen=True)
class RunSpec:
    side: str  # "ours" or "trl"
    command: list[str]  # without --out, which run() adds
    processes: int = 1  # workers (torchrun's children) when > 1
    env: dict[str, str] = field(default_factory=dict)


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def gpu_mib_by_pid() -> dict[int, int]:
    if NVIDIA_SMI is None:
        return {}
    out = subprocess.run(
        [NVIDIA_SMI, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return {
        int(pid): int(mib) for pid, mib in (line.split(", ") for line in out.splitlines() if ", " in line)
    }


class Tree:
    """Peak memory of a process tree, sampled."""

    def __init__(self, pid: int, processes: int):
        self.root, self.processes = psutil.Process(pid), processes
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.gpu_mib, self.last_gpu_poll = 0, 0.0

    def members(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return []

    def sample(self) -> None:
        members = self.members()
        for p in members:
            with contextlib.suppress(psutil.Error, OSError, StopIteration):
                self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), hwm_kib(p.pid))
                self.cpu[p.pid] = sum(p.cpu_times()[:2])  # user + system
        if NVIDIA_SMI and time.perf_counter() - self.last_gpu_poll > 0.5:
            self.last_gpu_poll = time.perf_counter()
            used = gpu_mib_by_pid()
            self.gpu_mib = max(self.gpu_mib, sum(used.get(p.pid, 0) for p in members))

    def peak_rss_gib(self) -> tuple[float, list[float]]:
        """The trainer's peak: the root alone, or the sum of torchrun's workers (the launcher left out)."""
        if self.processes == 1:
            return self.hwm.get(self.root.pid, 0) / 2**20, []
        workers = sorted((kib / 2**20 for pid, kib in self.hwm.items() if pid != self.root.pid), reverse=True)
        return sum(workers), workers


def run(name: str, spec: RunSpec, out: Path, steps: int) -> dict:
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | spec.env
    if spec.processes == 1:
        env.pop("OMP_NUM_THREADS", None)  # torch's default: every core
    command = [*spec.command, "--out", str(out)]
    out.mkdir(parents=True)
    print(f"   {' '.join(command)}", flush=True)
    busy0, began = busy_seconds(), time.perf_counter()
    with open(out / "stderr.log", "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - began, line.rstrip()))
            if line.startswith(("step ", "training ")):
                print(f"   [{lines[-1][0]:6.1f}s] {line.rstrip()}", flush=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    tree, training_peak, step_cpu = Tree(proc.pid, spec.processes), None, []
    while proc.poll() is None:
        tree.sample()
        if len(step_cpu) < sum(line.startswith("step ") for _, line in lines):
            step_cpu.append(sum(tree.cpu.values()))  # within 0.1 s of the line
        if training_peak is None and any(line.startswith(f"step {steps}/") for _, line in lines):
            training_peak = tree.peak_rss_gib(), tree.gpu_mib
        time.sleep(0.1)
    wall = time.perf_counter() - began
    thread.join()
    if proc.returncode != 0 or training_peak is None:
        tail = (out / "stderr.log").read_text()[-3000:]
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")
    (rss, workers), gpu_mib = training_peak
    step_lines = [t for t, line in lines if line.startswith("step ")]
    return {
        "name": name,
        "side": spec.side,
        "processes": spec.processes,
        "command": command,
        "log": list(read_jsonl(out / "log.jsonl")),
        "wall_s": wall,
        "step_line_s": step_lines,
        "step_line_cpu_s": step_cpu,
        "setup_s": next(t for t, line in lines if line.startswith("training ")),
        "peak_rss_gib": rss,
        "worker_peak_rss_gib": workers,
        "peak_gpu_gib": gpu_mib / 1024 if NVIDIA_SMI else None,
        "foreign_cpu_load_cores": max(0.0, busy_seconds() - busy0 - sum(tree.cpu.values())) / wall,
    }
