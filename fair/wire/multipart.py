"""A multipart/form-data upload (OpenAI's POST /v1/files: the fields `purpose` and `file`) read as it streams in.

The body is parsed as it arrives (python-multipart's push parser, the one Starlette uses) and the `file` part
goes straight into a sink (a file on disk for the service, memory for the simulator), so an upload costs a few
KB beyond the sink; one over the cap stops at the cap with a 413. Starlette's own form parsing would first spool
the whole body without a limit, which is why the request stream is read here. The small fields are kept in
memory, each at most MAX_FIELD bytes. A body that ends before its closing boundary is refused: its file part may
be cut off anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from fair.wire.errors import ApiError

MAX_FIELD = 1024  # the purpose field and headers: anything longer is not a form a client of ours sends
MAX_FIELDS = 16  # parts in one form: OpenAI's upload has two; a million small ones is an attack, not a form


class Form:
    """The multipart callbacks: the `file` part into `sink` (at most max_bytes), the other fields to `fields`."""

    def __init__(self, sink: BinaryIO, max_bytes: int, setting: str):
        self.sink, self.max_bytes, self.setting = sink, max_bytes, setting  # setting: the cap's name, for the 413
        self.fields: dict[str, str] = {}
        self.filename: str | None = None  # None: the form had no file part
        self.size = 0
        self._header, self._value, self._headers = b"", b"", {}
        self._parts = 0
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
        self._parts += 1
        if self._parts > MAX_FIELDS:
            raise ApiError(400, f"too many form fields (more than {MAX_FIELDS})")
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
        self._headers = {}

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.size += end - start
            if self.size > self.max_bytes:
                raise ApiError(413, f"the file is larger than this server's limit of {self.max_bytes} bytes "
                               f"({self.setting})",
                               "file", "file_too_large")
            self.sink.write(data[start:end])
        elif len(self._field) + end - start > MAX_FIELD:
            raise ApiError(400, f"form field {self._name!r} is too long", self._name)
        else:
            self._field += data[start:end]

    def _on_part_end(self) -> None:
        if self._name != "file" and self._name:
            self.fields[self._name] = self._field.decode("utf-8", "replace")
        self._field = bytearray()


async def read_form(stream: AsyncIterator[bytes], content_type: str, sink: BinaryIO, max_bytes: int,
                    setting: str) -> Form:
    """Parse the body, its file part into `sink`; ApiError for a malformed form, no file part or too many bytes."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "expected a multipart/form-data body with the fields purpose and file")
    form = Form(sink, max_bytes, setting)
    try:
        parser = MultipartParser(options[b"boundary"], form.callbacks())
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except ValueError as e:  # python-multipart's parse errors
        raise ApiError(400, f"malformed multipart body: {e}") from None
    if parser.state != MultipartState.END:  # finalize() takes a body cut off anywhere: its last part may be torn
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary (cut off?)")
    if form.filename is None:
        raise ApiError(400, "no file part in the form", "file")
    return form
