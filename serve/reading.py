"""The read routes over a run's folder: a job's in `fair serve`, the one local run of `fair view DIR` (as job RUN).

    GET /v1/fair/page                        what the page draws itself from: read-only or not, the committee, the
                                             tasks, the prompts, the priority bounds (`fair view`: the run's name)
    GET /v1/fair/jobs/{id}/files[/{name}]    committee.jsonl, committee_stats.json, committee.yaml, the paper's files
    GET /v1/fair/jobs/{id}/records           a page of committee.jsonl's records, filtered on the server
    GET /v1/fair/jobs/{id}/records/{n}       the n-th record (from 0): the page's side-by-side of one mistake

The records come from serve/records_view.py's index, which reads only what the file gained since the last
request. Its queries run in READERS, threads of their own: a first request on a large file builds the index
(minutes, for a million records), which in the event loop's default threads would hold up what the rest of the
server does there (the DNS lookups of the teachers' connections). The requests that come meanwhile wait for that
build on the loop, not in a thread: eight reloads of one large job would otherwise hold every reader, and every
other job's records with them. An error names a run's file as the run says (`Run.name`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from fair.wire.errors import ApiError
from serve.records_view import INDEX_NAME, MAX_PAGE, Filters, Flag, RecordIndex, index_lock

JOB_FILES = ("mistakes.jsonl", "committee.jsonl", "committee_stats.json", "committee.yaml")
RUN = "local"  # `fair view`'s one run, as a job id
MAX_N = 2**62  # record numbers and offsets past SQLite's integers are a 400, not a 500
READERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fair-records")
WAIT_S = 0.05  # how often a request waiting for an index in use looks again


@dataclass(frozen=True)
class Run:
    """What the routes read of a run: its folder, where its records' index lives, and what errors call its
    committee.jsonl (`fair serve`: the job's, never by the server's own paths)."""

    folder: Path
    index: Path
    name: str


def job_run(folder: Path, job_id: str) -> Run:
    """A job of `fair serve`: its index beside the committee.jsonl it indexes; named as under the state folder."""
    return Run(folder, folder / INDEX_NAME, f"jobs/{job_id}/committee.jsonl")


def downloadable(folder: Path, name: str) -> bool:
    """JOB_FILES and the paper's *_round0.json files: never the cache, the index or anything outside the folder."""
    allowed = name in JOB_FILES or (name.endswith("_round0.json") and "/" not in name and name[0] != ".")
    return allowed and (folder / name).is_file()


def add_reading(app: FastAPI, run: Callable[[str], Run], about: dict[str, Any]) -> None:
    """`run(id)`: the run a job id names (ApiError 404 for an unknown id)."""

    async def read(job_id: str, query: Callable[[RecordIndex], Any]) -> Any:
        where = run(job_id)
        in_use = index_lock(where.index)
        while in_use.locked():  # being built, most likely: wait here, holding no reader
            await asyncio.sleep(WAIT_S)

        def indexed() -> Any:
            with RecordIndex(where.folder / "committee.jsonl", where.index, where.name) as records:
                return query(records)

        return await asyncio.get_running_loop().run_in_executor(READERS, indexed)

    @app.get("/v1/fair/page")
    async def page_settings() -> dict[str, Any]:
        return about

    @app.get("/v1/fair/jobs/{job_id}/files")
    async def job_files(job_id: str) -> dict[str, Any]:
        where = run(job_id).folder
        names = [n for n in JOB_FILES if (where / n).exists()] + sorted(
            p.name for p in where.glob("*_round0.json")
        )
        return {"object": "list", "data": [{"name": n, "bytes": (where / n).stat().st_size} for n in names]}

    @app.get("/v1/fair/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str) -> FileResponse:
        where = run(job_id).folder
        if not downloadable(where, name):
            raise ApiError(404, f"job {job_id} has no file {name!r}", "name")
        # An attachment, never shown inline (a tab would try to draw a 1 GB committee.jsonl), never sniffed.
        return FileResponse(where / name, filename=name, headers={"X-Content-Type-Options": "nosniff"})

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
        return await read(job_id, lambda records: records.page(filters, offset, limit))

    @app.get("/v1/fair/jobs/{job_id}/records/{n}")
    async def job_record(job_id: str, n: int = PathParam(..., ge=0, le=MAX_N)) -> dict[str, Any]:
        if (record := await read(job_id, lambda records: records.record(n))) is None:
            raise ApiError(404, f"job {job_id} has no record {n} (yet)", "n")
        return {"n": n, "record": record}

