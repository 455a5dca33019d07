"""OpenAI's Batch API on the server's committee (/v1/batches): each line is one chat request to a teacher.

A batch's lines go through the same TeacherClients as everything else (the shared gates, its own fair-queue
tenant, serve/budget.py), at most WINDOW at once, into its folder: output.jsonl and errors.jsonl in
OpenAI's result shape ({id, custom_id, response: {status_code, request_id, body}, error}), appended as each
line ends, and the response cache requests.sqlite. A restarted server resumes an open batch by itself: the
custom_ids already in either file are skipped and cached replies are free, so every custom_id appears once and
only requests in flight at a kill may be sent twice (`repeated_after_restart`, beside OpenAI's fields).

Statuses as OpenAI's: in_progress -> finalizing -> completed, or cancelling -> cancelled, which keeps what was
answered (output and error files with the lines so far). A line whose teacher fails for good (after retries) is
a line of the error file; lines were checked at upload (serve/uploads.py).

The Batch API's objects, its input line's shape and its result lines are fair/wire/batch.py's, which the
simulator (simulator/batch.py) sends too; what is the service's own is how a line is answered (`answer_line`,
a teacher through its TeacherClient) and where files and batches are kept (serve/store.py, durable).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from fair.jsonl import JsonlAppender, read_jsonl
from fair.wire.batch import BATCH_OPEN, batch_object, check_create, result_line
from fair.wire.errors import ApiError
from gen.committee.run import stream_window
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher
from gen.teachers.providers import ProviderError
from serve.budget import Budget
from serve.store import Store, new_id
from serve.uploads import records
from serve.wire import chat_completion, chat_request

WINDOW = 64  # lines in flight per batch
SAVE_EVERY_S = 1.0


class Batches:
    def __init__(self, store: Store, budget: Budget, teachers: list[Teacher], http: httpx.AsyncClient):
        self.store, self.budget, self.http = store, budget, http
        self.teachers = {t.name: t for t in teachers}
        self.tasks: dict[str, asyncio.Task] = {}
        self.cancelled: set[str] = set()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        file_id = check_create(body)
        source = self.store.get("file", file_id)
        if source is None or source["purpose"] != "batch":
            raise ApiError(400, f"input_file_id {file_id!r} is not a batch file of this server", "input_file_id")
        batch_id, now = new_id("batch"), time.time()
        self.store.folder("batch", batch_id).mkdir()  # before the row: see serve/store.py
        doc = {
            "id": batch_id,
            "input_file_id": source["id"],
            "status": "in_progress",
            "created_at": now,
            "in_progress_at": int(now),
            "metadata": body.get("metadata"),
            "total": source["lines"],
            "completed": 0,
            "failed": 0,
            "repeated_after_restart": 0,
        }
        self.store.add("batch", doc)
        self.start(batch_id)
        return doc

    def cancel(self, batch_id: str) -> dict[str, Any]:
        doc = self.get(batch_id)
        if doc["status"] in BATCH_OPEN:
            self.cancelled.add(batch_id)
            doc = self.store.update("batch", batch_id, status="cancelling", cancelling_at=int(time.time()))
            if task := self.tasks.get(batch_id):
                task.cancel()
        return doc

    def get(self, batch_id: str) -> dict[str, Any]:
        if (doc := self.store.get("batch", batch_id)) is None:
            raise ApiError(404, f"no batch {batch_id!r}", "batch_id")
        return doc

    def resume(self) -> list[str]:
        open_ids = [
            d["id"] for d in self.store.list("batch", limit=1_000_000)[0] if d["status"] in BATCH_OPEN
        ]
        for batch_id in open_ids:
            if self.get(batch_id)["status"] == "cancelling":
                self.cancelled.add(batch_id)
            self.start(batch_id)
        return open_ids

    def start(self, batch_id: str) -> None:
        self.tasks[batch_id] = asyncio.get_running_loop().create_task(self.run(batch_id), name=batch_id)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one batch ---------------------------------------------------------------------------------------

    async def run(self, batch_id: str) -> None:
        doc, folder = self.get(batch_id), self.store.folder("batch", batch_id)
        out_path, err_path = folder / "output.jsonl", folder / "errors.jsonl"
        done = {r["custom_id"] for path in (out_path, err_path) if path.exists() for r in read_jsonl(path)}
        counts = {"completed": count_lines(out_path), "failed": count_lines(err_path)}
        cache = ResponseCache(folder / "requests.sqlite")
        self.store.update(
            "batch",
            batch_id,
            repeated_after_restart=doc["repeated_after_restart"] + cache.abandoned_inflight(),
            **counts,
        )
        tenant = self.budget.tenant(batch_id)
        clients = {n: TeacherClient(t, cache, self.http, admission=tenant) for n, t in self.teachers.items()}
        saved = time.monotonic()
        input_path = self.store.root / self.store.get("file", doc["input_file_id"])["path"]
        lines = (r for _, r in records(input_path) if r["custom_id"] not in done)

        async def answer(record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            return await answer_line(batch_id, record, clients, self.teachers)

        status = "completed"
        try:
            with cache, JsonlAppender(out_path) as out, JsonlAppender(err_path) as err:

                def write(finished: set[asyncio.Task]) -> None:
                    nonlocal saved
                    for ok, line in (t.result() for t in finished):
                        (out if ok else err).write([line])
                        counts["completed" if ok else "failed"] += 1
                    if time.monotonic() - saved >= SAVE_EVERY_S:
                        saved = time.monotonic()
                        self.store.update("batch", batch_id, **counts)

                if batch_id not in self.cancelled:
                    self.store.update("batch", batch_id, status="in_progress")
                    await stream_window(answer, lines, WINDOW, write)
        except asyncio.CancelledError:
            if batch_id not in self.cancelled:  # the server is stopping: the batch resumes at the next start
                self.store.update("batch", batch_id, **counts)
                raise
            status = "cancelled"
        except Exception as e:  # noqa: BLE001 (a full disk: this batch fails, the server goes on)
            status = "failed"
            self.store.update(
                "batch", batch_id, errors=[{"code": "server_error", "message": f"{type(e).__name__}: {e}"}]
            )
        finally:
            self.tasks.pop(batch_id, None)
        self.finish(batch_id, status, counts, out_path, err_path)

    def finish(
        self, batch_id: str, status: str, counts: dict[str, int], out_path: Path, err_path: Path
    ) -> None:
        """Register the result files (as OpenAI does, only those with lines), then close the batch."""
        if batch_id in self.cancelled:
            status = "cancelled"
        self.store.update("batch", batch_id, status="finalizing", finalizing_at=int(time.time()), **counts)
        files = {}
        for name, path, n in (
            ("output_file_id", out_path, counts["completed"]),
            ("error_file_id", err_path, counts["failed"]),
        ):
            if n:  # an id of its own batch and name: a kill before the last update re-registers the same row
                file_id = "file-" + hashlib.sha256(f"{batch_id}|{name}".encode()).hexdigest()[:24]
                self.store.add(
                    "file",
                    {
                        "id": file_id,
                        "purpose": "batch_output",
                        "filename": path.name,
                        "bytes": path.stat().st_size,
                        "created_at": time.time(),
                        "lines": n,
                        "path": str(path.relative_to(self.store.root)),
                    },
                )
                files[name] = file_id
        self.store.update("batch", batch_id, status=status, **{f"{status}_at": int(time.time())}, **files)


async def answer_line(
    batch_id: str, record: dict[str, Any], clients: dict[str, TeacherClient], teachers: dict[str, Teacher]
) -> tuple[bool, dict[str, Any]]:
    """(answered?, the line for output.jsonl or errors.jsonl) of one input line, in OpenAI's result shape."""
    teacher, request = chat_request(record["body"], teachers)
    line_id = "batch_req_" + hashlib.sha256(f"{batch_id}|{record['custom_id']}".encode()).hexdigest()[:24]
    try:
        response = await clients[teacher.name].complete(request)
    except ProviderError as e:  # the client's message: redacted, one line
        return False, result_line(line_id, record["custom_id"], error={"code": "teacher_failed", "message": str(e)})
    body = chat_completion(teacher, request, response)
    return True, result_line(line_id, record["custom_id"], 200, body["id"], body)


def public_batch(doc: dict[str, Any]) -> dict[str, Any]:
    """A batch document as OpenAI's Batch object, with one field of ours beside OpenAI's: the requests in
    flight when the server was killed, which may have been sent twice."""
    return batch_object(doc, repeated_after_restart=doc["repeated_after_restart"])


def count_lines(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0
