"""The read routes over a run's folder: a job's in `fair serve`, the one local run of `fair view DIR` (as job RUN).

    GET /v1/fair/page                        what the page draws itself from: read-only or not, the committee, the
                                             tasks, the prompts, the priority bounds (`fair view`: the run's name)
    GET /v1/fair/jobs/{id}/files[/{name}]    committee.jsonl, committee_stats.json, committee.yaml, the paper's files
    GET /v1/fair/jobs/{id}/records           a page of committee.jsonl's records, filtered on the server
    GET /v1/fair/jobs/{id}/records/{n}       the n-th record (from 0): the page's side-by-side of one mistake

The records come from serve/records_view.py's index, which reads only what the file gained since the last
request; its queries run in a worker thread, so a first request on a large file (the index being built) holds no
other request up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from fair.wire.errors import ApiError
from serve.records_view import INDEX_NAME, MAX_PAGE, Filters, Flag, RecordIndex

JOB_FILES = ("mistakes.jsonl", "committee.jsonl", "committee_stats.json", "committee.yaml")
RUN = "local"  # `fair view`'s one run, as a job id
MAX_N = 2**62  # record numbers and offsets past SQLite's integers are a 400, not a 500


def downloadable(folder: Path, name: str) -> bool:
    """JOB_FILES and the paper's *_round0.json files: never the cache, the index or anything outside the folder."""
    allowed = name in JOB_FILES or (name.endswith("_round0.json") and "/" not in name and name[0] != ".")
    return allowed and (folder / name).is_file()


def add_reading(app: FastAPI, folder: Callable[[str], Path], index: Callable[[str], Path],
                about: dict[str, Any]) -> None:
    """`folder(id)`: a run's folder (ApiError 404 for an unknown id); `index(id)`: where its records' index lives."""

    @app.get("/v1/fair/page")
    async def page_settings() -> dict[str, Any]:
        return about

    @app.get("/v1/fair/jobs/{job_id}/files")
    async def job_files(job_id: str) -> dict[str, Any]:
        where = folder(job_id)
        names = [n for n in JOB_FILES if (where / n).exists()] + sorted(
            p.name for p in where.glob("*_round0.json")
        )
        return {"object": "list", "data": [{"name": n, "bytes": (where / n).stat().st_size} for n in names]}

    @app.get("/v1/fair/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str) -> FileResponse:
        where = folder(job_id)
        if not downloadable(where, name):
            raise ApiError(404, f"job {job_id} has no file {name!r}", "name")
        return FileResponse(where / name)

    @app.get("/v1/fair/jobs/{job_id}/records")
    async def job_records(
        job_id: str,
        teacher: str | None = Query(None, max_length=200, description="a reply by this teacher"),
        accepted: bool | None = Query(None, description="an accepted rationale (true) or one not accepted"),
        min_score: float | None = Query(None, ge=0, le=100, description="a rationale's mean review score at least"),
        max_score: float | None = Query(None, ge=0, le=100, description="a rationale's mean review score at most"),
        flag: Annotated[Flag | None, Query(description="a reply so marked")] = None,
        q: str | None = Query(None, max_length=200, description="text in the question, the answers or a reply"),
        offset: int = Query(0, ge=0, le=MAX_N),
        limit: int = Query(20, ge=1, le=MAX_PAGE),
    ) -> dict[str, Any]:
        filters = Filters(teacher, accepted, min_score, max_score, flag, q)
        path, index_path = folder(job_id) / "committee.jsonl", index(job_id)

        def query() -> dict[str, Any]:
            with RecordIndex(path, index_path) as records:
                return records.page(filters, offset, limit)

        return await asyncio.to_thread(query)

    @app.get("/v1/fair/jobs/{job_id}/records/{n}")
    async def job_record(job_id: str, n: int = PathParam(..., ge=0, le=MAX_N)) -> dict[str, Any]:
        path, index_path = folder(job_id) / "committee.jsonl", index(job_id)

        def query() -> dict[str, Any] | None:
            with RecordIndex(path, index_path) as records:
                return records.record(n)

        if (record := await asyncio.to_thread(query)) is None:
            raise ApiError(404, f"job {job_id} has no record {n} (yet)", "n")
        return {"n": n, "record": record}


def job_index(folder: Callable[[str], Path]) -> Callable[[str], Path]:
    """A job's records index: in its own folder, beside the committee.jsonl it indexes."""
    return lambda job_id: folder(job_id) / INDEX_NAME
