"""fair/progress.py: plain periodic lines with count, rate and ETA when not on a terminal, a redrawn bar on one,
and the stages' loops (mine, eval) reporting through it."""

from __future__ import annotations

import io
import re

from fair.progress import Progress


class Clock:
    """A clock the test moves by hand: no test waits on real time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_a_plain_line_per_interval_and_one_at_the_end():
    clock, stream = Clock(), io.StringIO()
    with Progress("mine svamp", 1000, unit="q", stream=stream, interval_s=30, clock=clock) as bar:
        for _ in range(10):  # 10 s and 50 questions a chunk: 5 q/s
            clock.now += 10
            bar.update(50)
            bar.note("tok/s=300")
        assert stream.getvalue().count("\n") == 3  # at 30, 60 and 90 s: not one line per update
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "mine svamp: 150/1000 q (15%), 5.00 q/s, 00:30 elapsed, ETA 02:50, tok/s=300"
    assert lines[-1] == "mine svamp: 500/1000 q (50%), 5.00 q/s, 01:40 elapsed, ETA 01:40, tok/s=300"  # the end
    assert len(lines) == 4


def test_the_rate_and_eta_count_this_runs_work_only():
    """A resumed run found 600 done: they are in the count, not in the rate (nor in the ETA)."""
    clock, stream = Clock(), io.StringIO()
    bar = Progress("committee svamp", 1000, unit="mistakes", initial=600, stream=stream, interval_s=30, clock=clock)
    clock.now += 40
    bar.update(100)
    assert re.fullmatch(r"committee svamp: 700/1000 mistakes \(70%\), 2\.50 mistakes/s, 00:40 elapsed, ETA 02:00\n",
                        stream.getvalue())


def test_an_unknown_total_says_count_and_rate_and_the_end_is_not_repeated():
    clock, stream = Clock(), io.StringIO()
    bar = Progress("export", None, unit="rows", stream=stream, interval_s=30, clock=clock)
    clock.now += 40
    bar.update(80)
    bar.close()
    bar.close()
    assert stream.getvalue() == "export: 80 rows, 2.00 rows/s, 00:40 elapsed\n"
    slow = Progress("train", 10, unit="step", stream=stream, clock=clock)
    clock.now += 5
    slow.update()
    assert slow.line() == "train: 1/10 step (10%), 5.00 s/step, 00:05 elapsed, ETA 00:45"


def test_a_terminal_gets_a_redrawn_bar_with_rate_and_eta(capsys):
    stream = FakeTerminal()
    with Progress("train", 4, unit="step", stream=stream) as bar:
        for _ in range(4):
            bar.update()
            bar.write("step line")  # the stage's own line goes to stdout, above the bar
    drawn = stream.getvalue()
    assert "\r" in drawn and "train: 100%|" in drawn and "4/4" in drawn and "step/s" in drawn
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", drawn)  # elapsed<ETA
    assert capsys.readouterr().out.count("step line\n") == 4


def test_disabled_shows_nothing():
    stream = FakeTerminal()
    with Progress("train", 4, stream=stream, enabled=False) as bar:
        bar.update(4)
    plain = io.StringIO()
    with Progress("train", 4, stream=plain, enabled=False) as bar:
        bar.update(4)
    assert stream.getvalue() == plain.getvalue() == ""


def test_mine_and_eval_report_progress_in_plain_lines(tmp_path, data_dir, fake_engine_cls, capsys):
    """Not a terminal (pytest captures stderr): each stage ends with one plain line of its count and rate."""
    from eval.evaluate import EvalConfig, evaluate
    from fair.config import make_config
    from gen.mine import MineConfig, mine
    from tests.conftest import svamp_reply

    mine(make_config(MineConfig, {"task": "svamp", "limit": 12, "chunk_size": 5, "out": str(tmp_path / "m")}, "test"),
         fake_engine_cls(svamp_reply()))
    evaluate(EvalConfig(task=("svamp",), split="train", limit=6, out=str(tmp_path / "e")),
             fake_engine_cls(svamp_reply()))
    err = capsys.readouterr().err
    assert re.search(r"^mine svamp: 12/12 q \(100%\), .* q/s, \d\d:\d\d elapsed, ETA 00:00, tok/s=\d+ wrong=\d+$",
                     err, re.M), err
    assert re.search(r"^eval svamp train: 6/6 q \(100%\), .* q/s, \d\d:\d\d elapsed, ETA 00:00$", err, re.M), err
    assert "\r" not in err
