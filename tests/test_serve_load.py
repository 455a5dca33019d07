"""`fair serve` under load and when the machine runs short (the audit of issue 26): validation off the event loop,
jobs that hit a full disk resumed, errors as OpenAI JSON, unknown cursors refused, and a flood of submissions
under a low RLIMIT_NOFILE that queues jobs instead of answering 500."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

import fair.jsonl
from gen.teachers.config import load_committee
from serve import uploads
from serve.app import make_app
from serve.config import ServeConfig
from serve.jobs import Jobs
from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes
from tests.serve_util import TOKEN, Served, teachers_yaml

pytestmark = pytest.mark.timeout(120)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def in_process(folder: Path, sim_url: str, **settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The app in this event loop (so a test can block a seam and watch the loop), and a client of it."""
    teachers = str(teachers_yaml(folder, sim_url))
    config = ServeConfig(state=str(folder / "state"), teachers=teachers, base_url=sim_url, **settings)
    app = make_app(config, load_committee(teachers, sim_url), TOKEN)
    service = app.state.service
    await service.start()
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", headers=AUTH) as http:
            yield service, http
    finally:
        await service.stop()


async def upload(http: httpx.AsyncClient, path: Path, purpose: str = "fair-mistakes") -> httpx.Response:
    return await http.post("/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": purpose})


async def settled(http: httpx.AsyncClient, job_id: str) -> dict:
    while (job := (await http.get(f"/v1/fair/jobs/{job_id}")).json())["status"] in ("queued", "in_progress"):
        await asyncio.sleep(0.05)
    return job


@pytest.fixture
def sim(data_dir):
    with OfflineServer(port=0, data_dir=data_dir) as sim:
        yield sim


@pytest.mark.parametrize("seam", ["upload", "submit"])
def test_healthz_answers_while_a_file_is_validated(tmp_path, data_dir, sim, monkeypatch, seam):
    """The validation blocks (on an Event) until /healthz has answered: on the event loop it could not."""
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=5)
    entered, release = threading.Event(), threading.Event()

    def blocking(real):
        def check(*args):
            entered.set()
            release.wait(10)  # on the loop, nothing else runs until this gives up
            return real(*args)
        return check

    async def run() -> tuple[bool, int]:
        async with in_process(tmp_path, sim.url) as (_, http):
            file_id = (await upload(http, mistakes)).json()["id"] if seam == "submit" else None
            if seam == "upload":
                monkeypatch.setattr(uploads, "check", blocking(uploads.check))
                slow = asyncio.ensure_future(upload(http, mistakes))
            else:
                monkeypatch.setattr(Jobs, "check_task", blocking(Jobs.check_task))
                slow = asyncio.ensure_future(http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id}))
            while not entered.is_set() and not slow.done():
                await asyncio.sleep(0.01)
            health = (await http.get("/healthz")).status_code
            answered_first = not slow.done()
            release.set()
            assert (await slow).status_code == 200
            return answered_first, health

    assert asyncio.run(run()) == (True, 200)


def test_a_job_that_hit_a_full_disk_resumes_and_pays_nothing_twice(tmp_path, data_dir, sim, monkeypatch):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=6)
    real_write, full = fair.jsonl.JsonlAppender.write, {"on": True}

    def write(self, records):
        if full["on"] and records:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, records)

    monkeypatch.setattr(fair.jsonl.JsonlAppender, "write", write)

    async def run() -> tuple[dict, dict, dict, dict]:
        async with in_process(tmp_path, sim.url) as (_, http):
            file_id = (await upload(http, mistakes)).json()["id"]
            job = (await http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "window": 2})).json()
            failed = await settled(http, job["id"])
            early = (await http.post(f"/v1/fair/jobs/{file_id}/resume")).json()
            full["on"] = False  # space is back
            resumed = (await http.post(f"/v1/fair/jobs/{job['id']}/resume")).json()
            done = await settled(http, job["id"])
            return failed, early, resumed, done

    failed, early, resumed, done = asyncio.run(run())
    assert failed["status"] == "failed" and failed["resumable"], failed
    assert "No space left on device" in failed["error"] and str(tmp_path) not in failed["error"], failed["error"]
    assert early["error"]["type"] == "not_found_error"
    assert resumed["status"] in ("queued", "in_progress") and resumed["error"] is None
    assert done["status"] == "completed" and done["progress"]["done"] == 6, done
    with sim.lock:
        sent = sum(sim.attempts.values())
    first, total = failed["progress"], done["progress"]
    assert sent == total["requests"]  # every attempt counted, the failed run's too
    answered_before = first["requests"] - first["retries"] - first["failures"]
    assert answered_before > 0 and total["cache_hits"] >= answered_before  # paid before the failure: not again


def test_only_a_stopped_or_resource_failed_job_can_be_resumed(tmp_path, data_dir, sim):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=2)

    async def run() -> tuple[httpx.Response, str]:
        async with in_process(tmp_path, sim.url) as (_, http):
            file_id = (await upload(http, mistakes)).json()["id"]
            job = (await http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "priority": 2})).json()
            assert (await settled(http, job["id"]))["status"] == "completed"
            config = (await http.get(f"/v1/fair/jobs/{job['id']}/files/committee.yaml")).text
            return await http.post(f"/v1/fair/jobs/{job['id']}/resume"), config

    response, config = asyncio.run(run())
    assert response.status_code == 409 and "only a stopped job" in response.json()["error"]["message"]
    settings = yaml.safe_load(config)  # the downloaded committee.yaml: no server path, where the teachers were
    assert str(tmp_path) not in config
    assert (settings["mistakes"], settings["out"], settings["teachers"]) == ("mistakes.jsonl", "committee.jsonl",
                                                                               "teachers.yaml")
    assert settings["base_url"] == sim.url and settings["student"] == "unknown" and settings["priority"] == 2


def test_unexpected_errors_are_openai_json_and_an_unknown_cursor_is_a_400(tmp_path, sim, monkeypatch):
    async def run() -> list[httpx.Response]:
        async with in_process(tmp_path, sim.url) as (service, http):
            replies = [await http.get("/v1/fair/jobs", params={"after": "job-gone"}),
                       await http.get("/v1/files", params={"after": "file-gone"})]
            for error in (RuntimeError("/secret/server/path broke"), OSError(errno.EMFILE, "Too many open files")):
                def broken(*args, error=error, **kwargs):
                    raise error
                monkeypatch.setattr(service.store, "list", broken)
                replies.append(await http.get("/v1/fair/jobs"))
            return replies

    cursor, files, crash, emfile = asyncio.run(run())
    assert cursor.status_code == 400 and cursor.json()["error"]["param"] == "after"
    assert files.status_code == 400 and files.json()["error"]["param"] == "after"
    assert crash.status_code == 500 and crash.json()["error"]["type"] == "server_error"
    assert "/secret" not in crash.text
    assert emfile.status_code == 503 and emfile.headers["retry-after"]


def test_a_flood_of_jobs_under_few_descriptors_queues_and_never_answers_500(tmp_path, data_dir):
    """400 submissions under 1,024 descriptors once gave 196 HTTP 500s and 44 jobs failed with "Too many open
    files": now at most max_jobs run and the rest wait, queued."""
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=20)
    with OfflineServer(port=0, data_dir=data_dir, latency_ms=(20, 40)) as sim, Served(
        tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url, "--max-jobs", "2", nofile=192
    ) as served, served.client() as http:
        file_id = upload_sync(http, mistakes)
        statuses, running = [], 0
        jobs = []
        for _ in range(40):
            response = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "window": 16})
            statuses.append(response.status_code)
            if response.status_code == 200:
                jobs.append(response.json()["id"])
            listed = http.get("/v1/fair/jobs", params={"limit": 100}).json()["data"]
            running = max(running, sum(j["status"] == "in_progress" for j in listed))
        assert statuses == [200] * 40
        assert running <= 2
        first = http.get(f"/v1/fair/jobs/{jobs[0]}").json()
        last = http.get(f"/v1/fair/jobs/{jobs[-1]}").json()
        assert last["status"] == "queued", last
        http.post(f"/v1/fair/jobs/{last['id']}/cancel")
        assert http.get(f"/v1/fair/jobs/{last['id']}").json()["status"] == "cancelled"  # at once: never started
        assert first["status"] in ("in_progress", "completed")
    log = (tmp_path / "state.log").read_text()
    assert "Too many open files" not in log, log[-3000:]


def upload_sync(http: httpx.Client, path: Path) -> str:
    response = http.post("/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": "fair-mistakes"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


class FullDisk:
    """A cache's SQLite connection whose writes fail as a full disk's do while `full` holds."""

    def __init__(self, db):
        self.db, self.full = db, True

    def executemany(self, *args):
        if self.full:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return self.db.executemany(*args)

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)


def test_the_chat_proxy_works_again_once_a_full_disk_has_space(tmp_path, sim):
    """It re-raised its first write error to every request until a restart."""
    def ask(n: int) -> dict:
        return {"model": "careful", "messages": [{"role": "user", "content": f"What is {n} + {n}?"}]}

    async def run() -> list[httpx.Response]:
        async with in_process(tmp_path, sim.url) as (service, http):
            disk = service.proxy.cache.db = FullDisk(service.proxy.cache.db)
            refused = await http.post("/v1/chat/completions", json=ask(1))
            disk.full = False
            return [refused, await http.post("/v1/chat/completions", json=ask(2)),
                    await http.post("/v1/chat/completions", json=ask(1))]

    refused, later, again = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_busy", refused.text
    assert later.status_code == 200 and again.status_code == 200, (later.text, again.text)
