"""One run per output folder: each stage holds an exclusive lock on its folder for the whole run.

Two runs of a stage on one folder would both append every id (and pay the teachers twice), and each would
take the other's work in flight for the leftovers of a crash. So a stage takes `flock(LOCK_EX | LOCK_NB)` on
`<folder>/.fair-<stage>.lock` before it reads anything there, and a second run fails at once, naming the
holder's pid (written inside the file). The operating system drops the lock when its holder exits, however
it exits: a SIGKILLed run never leaves a stale lock, and no pid is ever checked for liveness. The file itself
stays (deleting it would let a third run lock a new file while a second still holds the old one).
Stages differ in lock name, so `fair mine` may extend a folder's mistakes while `fair committee` reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fair.errors import FairError


@contextlib.contextmanager
def folder_lock(folder: str | Path, stage: str) -> Iterator[None]:
    """Hold `folder` for one run of `stage` (mine, committee, train, eval); FairError if another run has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".fair-{stage}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown, just starting"
            raise FairError(f"{folder} is in use by another `fair {stage}` run (pid {holder}, lock {path}): "
                            "wait for it to end, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still locked: no reader sees the pid of a run that has ended
    finally:
        os.close(fd)  # releases the lock
