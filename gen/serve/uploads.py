"""Uploads (POST /v1/files): streamed to disk with a size cap, then checked line by line.

The multipart body is parsed as it arrives (python-multipart's push parser, the one Starlette uses), and the
`file` part goes straight to `<id>.partial` in the state folder, so an upload of any size costs a few KB of
memory; one over the cap stops at the cap with a 413. Starlette's own form parsing would first spool the whole
body without a limit, which is why the request stream is read here.

Then the file is checked, each error naming its line: UTF-8, one JSON object per line, and per purpose
  batch          OpenAI's batch input: {custom_id (unique), method: POST, url: /v1/chat/completions, body}
                 with a body that gen/serve/wire.py accepts (model = a teacher of this server)
  fair-mistakes  mistakes.jsonl records (fair/records.py's StudentAnswer), ids unique
A bad file is deleted and answered with a 400; nothing about it stays.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header

from fair.errors import FairError
from fair.records import StudentAnswer
from gen.serve.wire import ENDPOINT, ApiError, chat_request
from gen.teachers.config import Teacher

PURPOSES = ("batch", "fair-mistakes")
PLAIN_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")
MAX_FIELD = 1024  # the purpose field and headers: anything longer is not a form we sent


class Upload:
    """The multipart callbacks: the `file` part to disk (capped), the small fields to memory."""

    def __init__(self, partial: Path, max_bytes: int):
        self.partial, self.max_bytes = partial, max_bytes
        self.file = partial.open("wb")
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self._header, self._value, self._headers = b"", b"", {}
        self._name: str | None = None
        self._field = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
        self._headers = {}

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.size += end - start
            if self.size > self.max_bytes:
                raise ApiError(
                    413,
                    f"the file is larger than this server's limit of {self.max_bytes} bytes (max_upload_mb)",
                    "file",
                    "file_too_large",
                )
            self.file.write(data[start:end])
        elif len(self._field) + end - start > MAX_FIELD:
            raise ApiError(400, f"form field {self._name!r} is too long", self._name)
        else:
            self._field += data[start:end]

    def _on_part_end(self) -> None:
        if self._name != "file" and self._name:
            self.fields[self._name] = self._field.decode("utf-8", "replace")
        self._field = bytearray()


async def receive(stream: AsyncIterator[bytes], content_type: str, partial: Path, max_bytes: int) -> Upload:
    """Parse the body into `partial` (fsynced); ApiError for a malformed form, a missing part or too many bytes."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "expected a multipart/form-data body with the fields purpose and file")
    upload = Upload(partial, max_bytes)
    try:
        parser = MultipartParser(options[b"boundary"], upload.callbacks())
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        upload.file.flush()
        os.fsync(upload.file.fileno())
    except ValueError as e:  # python-multipart's parse errors
        raise ApiError(400, f"malformed multipart body: {e}") from None
    finally:
        upload.file.close()
    if upload.filename is None:
        raise ApiError(400, "no file part in the form", "file")
    if not PLAIN_NAME.match(upload.filename) or upload.filename in (".", ".."):
        raise ApiError(400, f"filename {upload.filename!r} must be a plain file name (no folders)", "file")
    if upload.fields.get("purpose") not in PURPOSES:
        raise ApiError(
            400,
            f"purpose must be one of {', '.join(PURPOSES)}, got {upload.fields.get('purpose')!r}",
            "purpose",
        )
    return upload


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
            key = record.get("custom_id")
            if record.get("method") != "POST" or record.get("url") != ENDPOINT:
                raise ApiError(400, f"line {n}: method must be POST and url {ENDPOINT}", "file")
            chat_request(record.get("body"), teachers, f"line {n}: body")
        else:
            try:
                key = StudentAnswer.from_json(record, f"line {n}").id
            except (FairError, TypeError) as e:
                raise ApiError(
                    400, str(e) if isinstance(e, FairError) else f"line {n}: {e}", "file"
                ) from None
        if not isinstance(key, str) or not key:
            raise ApiError(
                400,
                f"line {n}: {'custom_id' if purpose == 'batch' else 'id'} must be a non-empty string",
                "file",
            )
        if key in seen:
            raise ApiError(
                400,
                f"line {n}: duplicate {'custom_id' if purpose == 'batch' else 'id'} {key!r} "
                f"(first on line {seen[key]})",
                "file",
            )
        seen[key] = n
    if not seen:
        raise ApiError(400, "the file holds no records", "file")
    return len(seen)
