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


def test_a_peak_is_its_own_work_not_the_work_before():
    with rss.Peak() as big:
        block = touch(300)
        del block
    with rss.Peak() as small:
        block = touch(20)
        del block
    assert big.own and small.own
    assert big.mb - small.mb > 200  # the 300 MB freed before the second peak are not in it
    assert big.children_mb == 0.0  # no child process ran


def test_a_child_process_peak_is_counted_apart():
    with rss.Peak() as peak:
        subprocess.run([sys.executable, "-c", "b = bytearray(400 * 2**20)"], check=True)
    assert peak.children_mb > 400


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
