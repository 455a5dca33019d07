"""The offline simulator under bad input and long lives: every malformed request gets a 4xx (never a dropped
connection or a dead thread), a batch always ends, idle or stalled sockets are closed, and what it stores is
bounded."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from fair.errors import FairError
from simulator.server import OfflineServer

pytestmark = pytest.mark.timeout(60)
CHAT = "/v1/chat/completions"
OPEN = ("validating", "in_progress", "finalizing", "cancelling")


def line(custom_id: str, body: dict | None = None) -> bytes:
    body = body or {"model": "sim-careful", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                    "max_tokens": 64}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}) + b"\n"


def upload(client: httpx.Client, content: bytes) -> httpx.Response:
    return client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content)})


def submit(client: httpx.Client, content: bytes) -> dict:
    file_id = upload(client, content).json()["id"]
    body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    return client.post("/v1/batches", json=body).json()


def finished(client: httpx.Client, batch_id: str, within_s: float = 10) -> dict:
    deadline = time.monotonic() + within_s
    while (batch := client.get(f"/v1/batches/{batch_id}").json())["status"] in OPEN:
        assert time.monotonic() < deadline, f"batch {batch_id} still in progress after {within_s}s"
        time.sleep(0.02)
    return batch


BAD_REQUESTS = [
    ("GET", "/v1/batches?limit=abc", None),
    ("POST", "/v1/batches", {"input_file_id": [1], "endpoint": CHAT, "completion_window": "24h"}),
    ("POST", "/v1/batches", {"input_file_id": {"a": 1}, "endpoint": CHAT, "completion_window": "24h"}),
    ("POST", "/v1/batches", [1, 2]),
    ("POST", "/v1/batches/batch_x/cancel", None),
    ("GET", "/v1/files/file-nope/content", None),
    ("POST", CHAT, {"model": "sim-careful", "messages": [1]}),
    ("POST", CHAT, {"model": ["sim-careful"], "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", CHAT, {"model": "sim-careful", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}),
    ("POST", "/v1beta/models/sim-careful:generateContent", {"contents": [{"parts": [{"text": ["x"]}]}]}),
    ("POST", "/v1beta/models/sim-careful:generateContent", {"contents": "x"}),
    ("POST", "/v1beta/models/sim-careful:streamGenerateContent", {"contents": [{"parts": [{"text": "x"}]}]}),
    ("POST", "/v1beta/models/sim-careful:countTokens", {"contents": [{"parts": [{"text": "x"}]}]}),
    ("POST", "/v1/messages", {"model": "sim-careful", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/messages", {"model": "sim-careful", "max_tokens": 9, "messages": [{"role": "user",
                                                                                     "content": [{"type": "image"}]}]}),
    ("POST", "/v1/messages", {"model": "sim-careful", "max_tokens": 9, "system": 5,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/messages", {"model": "sim-careful", "max_tokens": 9, "messages": []}),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS, ids=[f"{m} {p} {b}" for m, p, b in BAD_REQUESTS])
def test_a_malformed_request_gets_a_4xx_and_the_connection_lives(method, path, body):
    with OfflineServer(port=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        reply = client.request(method, path, json=body)
        assert 400 <= reply.status_code < 500, reply.text
        assert "error" in reply.json()
        assert client.get("/health").json() == {"ok": True}
        assert server.counters["errors"] >= 1


def test_a_reply_before_the_server_closes_the_connection_says_so():
    """A client that reused a connection the server closes after its reply would see a disconnect."""
    with OfflineServer(port=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        bad_batch = {"input_file_id": [1], "endpoint": CHAT, "completion_window": "24h"}
        for reply in (client.post("/v1/batches", json=bad_batch), client.post(CHAT, content=b"")):
            assert reply.status_code == 400 and reply.headers.get("connection") == "close", reply.headers


def test_bad_lines_in_a_batch_fail_alone_and_the_batch_ends():
    bad_bodies = [{"model": "sim-careful", "messages": [1]},
                  {"model": "sim-careful", "messages": [{"role": "user"}]},
                  {"model": "sim-careful", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}]
    content = line("good") + b"".join(line(f"bad-{i}", body) for i, body in enumerate(bad_bodies))
    with OfflineServer(port=0, batch_delay_s=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        batch = finished(client, submit(client, content)["id"])
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
        errors = client.get(f"/v1/files/{batch['error_file_id']}/content").content.splitlines()
        assert sorted(orjson.loads(e)["custom_id"] for e in errors) == ["bad-0", "bad-1", "bad-2"]
        assert {orjson.loads(e)["response"]["status_code"] for e in errors} == {400}


def test_a_model_that_is_not_a_string_fails_validation():
    content = line("a", {"model": ["sim-careful"], "messages": [{"role": "user", "content": "hi"}]})
    with OfflineServer(port=0, batch_delay_s=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        created = submit(client, content)
        assert created["status"] == "validating"  # as OpenAI's: the lines are checked after the reply
        batch = finished(client, created["id"])
        assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "invalid_request"


def test_a_batch_whose_run_breaks_ends_failed_instead_of_in_progress_forever(monkeypatch):
    with OfflineServer(port=0, batch_delay_s=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        def broken(*args, **kwargs):
            raise RuntimeError("a bug in the simulator")
        monkeypatch.setattr(server, "write", broken)
        batch = finished(client, submit(client, line("a"))["id"])
        assert batch["status"] == "failed"
        assert "internal error" in batch["errors"]["data"][0]["message"]


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{"])
def test_an_idle_or_stalled_connection_is_closed_after_the_socket_timeout(sent):
    with OfflineServer(port=0, socket_timeout_s=0.3) as server:
        # The client gives up after 30 s (recv raises, the test fails): well past 0.3 s, well short of the 60 s
        # default that a server ignoring its setting would take.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(sent)
            while sock.recv(4096):  # an error reply, if any, then the close
                pass
        assert httpx.get(f"{server.url}/health").json() == {"ok": True}


def test_stored_files_are_bounded_oldest_first():
    store_mb = 1.0
    blob = line("x", {"model": "sim-careful", "messages": [{"role": "user", "content": "x" * 300_000}]})
    with OfflineServer(port=0, batch_store_mb=store_mb) as server, httpx.Client(base_url=server.url,
                                                                              timeout=5) as client:
        ids = [upload(client, blob).json()["id"] for _ in range(5)]
        assert server.batches.docs.stored_bytes <= store_mb * 2**20
        assert client.get(f"/v1/files/{ids[0]}/content").status_code == 404  # evicted, as if deleted
        assert client.get(f"/v1/files/{ids[-1]}/content").content == blob
        too_big = upload(client, blob * 4)
        assert too_big.status_code == 400 and "store" in too_big.json()["error"]["message"]


def test_a_finished_batch_keeps_only_its_counts_and_files():
    with OfflineServer(port=0, batch_delay_s=0) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        batch = finished(client, submit(client, line("a") + line("b"))["id"])
        assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        kept = server.batches.docs.objects["batch"][batch["id"]]
        assert not any(isinstance(v, list) for v in kept.values())  # no lines, no results: they are files
        output = client.get(f"/v1/files/{batch['output_file_id']}/content").content
        assert sorted(orjson.loads(x)["custom_id"] for x in output.splitlines()) == ["a", "b"]


def test_a_list_limit_is_clamped_as_openai_clamps_it():
    with OfflineServer(port=0, batch_delay_s=30) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        ids = [submit(client, line("a"))["id"] for _ in range(3)]
        for limit, count in (("0", 1), ("-3", 1), ("2", 2), ("101", 3)):
            reply = client.get(f"/v1/batches?limit={limit}").json()
            assert [b["id"] for b in reply["data"]] == ids[::-1][:count]
            assert reply["has_more"] == (count < 3)
        after = client.get(f"/v1/batches?after={ids[2]}&limit=1").json()
        assert [b["id"] for b in after["data"]] == [ids[1]] and after["has_more"]
        assert server.counters["batches"] == 3


def test_store_and_timeout_settings_are_validated():
    with pytest.raises(FairError, match="batch_store_mb"):
        OfflineServer(port=0, batch_store_mb=0)
    with pytest.raises(FairError, match="socket_timeout_s"):
        OfflineServer(port=0, socket_timeout_s=0)


def test_a_malformed_stream_is_cut_off_mid_json():
    body = {"model": "sim-careful", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "stream": True}
    with OfflineServer(port=0, p_malformed=1) as server:
        for path in (CHAT, "/v1/messages"):
            events = httpx.post(server.url + path, json=body | {"max_tokens": 64}, timeout=5).text.split("\n\n")
            with pytest.raises(ValueError):
                orjson.loads(events[-2].partition("data: ")[2])
            assert "[DONE]" not in events and "message_stop" not in "".join(events)
        assert server.counters["fault_malformed"] == 2


def test_stopping_wakes_a_request_in_a_hang():
    with OfflineServer(port=0, p_hang=1, hang_s=60) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        pool = ThreadPoolExecutor(1)
        hung = pool.submit(c.post, "/v1/messages", json={"model": "sim-careful", "max_tokens": 9,
                                                         "messages": [{"role": "user", "content": "hi"}]})
        deadline = time.monotonic() + 10
        while not server.attempts and time.monotonic() < deadline:  # the request is in (and hangs)
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        assert hung.result().status_code == 503 and time.monotonic() - started < 10  # well short of hang_s


def test_a_client_that_stops_reading_a_reply_is_disconnected_after_the_socket_timeout():
    blob = line("x", {"model": "sim-careful", "messages": [{"role": "user", "content": "x" * 16_000_000}]})
    with OfflineServer(port=0, socket_timeout_s=0.3) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            file_id = upload(client, blob).json()["id"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(1.5)  # reads nothing for five timeouts: the server gives up on the reply
            received = 0
            try:
                while chunk := sock.recv(1 << 16):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert received < len(blob)  # what the kernel had buffered (a few MB), not the whole file
        assert httpx.get(f"{server.url}/health").json() == {"ok": True}
