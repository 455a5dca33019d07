"""The offline committee's side of OpenAI's Files and Batch API (`fair teachers serve`): what gen/teachers/batch.py
is tested against. The routes and a batch's life (validating -> in_progress -> finalizing -> completed, failed,
expired, cancelling -> cancelled) are fair/wire/batch_api.py's, the service's too; what is the simulator's own is
here: where files and batches are kept (`MemoryDocs`, in memory) and how a line is answered (`Answer`, the
simulator's one answer pipeline, Simulator.answer: the same body gets the same reply live or in a batch).

A batch waits out the server's batch_delay_s in_progress, then its lines are answered. Fault injection fails lines
instead of requests: a line that draws any fault (500), names an unknown model (404) or has a body that cannot be
read (400) lands in the error file; no latency or rate limit applies. A line's body is valid when it has a model
(a string) and messages (a non-empty list). Files and batches live in memory and die with the server, so a client
that comes back to a restarted server finds its batch gone (404). Memory is bounded for a server that runs for
weeks: files past the store's size (--batch-store-mb) go oldest first (a later download is a 404, as for a deleted
file), a batch holds only its counts (its lines are read from its input file while it runs), and only the newest
MAX_BATCHES finished batches are kept.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.responses import Response

from fair.wire.batch import BATCH_OPEN, result_line
from fair.wire.batch_api import BatchApi
from fair.wire.errors import ApiError
from fair.wire.multipart import read_form
from simulator.http import json_response
from simulator.replies import HttpReply

MAX_UPLOAD = 200 << 20  # OpenAI's limit on one batch input file
MAX_BATCHES = 10_000  # batch documents kept (a finished one is a few hundred bytes); the oldest finished go first


class Answer(Protocol):
    """How a line is answered: the simulator's pipeline (Simulator.answer), given the body's bytes and the batch."""

    def __call__(self, raw: bytes, *, batch: str) -> HttpReply: ...


@dataclass
class MemoryDocs:
    """File and batch documents (fair/wire/batch_api.py's Docs) and the files' bytes, in memory, in creation
    order; the bytes at most max_bytes in all, the oldest files dropped to make room. `count` counts a batch."""

    count: Callable[[str], None]
    max_bytes: int
    objects: dict[str, dict[str, dict]] = field(default_factory=lambda: {"file": {}, "batch": {}})
    blobs: dict[str, bytes] = field(default_factory=dict)
    stored_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the tests read from another thread

    def add(self, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            kept = self.objects[kind]
            kept[doc["id"]] = dict(doc)
            if kind == "batch" and len(kept) > MAX_BATCHES:
                oldest = next((i for i, d in kept.items() if d["status"] not in BATCH_OPEN), None)
                kept.pop(oldest, None)
        if kind == "batch":
            self.count("batches")
        return doc

    def add_file(self, doc: dict[str, Any], content: bytes) -> None:
        if len(content) > self.max_bytes:
            raise ApiError(400, f"the file ({len(content)} bytes) is larger than the simulator's file store "
                                f"({self.max_bytes} bytes: --batch-store-mb)", "file", "invalid_request")
        with self.lock:
            while self.stored_bytes + len(content) > self.max_bytes:
                oldest = next(iter(self.blobs))
                self.stored_bytes -= len(self.blobs.pop(oldest))
                self.objects["file"].pop(oldest, None)
            self.blobs[doc["id"]] = content
            self.stored_bytes += len(content)
        self.add("file", doc)

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        with self.lock:
            doc = self.objects[kind].get(object_id)
            return None if doc is None else dict(doc)

    def update(self, kind: str, object_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            doc = self.objects[kind][object_id]
            doc |= changes
            return dict(doc)

    def delete(self, kind: str, object_id: str) -> None:
        with self.lock:
            self.objects[kind].pop(object_id, None)
            if (content := self.blobs.pop(object_id, None)) is not None:
                self.stored_bytes -= len(content)

    def list(self, kind: str, limit: int = 100, after: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        with self.lock:
            newest_first = [dict(d) for d in reversed(self.objects[kind].values())]
        if after is not None:
            ids = [d["id"] for d in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        return newest_first[:limit], len(newest_first) > limit

    def content(self, file_id: str) -> bytes:
        with self.lock:
            if (content := self.blobs.get(file_id)) is None:
                raise ApiError(404, f"no file {file_id!r} (dropped from the simulator's store)", "file_id",
                               "not_found")
            return content


class BatchStore:
    """The simulator's backend of fair/wire/batch_api.py: files and batches in memory, lines answered by
    `answer_line`, what happened counted by `count`; `api` serves them."""

    own_fields: tuple[str, ...] = ()

    def __init__(self, answer_line: Answer, count: Callable[[str], None], delay_s: float, max_bytes: int):
        self.answer_line, self.count, self.delay_s = answer_line, count, delay_s
        self.docs = MemoryDocs(count, max_bytes)
        self.api = BatchApi(self)

    def add_file(self, content: bytes, purpose: str, filename: str) -> str:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.docs.add_file({"id": file_id, "bytes": len(content), "purpose": purpose, "created_at": time.time(),
                            "filename": filename}, content)
        return file_id

    async def receive(self, stream: AsyncIterator[bytes], content_type: str) -> dict[str, Any]:
        """A multipart/form-data upload with purpose=batch and a file, kept in memory."""
        sink = io.BytesIO()
        form = await read_form(stream, content_type, sink, MAX_UPLOAD, "OpenAI's limit on a batch input file")
        if form.fields.get("purpose") != "batch" or not sink.getvalue():
            raise ApiError(400, "expected the fields purpose=batch and file", "purpose", "invalid_request")
        file_id = self.add_file(sink.getvalue(), "batch", form.filename or "upload.jsonl")
        self.count("batch_files")
        return self.docs.get("file", file_id) or {}

    def lines(self, file_doc: dict[str, Any]) -> list[bytes]:
        return self.docs.content(file_doc["id"]).splitlines()

    def model(self, body: Any, n: int) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or \
                not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ApiError(400, f"line {n}: the body is not a chat request with a model and messages", "file",
                           "invalid_request")
        return body["model"]

    def content(self, file_doc: dict[str, Any]) -> Response:
        return json_response(200, self.docs.content(file_doc["id"]), {"content-type": "application/octet-stream"})

    def discard(self, file_doc: dict[str, Any]) -> None:
        pass  # MemoryDocs.delete let go of the bytes with the document

    def start(self, batch_doc: dict[str, Any]) -> MemoryRun:
        return MemoryRun(self, batch_doc["id"])


class MemoryRun:
    """One batch's results in memory until they become its output and error files."""

    def __init__(self, store: BatchStore, batch_id: str):
        self.store, self.batch_id = store, batch_id
        self.done: set[str] = set()  # nothing survives a restart here
        self.counts = {"completed": 0, "failed": 0}
        self.changes: dict[str, Any] = {}
        self.results: dict[bool, list[bytes]] = {True: [], False: []}

    async def answer(self, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        # The bytes the live route would hash for the same body: the client serialises bodies with orjson.
        reply = self.store.answer_line(orjson.dumps(record["body"]), batch=self.batch_id)
        line = result_line(f"batch_req_{uuid.uuid4().hex[:24]}", record["custom_id"], reply.status,
                           f"req_{uuid.uuid4().hex[:16]}", reply.body)
        return reply.status == 200, line

    def write(self, ok: bool, line: dict[str, Any]) -> None:
        self.results[ok].append(orjson.dumps(line) + b"\n")
        self.store.count("batch_lines" if ok else "batch_line_errors")

    def close(self) -> None:
        pass  # nothing open: the results wait in memory for publish

    def publish(self) -> dict[str, str]:
        files = {}
        for ok, name in ((True, "output_file_id"), (False, "error_file_id")):
            if self.results[ok]:
                content, self.results[ok] = b"".join(self.results[ok]), []
                files[name] = self.store.add_file(content, "batch_output", f"{self.batch_id}_{name[:-8]}.jsonl")
        return files
