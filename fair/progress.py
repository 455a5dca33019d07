"""Progress you can see, the same way in every long command (mine, committee, train, eval, export).

    with Progress(f"mine {task.name}", total=len(todo), unit="q") as bar:   # the one call a stage makes
        for chunk in ...:
            bar.update(len(chunk))
            bar.note(f"tok/s={rate:.0f}")                                 # optional: shown after the ETA

On a terminal (the stream's isatty()): a tqdm bar on stderr, redrawn in place, with count, rate and ETA.
Elsewhere (CI, a log file, `| tee`): a plain line at most every `interval_s` seconds (30 by default, so an
hour-long run writes about 120 lines) and one at the end, with the same count, rate and ETA:

    mine svamp: 120/1000 q (12%), 2.69 q/s, 00:44 elapsed, ETA 05:27, tok/s=300

A redrawn bar in a log is one "line" of carriage returns, thousands of characters long, that a CI page shows only
when the stage ends; a plain line a minute says where the run is and when it will end.

Why tqdm and not rich: tqdm is already a core dependency (the engines and `fair committee --server` draw its
bars), rich would be a new one for the same bar; tqdm's bar works with `logging_redirect_tqdm` (the committee's
log lines print above it), and its `format_meter` formats the plain lines, so both modes say rate and ETA alike.

The rate counts this run's work only: `initial` (what a resumed run found done) is shown in the count but not in
the rate, so a resume's ETA is not flattered by work done before it. `enabled=False` shows nothing (training's
ranks other than 0, `--no-progress`).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

INTERVAL_S = 30.0  # between plain lines when not on a terminal
LINE = "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f}%), {rate_fmt}, {elapsed} elapsed, ETA {remaining}{postfix}"
LINE_NO_TOTAL = "{desc}: {n_fmt}{unit}, {rate_fmt}, {elapsed} elapsed{postfix}"


class Progress:
    """A stage's progress: a tqdm bar on a terminal, else plain periodic lines (the module docstring)."""

    def __init__(self, desc: str, total: int | None, unit: str = "it", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit, self.initial = desc, total, unit, initial
        self.n = initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval_s, self.clock = interval_s, clock
        self.began = self.printed = clock()
        self.printed_n: int | None = None  # the count the last plain line showed
        self.postfix = ""
        self.closed = False
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self.bar = tqdm(desc=desc, total=total, unit=f" {unit}", initial=initial, file=self.stream,
                            dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.clock() - self.printed >= self.interval_s:
            self.print_line()

    def set_total(self, total: int | None) -> None:
        """A total learnt on the way (a `fair serve` job's, as its events report it)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total

    def note(self, text: str) -> None:
        """What the stage adds after the ETA (tokens/s, cost, loss), shown with the next line or redraw."""
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """A line of the stage's own on stdout (training's `step i/N loss ...`), above the bar on a terminal."""
        if self.bar is not None:
            tqdm.write(text, file=sys.stdout)  # clears the bar, prints, draws it again
        else:
            print(text, flush=True)

    def line(self) -> str:
        """The plain line: count, share, rate, elapsed, ETA (tqdm's own formatting, whitespace collapsed)."""
        text = tqdm.format_meter(self.n, self.total, self.clock() - self.began, prefix=self.desc, unit=f" {self.unit}",
                                 initial=self.initial, postfix=self.postfix or None,
                                 bar_format=LINE if self.total else LINE_NO_TOTAL)
        return re.sub(r"(\d)s/ ", r"\1 s/", " ".join(text.split()))  # a slow rate inverts: "2.20 s/step"

    def print_line(self) -> None:
        self.printed, self.printed_n = self.clock(), self.n
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.printed_n != self.n:
            self.print_line()  # the end, whatever the interval: the log says how far the stage got and how fast

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

