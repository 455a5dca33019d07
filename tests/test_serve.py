"""`fair serve` through its HTTP API, a real server process against the offline simulator: the token on every
route, bad uploads refused with the line named and nothing kept, committee jobs whose cost is the sum in their
committee_stats.json, OpenAI's SDK and our own Batch API client end to end, `fair committee --server`."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from fair.errors import FairError
from gen.teachers.config import load_committee
from serve.config import ServeConfig, bearer_token
from tests.conftest import import_seed_mistakes
from tests.serve_util import (
    TOKEN,
    batch_lines,
    records,
    served_with_simulator,
    submit,
    upload,
    upload_mistakes,
    wait_job,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, data_dir) -> Path:
    return import_seed_mistakes(tmp_path_factory.mktemp("mistakes"), data_dir, count=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("serve")
    with served_with_simulator(folder, data_dir, "--max-upload-mb", "0.05") as served:
        yield served


@pytest.fixture
def http(server):
    with server.client() as client:
        yield client


def route_table() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, path parameters filled in; /healthz is the one open route."""
    from serve.app import make_app

    teachers = load_committee("offline")
    app = make_app(ServeConfig(state="/nonexistent-never-started"), teachers, "unused")
    routes = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD" and route.path not in ("/healthz", "/docs/oauth2-redirect"):
                routes.append((method, route.path.replace("{", "").replace("}", "")))
    return routes


@pytest.mark.parametrize(("method", "path"), route_table())
@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x"])
def test_every_route_without_the_right_token_is_401(server, method, path, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.request(
        method,
        server.url + path,
        headers=headers,
        json={"model": "careful"},
        cookies={f"fair_serve_session_{server.url.rsplit(':', 1)[1]}": token} if token else None,
    )
    assert response.status_code == 401, (method, path, response.text)
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_the_token_file_is_private_and_a_public_bind_needs_an_explicit_token(tmp_path, monkeypatch):
    monkeypatch.delenv("FAIR_SERVE_TOKEN", raising=False)
    token = bearer_token(tmp_path, "127.0.0.1")
    assert stat.S_IMODE(os.stat(tmp_path / "token").st_mode) == 0o600 and len(token) >= 32
    assert bearer_token(tmp_path, "127.0.0.1") == token  # kept across restarts
    with pytest.raises(FairError, match="FAIR_SERVE_TOKEN"):
        bearer_token(tmp_path, "0.0.0.0")
    explicit = "Xq3" + "".join(chr(ord("a") + i) for i in range(26)) + "0123456789ABCDEF"
    monkeypatch.setenv("FAIR_SERVE_TOKEN", explicit)
    assert bearer_token(tmp_path, "0.0.0.0") == explicit


GOOD = batch_lines(2)


@pytest.mark.parametrize(
    ("content", "purpose", "name", "status", "message"),
    [
        (b"this is not json\n", "batch", "a.jsonl", 400, "line 1: not valid JSON"),
        (
            GOOD + b'{"custom_id": "q9", "method": "PO',
            "batch",
            "a.jsonl",
            400,
            "line 3: not valid JSON (truncated?)",
        ),
        (b"", "batch", "a.jsonl", 400, "empty"),
        (
            GOOD + batch_lines(1),
            "batch",
            "a.jsonl",
            400,
            "line 3: duplicate custom_id 'q0' (first on line 1)",
        ),
        (
            batch_lines(1, model="gpt-5"),
            "batch",
            "a.jsonl",
            400,
            "line 1: body: model 'gpt-5' is not a teacher",
        ),
        (GOOD + b'{"custom_id": "\xff\xfe"}\n', "batch", "a.jsonl", 400, "line 3: not UTF-8"),
        (GOOD * 400, "batch", "a.jsonl", 413, "larger than this server's limit"),
        (GOOD, "batch", "../../etc/passwd", 400, "must be a plain file name"),
        (GOOD, "fine-tune", "a.jsonl", 400, "purpose must be one of"),
        (
            GOOD.replace(b'"model"', b'"api_key":"sk-1","model"'),
            "batch",
            "a.jsonl",
            400,
            "line 1: body: api_key: keys",
        ),
        (
            GOOD.replace(b'"model":"careful"', b'"model":"careful","base_url":"http://evil"'),
            "batch",
            "a.jsonl",
            400,
            "base_url",
        ),
        (b'{"id": "x"}\n', "fair-mistakes", "m.jsonl", 400, "line 1: missing field(s)"),
    ],
)
def test_bad_uploads_are_refused_naming_the_line_and_leave_nothing(
    server, http, content, purpose, name, status, message
):
    before = sorted(p.name for p in (server.state / "files").iterdir())
    listed = len(http.get("/v1/files?limit=10000").json()["data"])
    response = upload(http, content, purpose, name)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert sorted(p.name for p in (server.state / "files").iterdir()) == before
    assert len(http.get("/v1/files?limit=10000").json()["data"]) == listed


def test_a_job_runs_the_committee_and_its_cost_is_the_sum_in_committee_stats(server, http, mistakes):
    file_id = upload_mistakes(http, mistakes, 6)
    job = wait_job(http, submit(http, file_id, window=4)["id"])
    assert job["status"] == "completed", job
    folder = server.state / "jobs" / job["id"]
    stats = orjson.loads((folder / "committee_stats.json").read_bytes())
    p = job["progress"]
    # Sent or answered from the cache: two peers' identical rationales make one review prompt twice, and
    # whether the second is sent or read back depends on timing.
    assert p["done"] == p["total"] == 6 and p["requests"] + p["cache_hits"] == 6 * 12 and p["rate_limited"] == 0
    assert p["cost"] == pytest.approx(sum(t["cost"] for t in stats["teachers"].values()), rel=1e-9, abs=1e-12)
    assert p["cost"] > 0
    ids = [r["id"] for r in records(folder / "committee.jsonl")]
    assert sorted(ids) == sorted(r["id"] for r in records(mistakes)[:6])
    names = {f["name"] for f in http.get(f"/v1/fair/jobs/{job['id']}/files").json()["data"]}
    assert {"committee.jsonl", "committee_stats.json", "student_svamp_rationale_round0.json"} <= names
    downloaded = http.get(f"/v1/fair/jobs/{job['id']}/files/committee.jsonl").content
    assert downloaded == (folder / "committee.jsonl").read_bytes()
    assert http.get(f"/v1/fair/jobs/{job['id']}/files/..%2Fserve.sqlite").status_code == 404


def test_a_job_runs_the_recipe_its_spec_names_and_its_estimate_prices_that_recipe(server, http, mistakes):
    file_id = upload_mistakes(http, mistakes, 4, start=6)
    recipe = {"filter": "gold", "samples": 2, "teacher_temperature": 0.7}
    estimate = http.post("/v1/fair/estimate", json={"mistakes_file_id": file_id, **recipe})
    assert estimate.status_code == 200, estimate.text
    assert (estimate.json()["filter"], estimate.json()["requests_per_mistake"]) == ("gold", 3 * (1 + 2))  # no review
    job = wait_job(http, submit(http, file_id, **recipe)["id"])
    assert job["status"] == "completed", job
    assert job["progress"]["requests"] + job["progress"]["cache_hits"] == 4 * 3 * (1 + 2)
    folder = server.state / "jobs" / job["id"]
    for record in records(folder / "committee.jsonl"):
        assert (record["filter"], record["samples"]) == ("gold", 2)
        assert set(record["rationales"]) == {f"{t}{k}" for t in ("careful", "sloppy", "harsh") for k in ("", "#2")}
        assert all(r["accepted"] == r["gold"] and not r["reviews"] for r in record["rationales"].values())
    saved = yaml.safe_load((folder / "committee.yaml").read_text())
    assert {name: saved[name] for name in recipe} == recipe
    refused = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "filter": "peers"})
    assert refused.status_code == 400 and "filter" in refused.text
    jobs = len(http.get("/v1/fair/jobs?limit=100").json()["data"])
    refused = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "teacher_temperature": 1.5})
    assert refused.status_code == 400, refused.text  # above Anthropic's 1 (harsh): no job, rather than failed requests
    assert "temperature must be within 0-1 for provider anthropic" in refused.json()["error"]["message"]
    assert len(http.get("/v1/fair/jobs?limit=100").json()["data"]) == jobs


def test_job_events_stream_progress_until_the_end(http, mistakes):
    job = submit(http, upload_mistakes(http, mistakes, 3), window=2)
    events = []
    with http.stream("GET", f"/v1/fair/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    assert events[0] == "progress" and events[-1] == "end"
    assert http.get(f"/v1/fair/jobs/{job['id']}").json()["status"] == "completed"
    # The list clamps its limit to 1..100 as OpenAI's lists do (fair/wire/batch.py: page_limit).
    assert len(http.get("/v1/fair/jobs?limit=0").json()["data"]) == 1
    assert http.get("/v1/fair/jobs?limit=1000").json()["has_more"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"api_key": "sk-1"}, "api_key: not a setting"),
        ({"base_url": "http://elsewhere"}, "base_url: not a setting"),
        ({"rpm": 100000}, "rpm: not a setting"),
        ({"teachers": ["gpt"]}, "not in this server's committee"),
        ({"task": "nope"}, "unknown task"),
        ({"threshold": 9}, "threshold"),
        ({"priority": 5e-324}, "priority: input should be greater than or equal to 0.01"),
        ({"priority": 1000}, "priority: input should be less than or equal to 100"),
        ({"task": "gsm8k"}, "task 'svamp', but the job's task is 'gsm8k'"),
        ({"mistakes_file_id": "file-missing"}, "not a fair-mistakes file"),
    ],
)
def test_a_job_cannot_set_keys_urls_or_limits(http, mistakes, change, message):
    file_id = upload_mistakes(http, mistakes, 2)
    response = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "task": "svamp", **change})
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["error"]["message"].lower()


def test_cancel_stops_a_job_and_keeps_its_partial_output(http, mistakes):
    job = submit(http, upload_mistakes(http, mistakes, 20), window=1)
    wait_job(http, job["id"], until=("in_progress",))
    http.post(f"/v1/fair/jobs/{job['id']}/cancel")
    job = wait_job(http, job["id"])
    assert job["status"] == "cancelled" and job["progress"]["done"] < 20


def test_the_openai_sdk_drives_files_batches_and_chat_completions(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)
    file = client.files.create(file=("in.jsonl", batch_lines(5)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(300):
        if (batch := client.batches.retrieve(batch.id)).status in ("completed", "failed", "cancelled"):
            break
        asyncio.run(asyncio.sleep(0.1))
    assert (
        batch.status == "completed"
        and batch.request_counts.completed == 5
        and batch.request_counts.failed == 0
    )
    lines = [orjson.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"q{i}" for i in range(5)]
    assert all(
        x["response"]["status_code"] == 200 and x["response"]["body"]["choices"][0]["message"]["content"]
        for x in lines
    )
    assert batch.id in [b.id for b in client.batches.list()]
    assert client.batches.cancel(batch.id).status == "completed"  # nothing left to cancel
    reply = client.chat.completions.create(
        model="sloppy", messages=[{"role": "user", "content": "What is 2+2?"}]
    )
    assert reply.choices[0].message.content and reply.usage.total_tokens > 0
    assert {m.id for m in client.models.list()} == {"careful", "sloppy", "harsh"}


def test_our_batch_api_client_drives_the_server_unchanged(server, monkeypatch):
    import dataclasses

    from gen.teachers.batch import BatchAPI
    from gen.teachers.providers import ChatRequest

    monkeypatch.setenv("SERVE_TOKEN", TOKEN)
    # A client's teacher whose model is a teacher of the server, and whose key is the server's token.
    teacher = dataclasses.replace(
        load_committee("offline")[0], model="careful", base_url=server.url + "/v1", api_key_env="SERVE_TOKEN"
    )

    async def run() -> list[str]:
        async with httpx.AsyncClient() as http:
            api = BatchAPI(teacher, http)
            request = ChatRequest.for_teacher(teacher, (("user", "What is 3 + 4?"),))
            with tempfile.TemporaryFile() as f:
                f.write(
                    orjson.dumps(
                        {
                            "custom_id": "k1",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": api.provider.body(request),
                        }
                    )
                    + b"\n"
                )
                input_file = await api.upload(f)
            batch = await api.create(input_file)
            while (batch := await api.get(batch["id"]))["status"] != "completed":
                await asyncio.sleep(0.1)
            assert (await api.find(input_file))["id"] == batch["id"]
            return [line async for line in api.lines(batch["output_file_id"])]

    lines = asyncio.run(run())
    assert len(lines) == 1 and orjson.loads(lines[0])["custom_id"] == "k1"


def test_fair_committee_server_submits_follows_and_downloads(server, mistakes, tmp_path):
    out = tmp_path / "run" / "committee.jsonl"
    command = [sys.executable, "-m", "cli.main", "committee", "--task", "svamp", "--mistakes", str(mistakes),
               "--limit", "3", "--filter", "none", "--out", str(out), "--server", server.url]
    env = os.environ | {"FAIR_SERVE_TOKEN": TOKEN}
    run = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    assert run.returncode == 0, run.stderr
    assert "completed: 3/3 mistakes" in run.stdout
    # stderr is a pipe, not a terminal: the job's progress in plain lines (fair/progress.py), no redrawn bar
    assert re.search(r"^job \S+: 3/3 mistakes \(100%\), .* mistakes/s, .*, requests=\d+", run.stderr, re.M), run.stderr
    assert "\r" not in run.stderr
    assert [r["filter"] for r in records(out)] == ["none"] * 3 and (out.parent / "committee_stats.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    assert again.returncode == 0 and "following job" in again.stdout  # the same job, not a second one
    other = [part if part != "none" else "gold" for part in command]  # another recipe: not that job's
    refused = subprocess.run(other, capture_output=True, text=True, timeout=90, env=env)
    assert refused.returncode != 0 and re.search(r"job \S+ runs filter none, not gold", refused.stderr), refused.stderr


def test_limits_show_each_gate(http):
    gates = http.get("/v1/fair/limits").json()["gates"]
    assert {g["teacher"] for g in gates} == {"careful", "sloppy", "harsh"}
    assert all(g["rpm"] == 600 and g["rate_limited"] == 0 and g["cooldown_s"] == 0 for g in gates)
