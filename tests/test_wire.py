"""fair/wire: the wire formats the service and the simulator share (error reply, multipart upload, Batch API)."""

from __future__ import annotations

import asyncio
import io
import socket

import orjson
import pytest

from fair.errors import FairError
from fair.wire import batch_api
from fair.wire.batch import ENDPOINT, batch_object, check_create, check_line, page, page_limit, result_line
from fair.wire.batch_api import BatchApi
from fair.wire.errors import ApiError
from fair.wire.listen import listen
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
    (form(("purpose", None, b"batch"), ("file", "a", b'{"a": 1}\n' * 9)).rsplit(b"--", 2)[0], None, "closing"),
    (form(("purpose", None, b"batch"), ("file", "a", b'{"a": 1}\n' * 9))[:-60], None, "closing"),
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


# -- fair/wire/batch_api.py: a batch's life over a backend of the test's own -------------------------------

class Backend:
    """Files in memory (the simulator's MemoryDocs); each line answered once `gate` is set."""

    own_fields = ()
    delay_s = 0.0

    def __init__(self, done: tuple[str, ...] = ()):
        from simulator.batch import MemoryDocs

        self.docs, self.done = MemoryDocs(lambda _: None, 1 << 20), set(done)
        self.gate, self.written, self.errors = asyncio.Event(), [], []

    def lines(self, doc):
        return self.docs.content(doc["id"]).splitlines()

    def model(self, body, n):
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ApiError(400, f"line {n}: no model", "file", "invalid_request")
        return body["model"]

    def discard(self, doc):
        pass  # MemoryDocs.delete let go of the bytes

    def start(self, doc):
        backend = self

        class Run:
            done, changes = backend.done, {}
            counts = {"completed": 0, "failed": 0}

            async def answer(self, record):
                await backend.gate.wait()
                return True, result_line("r", record["custom_id"], 200, "q", {})

            def write(self, ok, line):
                backend.written.append(line["custom_id"])
                backend.errors += [line["error"]["code"]] if not ok else []

            def close(self):
                pass

            def publish(self):
                return {"output_file_id": "file-out"} if backend.written else {}

        return Run()


def batch_file(api, *models: str) -> str:
    lines = [orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": ENDPOINT, "body": {"model": m}})
             for i, m in enumerate(models)]
    api.docs.add_file({"id": "file-in", "purpose": "batch", "bytes": 1, "created_at": 0, "filename": "in.jsonl"},
                      b"\n".join(lines) + b"\nnot json\n" * (models == ("bad",)))
    return "file-in"


async def until(api, batch_id, *statuses):
    for _ in range(1000):
        if (batch := api.retrieve(batch_id))["status"] in statuses:
            return batch
        await asyncio.sleep(0.001)
    raise AssertionError(api.retrieve(batch_id))


def create(api, file_id):
    return api.create({"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"})


def test_a_batch_goes_validating_in_progress_finalizing_completed_skipping_what_was_answered():
    async def go():
        backend = Backend(done=("c0",))  # answered before a restart
        api = BatchApi(backend)
        batch = create(api, batch_file(api, "m", "m", "m"))
        assert batch["status"] == "validating"
        assert (await until(api, batch["id"], "in_progress"))["request_counts"]["total"] == 3
        backend.gate.set()
        done = await until(api, batch["id"], "completed")
        assert sorted(backend.written) == ["c1", "c2"] and done["output_file_id"] == "file-out"
        assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 0} and done["finalizing_at"]
        with pytest.raises(ApiError) as refused:
            api.delete_file("file-nope")
        assert refused.value.status == 404
        assert api.delete_file("file-in")["deleted"]
    asyncio.run(go())


def test_a_bad_input_file_fails_validation_with_each_line_named():
    async def go():
        api = BatchApi(Backend())
        batch = await until(api, create(api, batch_file(api, "a", "b", 7))["id"], "failed")
        assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [(3, "invalid_request"),
                                                                            (None, "mixed_models")]
    asyncio.run(go())


def test_cancel_keeps_what_was_answered_and_a_batch_open_past_its_window_expires(monkeypatch):
    async def go():
        backend = Backend()
        api = BatchApi(backend)
        batch = create(api, batch_file(api, "m", "m"))
        await until(api, batch["id"], "in_progress")
        with pytest.raises(ApiError):  # the input of an open batch
            api.delete_file("file-in")
        assert api.cancel(batch["id"])["status"] == "cancelling"
        cancelled = await until(api, batch["id"], "cancelled")
        assert cancelled["cancelled_at"] and backend.written == [] and cancelled["output_file_id"] is None
        assert api.cancel(batch["id"])["status"] == "cancelled"  # a second cancel changes nothing
        monkeypatch.setattr(batch_api, "EXPIRES_S", 0)
        expired = await until(api, create(api, "file-in")["id"], "expired")
        assert expired["expired_at"] and expired["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
        assert sorted(backend.written) == ["c0", "c1"] and backend.errors == ["batch_expired"] * 2
        listed = api.list_batches("0")
        assert [b["id"] for b in listed["data"]] == [expired["id"]] and listed["has_more"]
    asyncio.run(go())


def test_listen_binds_port_0_at_once_and_a_taken_port_is_one_line():
    with listen("127.0.0.1", 0, backlog=8) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # listening: the connection is queued
            pass
        with pytest.raises(FairError, match=f"^cannot listen on 127.0.0.1:{port}: "):
            listen("127.0.0.1", port, backlog=8)
