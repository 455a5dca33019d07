"""The record viewer's routes (serve/reading.py over serve/records_view.py's index), in process through `fair view`'s
app, and in a real `fair serve` with a job's records and the estimate route: pages and filters answer what a scan of
the file would, a growing file is indexed by what it gained, and a page reads only its own records."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from fair.errors import FairError
from fair.jsonl import repair_torn_tail
from serve.records_view import INDEX_NAME, LOCKS, Filters, RecordIndex
from serve.view import ViewConfig, make_view_app, view_token
from tests.conftest import import_seed_mistakes
from tests.serve_util import batch_lines, served_with_simulator, submit, upload, upload_mistakes, wait_job

TOKEN = "view-token-0123456789abcdef"
TEACHERS = ("careful", "harsh", "sloppy")
pytestmark = pytest.mark.timeout(120)


def committee_record(i: int, rng: random.Random) -> dict:
    """A committee.jsonl record of the real shape (fair/records.py's committee_replies reads it) with random
    scores, acceptance and marks."""
    def reply(text: str) -> dict:
        mark = rng.random()
        return {"text": None if mark < 0.05 else text, "error": "HTTP 500" if 0.05 <= mark < 0.08 else None,
                "truncated": 0.08 <= mark < 0.12, "refused": "policy" if mark < 0.05 else None}

    rationales = {}
    for t in TEACHERS:
        reviews = {r: {"score": float(rng.randint(1, 5)), "reply": f"review of {t} by {r} {i}", "error": None,
                       "truncated": False, "refused": None} for r in TEACHERS if r != t}
        mean = sum(v["score"] for v in reviews.values()) / len(reviews)
        rationales[t] = reply(f"rationale {t} {i}") | {"reviews": reviews, "mean_score": mean, "accepted": mean >= 3}
    question = f"Question {i}: how many apples" + (" and a Zebra" if i % 97 == 0 else "")
    return {"id": f"q{i}", "mistake": {"id": f"q{i}", "question": question, "gold": str(i), "prediction": "7",
                                       "extracted": "7"},
            "feedback": {t: reply(f"feedback {t} {i}") for t in TEACHERS}, "rationales": rationales,
            "threshold": 3.0}


def write_records(path: Path, count: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = [committee_record(i, rng) for i in range(start, start + count)]
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return records


def matches(record: dict, f: Filters) -> bool:
    """The filters' meaning (serve/records_view.py's docstring), as a scan of the records computes it."""
    replies = []
    for t, entry in record["feedback"].items():
        replies.append((t, "feedback", entry, None))
    for t, entry in record["rationales"].items():
        replies.append((t, "rationale", entry, entry["mean_score"]))
        replies += [(r, "review", v, v["score"]) for r, v in entry["reviews"].items()]

    def ok(teacher, kind, entry, score):
        if f.teacher and teacher != f.teacher:
            return False
        if (f.accepted is not None or f.min_score is not None or f.max_score is not None) and kind != "rationale":
            return False
        if f.accepted is not None and bool(entry["accepted"]) != f.accepted:
            return False
        if f.min_score is not None and not (score is not None and score >= f.min_score):
            return False
        if f.max_score is not None and not (score is not None and score <= f.max_score):
            return False
        flags = {"refused": entry["refused"] is not None, "truncated": entry["truncated"], "failed": bool(entry["error"])}
        return not f.flag or flags[f.flag]

    needs_reply = any(v is not None for v in (f.teacher, f.accepted, f.min_score, f.max_score, f.flag))
    if needs_reply and not any(ok(*r) for r in replies):
        return False
    text = " ".join([record["id"], record["mistake"]["question"], record["mistake"]["gold"],
                     record["mistake"]["prediction"]] + [e.get("reply" if k == "review" else "text") or ""
                                                         for _, k, e, _ in replies])
    return not f.q or f.q.lower() in text.lower()


FILTERS = [Filters(), Filters(teacher="harsh"), Filters(accepted=True), Filters(accepted=False, teacher="sloppy"),
           Filters(min_score=2.5, max_score=3.5), Filters(flag="refused"), Filters(flag="truncated", teacher="careful"),
           Filters(flag="failed"), Filters(q="zebra"), Filters(q="RATIONALE careful 12"),
           Filters(teacher="careful", accepted=True, min_score=4, q="apples")]


@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_pages_and_filters_answer_what_a_scan_of_the_file_would(tmp_path, filters):
    path = tmp_path / "committee.jsonl"
    records = write_records(path, 400)
    expected = [r["id"] for r in records if matches(r, filters)]
    with RecordIndex(path, tmp_path / "index.sqlite") as index:
        got, offset = [], 0
        while True:
            page = index.page(filters, offset, 37)
            assert page["total"] == len(expected)
            got += [d["record"]["id"] for d in page["data"]]
            offset += len(page["data"])
            if not page["has_more"]:
                break
        assert page["teachers"] == list(TEACHERS)
    assert got == expected
    assert expected  # each filter picks something out of 400 random records


def test_a_growing_file_is_indexed_by_what_it_gained_and_a_replaced_one_again(tmp_path):
    path, index_path = tmp_path / "committee.jsonl", tmp_path / "index.sqlite"
    write_records(path, 10)
    with RecordIndex(path, index_path) as index:
        assert index.count() == 10
    torn = orjson.dumps(committee_record(10, random.Random(1)))
    with path.open("ab") as f:
        f.write(torn[:50])  # a record being written: not yet a record
    with RecordIndex(path, index_path) as index:
        assert index.count() == 10
    with path.open("ab") as f:
        f.write(torn[50:] + b"\n")
    write_records(path, 5, start=11)
    with RecordIndex(path, index_path) as index:
        assert index.count() == 16
        assert index.record(10)["id"] == "q10" and index.record(15)["id"] == "q15"
    path.unlink()
    write_records(path, 3, seed=2, start=100)  # another run's file in its place
    with RecordIndex(path, index_path) as index:
        assert [d["record"]["id"] for d in index.page(Filters())["data"]] == ["q100", "q101", "q102"]


def test_a_line_that_is_no_committee_record_is_one_line_naming_it(tmp_path):
    path = tmp_path / "committee.jsonl"
    write_records(path, 2)
    with path.open("ab") as f:
        f.write(b'{"id": "x"}\n')
    with TestClient(make_view_app(ViewConfig(str(tmp_path)), TOKEN, tmp_path)) as http:
        response = http.get("/v1/fair/jobs/local/records", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"{path}:3: not a committee record (an object with feedback and rationales)")


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


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """100,000 records (about 190 MB) in a run's folder, with the files `fair view` offers to download."""
    folder = tmp_path_factory.mktemp("large")
    for start in range(0, 100_000, 10_000):
        write_records(folder / "committee.jsonl", 10_000, seed=start, start=start)
    (folder / "committee_stats.json").write_text('{"teachers": {}}')
    (folder / "requests.sqlite").write_bytes(b"never served")
    return folder


@pytest.fixture(scope="module")
def viewer(large, tmp_path_factory):
    with TestClient(make_view_app(ViewConfig(str(large)), TOKEN, tmp_path_factory.mktemp("index"))) as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        yield http


def test_a_page_of_a_large_file_reads_only_its_records(viewer, large):
    first = viewer.get("/v1/fair/jobs/local/records", params={"limit": 5}).json()  # builds the index, once
    assert first["total"] == first["indexed"] == 100_000 and [d["n"] for d in first["data"]] == [0, 1, 2, 3, 4]
    # Blank out the middle of the file in place (same size, same inode, same head): a request that read the
    # file whole, or parsed it again, would now fail; pages and filters come from the index and their own records.
    path = large / "committee.jsonl"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 3)
        f.write(b"\x00" * (size // 3))
    last = viewer.get("/v1/fair/jobs/local/records", params={"offset": 99_998, "limit": 100}).json()
    assert [d["record"]["id"] for d in last["data"]] == ["q99998", "q99999"] and not last["has_more"]
    zebras = viewer.get("/v1/fair/jobs/local/records", params={"q": "zebra", "teacher": "harsh", "limit": 3}).json()
    assert zebras["total"] > 0 and all("Zebra" in d["record"]["mistake"]["question"] for d in zebras["data"])
    assert viewer.get("/v1/fair/jobs/local/records/99999").json()["record"]["id"] == "q99999"


def test_the_view_routes_name_what_they_refuse(viewer, large):
    assert viewer.get("/v1/fair/jobs/local/records", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert viewer.get("/v1/fair/page").json() == {"read_only": True, "run": "local", "folder": large.name}
    bad = viewer.get("/v1/fair/jobs/local/records", params={"flag": "rude"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.flag"
    assert viewer.get("/v1/fair/jobs/local/records", params={"limit": 101}).status_code == 400
    missing = viewer.get("/v1/fair/jobs/job-other/records")
    assert missing.status_code == 404 and "job-other" in missing.json()["error"]["message"]
    assert viewer.get("/v1/fair/jobs/local/records/100000").status_code == 404
    assert viewer.post("/v1/fair/jobs", json={}).status_code in (404, 405)  # read-only: nothing to submit
    names = [f["name"] for f in viewer.get("/v1/fair/jobs/local/files").json()["data"]]
    assert names == ["committee.jsonl", "committee_stats.json"]
    download = viewer.get("/v1/fair/jobs/local/files/committee_stats.json")
    assert download.json() == {"teachers": {}} and download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"] == 'attachment; filename="committee_stats.json"'
    page = viewer.get("/")  # the page: its own script and style only, by hash, and requests to itself
    policy = page.headers["content-security-policy"]
    script = page.text.split("<script>")[1].split("</script>")[0]
    assert f"script-src 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}';" in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert viewer.get("/v1/fair/jobs/local/files/requests.sqlite").status_code == 404


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
                                ({"Authorization": TOKEN}, {}), ({"Cookie": "fair_serve_session=x"}, {})]:
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


def test_a_jobs_records_and_its_estimate_in_fair_serve(tmp_path, data_dir):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=6)
    with served_with_simulator(tmp_path, data_dir) as served, served.client() as http:
        file_id = upload_mistakes(http, mistakes)
        estimate = http.post("/v1/fair/estimate", json={"mistakes_file_id": file_id, "task": "svamp",
                                                        "teachers": ["careful", "harsh"], "limit": 4})
        assert estimate.status_code == 200, estimate.text
        body = estimate.json()
        assert (body["mistakes"], body["requests_per_mistake"], set(body["teachers"])) == (4, 6, {"careful", "harsh"})
        assert body["teachers_file"] == "teachers" and str(tmp_path) not in estimate.text
        refused = http.post("/v1/fair/estimate", json={"mistakes_file_id": file_id, "teachers": ["nobody"]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "teachers"
        job = submit(http, file_id, window=2)
        assert wait_job(http, job["id"])["status"] == "completed"
        page = http.get(f"/v1/fair/jobs/{job['id']}/records", params={"limit": 4}).json()
        assert page["total"] == 6 and len(page["data"]) == 4 and page["has_more"]
        assert page["teachers"] == ["careful", "harsh", "sloppy"]
        accepted = http.get(f"/v1/fair/jobs/{job['id']}/records", params={"accepted": "true"}).json()
        assert all(any(r["accepted"] for r in d["record"]["rationales"].values()) for d in accepted["data"])
        names = [f["name"] for f in http.get(f"/v1/fair/jobs/{job['id']}/files").json()["data"]]
        assert "committee.index.sqlite" not in names
        assert http.get(f"/v1/fair/jobs/{job['id']}/files/committee.index.sqlite").status_code == 404
        settings = http.get("/v1/fair/page").json()
        assert settings["read_only"] is False and settings["teachers"] == ["careful", "sloppy", "harsh"]
        assert "svamp" in settings["tasks"] and settings["prompts"] == ["fair", "paper"]
        # Hostile input: another purpose's file, a job's id or a path for the mistakes file is a 400 naming it.
        batch_file = upload(http, batch_lines(2), "batch").json()["id"]
        for foreign in (batch_file, job["id"], "../token", f"files/{file_id}"):
            refused = http.post("/v1/fair/estimate", json={"mistakes_file_id": foreign})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "mistakes_file_id", foreign
        # A limit past what the store's JSON holds is a 400, not a 500 (nor a folder left behind).
        huge = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "limit": 10**30})
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "limit"
        assert http.post("/v1/fair/estimate", json={"mistakes_file_id": file_id, "limit": 10**30}).status_code == 400
        # A broken line is one line naming the job's file, never by the server's own paths.
        with (tmp_path / "state" / "jobs" / job["id"] / "committee.jsonl").open("ab") as f:
            f.write(b"{broken\n")
        broken = http.get(f"/v1/fair/jobs/{job['id']}/records")
        assert broken.status_code == 400 and str(tmp_path) not in broken.text
        assert broken.json()["error"]["message"] == f"jobs/{job['id']}/committee.jsonl:7: not valid JSON"


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


def test_a_flag_is_one_of_the_marks_never_sql():
    with pytest.raises(FairError, match="flag must be one of refused, truncated, failed"):
        Filters(flag="refused = 1 OR 1")  # type: ignore[arg-type]


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
