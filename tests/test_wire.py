"""fair/wire: the wire formats the service and the simulator share (error reply, multipart upload, Batch API)."""

from __future__ import annotations

import asyncio
import io

import pytest

from fair.wire.batch import ENDPOINT, batch_object, check_create, check_line, page, page_limit, result_line
from fair.wire.errors import ApiError
from fair.wire.multipart import read_form

BOUNDARY = "b0undary"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body of (name, filename or None, bytes) parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def read(body: bytes, max_bytes: int = 1 << 20, chunk: int = 7, content_type: str | None = None):
    async def stream():
        for i in range(0, len(body), chunk):  # in small pieces: a part's bytes arrive over several writes
            yield body[i:i + chunk]

    sink = io.BytesIO()
    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return asyncio.run(read_form(stream(), kind, sink, max_bytes, "the cap")), sink.getvalue()


def test_the_error_reply_is_openais_shape():
    assert ApiError(404, "no batch 'x'", "batch_id", "not_found").body() == {
        "error": {"message": "no batch 'x'", "type": "not_found_error", "param": "batch_id", "code": "not_found"}}
    assert ApiError(400, "bad").body()["error"]["type"] == "invalid_request_error"
    assert ApiError(502, "down").body()["error"]["type"] == "server_error"
    assert not ApiError(400, "bad").close and ApiError(400, "bad", close=True).close


def test_a_form_streams_its_file_into_the_sink_and_keeps_the_fields():
    data = b'{"custom_id": "a"}\n' * 50
    received, content = read(form(("purpose", None, b"batch"), ("file", "in.jsonl", data)))
    assert content == data and received.size == len(data)
    assert received.fields == {"purpose": "batch"} and received.filename == "in.jsonl"


def test_a_file_over_the_cap_is_a_413_naming_the_setting():
    with pytest.raises(ApiError) as raised:
        read(form(("file", "in.jsonl", b"x" * 100)), max_bytes=99)
    assert raised.value.status == 413 and raised.value.code == "file_too_large" and "(the cap)" in str(raised.value)


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (form(("purpose", None, b"batch")), None, "no file part"),
    (b"{}", "application/json", "multipart/form-data"),
    (form(("purpose", None, b"x" * 2000), ("file", "a", b"1")), None, "too long"),
])
def test_a_form_that_is_not_an_upload_is_a_400(body, content_type, says):
    with pytest.raises(ApiError) as raised:
        read(body, content_type=content_type)
    assert raised.value.status == 400 and says in str(raised.value)


def line(custom_id: object = "a", **changes: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {}} | changes


def test_an_input_line_is_a_post_to_the_endpoint_with_a_new_custom_id():
    seen: dict[str, int] = {}
    assert check_line(line("a"), 1, seen) == "a" and seen == {"a": 1}
    for record, n, code, says in [(line("a"), 2, "duplicate_custom_id", "first on line 1"),
                                  (line(""), 3, "invalid_request", "custom_id"),
                                  (line(7), 4, "invalid_request", "custom_id"),
                                  (line("b", url="/v1/embeddings"), 5, "invalid_request", "url"),
                                  ([1], 6, "invalid_request", "method")]:
        with pytest.raises(ApiError) as raised:
            check_line(record, n, seen)
        assert raised.value.code == code and str(raised.value).startswith(f"line {n}: ") and says in str(raised.value)


def test_the_batch_object_and_its_pieces():
    doc = {"id": "batch_1", "input_file_id": "file-1", "status": "completed", "created_at": 100.5, "total": 3,
           "completed": 2, "failed": 1, "completed_at": 160, "output_file_id": "file-2"}
    batch = batch_object(doc, ours=1)
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1} and batch["expires_at"] == 86500
    assert batch["completed_at"] == 160 and batch["cancelled_at"] is None and batch["errors"] is None
    assert batch["endpoint"] == ENDPOINT and batch["ours"] == 1 and batch["error_file_id"] is None
    assert check_create({"input_file_id": "file-1", "endpoint": ENDPOINT, "completion_window": "24h"}) == "file-1"
    with pytest.raises(ApiError):
        check_create({"input_file_id": "file-1", "endpoint": ENDPOINT, "completion_window": "1h"})
    assert page([{"id": "b"}, {"id": "a"}], True) == {"object": "list", "data": [{"id": "b"}, {"id": "a"}],
                                                      "has_more": True, "first_id": "b", "last_id": "a"}
    assert [page_limit(t) for t in ("100", "0", "101", "-1", 7)] == [100, 1, 100, 1, 7]  # clamped, as OpenAI's
    for text in ("x", "1.5", ""):
        with pytest.raises(ApiError):
            page_limit(text)
    assert result_line("r", "a", error={"code": "x"}) == {"id": "r", "custom_id": "a", "response": None,
                                                          "error": {"code": "x"}}
    assert result_line("r", "a", 200, "req", {"ok": 1})["response"] == {"status_code": 200, "request_id": "req",
                                                                         "body": {"ok": 1}}
