"""OpenAI's Batch API for the committee's feedback and rationales: half price, answered within 24 hours.

    fair committee --task gsm8k --teachers default --batch-api      # for the teachers with batch_api: true
    fair committee --task svamp --teachers offline --base-url http://127.0.0.1:8765 --batch-api

The Batch API only fills the response cache. For every pending mistake we build exactly the feedback and
rationale requests the streaming committee will send each batch teacher (the same ChatRequest, so the same
cache key, and OpenAIProvider's own body), skip those already cached, and write the rest as batch input lines:
custom_id = cache key, one model per file, split under OpenAI's 50,000 requests and 200 MB per file, written
to an unlinked temporary file as they are built. Each file is uploaded (POST /files) and made a batch
(POST /batches), which is polled (GET /batches/{id}; the waits double from 1 s up to batch_poll_s) until it is
completed, failed, expired or cancelled, or until batch_deadline_s (25 h) after its creation, when the run
cancels it itself (a server that never ends a batch must not hang the run). Each line of its output and error
files is parsed as the live reply would be, and the good ones go into the cache marked batch = 1, so that their
cost is counted at BATCH_PRICE.
Then the committee runs as usual: feedback and rationales come from the cache, peer reviews go live (they need
the rationales). The records are the same as a live run's by construction, but for the lower cost.

Resume: the cache file keeps a ledger of batches (tables `batches` and `batch_requests`, holding provider ids
and cache keys, never a key to an API). A file's row and its request keys are committed right after the
upload, the batch id right after the create; a rerun re-attaches to every open batch instead of resubmitting its
requests. A run killed between create and commit finds its batch again by listing the batches made from the
uploaded file, so no paid request is sent twice.

Fallback (what a line that is no good reply was billed, an empty 200's usage, is still counted): a line in the
error file, a reply that does not parse, and every request of a batch that failed,
expired, was cancelled or is unknown to the server (404, e.g. a restarted simulator) stay out of the cache, so
the committee sends them live; the run reports how many (`fell_back`). They are not resubmitted: another batch
round could add another 24 hours, for requests that are few.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import httpx
import orjson

from fair.errors import FairError
from gen.teachers.cache import key_for
from gen.teachers.keys import redact
from gen.teachers.providers import (
    ChatRequest,
    ChatResponse,
    FatalError,
    OpenAIProvider,
    ProviderError,
    TransientError,
    Usage,
    lookup,
)
from gen.teachers.retry import Retry

if TYPE_CHECKING:
    from gen.teachers.budget import CostBudget
    from gen.teachers.cache import ResponseCache
    from gen.teachers.client import TeacherStats
    from gen.teachers.config import Teacher

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # OpenAI's limits per batch input file
MAX_BYTES = 200 * 1024 * 1024
FIRST_POLL_S = 1.0  # the first status check comes this soon; the waits double up to the run's batch_poll_s
TERMINAL = {"completed", "failed", "expired", "cancelled"}
CLOSED = TERMINAL | {"lost"}  # lost: the server does not know the batch (404)
# A batch still open this long after its creation is cancelled and its requests go live: OpenAI expires one
# after 24 h, so this leaves an hour's grace, and a server that never ends a batch cannot hang the run.
DEADLINE_S = 25 * 3600.0

LEDGER = """
CREATE TABLE IF NOT EXISTS batches (
    input_file TEXT PRIMARY KEY, teacher TEXT NOT NULL, batch TEXT, status TEXT NOT NULL,
    requests INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_requests (key TEXT PRIMARY KEY, input_file TEXT NOT NULL);
"""


@dataclass
class BatchReport:
    submitted: int = 0  # requests sent in new batches this run
    reattached: int = 0  # requests in open batches that an earlier run submitted
    answered: int = 0  # replies put in the cache
    fell_back: int = 0  # left to the live path: failed lines, all of a failed, expired, cancelled or lost batch
    batches: int = 0  # batches waited for
    seconds: float = 0.0  # from the first upload to the last batch's replies in the cache


class Ledger:
    """The batches a run has submitted, in the response cache's SQLite file; every change commits at once."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        db.executescript(LEDGER)

    def open_batches(self) -> list[tuple[str, str, str | None]]:
        """(input file, teacher, batch id or None if the run stopped before it knew it) of unfinished batches."""
        marks = ", ".join("?" * len(CLOSED))
        return self.db.execute(f"SELECT input_file, teacher, batch FROM batches WHERE status NOT IN ({marks}) "
                               "ORDER BY created", tuple(CLOSED)).fetchall()

    def requests(self, input_file: str) -> int:
        (n,) = self.db.execute("SELECT requests FROM batches WHERE input_file = ?", (input_file,)).fetchone()
        return n

    def holds(self, key: str, input_file: str | None = None) -> bool:
        """Is the request in an open batch (in that one, if given)? A query, not a set: corpora can be huge."""
        if input_file is None:
            return self.db.execute("SELECT 1 FROM batch_requests WHERE key = ?", (key,)).fetchone() is not None
        row = self.db.execute("SELECT 1 FROM batch_requests WHERE key = ? AND input_file = ?", (key, input_file))
        return row.fetchone() is not None

    def uploaded(self, input_file: str, teacher: str, keys: set[str]) -> None:
        with self.db:
            self.db.execute("INSERT INTO batches VALUES (?, ?, NULL, 'uploaded', ?, ?)",
                            (input_file, teacher, len(keys), time.time()))
            self.db.executemany("INSERT OR REPLACE INTO batch_requests VALUES (?, ?)",
                                [(k, input_file) for k in keys])

    def created(self, input_file: str, batch: str, status: str) -> None:
        with self.db:
            self.db.execute("UPDATE batches SET batch = ?, status = ? WHERE input_file = ?",
                            (batch, status, input_file))

    def finished(self, input_file: str, status: str) -> None:
        """Closed: its replies are in the cache, the rest is the live path's."""
        with self.db:
            self.db.execute("UPDATE batches SET status = ? WHERE input_file = ?", (status, input_file))
            self.db.execute("DELETE FROM batch_requests WHERE input_file = ?", (input_file,))


class BatchAPI:
    """One teacher's Batch API calls, through OpenAIProvider's HTTP call and error mapping, with retries."""

    def __init__(self, teacher: Teacher, http: httpx.AsyncClient):
        self.teacher = teacher
        self.provider = OpenAIProvider(teacher, http)
        self.retry = Retry(teacher.max_retries, teacher.retry_backoff_s)

    async def _call(self, method: str, path: str, upload: IO[bytes] | None = None,
                    **kwargs: Any) -> httpx.Response:
        """One call, retried as live requests are (gen/teachers/client.py's Retry)."""
        t = self.teacher

        async def attempt() -> httpx.Response:
            if upload is not None:
                upload.seek(0)  # a retried upload sends the file from the start
                kwargs["files"] = {"file": ("fair-batch.jsonl", upload, "application/jsonl")}
            return await self.provider.send(method, f"{t.url}/{path}", self.provider.auth(), **kwargs)

        return await self.retry.run(attempt)

    def text(self, data: Any, name: str) -> str:
        """A string field of a reply (an id, a status): anything else is a malformed reply."""
        value = lookup(data, name)
        if not isinstance(value, str) or not value:
            raise self.provider.malformed(f"no {name}")
        return value

    async def upload(self, file: IO[bytes]) -> str:
        # No deadline but httpx's per-read timeouts: 200 MB may rightly take longer than timeout_s to send.
        resp = await self._call("POST", "files", upload=file, data={"purpose": "batch"}, deadline=False)
        return self.text(self.provider.json_object(resp), "id")

    async def create(self, input_file: str) -> dict:
        body = {"input_file_id": input_file, "endpoint": ENDPOINT, "completion_window": "24h",
                "metadata": {"made_by": "fair committee"}}
        return self.provider.json_object(await self._call("POST", "batches", json=body))

    async def get(self, batch: str) -> dict:
        return self.provider.json_object(await self._call("GET", f"batches/{batch}"))

    async def cancel(self, batch: str) -> dict:
        return self.provider.json_object(await self._call("POST", f"batches/{batch}/cancel"))

    async def find(self, input_file: str) -> dict | None:
        """The batch made from `input_file`, if a killed run created one: the listing is newest first."""
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = self.provider.json_object(await self._call("GET", "batches", params=params))
            batches = page.get("data") if isinstance(page.get("data"), list) else []
            for batch in batches:
                if lookup(batch, "input_file_id") == input_file:
                    return batch
            if not page.get("has_more") or not batches:
                return None
            params["after"] = self.text(batches[-1], "id")

    async def lines(self, file_id: str) -> AsyncIterator[str]:
        """A result file, line by line as it downloads: one can hold hundreds of MB."""
        resp = await self._call("GET", f"files/{file_id}/content", stream=True)
        try:
            async for line in resp.aiter_lines():
                yield line
        except httpx.TransportError as e:  # the run stops; the batch stays open and is downloaded again
            raise TransientError(f"{self.teacher.name}: the download of {file_id} broke off "
                                 f"({type(e).__name__})") from None
        finally:
            await resp.aclose()


class _Chunk:
    """One input file being written: at most MAX_REQUESTS lines and MAX_BYTES (the one set of keys in memory)."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        # Unlinked at once: nothing is left behind, even after a kill; closed by BatchRun.submit.
        self.file = tempfile.TemporaryFile()  # noqa: SIM115
        self.keys: set[str] = set()
        self.size = 0

    def fits(self, line: bytes) -> bool:
        return len(self.keys) < MAX_REQUESTS and self.size + len(line) <= MAX_BYTES

    def add(self, key: str, line: bytes) -> None:
        self.file.write(line)
        self.keys.add(key)
        self.size += len(line)


class BatchRun:
    """One run's batches: `await BatchRun(teachers, cache, http, stats, poll_s).run(drafts(...))`."""

    def __init__(self, teachers: list[Teacher], cache: ResponseCache, http: httpx.AsyncClient,
                 stats: dict[str, TeacherStats], poll_s: float, deadline_s: float = DEADLINE_S,
                 budget: CostBudget | None = None):
        self.apis = {t.name: BatchAPI(t, http) for t in teachers}
        self.cache, self.stats, self.poll_s, self.deadline_s = cache, stats, poll_s, deadline_s
        self.budget = budget  # uncapped (a batch cannot stop half-way): it counts the batches' cost in the ledger
        self.ledger = Ledger(cache.db)
        self.report = BatchReport()
        self.follows: list[asyncio.Task] = []

    async def run(self, requests: Iterable[tuple[Teacher, ChatRequest]]) -> BatchReport:
        """Re-attach to open batches, submit the uncached requests, wait for every batch, fill the cache."""
        started = time.perf_counter()
        for input_file, teacher, batch in self.ledger.open_batches():
            if teacher not in self.apis:
                print(f"batch: {batch or input_file} of teacher {teacher!r}, not in this committee: left open")
                continue
            self.report.reattached += self.ledger.requests(input_file)
            self.follow(teacher, input_file, batch, resumed=True)
        if self.report.reattached:
            print(f"batch: re-attached to {len(self.follows)} batch(es) of {self.report.reattached} requests "
                  f"submitted by an earlier run")
        try:
            chunks: dict[str, _Chunk] = {}
            for teacher, request in requests:
                key = key_for(teacher, request)
                chunk = chunks.get(teacher.name)
                # Asked once: custom_ids must be unique in a file, and a repeated mistake costs nothing more.
                if key in self.cache or self.ledger.holds(key) or (chunk is not None and key in chunk.keys):
                    continue
                line = orjson.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                                     "body": self.apis[teacher.name].provider.body(request)}) + b"\n"
                if chunk is not None and not chunk.fits(line):
                    await self.submit(chunks.pop(teacher.name))
                    chunk = None
                if chunk is None:
                    chunk = chunks[teacher.name] = _Chunk(teacher)
                chunk.add(key, line)
            for chunk in chunks.values():
                await self.submit(chunk)
            await asyncio.gather(*self.follows)
        except ProviderError as e:  # retries spent: what was submitted stays open in the ledger for the next run
            raise FairError(f"Batch API: {e}; rerun to re-attach to the batches already submitted") from None
        finally:
            for task in self.follows:  # one failed: stop polling the others (their batches stay open)
                task.cancel()
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def submit(self, chunk: _Chunk) -> None:
        with chunk.file:
            input_file = await self.apis[chunk.teacher.name].upload(chunk.file)
        self.ledger.uploaded(input_file, chunk.teacher.name, chunk.keys)  # before create: a kill cannot lose it
        self.report.submitted += len(chunk.keys)
        self.follow(chunk.teacher.name, input_file, None, resumed=False)

    def follow(self, teacher: str, input_file: str, batch: str | None, resumed: bool) -> None:
        self.follows.append(asyncio.create_task(self._follow(teacher, input_file, batch, resumed)))

    async def _follow(self, teacher: str, input_file: str, batch_id: str | None, resumed: bool) -> None:
        api = self.apis[teacher]
        if batch_id is None:
            batch = (await api.find(input_file) if resumed else None) or await api.create(input_file)
            batch_id = api.text(batch, "id")
            self.ledger.created(input_file, batch_id, str(batch.get("status")))
            print(f"batch: {batch_id} for {teacher}: {self.ledger.requests(input_file)} requests")
        await self.collect(api, input_file, await self.wait(api, batch_id))

    async def wait(self, api: BatchAPI, batch_id: str) -> dict | None:
        """The batch once it has ended or was given up at the deadline; None when the server does not know it."""
        delay, status, started = min(FIRST_POLL_S, self.poll_s), None, time.time()
        while True:
            try:
                batch = await api.get(batch_id)
            except FatalError:
                return None
            if (current := api.text(batch, "status")) in TERMINAL:
                return batch
            # From the batch's creation, so that a rerun after a kill does not start the clock again.
            created = lookup(batch, "created_at")
            if time.time() - (created if isinstance(created, int | float) else started) > self.deadline_s:
                return await self.give_up(api, batch_id, batch)
            if current != status:
                status = current
                done, total = lookup(batch, "request_counts", "completed"), lookup(batch, "request_counts", "total")
                print(f"batch: {batch_id} is {status} ({done or 0}/{total or '?'} done)")
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.poll_s)

    async def give_up(self, api: BatchAPI, batch_id: str, batch: dict) -> dict:
        """Cancel a batch past the deadline; it counts as cancelled (what it has answered is still collected)."""
        print(f"batch: {batch_id} still {api.text(batch, 'status')} {self.deadline_s:g}s after its creation: "
              f"cancelled, its requests go live")
        try:
            batch = await api.cancel(batch_id)
        except ProviderError as e:  # the run goes on without it: at worst the server finishes it unread
            print(f"batch: cancelling {batch_id} failed ({e})")
        return batch | {"status": "cancelled"}

    def answer(self, api: BatchAPI, input_file: str, raw: str) -> tuple[str, ChatResponse] | None:
        """A result line's (cache key, reply), or None when it is not a good reply to a request of this file."""
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        key, response = lookup(line, "custom_id"), lookup(line, "response")
        if not isinstance(key, str) or not self.ledger.holds(key, input_file) or lookup(response, "status_code") != 200:
            return None
        try:
            return key, dataclasses.replace(api.provider.parse(lookup(response, "body")), batch=True)
        except TransientError as e:  # goes live; an empty or malformed 200 was billed all the same
            if e.usage is not None:
                self.bill(api, e.usage)
            return None

    def bill(self, api: BatchAPI, usage: Usage) -> None:
        """Count what a result line was billed, at the batch price, in the stats and the ledger."""
        cost = api.teacher.cost(usage, batch=True)
        self.stats[api.teacher.name].bill(usage, cost)
        if self.budget is not None:
            self.budget.charge(cost)

    async def collect(self, api: BatchAPI, input_file: str, batch: dict | None) -> None:
        """Put the batch's good replies in the cache as they download; whatever is left goes live."""
        stats, answered = self.stats[api.teacher.name], 0
        for file_id in (lookup(batch, "output_file_id"), lookup(batch, "error_file_id")):
            if not isinstance(file_id, str) or not file_id:
                continue
            async for raw in api.lines(file_id):
                if (answer := self.answer(api, input_file, raw)) is None:
                    continue  # a line we cannot read is left to the live path
                key, reply = answer
                self.cache.put(key, api.teacher.name, reply)
                answered += 1
                stats.batched += 1
                self.bill(api, reply.usage)
        self.cache.flush()  # committed before the ledger closes the batch: a kill in between downloads it again
        status, requests = batch.get("status", "lost") if batch else "lost", self.ledger.requests(input_file)
        self.ledger.finished(input_file, status)
        self.report.batches += 1
        self.report.answered += answered
        self.report.fell_back += requests - answered
        if answered < requests:
            # Why a batch failed validation, in the server's words: redacted, since they may quote the key.
            message = lookup(batch, "errors", "data", 0, "message")
            why = f" ({redact(str(message), api.teacher.api_keys())})" if message else ""
            print(f"batch: {batch['id'] if batch else input_file} {status}{why}: {answered} of {requests} "
                  f"answered, {requests - answered} left to the live path")
