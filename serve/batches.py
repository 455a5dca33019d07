"""The service's side of OpenAI's Files and Batch API (/v1/files, /v1/batches): durable, each line one chat
request to a teacher.

The routes and a batch's life (validating -> in_progress -> finalizing -> completed, failed, expired,
cancelling -> cancelled) are fair/wire/batch_api.py's, the simulator's too; what is the service's own is here:
files and batches are kept in the state folder (serve/store.py: a row per object, the bytes on disk), an
upload is checked line by line before it is kept (serve/uploads.py), and a line goes through the same
TeacherClients as everything else (the shared gates, the batch's own fair-queue tenant, serve/budget.py).

A batch's folder holds output.jsonl and errors.jsonl in OpenAI's result shape, appended as each line ends, and
the response cache requests.sqlite. A restarted server resumes an open batch by itself: the custom_ids already
in either file are skipped and cached replies are free, so every custom_id appears once and only requests in
flight at a kill may be sent twice (`repeated_after_restart`, beside OpenAI's fields). A line whose teacher
fails for good (after retries) is a line of the error file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi.responses import FileResponse
from starlette.responses import Response

from fair.jsonl import JsonlAppender, read_jsonl
from fair.wire.batch import result_line
from fair.wire.batch_api import BatchApi
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher
from gen.teachers.providers import ProviderError
from serve import uploads
from serve.budget import Budget
from serve.store import Store, new_id
from serve.wire import chat_completion, chat_request


class ServeFiles:
    """The service's backend of fair/wire/batch_api.py; `api` serves it."""

    own_fields = ("repeated_after_restart",)  # the requests in flight at a kill, which may have been sent twice
    delay_s = 0.0

    def __init__(self, store: Store, budget: Budget, teachers: list[Teacher], http: httpx.AsyncClient,
                 max_upload_bytes: int):
        self.docs, self.store, self.budget, self.http = store, store, budget, http
        self.teachers = {t.name: t for t in teachers}
        self.max_upload_bytes = max_upload_bytes
        self.api = BatchApi(self)

    async def receive(self, stream: AsyncIterator[bytes], content_type: str) -> dict[str, Any]:
        """To `<id>.partial`, checked, renamed, then its row (see serve/store.py); a bad file leaves nothing."""
        file_id = new_id("file")
        partial = self.store.folder("file", file_id).with_suffix(".partial")
        try:
            received = await uploads.receive(stream, content_type, partial, self.max_upload_bytes)
            purpose = received.fields["purpose"]
            # Off the event loop: a million lines take seconds, during which every other request would wait.
            lines = await anyio.to_thread.run_sync(uploads.check, partial, purpose, self.teachers)
            partial.replace(self.store.folder("file", file_id))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return self.store.add("file", {"id": file_id, "purpose": purpose, "filename": received.filename,
                                       "bytes": received.size, "created_at": time.time(), "lines": lines,
                                       "path": f"files/{file_id}"})

    def lines(self, file_doc: dict[str, Any]) -> Iterator[bytes]:
        with (self.store.root / file_doc["path"]).open("rb") as f:
            yield from f

    def model(self, body: Any, n: int) -> str:
        return chat_request(body, self.teachers, f"line {n}: body")[0].name

    def content(self, file_doc: dict[str, Any]) -> Response:
        return FileResponse(self.store.root / file_doc["path"], media_type="application/jsonl")

    def discard(self, file_doc: dict[str, Any]) -> None:
        if file_doc["purpose"] != "batch_output":  # a batch's result file stays in its batch's folder
            (self.store.root / file_doc["path"]).unlink(missing_ok=True)

    def start(self, batch_doc: dict[str, Any]) -> DiskRun:
        return DiskRun(self, batch_doc)


class DiskRun:
    """One batch's run: its result files (appended), its response cache and a TeacherClient per teacher."""

    def __init__(self, files: ServeFiles, doc: dict[str, Any]):
        self.files, self.batch_id = files, doc["id"]
        folder = files.store.folder("batch", self.batch_id)
        folder.mkdir(exist_ok=True)
        self.paths = {True: folder / "output.jsonl", False: folder / "errors.jsonl"}
        self.out = {ok: JsonlAppender(path) for ok, path in self.paths.items()}  # a torn last line repaired first
        self.done = {r["custom_id"] for path in self.paths.values() for r in read_jsonl(path)}
        self.counts = {"completed": count_lines(self.paths[True]), "failed": count_lines(self.paths[False])}
        self.cache = ResponseCache(folder / "requests.sqlite")
        self.changes = {"repeated_after_restart": doc.get("repeated_after_restart", 0)
                        + self.cache.abandoned_inflight()}
        self.tenant = files.budget.tenant(self.batch_id)
        self.clients = {n: TeacherClient(t, self.cache, files.http, admission=self.tenant)
                        for n, t in files.teachers.items()}

    async def answer(self, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(answered?, the line for output.jsonl or errors.jsonl) of one input line, in OpenAI's result shape."""
        teacher, request = chat_request(record["body"], self.files.teachers)
        line_id = "batch_req_" + hashlib.sha256(f"{self.batch_id}|{record['custom_id']}".encode()).hexdigest()[:24]
        try:
            response = await self.clients[teacher.name].complete(request)
        except ProviderError as e:  # the client's message: redacted, one line
            return False, result_line(line_id, record["custom_id"],
                                      error={"code": "teacher_failed", "message": str(e)})
        body = chat_completion(teacher, request, response)
        return True, result_line(line_id, record["custom_id"], 200, body["id"], body)

    def write(self, ok: bool, line: dict[str, Any]) -> None:
        self.out[ok].write([line])

    def close(self) -> None:
        for appender in self.out.values():
            appender.close()
        self.cache.close()
        self.tenant.close()

    def publish(self) -> dict[str, str]:
        """Register the result files with lines; an id of its own batch and name, so a kill before the batch's
        last update re-registers the same row."""
        files = {}
        for ok, name, n in ((True, "output_file_id", self.counts["completed"]),
                            (False, "error_file_id", self.counts["failed"])):
            if n:
                path = self.paths[ok]
                file_id = "file-" + hashlib.sha256(f"{self.batch_id}|{name}".encode()).hexdigest()[:24]
                self.files.store.add("file", {"id": file_id, "purpose": "batch_output", "filename": path.name,
                                              "bytes": path.stat().st_size, "created_at": time.time(), "lines": n,
                                              "path": str(path.relative_to(self.files.store.root))})
                files[name] = file_id
        return files


def count_lines(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0
