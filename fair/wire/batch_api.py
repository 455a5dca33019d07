"""OpenAI's Files and Batch API, once, for the service (serve/) and the simulator (simulator/):

    POST /v1/files                  multipart: purpose, file                     -> the file object
    GET  /v1/files[/{id}]           the files, newest first (limit, after), or one
    GET  /v1/files/{id}/content     its bytes
    DELETE /v1/files/{id}           not while it is the input of an open batch (409)
    POST /v1/batches                {"input_file_id", "endpoint", "completion_window", "metadata"} -> the batch
    GET  /v1/batches[/{id}]         the batches, newest first (limit, after), or one
    POST /v1/batches/{id}/cancel    cancelling, then cancelled with what was answered

A batch's life is one state machine, OpenAI's: created `validating`; its input file is checked line by line
(fair/wire/batch.py's check_line, the backend's reading of a body, one model, at least one line) and it is
`failed` with `errors` naming the lines, or `in_progress`; its lines are answered at most WINDOW at once, each
result appended as it ends (output file: status 200, error file: the rest); then `finalizing` (the result files
registered, only those with lines) and `completed`. A cancel makes it `cancelling` at once and `cancelled` as
soon as the lines in flight are stopped, keeping what was answered; one still open 24 h after its creation (its
completion_window) is `expired` the same way, its unanswered lines in the error file (code batch_expired). A bug
on the way fails the batch rather than leave it open, which a client would poll until its own deadline. A batch left open by a stop resumes from `resume()`: the custom_ids
already answered (the backend's `Run.done`) are skipped.

Lists take OpenAI's cursor (`after`) and `limit`, clamped to 1..MAX_PAGE for batches (1..MAX_FILES for files) as
OpenAI clamps; a limit that is not a whole number is a 400.

What is each side's own is behind `Backend`: where files and batches are kept (the simulator: memory under its
byte cap; the service: its SQLite store and files on disk, durable across a kill), how an upload is taken in and
a file served, how a line's body is read and answered (the simulator's personas; the service's teachers through
their TeacherClients). The routes here are plain async functions on `BatchApi`; the service mounts them as
FastAPI routes (its schema and auth around them), the simulator as the Starlette routes of `routes()`.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fair.wire.batch import (
    BATCH_OPEN,
    batch_object,
    check_create,
    check_line,
    file_object,
    page,
    page_limit,
    result_line,
)
from fair.wire.errors import ApiError

WINDOW = 64  # lines in flight per batch
SAVE_EVERY_S = 1.0  # the counts of a running batch are saved this often
EXPIRES_S = 24 * 3600  # the completion_window, "24h"
MAX_FILES = 10_000  # OpenAI's largest page of GET /files (MAX_PAGE: of GET /batches)
MAX_ERRORS = 100  # validation errors kept on a failed batch
INTERNAL = "internal error in the server; the batch stopped here"


class Docs(Protocol):
    """Where file and batch documents are kept (kind "file" or "batch"), as serve/store.py keeps them."""

    def add(self, kind: str, doc: dict[str, Any]) -> dict[str, Any]: ...
    def get(self, kind: str, object_id: str) -> dict[str, Any] | None: ...
    def update(self, kind: str, object_id: str, **changes: Any) -> dict[str, Any]: ...
    def delete(self, kind: str, object_id: str) -> None: ...

    def list(self, kind: str, limit: int = 100, after: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, `limit` of them after the object `after`; and whether more follow."""
        ...


class Run(Protocol):
    """One batch's answering, from its start (or restart) to its result files."""

    done: set[str]  # custom_ids answered (before a restart, then as lines end): skipped, and not expired
    counts: dict[str, int]  # {"completed", "failed"} so far, updated by the engine as lines end
    changes: dict[str, Any]  # fields of the backend's own to set on the batch when the run starts

    async def answer(self, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(answered?, the result line: fair/wire/batch.py's result_line) of one input line."""
        ...

    def write(self, ok: bool, line: dict[str, Any]) -> None: ...  # into the output (ok) or error file
    def close(self) -> None: ...

    def publish(self) -> dict[str, str]:
        """Register the result files that hold lines; {"output_file_id": ..., "error_file_id": ...} of those."""
        ...


class Backend(Protocol):
    docs: Docs
    delay_s: float  # a wait before a batch's lines are answered (the simulator's batch_delay_s)
    own_fields: tuple[str, ...]  # batch document fields shown beside OpenAI's

    async def receive(self, stream: AsyncIterator[bytes], content_type: str) -> dict[str, Any]:
        """Take in an upload (fair/wire/multipart.py's read_form) and store it; its file document."""
        ...

    def lines(self, file_doc: dict[str, Any]) -> Iterable[bytes]: ...  # an input file's lines
    def model(self, body: Any, n: int) -> str: ...  # the model a line's body asks for; ApiError naming line n
    def content(self, file_doc: dict[str, Any]) -> Response: ...  # a file's bytes as the reply
    def discard(self, file_doc: dict[str, Any]) -> None: ...  # a deleted file's bytes
    def start(self, batch_doc: dict[str, Any]) -> Run: ...


class BatchApi:
    """The routes and the batches' lifecycle over one backend; `tasks`: the batches being answered."""

    def __init__(self, backend: Backend):
        self.backend, self.docs = backend, backend.docs
        self.tasks: dict[str, asyncio.Task] = {}

    # -- files -------------------------------------------------------------------------------------------

    async def upload(self, stream: AsyncIterator[bytes], content_type: str) -> dict[str, Any]:
        return file_object(await self.backend.receive(stream, content_type))

    def file(self, file_id: str) -> dict[str, Any]:
        if (doc := self.docs.get("file", file_id)) is None:
            raise ApiError(404, f"no file {file_id!r}", "file_id", "not_found")
        return doc

    def list_files(self, limit: str | int = MAX_FILES, after: str | None = None) -> dict[str, Any]:
        items, more = self.docs.list("file", page_limit(limit, MAX_FILES), after)
        return page([file_object(d) for d in items], more)

    def retrieve_file(self, file_id: str) -> dict[str, Any]:
        return file_object(self.file(file_id))

    def content(self, file_id: str) -> Response:
        return self.backend.content(self.file(file_id))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        doc = self.file(file_id)
        if any(b["input_file_id"] == file_id and b["status"] in BATCH_OPEN
               for b in self.docs.list("batch", 1 << 30)[0]):
            raise ApiError(409, f"file {file_id} is the input of an open batch", "file_id", "conflict")
        self.docs.delete("file", file_id)
        self.backend.discard(doc)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -----------------------------------------------------------------------------------------

    def view(self, doc: dict[str, Any]) -> dict[str, Any]:
        return batch_object(doc, **{k: doc.get(k) for k in self.backend.own_fields})

    def batch(self, batch_id: str) -> dict[str, Any]:
        if (doc := self.docs.get("batch", batch_id)) is None:
            raise ApiError(404, f"no batch {batch_id!r}", "batch_id", "not_found")
        return doc

    def create(self, body: Any) -> dict[str, Any]:
        file_id = check_create(body if isinstance(body, dict) else {})
        if self.file(file_id)["purpose"] != "batch":
            raise ApiError(400, f"input_file_id {file_id!r} is not a file of purpose batch", "input_file_id",
                           "invalid_request")
        now = time.time()
        doc = {"id": f"batch_{new_hex()}", "input_file_id": file_id, "status": "validating", "created_at": now,
               "metadata": body.get("metadata"), "total": 0, "completed": 0, "failed": 0,
               **{k: 0 for k in self.backend.own_fields}}
        self.docs.add("batch", doc)
        self.start(doc["id"])
        return self.view(doc)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self.view(self.batch(batch_id))

    def list_batches(self, limit: str | int = 20, after: str | None = None) -> dict[str, Any]:
        items, more = self.docs.list("batch", page_limit(limit), after)
        return page([self.view(d) for d in items], more)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """cancelling at once (a cancelled or finished batch is left as it is); the run ends it cancelled."""
        doc = self.batch(batch_id)
        if doc["status"] in ("validating", "in_progress"):
            doc = self.docs.update("batch", batch_id, status="cancelling", cancelling_at=int(time.time()))
            if task := self.tasks.get(batch_id):
                task.cancel()
        return self.view(doc)

    def resume(self) -> list[str]:
        """Start every batch a stop left open; their ids."""
        open_ids = [d["id"] for d in self.docs.list("batch", 1 << 30)[0] if d["status"] in BATCH_OPEN]
        for batch_id in open_ids:
            self.start(batch_id)
        return open_ids

    def start(self, batch_id: str) -> None:
        self.tasks[batch_id] = asyncio.get_running_loop().create_task(self.run(batch_id), name=batch_id)

    async def close(self) -> None:
        """Stop every run; the batches stay open, for `resume` (the service) or for good (the simulator)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one batch's life --------------------------------------------------------------------------------

    async def run(self, batch_id: str) -> None:
        try:
            doc = self.batch(batch_id)
            if doc["status"] == "validating":
                doc = await self.validate(doc)
            if doc["status"] != "failed":
                await self.answer(doc)
        except asyncio.CancelledError:
            if self.batch(batch_id)["status"] != "cancelling":
                raise  # the server is stopping: the batch stays open
            # cancelled while validating: nothing was answered
            self.docs.update("batch", batch_id, status="cancelled", cancelled_at=int(time.time()))
        except Exception:
            traceback.print_exc()
            error = {"code": "server_error", "line": None, "message": INTERNAL}
            self.docs.update("batch", batch_id, status="failed", failed_at=int(time.time()), errors=[error])
        finally:
            self.tasks.pop(batch_id, None)

    async def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """validating -> in_progress (total: the lines), or failed with the errors (cancelling stays)."""
        errors, total = await validate(self.backend.lines(self.file(doc["input_file_id"])), self.backend.model)
        now = int(time.time())
        status = self.batch(doc["id"])["status"]
        if status == "cancelling":
            return self.docs.update("batch", doc["id"], total=total)
        if errors:
            return self.docs.update("batch", doc["id"], status="failed", failed_at=now, errors=errors[:MAX_ERRORS])
        return self.docs.update("batch", doc["id"], status="in_progress", in_progress_at=now, total=total)

    async def answer(self, doc: dict[str, Any]) -> None:
        """Answer the lines not yet answered, until done (completed), cancelled or expired; then the files."""
        batch_id, run = doc["id"], self.backend.start(doc)
        status = "completed"
        try:
            self.docs.update("batch", batch_id, **run.counts, **run.changes)
            if doc["status"] == "cancelling":  # cancelled before a stop, or while validating
                status = "cancelled"
            else:
                left = doc["created_at"] + EXPIRES_S - time.time()
                await asyncio.wait_for(self.answer_lines(doc, run), max(left, 0))
        except TimeoutError:
            status = "expired"
            self.expire(doc, run)
        except asyncio.CancelledError:
            if self.batch(batch_id)["status"] != "cancelling":  # the server is stopping: resumed at the next start
                self.docs.update("batch", batch_id, **run.counts)
                raise
            status = "cancelled"
        finally:
            run.close()
        if status == "completed":
            self.docs.update("batch", batch_id, status="finalizing", finalizing_at=int(time.time()), **run.counts)
        files = run.publish()
        self.docs.update("batch", batch_id, status=status, **{f"{status}_at": int(time.time())}, **run.counts,
                         **files)

    async def answer_lines(self, doc: dict[str, Any], run: Run) -> None:
        if self.backend.delay_s:
            await asyncio.sleep(self.backend.delay_s)
        saved = time.monotonic()
        pending: set[asyncio.Task] = set()

        def write(finished: set[asyncio.Task]) -> None:
            nonlocal saved
            for ok, line in (t.result() for t in finished):
                run.write(ok, line)
                run.done.add(line["custom_id"])
                run.counts["completed" if ok else "failed"] += 1
            if time.monotonic() - saved >= SAVE_EVERY_S:
                saved = time.monotonic()
                self.docs.update("batch", doc["id"], **run.counts)

        try:
            for record in self.records(doc, run.done):
                if len(pending) >= WINDOW:
                    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    write(finished)
                pending.add(asyncio.ensure_future(run.answer(record)))
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                write(finished)
        finally:
            for task in pending:  # cancelled, expired or stopping: the lines in flight go unanswered
                task.cancel()

    @staticmethod
    def expire_line(custom_id: str) -> dict[str, Any]:
        return result_line(f"batch_req_{new_hex()}", custom_id, error={
            "code": "batch_expired", "message": "the request was not answered within the batch's completion window"})

    def expire(self, doc: dict[str, Any], run: Run) -> None:
        """The lines left unanswered at the completion window go to the error file, as OpenAI's do."""
        for record in self.records(doc, run.done):
            run.write(False, self.expire_line(record["custom_id"]))
            run.counts["failed"] += 1

    def records(self, doc: dict[str, Any], done: set[str]) -> Iterator[dict[str, Any]]:
        for raw in self.backend.lines(self.file(doc["input_file_id"])):
            if raw.strip() and (record := orjson.loads(raw))["custom_id"] not in done:
                yield record


async def validate(lines: Iterable[bytes], model: Callable[[Any, int], str]) -> tuple[list[dict], int]:
    """OpenAI-style validation errors ({code, message, line}) of an input file, and its number of lines: each
    line JSON of OpenAI's shape (check_line) with a body the backend reads (`model`), one model in all, at least
    one line. Yields to the event loop now and then: a file may hold 50,000 lines."""
    errors: list[dict] = []
    models: set[str] = set()
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        if n % 1000 == 0:
            await asyncio.sleep(0)
        if not raw.strip():
            continue
        try:
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ApiError(400, f"line {n}: not valid JSON", "file", "invalid_json") from None
            check_line(record, n, seen)
            models.add(model(record.get("body"), n))
        except ApiError as e:
            errors.append({"code": e.code or "invalid_request", "line": n, "message": str(e)})
    if len(models) > 1:
        errors.append({"code": "mixed_models", "line": None, "message": "a batch may use one model only"})
    if not seen and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "the input file has no requests"})
    return errors, len(seen)


def new_hex() -> str:
    return uuid.uuid4().hex[:24]


# ---------------------------------------------------------------------------------------------------------
# The routes as Starlette routes (the simulator's; the service wraps the same methods in FastAPI's)

Handler = Callable[[Request], Awaitable[Response]]


def routes(api: BatchApi, guard: Callable[[Handler], Handler], read_json: Callable[[Request], Awaitable[Any]],
           prefixes: tuple[str, ...] = ("/v1", "")) -> list[Route]:
    """The routes above under each prefix; `guard` wraps each handler (error replies), `read_json` reads a
    POST /batches body."""
    def reply(body: dict[str, Any]) -> Response:
        return Response(orjson.dumps(body), 200, media_type="application/json")

    async def upload(r: Request) -> Response:
        return reply(await api.upload(r.stream(), r.headers.get("content-type", "")))

    async def list_files(r: Request) -> Response:
        return reply(api.list_files(r.query_params.get("limit", str(MAX_FILES)), r.query_params.get("after")))

    async def create(r: Request) -> Response:
        return reply(api.create(await read_json(r)))

    async def list_batches(r: Request) -> Response:
        return reply(api.list_batches(r.query_params.get("limit", "20"), r.query_params.get("after")))

    def one(method: Callable[[str], Any]) -> Handler:
        async def handler(r: Request) -> Response:
            result = method(r.path_params["ident"])
            return result if isinstance(result, Response) else reply(result)
        return handler

    table = [("POST", "/files", upload), ("GET", "/files", list_files),
             ("GET", "/files/{ident}", one(api.retrieve_file)), ("DELETE", "/files/{ident}", one(api.delete_file)),
             ("GET", "/files/{ident}/content", one(api.content)), ("POST", "/batches", create),
             ("GET", "/batches", list_batches), ("GET", "/batches/{ident}", one(api.retrieve)),
             ("POST", "/batches/{ident}/cancel", one(api.cancel))]
    return [Route(prefix + path, guard(handler), methods=[method])
            for prefix in prefixes for method, path, handler in table]
