"""The committee through OpenAI's Batch API (gen/teachers/batch.py), against the offline server's batch endpoints
(simulator/batch.py): the live run's records at half the price, resume without resubmitting, fallbacks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest

from cli.main import main
from fair.errors import FairError
from fair.jsonl import read_jsonl
from gen.committee.run import CommitteeConfig, run_committee
from gen.teachers import batch as batch_module
from gen.teachers.batch import Ledger
from gen.teachers.cache import ResponseCache
from gen.teachers.config import Teacher, committee_path, load_committee
from gen.teachers.providers import ChatResponse, Usage
from simulator.server import OfflineServer
from tests.conftest import PLANTED_KEY, assert_complete, fast, import_seed_mistakes

LIMIT = 6
BATCHED = {"careful"}  # the offline committee's teachers with batch_api: true (sloppy speaks Gemini, harsh Anthropic)
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, data_dir):
    return import_seed_mistakes(tmp_path_factory.mktemp("seed"), data_dir, count=LIMIT)


def config_for(folder, mistakes, **changes) -> CommitteeConfig:
    """The paper's filter: its reviews are the requests that go live after the batches."""
    return CommitteeConfig(task="svamp", mistakes=str(mistakes), out=str(folder / "committee.jsonl"), limit=LIMIT,
                           filter="review", progress=False, batch_poll_s=0.02, **changes)


def run(config: CommitteeConfig, teachers) -> tuple[dict, dict[str, dict]]:
    result = asyncio.run(run_committee(config, teachers))
    return result, {r["id"]: r for r in read_jsonl(config.out_path)}


def counts(report) -> dict[str, int]:
    return {k: v for k, v in dataclasses.asdict(report).items() if k != "seconds"}


def priceless(record: dict) -> dict:
    """A committee record without its usage, per teacher and per reply."""
    strip = lambda entry: {k: v for k, v in entry.items() if k != "usage"}  # noqa: E731
    rationales = {n: strip(r) | {"reviews": {m: strip(v) for m, v in r["reviews"].items()}}
                  for n, r in record["rationales"].items()}
    return strip(record) | {"feedback": {n: strip(f) for n, f in record["feedback"].items()}, "rationales": rationales}


def log_lines(server: OfflineServer) -> list[dict]:
    return [orjson.loads(line) for line in server.log_path.read_bytes().splitlines()]


def test_batch_run_gives_the_live_records_at_half_price(tmp_path, mistakes, monkeypatch):
    monkeypatch.setattr(batch_module, "MAX_REQUESTS", 5)  # 12 requests per teacher -> 3 input files each
    with OfflineServer(port=0) as server:  # replies depend on (seed, model, body) only: the same on both servers
        _, live = run(config_for(tmp_path / "live", mistakes), fast(load_committee("offline", server.url)))
    with OfflineServer(port=0, batch_delay_s=0.1, log_path=tmp_path / "server.log") as server:
        teachers = fast(load_committee("offline", server.url))
        result, batched = run(config_for(tmp_path / "batch", mistakes, batch_api=True), teachers)
        lines = log_lines(server)

    assert_complete(list(batched.values()), LIMIT)
    assert live.keys() == batched.keys()
    for id_, record in batched.items():  # everything but the price (and each reply's batch flag) is the live run's
        assert priceless(record) == priceless(live[id_])
        assert {n: f["usage"]["batch"] for n, f in record["feedback"].items()} == {n: n in BATCHED for n in record["feedback"]}
        for name, usage in record["usage"].items():
            assert usage["input_tokens"] == live[id_]["usage"][name]["input_tokens"]
            assert (usage["cost"] < live[id_]["usage"][name]["cost"]) == (name in BATCHED)

    requests = 2 * len(BATCHED) * LIMIT  # feedback and rationale per batch teacher and mistake
    assert counts(result["batch"]) == {"submitted": requests, "reattached": 0, "answered": requests,
                                                   "fell_back": 0, "batches": 3 * len(BATCHED)}
    assert server.counters["batches"] == server.counters["batch_files"] == 3 * len(BATCHED)
    assert server.counters["batch_lines"] == requests
    via_batch = [e for e in lines if "batch" in e]
    assert {e["kind"] for e in via_batch} == {"feedback", "rationale"}
    assert {e["model"] for e in via_batch} == {"sim-careful"}
    live_kinds = {e["kind"] for e in lines if "batch" not in e and e["model"] == "sim-careful"}
    assert live_kinds == {"review"}  # the batch teachers' drafts never went live; their reviews did

    by_teacher = {t.name: t for t in teachers}
    with sqlite3.connect(tmp_path / "batch" / "requests.sqlite") as db:
        rows = db.execute("SELECT teacher, SUM(input_tokens), SUM(output_tokens), COUNT(*) FROM responses "
                          "WHERE batch = 1 GROUP BY teacher").fetchall()
    assert {name for name, *_ in rows} == BATCHED
    for name, tokens_in, tokens_out, count in rows:
        stats, teacher = result["stats"][name], by_teacher[name]
        assert stats.batched == count == 2 * LIMIT
        full = teacher.cost(Usage(stats.input_tokens, stats.output_tokens))  # this run's tokens, all at the full price
        assert stats.cost == pytest.approx(full - teacher.cost(Usage(tokens_in, tokens_out)) / 2)
        live_cost = sum(r["usage"][name]["cost"] for r in live.values())
        batch_cost = sum(r["usage"][name]["cost"] for r in batched.values())
        assert live_cost - batch_cost == pytest.approx(teacher.cost(Usage(tokens_in, tokens_out)) / 2)
    # The folder's ledger holds what the batches cost too: a later capped rerun counts it against its budget.
    spent = sum(s.cost for s in result["stats"].values())
    assert result["budget"]["spent_usd"] == pytest.approx(spent, abs=1e-6)
    with ResponseCache(tmp_path / "batch" / "requests.sqlite") as cache:
        assert cache.spent_usd == pytest.approx(spent, abs=1e-6)


class Killed(Exception):
    """A kill at a chosen moment."""


def batch_ids(cache_path) -> int:
    with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(cache_path) as db:
        return db.execute("SELECT COUNT(*) FROM batches WHERE batch IS NOT NULL").fetchone()[0]
    return 0


async def kill_while_polling(config: CommitteeConfig, teachers) -> None:
    """Start a run and stop it dead once both batches are created and their ids committed."""
    task = asyncio.create_task(run_committee(config, teachers))
    while batch_ids(config.cache_path) < len(BATCHED):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # polling now
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("moment", ["polling", "between create and commit"])
def test_a_rerun_reattaches_to_its_batches_instead_of_resubmitting(tmp_path, mistakes, monkeypatch, moment):
    config = config_for(tmp_path, mistakes, batch_api=True)
    with OfflineServer(port=0, batch_delay_s=1.0) as server:
        teachers = fast(load_committee("offline", server.url))
        if moment == "polling":
            asyncio.run(kill_while_polling(config, teachers))
        else:  # the batch exists on the server, but the run died before writing its id down
            def die(*_):
                raise Killed
            monkeypatch.setattr(Ledger, "created", die)
            with pytest.raises(Killed):
                run(config, teachers)
            monkeypatch.undo()
        assert server.counters["batch_files"] == len(BATCHED)
        assert not config.out_path.exists() or not config.out_path.read_bytes()  # no mistake finished
        created = server.counters["batches"]
        result, records = run(config, teachers)
        assert server.counters["batch_files"] == len(BATCHED)  # no second upload
        assert created >= 1  # at least one batch whose id the killed run never wrote down
        assert server.counters["batches"] == len(BATCHED)  # one batch per uploaded file: none made twice
    requests = 2 * len(BATCHED) * LIMIT
    assert counts(result["batch"]) == {"submitted": 0, "reattached": requests, "answered": requests,
                                                   "fell_back": 0, "batches": len(BATCHED)}
    assert_complete(list(records.values()), LIMIT)


@pytest.mark.slow
def test_sigkill_while_polling_then_rerun_reattaches(tmp_path, mistakes):
    """The same with a real `fair committee --batch-api` process killed by SIGKILL."""
    command = [sys.executable, "-m", "cli.main", "committee", "--task", "svamp", "--mistakes", str(mistakes),
               "--out", str(tmp_path / "committee.jsonl"), "--teachers", "offline", "--limit", str(LIMIT),
               "--no-progress", "--batch-api", "--batch-poll-s", "0.05", "--filter", "review"]
    with OfflineServer(port=0, batch_delay_s=2.0) as server:
        process = subprocess.Popen([*command, "--base-url", server.url], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300  # only a bound on a hang: the kill waits for both batch ids
        while batch_ids(tmp_path / "requests.sqlite") < len(BATCHED) and time.monotonic() < deadline:
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before its kill"
            time.sleep(0.02)
        assert batch_ids(tmp_path / "requests.sqlite") == len(BATCHED)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # killed while waiting on its batches (each takes 2 s)
        assert server.counters["batches"] == len(BATCHED)
        rerun = subprocess.run([*command, "--base-url", server.url], capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert f"re-attached to {len(BATCHED)} batch(es)" in rerun.stdout
        assert server.counters["batches"] == server.counters["batch_files"] == len(BATCHED)
    assert_complete(list(read_jsonl(tmp_path / "committee.jsonl")), LIMIT)


def test_an_input_file_is_split_by_size_too(monkeypatch):
    monkeypatch.setattr(batch_module, "MAX_BYTES", 100)
    chunk = batch_module._Chunk(Teacher(name="t", provider="openai", model="m"))
    assert chunk.fits(b"x" * 100)
    chunk.add("a", b"x" * 80)
    assert chunk.fits(b"y" * 20) and not chunk.fits(b"y" * 21)


def test_a_batch_the_server_lost_falls_back_to_live(tmp_path, mistakes):
    config = config_for(tmp_path, mistakes, batch_api=True)
    with OfflineServer(port=0, batch_delay_s=30) as first:
        asyncio.run(kill_while_polling(config, fast(load_committee("offline", first.url))))
    with OfflineServer(port=0) as restarted:  # knows no batch: 404
        result, records = run(config, fast(load_committee("offline", restarted.url)))
        assert restarted.counters["batches"] == 0
    requests = 2 * len(BATCHED) * LIMIT
    report = result["batch"]
    assert (report.reattached, report.fell_back, report.answered) == (requests, requests, 0)
    assert_complete(list(records.values()), LIMIT)
    with sqlite3.connect(config.cache_path) as db:
        assert db.execute("SELECT DISTINCT status FROM batches").fetchall() == [("lost",)]


def test_failed_lines_fall_back_to_live_and_no_key_leaks(tmp_path, mistakes, monkeypatch, caplog):
    monkeypatch.setenv("FAIR_TEST_PLANTED_KEY", PLANTED_KEY)
    caplog.set_level("DEBUG")
    config = config_for(tmp_path, mistakes, batch_api=True)
    with OfflineServer(port=0, p_5xx=0.3, seed=2, batch_delay_s=0.1, log_path=tmp_path / "server.log") as server:
        teachers = fast(load_committee("offline", server.url), api_key_env="FAIR_TEST_PLANTED_KEY")
        result, records = run(config, teachers)
        failed = server.counters["batch_line_errors"]
        lines = log_lines(server)
    assert failed > 0 and result["batch"].fell_back == failed
    assert result["batch"].answered == 2 * len(BATCHED) * LIMIT - failed
    assert_complete(list(records.values()), LIMIT)  # the failed lines were answered live
    sent_live = {e["body_sha256"] for e in lines if "batch" not in e and e["status"] == 200
                 and e["model"] == "sim-careful" and e["kind"] in ("feedback", "rationale")}
    assert len(sent_live) == failed
    for path in tmp_path.iterdir():
        assert b"PLANTED" not in path.read_bytes(), path
    assert "PLANTED" not in caplog.text


def test_a_cancelled_batch_falls_back_to_live(tmp_path, mistakes):
    config = config_for(tmp_path, mistakes, batch_api=True)
    with OfflineServer(port=0, batch_delay_s=30) as server:
        def cancel_each_batch():
            cancelled: set[str] = set()
            deadline = time.monotonic() + 20
            while len(cancelled) < len(BATCHED) and time.monotonic() < deadline:
                for batch_id in {b["id"] for b in server.batches.docs.list("batch")[0]} - cancelled:
                    reply = httpx.post(f"{server.url}/v1/batches/{batch_id}/cancel")
                    assert reply.json()["status"] == "cancelling"  # as OpenAI's: cancelled once its run stops
                    cancelled.add(batch_id)
                time.sleep(0.01)

        canceller = threading.Thread(target=cancel_each_batch)
        canceller.start()
        result, records = run(config, fast(load_committee("offline", server.url)))
        canceller.join()
    requests = 2 * len(BATCHED) * LIMIT
    assert (result["batch"].fell_back, result["batch"].answered) == (requests, 0)
    assert_complete(list(records.values()), LIMIT)


def test_a_batch_that_never_ends_is_cancelled_at_the_deadline_and_goes_live(tmp_path, mistakes):
    """A server that never finishes a batch (a stuck one, or OpenAI past its window): the client gives up
    batch_deadline_s after the batch's creation instead of polling forever, cancels it, and the run goes live."""
    with OfflineServer(port=0, batch_delay_s=3600) as server:
        config = config_for(tmp_path, mistakes, batch_api=True, batch_deadline_s=0.5)
        result, records = run(config, fast(load_committee("offline", server.url)))
        statuses = {batch["status"] for batch in server.batches.docs.list("batch")[0]}
    requests = 2 * len(BATCHED) * LIMIT
    assert (result["batch"].fell_back, result["batch"].answered) == (requests, 0)
    assert statuses == {"cancelled"}
    assert_complete(list(records.values()), LIMIT)
    with sqlite3.connect(config.cache_path) as db:
        assert Ledger(db).open_batches() == []  # closed: a rerun does not wait for them again


def test_simulator_validates_input_files_like_openai(tmp_path):
    def line(custom_id: str, model: str = "sim-careful", url: str = "/v1/chat/completions") -> bytes:
        body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 64}
        return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + b"\n"

    def submit(url: str, content: bytes) -> dict:
        upload = httpx.post(f"{url}/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content)})
        body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}
        return wait(url, httpx.post(f"{url}/v1/batches", json=body).json())

    def wait(url: str, batch: dict) -> dict:  # validating (as OpenAI's), in_progress, finalizing: not yet ended
        for _ in range(500):
            if (batch := httpx.get(f"{url}/v1/batches/{batch['id']}").json())["status"] in ("completed", "failed"):
                break
            time.sleep(0.01)
        return batch

    with OfflineServer(port=0, batch_delay_s=0) as server:
        for content, code in [(line("a") + line("a"), "duplicate_custom_id"),
                              (line("a") + line("b", model="sim-harsh"), "mixed_models"),
                              (line("a", url="/v1/embeddings"), "invalid_request"), (b"\n", "empty_file")]:
            batch = submit(server.url, content)
            assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == code
        good = done = submit(server.url, line("a") + line("b", model="sim-careful"))
        assert done["status"] == "completed"
        output = httpx.get(f"{server.url}/v1/files/{done['output_file_id']}/content").content
        assert sorted(orjson.loads(x)["custom_id"] for x in output.splitlines()) == ["a", "b"]
        listing = httpx.get(f"{server.url}/v1/batches", params={"limit": 2}).json()
        assert listing["data"][0]["id"] == good["id"] and listing["has_more"]
        assert httpx.get(f"{server.url}/v1/batches/batch_nope").status_code == 404
        assert httpx.post(f"{server.url}/v1/files", json={"purpose": "batch"}).status_code == 400


def test_an_old_cache_file_opens_and_keeps_the_batch_flag(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before the Batch API
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, text TEXT NOT NULL, "
                   "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL)")
        db.execute("INSERT INTO responses VALUES ('old', 't', 'four', 3, 1, 0)")
    with ResponseCache(path) as cache:
        assert cache.get("old") == ChatResponse("four", 3, 1) and not cache.get("old").batch
        cache.put("new", "t", ChatResponse("five", 3, 1, batch=True))
    with ResponseCache(path) as cache:
        assert cache.get("new").batch and not cache.get("old").batch


def test_cli_batch_api_and_its_errors(tmp_path, mistakes, capsys):
    with pytest.raises(FairError, match="batch_api needs provider openai"):
        Teacher(name="g", provider="gemini", model="m", batch_api=True)
    with OfflineServer(port=0, batch_delay_s=0.05) as server:
        common = ["committee", "--task", "svamp", "--mistakes", str(mistakes), "--out", str(tmp_path / "c.jsonl"),
                  "--base-url", server.url, "--limit", "2", "--no-progress", "--batch-api",
                  "--batch-poll-s", "0.02"]
        plain = tmp_path / "plain.yaml"  # no teacher serves the Batch API
        plain.write_text(committee_path("offline").read_text().replace("batch_api: true", "batch_api: false"))
        assert main([*common, "--teachers", str(plain)]) == 2
        assert "no teacher of committee" in capsys.readouterr().err
        assert main([*common, "--teachers", "offline"]) == 0
    stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())
    assert stats["batch"]["answered"] == 2 * len(BATCHED) * 2 and stats["teachers"]["careful"]["batched"] == 4


def test_a_billed_line_that_is_no_answer_still_counts_what_it_cost(tmp_path):
    """An empty 200 in the output file goes live, but the batch billed it: its usage counts in the stats and the
    ledger, at the batch price."""
    from gen.teachers.batch import BatchRun
    from gen.teachers.budget import CostBudget
    from gen.teachers.client import TeacherStats

    t = Teacher(name="careful", provider="openai", model="m", base_url="http://test/v1", price_input=1.0,
                price_output=2.0)
    empty = {"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}
    line = orjson.dumps({"custom_id": "k1", "response": {"status_code": 200, "body": empty}}).decode()

    async def go():
        with ResponseCache(tmp_path / "requests.sqlite") as cache:
            stats = {t.name: TeacherStats(t.name)}
            budget = CostBudget(None, ledger=cache)
            async with httpx.AsyncClient() as http:
                run = BatchRun([t], cache, http, stats, 0.01, budget=budget)
            run.ledger.uploaded("file-1", t.name, {"k1"})
            api = run.apis[t.name]

            async def lines(file_id):
                yield line

            api.lines = lines
            await run.collect(api, "file-1", {"id": "batch-1", "status": "completed", "output_file_id": "out-1"})
            return stats[t.name], budget, cache.get("k1")

    stats, budget, cached = asyncio.run(go())
    assert cached is None and (stats.input_tokens, stats.output_tokens, stats.batched) == (1000, 500, 0)
    assert stats.cost == pytest.approx(t.cost(Usage(1000, 500), batch=True))
    assert budget.spent_usd == pytest.approx(stats.cost)
