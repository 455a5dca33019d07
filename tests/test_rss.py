"""fair/rss.py's peaks, and the suite's memory guard (tests/conftest.py) failing a test above its limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fair import rss
from tests.conftest import ROOT

MB = 2**20
pytestmark = pytest.mark.skipif(not rss.reset_peak(), reason="/proc/self/clear_refs is not writable here")


def touch(n_mb: int) -> bytearray:
    return bytearray(n_mb * MB)  # zero-filled: every page is written, so resident


def fresh(code: str) -> None:
    """Run `code` in a new interpreter: a peak is read against what the process holds, and ru_maxrss of the
    children only grows, so in the long-lived test process earlier tests' models and servers would blur it."""
    subprocess.run([sys.executable, "-c", "from fair import rss\n" + code], check=True, cwd=ROOT, timeout=120)


def test_a_peak_is_its_own_work_not_the_work_before():
    fresh("with rss.Peak() as big:\n    block = bytearray(300 * 2**20)\n    del block\n"
          "with rss.Peak() as small:\n    block = bytearray(20 * 2**20)\n    del block\n"
          "assert big.own and small.own, (big, small)\n"
          "assert big.mb - small.mb > 200, (big, small)  # the 300 MB freed before the second peak are not in it\n"
          "assert big.growth_mb > 250 and small.growth_mb < 100, (big, small)\n"
          "assert big.children_mb == 0.0  # no child process ran")


def test_a_child_process_peak_is_counted_apart():
    fresh("import subprocess, sys\n"
          "with rss.Peak() as peak:\n"
          "    subprocess.run([sys.executable, '-c', 'b = bytearray(400 * 2**20)'], check=True)\n"
          "assert peak.children_mb > 400, peak")


@pytest.mark.skipif(os.environ.get("FAIR_RSS_PROBE") != "1", reason="run by the test below, in a child pytest")
def test_probe_that_takes_300_mb():
    block = touch(300)
    assert len(block) == 300 * MB


HELD: list[bytearray] = []


@pytest.mark.skipif(os.environ.get("FAIR_RSS_PROBE") != "1", reason="run by the test below, in a child pytest")
def test_probe_that_leaves_300_mb_resident():
    HELD.append(touch(300))


@pytest.mark.skipif(os.environ.get("FAIR_RSS_PROBE") != "1", reason="run by the test below, in a child pytest")
def test_probe_after_it_that_takes_10_mb():
    assert len(touch(10)) == 10 * MB


def test_the_guard_holds_a_test_to_what_it_adds_not_what_earlier_ones_left():
    env = os.environ | {"FAIR_RSS_PROBE": "1", "FAIR_TEST_MAX_RSS_GB": "0.25"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_rss.py::test_probe_that_leaves_300_mb_resident",
                          "tests/test_rss.py::test_probe_after_it_that_takes_10_mb"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "1 failed, 1 passed" in run.stdout, run.stdout


def test_the_guard_fails_a_test_above_the_limit():
    env = os.environ | {"FAIR_RSS_PROBE": "1", "FAIR_TEST_MAX_RSS_GB": "0.25"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_rss.py::test_probe_that_takes_300_mb"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout
    assert "is above FAIR_TEST_MAX_RSS_GB (0.25 GB)" in run.stdout
    assert "biggest tests by own peak RSS" in run.stdout
    env["FAIR_TEST_MAX_RSS_GB"] = "4"
    run = subprocess.run(run.args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
