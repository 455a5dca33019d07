"""Stop a training run when asked, at the end of the step in flight, with a checkpoint of that step.

A checkpoint is otherwise written every `save_every` steps, by default at each epoch's end, and a run killed
between two loses every step since the last. Schedulers warn before they kill: SLURM sends SIGTERM at preemption
and at the time limit (and a chosen signal ahead of it with `--signal`), Kubernetes and `kill` send SIGTERM, a
user presses Ctrl-C. While training runs, SIGTERM, SIGUSR1 and a first Ctrl-C are caught: the step in flight
finishes, its checkpoint is saved, and the run ends with `Stopped` (exit 128 + the signal: 143 for SIGTERM).
Rerunning the same command resumes from that step, as after any checkpoint. Ctrl-C once a stop is asked for
stops at once, as Python does by default, back to the last checkpoint on disk.

Under several processes every rank must stop at the same step, since a ZeRO checkpoint gathers every rank's
shards in collectives; a launcher forwards the signal to every rank, but not at the same instant. So the
ranks agree after every step, in an all-reduce of one number: nothing beside the step's own all-reduce of every
gradient. The launcher must then wait for the save: torchrun waits `--shutdown-timeout` seconds (30 by default)
before SIGKILL, DeepSpeed's launcher 30 seconds, fixed; a save cut short is never resumed from
(train/checkpoint.py), so the worst case is the run as it was before this module.
"""

from __future__ import annotations

import signal
import threading

from train.distributed import Dist

CAUGHT = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequests:
    """Within `with`: the signal that asked this process to stop, if any (first wins). Handlers are set only in
    the main thread, the one place Python delivers signals; elsewhere (training inside a server's worker thread)
    signals keep their owner's handling."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in CAUGHT}
        return self

    def __exit__(self, error_type, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: a handler set from C
        if self.signum and error_type is None:  # arrived after the last step's agreement: not dropped
            signal.raise_signal(self.signum)

    def handle(self, signum: int, frame) -> None:
        # Nothing printed here: a signal can land inside a print to the same stream, which Python refuses.
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt  # Ctrl-C on a stop already asked for: at once
        self.signum = self.signum or signum

    def agreed(self, dist: Dist) -> int | None:
        """After a step, on every rank together: the signal to stop on if any rank was asked, else None. A rank
        that was not asked itself stops as SIGTERM, what launchers forward."""
        asked = dist.all_sum([1.0 if self.signum else 0.0])[0] > 0
        return (self.signum or signal.SIGTERM) if asked else None
