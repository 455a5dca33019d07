"""What a benchmark ran on and from which commit, recorded in its JSON so that a table generated from it can
say so (bench_mine.py, bench_dtype.py, bench_train.py)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from fair.dtype import cpu_flags, resolve_dtype

ROOT = Path(__file__).resolve().parent.parent
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def machine() -> dict:
    """The CPU (model name and the flags that decide bf16's speed), cores, threads, library versions, and what
    `--dtype auto` picks here."""
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = cpu_flags()
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_flags": [f for f in CPU_FLAGS_SHOWN if f in flags], "auto": resolve_dtype("auto").to_json()}


def commit() -> str:
    """HEAD's short hash, marked when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+uncommitted changes" if dirty else "")


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: how busy the machine was (None where the OS does not say)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
