"""`fair serve` killed with SIGKILL mid-job, mid-batch and mid-upload, then restarted: it resumes by itself, every
mistake and every custom_id ends up once, only requests in flight at the kill are answered twice (and are
reported), and no file or row is left orphaned."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes
from tests.serve_util import (
    TOKEN,
    Served,
    batch_lines,
    records,
    submit,
    teachers_yaml,
    upload,
    upload_mistakes,
    wait_job,
)

pytestmark = pytest.mark.timeout(180)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def completed_bodies(log: Path, start: int, end: int) -> set[str]:
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines()[start:end]]
    return {e["body_sha256"] for e in lines if e["status"] == 200}


def line_count(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def no_orphans(state: Path, http: httpx.Client) -> None:
    rows = {f["id"] for f in http.get("/v1/files?limit=10000").json()["data"]}
    on_disk = {p.name for p in (state / "files").iterdir()}
    assert on_disk <= rows, on_disk - rows  # every stored file has its row (result files live in batches/)
    for file_id in rows:
        assert http.get(f"/v1/files/{file_id}/content").status_code == 200  # and every row its bytes
    jobs = {j["id"] for j in http.get("/v1/fair/jobs?limit=100").json()["data"]}
    batches = {b["id"] for b in http.get("/v1/batches?limit=100").json()["data"]}
    assert {p.name for p in (state / "jobs").iterdir()} == jobs
    assert {p.name for p in (state / "batches").iterdir()} == batches


def test_sigkill_mid_job_and_mid_batch_then_restart_resumes_each_exactly_once(tmp_path, data_dir):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=16)
    log = tmp_path / "sim.log"
    with OfflineServer(port=0, data_dir=data_dir, rpm=2000, latency_ms=(20, 120), log_path=log) as sim:
        served = Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url, rpm=1200), sim.url)
        with served.start().client() as http:
            job = submit(http, upload_mistakes(http, mistakes), window=3)
            batch_file = upload(http, batch_lines(60), "batch").json()["id"]
            batch = http.post(
                "/v1/batches",
                json={
                    "input_file_id": batch_file,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).json()
            folder = served.state / "jobs" / job["id"]
            output = served.state / "batches" / batch["id"] / "output.jsonl"
            wait_for(lambda: len(records(folder / "committee.jsonl")) >= 3 and len(records(output)) >= 5)
        served.kill()
        done_at_kill = (len(records(folder / "committee.jsonl")), len(records(output)))
        time.sleep(0.5)  # the simulator finishes (and logs) what the dead server had in flight
        split = line_count(log)

        with served.start().client() as http:
            job = wait_job(http, job["id"])
            while (batch := http.get(f"/v1/batches/{batch['id']}").json())["status"] != "completed":
                time.sleep(0.2)
            no_orphans(served.state, http)
            result = http.get(f"/v1/files/{batch['output_file_id']}/content").content
        served.stop()

    assert done_at_kill[0] < 16 and done_at_kill[1] < 60  # the kill landed mid-job and mid-batch
    assert job["status"] == "completed" and job["restarts"] == 1
    ids = [r["id"] for r in records(folder / "committee.jsonl")]
    assert sorted(ids) == sorted(r["id"] for r in records(mistakes))  # every mistake once
    custom_ids = [orjson.loads(x)["custom_id"] for x in result.splitlines()]
    assert sorted(custom_ids) == sorted(f"q{i}" for i in range(60))  # every custom_id once
    assert batch["request_counts"] == {"total": 60, "completed": 60, "failed": 0}

    # Paid twice: a reply the simulator completed before the kill and again after it. At most what the server
    # reported in flight at the kill, per job and batch.
    reported = job["repeated_after_restart"] + batch["repeated_after_restart"]
    twice = completed_bodies(log, 0, split) & completed_bodies(log, split, line_count(log))
    assert len(twice) <= reported <= 3 * 12 + 64


def test_sigkill_mid_upload_leaves_no_partial_file_and_no_row(tmp_path, data_dir):
    with OfflineServer(port=0, data_dir=data_dir) as sim:
        served = Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url)
        served.start()
        sent = threading.Event()

        def slow_body():
            yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
            for i in range(200):
                yield batch_lines(1, prefix=f"x{i}-")
                sent.set()
                time.sleep(0.05)
            yield b"\r\n--b--\r\n"

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(
                    served.url + "/v1/files",
                    content=slow_body(),
                    timeout=30,
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "multipart/form-data; boundary=b",
                    },
                )

        thread = threading.Thread(target=post)
        thread.start()
        wait_for(lambda: any(p.suffix == ".partial" for p in (served.state / "files").iterdir()))
        assert sent.is_set()
        served.kill()
        thread.join(30)
        assert any(p.suffix == ".partial" for p in (served.state / "files").iterdir())  # what the kill left
        with served.start().client() as http:
            assert list((served.state / "files").iterdir()) == []
            assert http.get("/v1/files").json()["data"] == []
        served.stop()
