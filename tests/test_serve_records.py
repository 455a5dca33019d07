"""The record viewer's routes (serve/reading.py over serve/records_view.py's index), in process through `fair view`'s
app, and in a real `fair serve` with a job's records and the estimate route: pages and filters answer what a scan of
the file would, a growing file is indexed by what it gained, and a page reads only its own records."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from fair.errors import FairError
from serve.records_view import Filters, RecordIndex
from serve.view import ViewConfig, make_view_app
from tests.conftest import import_seed_mistakes
from tests.serve_util import (
    TEACHERS,
    batch_lines,
    committee_record,
    served_with_simulator,
    submit,
    upload,
    upload_mistakes,
    wait_job,
    write_records,
)

TOKEN = "view-token-0123456789abcdef"
pytestmark = pytest.mark.timeout(120)


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


def test_a_jobs_records_and_its_estimate_in_fair_serve(tmp_path, data_dir):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=6)
    with served_with_simulator(tmp_path, data_dir) as served, served.client() as http:
        file_id = upload_mistakes(http, mistakes)
        estimate = http.post("/v1/fair/estimate", json={"mistakes_file_id": file_id, "task": "svamp",
                                                        "teachers": ["careful", "harsh"], "limit": 4})
        assert estimate.status_code == 200, estimate.text
        body = estimate.json()
        # The default filter, the gold check: feedback and a rationale from each of the two, no reviews.
        assert (body["mistakes"], body["requests_per_mistake"], set(body["teachers"])) == (4, 4, {"careful", "harsh"})
        assert body["filter"] == "gold"
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


def test_a_flag_is_one_of_the_marks_never_sql():
    with pytest.raises(FairError, match="flag must be one of refused, truncated, failed"):
        Filters(flag="refused = 1 OR 1")  # type: ignore[arg-type]
