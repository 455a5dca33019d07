"""make soak (bench/soak.py): a tiny soak through the same code proves the soak's machinery works (kills, a
full disk, a rival run, resume, the checks), and the checks themselves fail on planted faults."""

from __future__ import annotations

import errno
import importlib
import sqlite3

import orjson
import pytest

from fair.errors import storage_full


@pytest.fixture(scope="module")
def soak():
    """bench/soak.py (the bench folder is a package: its scripts import each other as bench.*)."""
    return importlib.import_module("bench.soak")


def test_a_tiny_soak_passes_its_own_checks(soak, data_dir, tmp_path):
    """24 mistakes, 2 SIGKILLs, a full disk and a rival run, about 12 s; every check of the real soak runs, and
    each interrupted segment was stopped amid its work: after requests of its own, before its last record."""
    out = tmp_path / "soak.json"
    code = soak.main(["--mistakes", "24", "--kills", "2", "--window", "4", "--max-requests", "4",
                      "--hang-s", "1", "--timeout-s", "0.5", "--cap-s", "120", "--data-dir", str(data_dir),
                      "--out", str(out)])
    report = orjson.loads(out.read_bytes())
    assert code == 0, report["failures"]
    records = report["records"]
    assert [records[k] for k in ("expected", "written", "lost", "duplicated", "foreign")] == [24, 24, 0, 0, 0]
    assert records["re_paid"] <= records["in_flight_reported"]
    assert report["kills_survived"] == 2 and sum(report["faults"].values()) > 0
    assert sum(report["non_answers"].values()) > 0  # refusals, spent thinking, cut-off replies: met and not re-paid
    actions = [(s["action"], s["exit"]) for s in report["segments"]]
    assert sorted(actions) == [("disk_full", 1), ("finish", 0), ("kill", -9), ("kill", -9)]
    assert [s["rival"]["exit"] for s in report["segments"] if "rival" in s] == [2]
    for segment in report["segments"][:-1]:
        assert segment["requests_before_action"] > 0 and segment["records_at_action"] < 24, segment
        assert segment["records_before"] < segment["records_at_action"]  # it wrote records of its own first


def test_the_check_fails_on_a_lost_record_a_duplicate_and_repaid_requests(soak):
    figures, failures = soak.check(["a", "b", "c"], ["a", "b", "b"], re_paid=2, in_flight=2)
    assert (figures["lost"], figures["duplicated"]) == (1, 1)
    assert failures == ["1 record(s) lost, e.g. ['c']", "1 duplicate record(s), e.g. ['b']"]
    assert soak.check(["a"], ["a"], re_paid=3, in_flight=2)[1] == [
        "3 request(s) re-paid, more than the 2 reported in flight"]
    assert soak.check(["a"], ["a", "x"], re_paid=0, in_flight=0)[1] == [
        "1 record(s) for ids that are not mistakes, e.g. ['x']"]
    assert soak.check(["a", "b"], ["b", "a"], re_paid=2, in_flight=2)[1] == []


def test_repaid_counts_a_usable_reply_answered_again_in_a_later_segment_only(soak, tmp_path):
    entries = [
        {"status": 200, "body_sha256": "A"},  # segment 1
        {"status": 200, "body_sha256": "B"},
        {"status": 200, "body_sha256": "C", "fault": "malformed"},
        {"status": 200, "body_sha256": "A"},  # segment 2: A again is re-paid; C's first usable reply is not
        {"status": 200, "body_sha256": "C"},
        {"status": 500, "body_sha256": "B", "fault": "5xx"},
        {"status": 429, "body_sha256": "D"},
        {"status": 200, "body_sha256": "D"},  # segment 3: D twice in one segment is no re-payment
        {"status": 200, "body_sha256": "D"},
    ]
    log = tmp_path / "server.log"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    figures = soak.log_figures(log, [0, 3, 7, 9])
    assert figures["re_paid"] == 1
    assert figures["faults"] == {"5xx": 1, "hang": 0, "malformed": 1, "empty": 0, "429": 1}


def test_the_plan_is_a_function_of_the_seed(soak):
    steps = soak.plan(0, 387, 4, 30)
    assert steps == soak.plan(0, 387, 4, 30) != soak.plan(1, 387, 4, 30)
    assert sorted(s.action for s in steps[:-1]) == ["disk_full", "kill", "kill", "kill", "kill"]
    assert steps[-1].action == "finish" and sum(s.rival for s in steps) == 1
    assert sum(s.gap for s in steps) <= 0.6 * 387  # the interrupted segments leave work for the last one
    assert all(1 <= s.requests <= 30 for s in steps[:-1])  # each action lands amid requests of its segment


@pytest.mark.parametrize(("error", "full"), [
    (OSError(errno.EFBIG, "File too large"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.ENOENT, "No such file or directory"), False),
    (PermissionError(errno.EACCES, "Permission denied"), False),
])
def test_storage_full_tells_a_refused_write_from_other_os_errors(error, full):
    assert storage_full(error) is full


def test_storage_full_reads_sqlite_error_codes(tmp_path):
    db = sqlite3.connect(tmp_path / "x.sqlite")
    with pytest.raises(sqlite3.OperationalError) as syntax:
        db.execute("SELEC 1")
    assert not storage_full(syntax.value)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert storage_full(full)


def test_a_cache_commit_that_fails_in_the_event_loop_stops_later_sends_without_a_logged_traceback(tmp_path, caplog):
    """The commit of in-flight marks runs in a loop callback: its failure (a full disk) must reach the request
    waiting on it and every later one, not asyncio's log (which printed a traceback under `fair committee`'s
    one-line error)."""
    import asyncio

    from gen.teachers.cache import ResponseCache

    async def go(cache: ResponseCache) -> list[str]:
        cache.db.close()  # every commit now fails, as one does on a full disk
        failures = []
        for key in ("k1", "k2"):
            try:
                await cache.mark_inflight(key, "t")
            except sqlite3.Error as e:
                failures.append(type(e).__name__)
        return failures

    cache = ResponseCache(tmp_path / "c.sqlite")
    assert asyncio.run(go(cache)) == ["ProgrammingError", "ProgrammingError"]
    assert not [r for r in caplog.records if r.name == "asyncio"]
