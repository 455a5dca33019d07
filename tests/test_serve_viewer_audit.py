"""The record viewer under a hostile review (issue 26): what an attacker or a broken file sends its routes, and what
its index meets on disk. Every read route wants the token; filter values are data or a 400; a line of another shape
is one line naming its field; a file rewritten in place or repaired after a kill is indexed as it is; requests
waiting for an index or an estimate leave the server's shared threads free; `fair view` reads its token as `fair
serve` does."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fair.errors import FairError
from fair.jsonl import repair_torn_tail
from serve.reading import Run, add_reading
from serve.records_view import INDEX_NAME, LOCKS, Filters, RecordIndex
from serve.view import ViewConfig, make_view_app, view_token
from tests.conftest import ROOT
from tests.serve_util import committee_record, write_records

TOKEN = "view-token-0123456789abcdef"
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("line", "field"), [
    (b'{"feedback": {"careful": "a text"}, "rationales": {}}', "feedback.careful is not an object"),
    (b'{"feedback": {"careful": null}, "rationales": {}}', "feedback.careful is not an object"),
    (b'{"feedback": {}, "rationales": {"harsh": [1]}}', "rationales.harsh is not an object"),
    (b'{"feedback": {}, "rationales": {"harsh": {"reviews": [3]}}}', "rationales.harsh.reviews is not an object"),
    (b'{"feedback": {}, "rationales": {"harsh": {"reviews": null}}}', "rationales.harsh.reviews is not an object"),
    (b'{"feedback": {}, "rationales": {"harsh": {"reviews": {"sloppy": 3}}}}',
     "rationales.harsh.reviews.sloppy is not an object"),
    (b'{"mistake": "a question", "feedback": {}, "rationales": {}}', "mistake is not an object"),
])
def test_a_record_of_another_shape_is_one_line_naming_its_field(tmp_path, line, field):
    """A hand-edited or foreign committee.jsonl (`fair view` shows any folder): one line naming the line and the
    field, never a 500."""
    write_records(tmp_path / "committee.jsonl", 1)
    with (tmp_path / "committee.jsonl").open("ab") as f:
        f.write(line + b"\n")
    with TestClient(make_view_app(ViewConfig(str(tmp_path)), TOKEN, tmp_path)) as http:
        response = http.get("/v1/fair/jobs/local/records", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"{tmp_path / 'committee.jsonl'}:2: {field}"


READ_ROUTES = ["/", "/v1/fair/page", "/v1/fair/jobs/local/files", "/v1/fair/jobs/local/files/committee.jsonl",
               "/v1/fair/jobs/local/records", "/v1/fair/jobs/local/records/0", "/v1/fair/jobs/nobody/records"]


@pytest.mark.parametrize("route", READ_ROUTES)
def test_every_read_route_wants_the_token(tmp_path, route):
    """Without it, with a wrong one, in the query string, under another scheme or as a cookie of no login: a 401
    (the page: its login form), whatever the route and whether or not the job exists."""
    write_records(tmp_path / "committee.jsonl", 2)
    with TestClient(make_view_app(ViewConfig(str(tmp_path)), TOKEN, tmp_path)) as http:
        for headers, params in [({}, {}), ({"Authorization": "Bearer nope"}, {}), ({}, {"token": TOKEN}),
                                ({}, {"access_token": TOKEN}), ({"Authorization": f"Basic {TOKEN}"}, {}),
                                ({"Authorization": TOKEN}, {}), ({"Cookie": "fair_serve_session_80=x; fair_serve_session=x"}, {})]:
            response = http.get(route, headers=headers, params=params)
            assert response.status_code == 401, (headers, params)
            assert "q0" not in response.text and "committee.jsonl" not in response.text
        assert http.get(route, headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 404)


def test_fair_view_reads_a_blank_token_variable_as_unset(tmp_path, monkeypatch):
    """As fair serve does (serve/config.py's bearer_token): STATE/token, the state folder made for it."""
    monkeypatch.setenv("FAIR_SERVE_TOKEN", "  ")
    token, where = view_token(ViewConfig(str(tmp_path), state=str(tmp_path / "state")))
    assert (tmp_path / "state" / "token").read_text().strip() == token and where == str(tmp_path / "state" / "token")
    monkeypatch.setenv("FAIR_SERVE_TOKEN", TOKEN)
    assert view_token(ViewConfig(str(tmp_path), state=str(tmp_path / "elsewhere"))) == (TOKEN, "$FAIR_SERVE_TOKEN")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(("params", "status", "total"), [
    ({"teacher": "harsh' OR 1=1 --"}, 200, 0), ({"q": "%"}, 200, 0), ({"q": "_"}, 200, 0),
    ({"q": "') OR 1=1 --"}, 200, 0), ({"q": "\x00"}, 200, 0), ({"q": "x" * 201}, 400, None),
    ({"teacher": "t" * 201}, 400, None), ({"min_score": "nan"}, 400, None), ({"max_score": "inf"}, 400, None),
    ({"min_score": -1}, 400, None), ({"offset": -1}, 400, None), ({"offset": 2**63}, 400, None),
    ({"limit": 0}, 400, None), ({"limit": 10**6}, 400, None), ({"accepted": "1 OR 1"}, 400, None),
    ({"flag": "refused=1 OR 1"}, 400, None), ({"offset": 2**62}, 200, 6), ({"min_score": 5, "max_score": 1}, 200, 0),
])
def test_hostile_filters_are_data_or_a_400(tmp_path, params, status, total):
    """Filter values are bound parameters (LIKE's wildcards and quotes match themselves), bounded in length and
    range: a 400 naming the parameter, never a 500, never more than the records."""
    write_records(tmp_path / "committee.jsonl", 6)
    with TestClient(make_view_app(ViewConfig(str(tmp_path)), TOKEN, tmp_path)) as http:
        response = http.get("/v1/fair/jobs/local/records", params=params,
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["total"] == total and len(response.json()["data"]) <= 6
    else:
        assert response.json()["error"]["param"] == f"query.{next(iter(params))}"


def test_line_numbers_hold_after_a_kill_and_the_repair_of_its_last_line(tmp_path):
    """A last line that parsed without its newline is indexed; the newline repair_torn_tail adds before the next
    append ends that line, it is no line of its own: an error further on names its real line."""
    path = tmp_path / "committee.jsonl"
    write_records(path, 3)
    path.write_bytes(path.read_bytes()[:-1])  # killed before the last record's newline
    with RecordIndex(path, tmp_path / "index.sqlite") as index:
        assert index.count() == 3
    repair_torn_tail(path)
    with path.open("ab") as f:
        f.write(b"{broken\n")
    with pytest.raises(FairError, match=r"committee.jsonl:4: not valid JSON"):
        RecordIndex(path, tmp_path / "index.sqlite").__enter__()


def test_a_file_rewritten_in_place_with_the_same_first_bytes_is_indexed_again(tmp_path):
    """Truncated and written again (same inode, same first record, longer than before): the bytes before where the
    index stopped are checked too, so it starts over rather than reading on from the middle of a line."""
    path, index_path = tmp_path / "committee.jsonl", tmp_path / "index.sqlite"
    first = committee_record(0, random.Random(0)) | {"padding": "x" * 5000}  # beyond the hashed first bytes
    line = orjson.dumps(first) + b"\n"
    path.write_bytes(line + orjson.dumps(committee_record(1, random.Random(1))) + b"\n")
    with RecordIndex(path, index_path) as index:
        assert index.count() == 2
    inode = path.stat().st_ino
    with path.open("r+b") as f:  # another run into the same file: same first record, then others
        f.truncate(0)
        f.write(line + b"".join(orjson.dumps(committee_record(i, random.Random(i)) | {"note": "second run"}) + b"\n"
                                for i in (1, 2, 3)))
    assert path.stat().st_ino == inode
    with RecordIndex(path, index_path) as index:
        assert [d["record"].get("note") for d in index.page(Filters())["data"]] == [None, *["second run"] * 3]


def test_requests_waiting_for_an_index_leave_the_servers_shared_threads_free(tmp_path):
    """While an index is built (minutes, for a million records) its requests wait for it: they wait in threads of
    their own, not in the event loop's default pool, which the rest of the server needs (the DNS lookups of the
    teachers' connections, the estimate route). Forty waiting requests, more than that pool's threads."""
    write_records(tmp_path / "committee.jsonl", 3)
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    app = make_view_app(ViewConfig(str(tmp_path)), TOKEN, index_dir)
    building = LOCKS.setdefault(index_dir / INDEX_NAME, threading.Lock())

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://view",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            building.acquire()  # as a build of the index holds it
            try:
                waiting = [asyncio.create_task(http.get("/v1/fair/jobs/local/records")) for _ in range(40)]
                await asyncio.sleep(0.5)  # let them reach their threads
                assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 20) == "free"
                assert await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("localhost", 80), 20)
            finally:
                building.release()
            return [(await w).status_code for w in waiting]

    assert asyncio.run(run()) == [200] * 40


def test_estimates_reading_a_large_file_leave_the_servers_shared_threads_free(tmp_path, monkeypatch):
    """The estimate reads the uploaded file three times (seconds, for 200 MB): forty at once, each stuck in its
    reading here, must leave the event loop's default threads to the rest of the server (as the records do)."""
    from gen.teachers.config import load_committee
    from serve.app import make_app
    from serve.config import ServeConfig
    from serve.jobs import Jobs

    reading = threading.Event()
    monkeypatch.setattr(Jobs, "source", lambda self, spec: {"path": "files/file-big"})
    monkeypatch.setattr(Jobs, "price", lambda self, spec, path, teachers: reading.wait(60) and {"mistakes": 1})
    app = make_app(ServeConfig(state=str(tmp_path / "state")), load_committee("offline"), TOKEN)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        answers: list[int] = []
        asking = [threading.Thread(target=lambda: answers.append(http.post(
            "/v1/fair/estimate", json={"mistakes_file_id": "file-big"}).status_code)) for _ in range(40)]
        for thread in asking:
            thread.start()
        try:
            time.sleep(0.5)  # let them reach their threads
            free = http.portal.call(lambda: asyncio.wait_for(asyncio.to_thread(lambda: "free"), 20))
        finally:
            reading.set()
            for thread in asking:
                thread.join()
    assert free == "free" and answers == [200] * 40


def test_requests_waiting_for_one_jobs_index_leave_the_others_readable(tmp_path):
    """Requests for a job whose index is being built wait without holding a reading thread: a page reloaded eight
    times over a job of a million records leaves every other job's records readable meanwhile."""
    for name in ("big", "small"):
        (tmp_path / name).mkdir()
        write_records(tmp_path / name / "committee.jsonl", 3)
    app = FastAPI()
    add_reading(app, lambda job: Run(tmp_path / job, tmp_path / job / INDEX_NAME, job), {})
    building = LOCKS.setdefault(tmp_path / "big" / INDEX_NAME, threading.Lock())

    async def run() -> tuple[int, list[int]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://serve") as http:
            building.acquire()  # as a build of the big job's index holds it
            try:
                waiting = [asyncio.create_task(http.get("/v1/fair/jobs/big/records")) for _ in range(8)]
                await asyncio.sleep(0.5)  # let them reach whatever they wait in
                small = await asyncio.wait_for(http.get("/v1/fair/jobs/small/records"), 20)
            finally:
                building.release()
            return small.status_code, [(await w).status_code for w in waiting]

    assert asyncio.run(run()) == (200, [200] * 8)


def test_fair_view_off_loopback_warns_that_its_token_travels_in_clear(tmp_path):
    """Bound beyond loopback (with a strong FAIR_SERVE_TOKEN, which it insists on), `fair view` says that the page
    and its token cross the network unencrypted, and that the token should not be the spending fair serve's."""
    write_records(tmp_path / "committee.jsonl", 1)
    port_file = tmp_path / "view.port"
    env = {**os.environ, "FAIR_SERVE_TOKEN": "k9Q2x7LmPz4Rw8Tn1Vb6Yc3Hd5Jf0Gs2Ua9Ee7Ii4Oo"}
    view = subprocess.Popen([sys.executable, "-m", "cli.main", "view", str(tmp_path), "--host", "0.0.0.0",
                             "--port", "0", "--port-file", str(port_file)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert view.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        view.terminate()
        output = view.communicate(timeout=10)[0]
    assert "fair view: warning: 0.0.0.0 is not loopback: the page and its token cross the network unencrypted" in (
        output), output


def test_fair_view_names_an_ipv6_address_in_brackets(tmp_path):
    """Its banner is a URL a browser opens: http://[::1]:PORT/, as fair serve's."""
    write_records(tmp_path / "committee.jsonl", 1)
    port_file = tmp_path / "view.port"
    env = {**os.environ, "FAIR_SERVE_TOKEN": TOKEN}
    view = subprocess.Popen([sys.executable, "-m", "cli.main", "view", str(tmp_path), "--host", "::1", "--port", "0",
                             "--port-file", str(port_file)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if view.poll() is not None:
                pytest.skip("no IPv6 loopback here")
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        view.terminate()
        output = view.communicate(timeout=10)[0]
    assert f"fair view: http://[::1]:{port_file.read_text().strip()}/ (bearer token in $FAIR_SERVE_TOKEN)" in output
