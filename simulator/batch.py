"""OpenAI's Batch API in the offline committee (`fair teachers serve`): what gen/teachers/batch.py is tested against.

    POST /v1/files                  multipart: purpose=batch, file=<JSONL>       -> {"id": "file-...", ...}
    POST /v1/batches                {"input_file_id", "endpoint", "completion_window"} -> the batch object
    GET  /v1/batches/{id}           the batch object: status, request_counts, output_file_id, error_file_id
    GET  /v1/batches                the batches, newest first (limit, after)
    POST /v1/batches/{id}/cancel    cancelled, with no output
    GET  /v1/files/{id}/content     the file's bytes

(the /v1 prefix is optional, as on the live route). The objects, the upload's reading and the error replies are
fair/wire's, as the service's (serve/) are; what is the simulator's own is where files and batches are kept
(BatchStore, in memory) and how a line is answered (`Answer`, the simulator's pipeline). Each input line is
{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": <a chat-completions body>}; a file with a
bad line, a repeated custom_id or more than one model fails validation, as OpenAI's does. A batch stays
in_progress for the server's batch_delay_s, then every line is answered by the simulator's one answer pipeline
(Simulator.answer: the same body gets the same reply live or in a batch) and the batch completes. Fault injection
fails lines instead of requests: a line that draws any fault (500), names an unknown model (404) or has a body
that cannot be read (400) lands in the error file; no latency or rate limit applies. Files and batches live in
memory and die with the server, so a client that comes back to a restarted server finds its batch gone (404).
Memory is bounded for a server that runs for weeks: files past the store's size go oldest first (a later download
is a 404, as for a deleted file), a finished batch keeps its counts but not its lines, and only the newest
MAX_BATCHES batches are kept.
"""

from __future__ import annotations

import io
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fair.wire.batch import batch_object, check_create, check_line, file_object, page, page_limit, result_line
from fair.wire.errors import ApiError
from fair.wire.multipart import read_form
from simulator.formats import INTERNAL, SHAPE_ERRORS
from simulator.http import json_response, read_body
from simulator.replies import HttpReply

MAX_UPLOAD = 200 << 20  # OpenAI's limit on one batch input file
MAX_JSON = 1 << 20
MAX_BATCHES = 10_000  # batch objects kept (a finished one is a few hundred bytes); the oldest go first


@dataclass
class Batch:
    id: str
    input_file_id: str
    lines: list[dict]  # emptied once answered: the counts below keep what the batch object reports
    created_at: float
    metadata: dict | None = None
    status: str = "in_progress"
    errors: list[dict] | None = None  # validation errors: the batch failed before any line ran
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished_at: float | None = None
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = len(self.lines)

    def to_json(self) -> dict[str, Any]:
        stamp = int(self.finished_at or self.created_at)  # in_progress_at: lines are queued at once
        return batch_object({
            "id": self.id, "input_file_id": self.input_file_id, "status": self.status, "created_at": self.created_at,
            "metadata": self.metadata, "errors": self.errors, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, f"{self.status}_at": stamp, "total": self.total,
            "completed": self.completed, "failed": self.failed,
        })


class Answer(Protocol):
    """How a line is answered: the simulator's pipeline (Simulator.answer), given the body's bytes and the batch."""

    def __call__(self, raw: bytes, *, batch: str) -> HttpReply: ...


@dataclass
class BatchStore:
    """The simulator's files and batches, in memory; `answer_line` answers a line, `count` counts what happened, and
    `stopping` set ends the batches waiting out their delay."""

    answer_line: Answer
    count: Callable[[str], None]
    stopping: threading.Event
    delay_s: float
    max_bytes: int  # the files' total size; the oldest are dropped to make room
    files: dict[str, bytes] = field(default_factory=dict)  # in creation order
    batches: dict[str, Batch] = field(default_factory=dict)  # in creation order
    stored_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_file(self, content: bytes) -> str:
        if len(content) > self.max_bytes:
            raise ApiError(400, f"the file ({len(content)} bytes) is larger than the simulator's file store "
                                f"({self.max_bytes} bytes: --batch-store-mb)", code="invalid_request")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with self.lock:
            while self.stored_bytes + len(content) > self.max_bytes:
                self.stored_bytes -= len(self.files.pop(next(iter(self.files))))
            self.files[file_id] = content
            self.stored_bytes += len(content)
        return file_id

    def create(self, request: dict) -> Batch:
        file_id = check_create(request)
        with self.lock:
            content = self.files.get(file_id)
        if content is None:
            raise ApiError(404, f"no file {file_id!r}", "input_file_id", "not_found")
        lines, errors = validate(content)
        batch = Batch(f"batch_{uuid.uuid4().hex[:24]}", file_id, lines, time.time(), request.get("metadata"))
        if errors:
            batch.status, batch.errors, batch.finished_at = "failed", errors, batch.created_at
            batch.lines = []
        with self.lock:
            self.batches[batch.id] = batch
            if len(self.batches) > MAX_BATCHES:
                del self.batches[next(iter(self.batches))]
        self.count("batches")
        if not errors:
            threading.Thread(target=self.run, args=(batch,), daemon=True, name=f"offline-{batch.id}").start()
        return batch

    def get(self, batch_id: str) -> Batch:
        with self.lock:
            if (batch := self.batches.get(batch_id)) is None:
                raise ApiError(404, f"no batch {batch_id!r}", "batch_id", "not_found")
            return batch

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        with self.lock:
            if batch.status == "in_progress":
                batch.status, batch.finished_at = "cancelled", time.time()
        return batch

    def run(self, batch: Batch) -> None:
        """Wait out the delay, then answer the batch; a bug on the way fails it rather than leave it
        in_progress, which a client would poll until its own deadline."""
        if self.stopping.wait(self.delay_s) or batch.status != "in_progress":
            return
        try:
            self.answer(batch)
        except Exception:
            traceback.print_exc()
            error = {"code": "server_error", "line": None, "message": INTERNAL}
            with self.lock:
                if batch.status == "in_progress":
                    batch.status, batch.errors, batch.finished_at = "failed", [error], time.time()
        finally:
            batch.lines = []  # answered or failed: only the counts are reported from now on

    def answer(self, batch: Batch) -> None:
        """Answer every line, then publish the output and error files."""
        outputs, failures = [], []
        for line in batch.lines:
            # The bytes the live route would hash for the same body: the client serialises bodies with orjson.
            reply = self.answer_line(orjson.dumps(line["body"]), batch=batch.id)
            assert reply is not None  # only a live request waits, so only a live one is cut short by a stop
            record = result_line(f"batch_req_{uuid.uuid4().hex[:24]}", line["custom_id"], reply.status,
                                 f"req_{uuid.uuid4().hex[:16]}", reply.body)
            (outputs if reply.status == 200 else failures).append(orjson.dumps(record) + b"\n")
            self.count("batch_lines" if reply.status == 200 else "batch_line_errors")
        output = self.add_file(b"".join(outputs)) if outputs else None
        error = self.add_file(b"".join(failures)) if failures else None
        with self.lock:
            if batch.status == "in_progress":  # not cancelled meanwhile
                batch.output_file_id, batch.error_file_id = output, error
                batch.completed, batch.failed = len(outputs), len(failures)
                batch.status, batch.finished_at = "completed", time.time()


def validate(content: bytes) -> tuple[list[dict], list[dict]]:
    """The input file's lines, and OpenAI-style validation errors ({code, message, line}): each line's shape
    (fair/wire/batch.py's check_line) and body (a model and messages), one model in all, at least one line."""
    lines, errors, models = [], [], set()
    seen: dict[str, int] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            check_line(line, number, seen)
            body = line["body"]
            model = body["model"]
            if not isinstance(model, str) or not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ValueError(model)
        except ApiError as e:
            errors.append({"code": e.code, "line": number, "message": str(e)})
            continue
        except SHAPE_ERRORS:
            errors.append({"code": "invalid_request", "line": number,
                           "message": f"line {number}: the body is not a chat request with a model and messages"})
            continue
        models.add(model)
        lines.append(line)
    if len(models) > 1:
        errors.append({"code": "mixed_models", "line": None, "message": "a batch may use one model only"})
    if not lines and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "the input file has no requests"})
    return lines, errors


# ---------------------------------------------------------------------------------------------------------
# HTTP

Handler = Callable[[Request], Awaitable[Response]]


def batch_routes(store: BatchStore, error: Callable[[ApiError], Response]) -> list[Route]:
    """The Batch API's routes, with and without the /v1 prefix; `error` renders a refusal (the live routes')."""
    api = BatchApi(store, error)
    routes = [("POST", "/files", api.upload), ("POST", "/batches", api.create), ("GET", "/batches", api.listing),
              ("GET", "/batches/{ident}", api.get), ("POST", "/batches/{ident}/cancel", api.cancel),
              ("GET", "/files/{ident}/content", api.content)]
    return [Route(prefix + path, api.guarded(handler), methods=[method])
            for prefix in ("/v1", "") for method, path, handler in routes]


class BatchApi:
    def __init__(self, store: BatchStore, error: Callable[[ApiError], Response]):
        self.store, self.error = store, error

    def guarded(self, handler: Handler) -> Handler:
        """An ApiError becomes its error reply (after a POST the connection closes: its body may be unread);
        a bug becomes a 500 rather than a dropped connection, as on the live routes."""
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                e.close = e.close or request.method == "POST"
                return self.error(e)
            except Exception:
                traceback.print_exc()
                return self.error(ApiError(500, INTERNAL, code="server_error", close=True))
        return route

    async def upload(self, request: Request) -> Response:
        """A multipart/form-data upload with purpose=batch and a file (fair/wire/multipart.py reads it)."""
        sink = io.BytesIO()
        form = await read_form(request.stream(), request.headers.get("content-type", ""), sink, MAX_UPLOAD,
                               "OpenAI's limit on a batch input file")
        content = sink.getvalue()
        if form.fields.get("purpose") != "batch" or not content:
            raise ApiError(400, "expected the fields purpose=batch and file", "purpose", "invalid_request")
        file_id = self.store.add_file(content)
        self.store.count("batch_files")
        return json_response(200, file_object({"id": file_id, "bytes": len(content), "purpose": "batch",
                                               "created_at": time.time(), "filename": form.filename}))

    async def create(self, request: Request) -> Response:
        try:
            body = orjson.loads(await read_body(request, MAX_JSON))
        except orjson.JSONDecodeError:
            raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
        return json_response(200, self.store.create(body if isinstance(body, dict) else {}).to_json())

    async def cancel(self, request: Request) -> Response:
        return json_response(200, self.store.cancel(request.path_params["ident"]).to_json())

    async def get(self, request: Request) -> Response:
        return json_response(200, self.store.get(request.path_params["ident"]).to_json())

    async def listing(self, request: Request) -> Response:
        return json_response(200, listing(self.store, page_limit(request.query_params.get("limit", "20")),
                                          request.query_params.get("after")))

    async def content(self, request: Request) -> Response:
        ident = request.path_params["ident"]
        with self.store.lock:
            content = self.store.files.get(ident)
        if content is None:
            raise ApiError(404, f"no file {ident!r}", "file_id", "not_found")
        return json_response(200, content, {"content-type": "application/octet-stream"})


def listing(store: BatchStore, limit: int, after: str | None) -> dict:
    with store.lock:
        newest_first = list(reversed(store.batches.values()))
    if after:
        ids = [b.id for b in newest_first]
        newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
    return page([b.to_json() for b in newest_first[:limit]], len(newest_first) > limit)
