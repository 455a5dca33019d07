"""Peak resident memory of one stretch of work: the demo's stages (cli/demo.py), each test (tests/conftest.py).

On Linux the kernel keeps a process's peak RSS (VmHWM in /proc/self/status) and resets it to the current RSS
when "5" is written to /proc/self/clear_refs, so a stage's own peak is: reset before, read VmHWM after. Where
that file is not writable (macOS, some containers) the peak is the process's peak so far (ru_maxrss), which
only grows: a stage then shows the largest peak of itself and every stage before it, and says so.
Children (vLLM's engine process, torchrun workers) are counted apart: ru_maxrss of the waited-for children is
the largest any of them reached, and cannot be reset, so a stage reports it only when it grew during the stage.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
# ru_maxrss is in KiB on Linux, in bytes on macOS
RU_MAXRSS_MB = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS; False where the kernel does not offer it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float | None:
    """A field of /proc/self/status (VmHWM, VmRSS) in MB; None where /proc is not there."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mb() -> float:
    """This process's peak RSS in MB (2**20 bytes) since the last reset_peak(), else since it started."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_MB


def current_mb() -> float:
    """This process's resident memory now, in MB (VmRSS); 0 where /proc is not there."""
    return _status_mb("VmRSS") or 0.0


def children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * RU_MAXRSS_MB


@dataclasses.dataclass
class Peak:
    """`with Peak() as p: work()` (or p.start() ... p.stop()); then p.mb is the process's peak RSS during the
    work (what it already held included), p.growth_mb how far the work took it above what it held at the start,
    p.children_mb its child processes' peak (0 when no child ran longer or larger than before), p.own False where
    the peak could not be reset."""

    mb: float = 0.0
    children_mb: float = 0.0
    own: bool = True
    start_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return max(self.mb - self.start_mb, 0.0)

    def start(self) -> Peak:
        self.own = reset_peak()
        self.start_mb = current_mb()
        self._children_before = children_peak_mb()
        return self

    def stop(self) -> None:
        self.mb = peak_mb()
        children = children_peak_mb()
        self.children_mb = children if children > self._children_before else 0.0

    def __enter__(self) -> Peak:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def release_freed() -> None:
    """Hand the memory that glibc's malloc keeps after frees back to the kernel (malloc_trim). glibc raises its
    mmap threshold up to 32 MB after large frees, so activations and caches of changing shapes end up in the
    heap, where freed holes stay resident: training's RSS grew every step without this (docs/benchmarks.md).
    Elsewhere a no-op."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    import ctypes
    import ctypes.util

    if sys.platform != "linux" or not ctypes.util.find_library("c"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()
