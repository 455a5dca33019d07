"""The numbers every stage computes in: one setting, `dtype`, resolved here for mining, evaluation, training,
`fair gen`, the demo and the engines alike.

    auto       bfloat16 on a CUDA GPU, and on a CPU with bf16 matrix instructions (AMX: `amx_bf16`, or
               AVX512-BF16: `avx512_bf16`), where a bf16 matmul runs several times as fast as an fp32 one
               (docs/benchmarks.md); float32 on every other CPU, where torch
               emulates bf16 and it is slower than fp32.
    float32    as asked: the reference precision.
    bfloat16   as asked, on any device.

Training keeps fp32 master weights and optimizer state whatever this says: bfloat16 there means autocast
(train/step.py). The CPU's features come from torch's own query (`torch.cpu.get_capabilities`, in recent torch)
and, on older torch, from the flags in /proc/cpuinfo (Linux); they are read once per process. Every run states
what it chose and why (`Precision.to_json()`): in mine's stats.json, eval's summary.json, the training run's
train_summary.json and the experiment's unit files.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fair.errors import FairError

Dtype = Literal["auto", "float32", "bfloat16"]
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
DTYPE_HELP = ("auto (default): bfloat16 on CUDA GPUs and on CPUs with AMX or AVX512-BF16, float32 elsewhere; "
              "float32; bfloat16. Training keeps fp32 master weights and autocasts to bf16")
# The CPU features that make bf16 matmuls faster than fp32 ones, in the order we name them.
BF16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")


def dtype_field() -> Any:
    """The `dtype` field of a stage's config dataclass, with its help text (fair/config.py reads it)."""
    return dataclasses.field(default="auto", metadata={"help": DTYPE_HELP})


@dataclass(frozen=True)
class Precision:
    requested: str  # what the user asked for: auto, float32 or bfloat16
    dtype: str  # what runs: float32 or bfloat16
    reason: str  # why, e.g. "cpu has amx_bf16"

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"


def resolve_dtype(requested: str) -> Precision:
    """The dtype to run in, and why. A bad value is a one-line error naming the setting."""
    if requested not in DTYPES:
        raise FairError(f"unknown dtype {requested!r} (choose from {', '.join(DTYPES)})")
    if requested != "auto":
        return Precision(requested, requested, "asked for")
    if cuda_available():
        return Precision(requested, "bfloat16", "cuda gpu")
    feature = cpu_bf16_feature()
    if feature is not None:
        return Precision(requested, "bfloat16", f"cpu has {feature}")
    return Precision(requested, "float32", f"cpu has neither {' nor '.join(BF16_CPU_FEATURES)}")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_bf16_feature() -> str | None:
    """The first of BF16_CPU_FEATURES this CPU has, or None."""
    flags = cpu_flags()
    return next((f for f in BF16_CPU_FEATURES if f in flags), None)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's features, once per process: torch's query where it has one, else Linux's /proc/cpuinfo."""
    import torch

    query = getattr(torch.cpu, "get_capabilities", None)
    if query is not None:
        return frozenset(name for name, value in query().items() if value is True)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():  # not Linux, and a torch too old to ask: assume no bf16 units (float32 is safe)
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()
