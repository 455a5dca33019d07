"""Uploads (POST /v1/files): streamed to disk with a size cap, then checked line by line.

The multipart body is parsed as it arrives (fair/wire/multipart.py), and the `file` part goes straight to
`<id>.partial` in the state folder, so an upload of any size costs a few KB of memory; one over the cap
(max_upload_mb) stops at the cap with a 413.

Then the file is checked, each error naming its line: UTF-8, one JSON object per line, and per purpose
  batch          OpenAI's batch input: {custom_id (unique), method: POST, url: /v1/chat/completions, body}
                 with a body that serve/wire.py accepts (model = a teacher of this server)
  fair-mistakes  mistakes.jsonl records (fair/records.py's StudentAnswer), ids unique
A bad file is deleted and answered with a 400; nothing about it stays. The check runs in a worker thread
(serve/batches.py), so a large upload keeps no other request waiting.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError
from fair.records import StudentAnswer
from fair.wire.batch import check_line
from fair.wire.errors import ApiError
from fair.wire.multipart import Form, read_form
from gen.teachers.config import Teacher
from serve.wire import chat_request

PURPOSES = ("batch", "fair-mistakes")
PLAIN_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


async def receive(stream: AsyncIterator[bytes], content_type: str, partial: Path, max_bytes: int) -> Form:
    """Parse the body into `partial` (fsynced); ApiError for a malformed form, a missing part, too many bytes, a
    filename with a folder in it or a purpose other than PURPOSES."""
    with partial.open("wb") as sink:
        form = await read_form(stream, content_type, sink, max_bytes, "max_upload_mb")
        sink.flush()
        os.fsync(sink.fileno())
    if not PLAIN_NAME.match(form.filename or "") or form.filename in (".", ".."):
        raise ApiError(400, f"filename {form.filename!r} must be a plain file name (no folders)", "file")
    if form.fields.get("purpose") not in PURPOSES:
        raise ApiError(
            400,
            f"purpose must be one of {', '.join(PURPOSES)}, got {form.fields.get('purpose')!r}",
            "purpose",
        )
    return form


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, JSON object) of each non-blank line; ApiError naming the first bad line."""
    with path.open("rb") as f:
        n = 0
        for n, raw in enumerate(f, 1):  # noqa: B007 (n is read after the loop)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"line {n}: not UTF-8 text", "file") from None
            if not text.strip():
                continue
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError:
                end = " (truncated?)" if not text.endswith("\n") else ""
                raise ApiError(400, f"line {n}: not valid JSON{end}", "file") from None
            if not isinstance(record, dict):
                raise ApiError(400, f"line {n}: expected a JSON object", "file")
            yield n, record
    if n == 0:
        raise ApiError(400, "the file is empty", "file")


def check(path: Path, purpose: str, teachers: dict[str, Teacher]) -> int:
    """Validate an uploaded file for its purpose; returns its number of records."""
    seen: dict[str, int] = {}
    for n, record in records(path):
        if purpose == "batch":
            check_line(record, n, seen)  # OpenAI's line shape (fair/wire/batch.py), then our reading of its body
            chat_request(record.get("body"), teachers, f"line {n}: body")
            continue
        try:
            key = StudentAnswer.from_json(record, f"line {n}").id
        except (FairError, TypeError) as e:
            raise ApiError(400, str(e) if isinstance(e, FairError) else f"line {n}: {e}", "file") from None
        if not isinstance(key, str) or not key:
            raise ApiError(400, f"line {n}: id must be a non-empty string", "file")
        if key in seen:
            raise ApiError(400, f"line {n}: duplicate id {key!r} (first on line {seen[key]})", "file")
        seen[key] = n
    if not seen:
        raise ApiError(400, "the file holds no records", "file")
    return len(seen)
