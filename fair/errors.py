"""One exception type for every user-facing failure, and the one way a command ends on one: `main_guard`.

Every entry point (`fair ...`, `python -m simulator.cli`, `python -m cli.demo`, ...) runs its work through
`main_guard`, so they all end alike: a FairError is one line `<prog>: error: <message>` and exit 2; Ctrl-C is
one line and exit 130 (finished work is on disk: every stage resumes); a stage that saved its work on a signal
and stopped (`Stopped`) says so in one line and exits 128 + the signal; a write refused for want of space is
one line and exit 1. Any other exception keeps its traceback: it is a bug, and the traceback is its report.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from collections.abc import Callable


class FairError(Exception):
    """A problem with the user's input or environment, explained in one line that names the culprit."""


class Stopped(KeyboardInterrupt):
    """A stage that a signal asked to stop, and that saved its work first (train/preempt.py). A KeyboardInterrupt,
    so that whatever stands between it and `main_guard` lets it through as it lets Ctrl-C through."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):  # pickled (a worker's error to its parent) with both arguments
        return type(self), (self.signum, str(self))


def main_guard(prog: str, work: Callable[[], int | None]) -> int:
    """Run `work`; its return value (None: 0) is the exit status, or the status of the failure it ended on."""
    try:
        return work() or 0
    except FairError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130
    except (OSError, sqlite3.Error) as e:
        if not storage_full(e):
            raise
        print(f"{prog}: error: a write failed ({e}): the disk is full or a file is over its size limit; "
              "finished work is saved, free some space and rerun to resume", file=sys.stderr)
        return 1


def storage_full(e: BaseException) -> bool:
    """A write refused for want of space: ENOSPC, EFBIG (RLIMIT_FSIZE), EDQUOT, or SQLite's FULL and IOERR
    (SQLite reports a refused write as a generic I/O error). Any other error keeps its traceback."""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def out_of_resources(e: BaseException) -> bool:
    """The machine, not the request: storage full (above), or the process out of file descriptors or memory.
    Such a failure passes when the machine recovers (a `fair serve` job that hit it can be resumed)."""
    return storage_full(e) or isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
