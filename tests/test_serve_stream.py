"""`fair serve`'s chat proxy streaming (serve/chat.py): the official `openai` SDK and raw HTTP against a real
server process whose teachers are an offline simulator of the test's (so the test counts what reaches it):
OpenAI's chunks and framing, the same text and usage as the plain reply (from the cache), errors before the
stream as OpenAI error JSON, a teacher's failure as the stream's error event, and a client that disconnects."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import yaml

from gen.teachers.config import load_committee
from gen.teachers.providers import ChatRequest, ChatResponse
from serve.wire import Chunks, StreamOptions, chat_completion
from simulator.server import OfflineServer
from tests.serve_util import TOKEN, Served, teachers_yaml

pytestmark = pytest.mark.timeout(120)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def committee(folder: Path, url: str, concurrency: int = 16) -> Path:
    """The offline committee, plus `missing`: a teacher whose model the simulator does not have (a 404, fatal)."""
    path = teachers_yaml(folder, url, concurrency=concurrency)
    config = yaml.safe_load(path.read_text())
    config["teachers"].append({**config["teachers"][0], "name": "missing", "model": "sim-missing"})
    path.write_text(yaml.safe_dump(config))
    return path


def arrivals(sim: OfflineServer) -> int:
    """Requests that reached the simulator for one of its models (counted as they arrive, before any latency)."""
    with sim.lock:
        return sum(sim.attempts.values())


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("stream")
    with (
        OfflineServer(port=0, data_dir=data_dir) as sim,
        Served(folder / "state", committee(folder, sim.url), sim.url) as server,
    ):
        yield server, sim


@pytest.fixture(scope="module")
def slow(tmp_path_factory, data_dir):
    """Every reply takes 3 s, and each teacher sends one request at a time: the next one waits in the proxy."""
    folder = tmp_path_factory.mktemp("slow")
    with (
        OfflineServer(port=0, data_dir=data_dir, latency_ms=(3000, 3000)) as sim,
        Served(folder / "state", committee(folder, sim.url, concurrency=1), sim.url) as server,
    ):
        yield server, sim


def sdk(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)


def ask(question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]


def test_a_stream_is_the_reply_in_chunks_and_the_plain_call_then_hits_the_cache(served):
    server, sim = served
    client, messages = sdk(server), ask("What is 17 + 25?")
    before = arrivals(sim)
    chunks = list(
        client.chat.completions.create(
            model="careful", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert arrivals(sim) == before + 1
    first, *middle, finish, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.role is None for c in middle)
    assert len(middle) > 3  # the text comes in pieces, not as one chunk
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert last.choices == [] and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {first.id} and {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"careful"}

    reply = client.chat.completions.create(model="careful", messages=messages)
    assert arrivals(sim) == before + 1  # the same request again: the proxy's cache answered it
    assert "".join(c.choices[0].delta.content for c in middle) == reply.choices[0].message.content
    assert last.usage.model_dump() == reply.usage.model_dump()
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.refusal is None


def test_the_sdks_stream_helper_accumulates_the_same_reply(served):
    server, _ = served
    client, messages = sdk(server), ask("What is 6 times 7?")
    plain = client.chat.completions.create(model="sloppy", messages=messages)
    with client.chat.completions.stream(
        model="sloppy", messages=messages, stream_options={"include_usage": True}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == plain.choices[0].message.content
    assert final.choices[0].finish_reason == "stop" and final.usage.total_tokens == plain.usage.total_tokens


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": "gpt-nonexistent"}, "model"),
        ({"messages": []}, "messages"),
        ({"model": "harsh", "messages": [{"role": "system", "content": ""}]}, "messages"),  # Anthropic's 400
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream_options": {"include_everything": True}}, "stream_options"),
        ({"n": 2}, "n"),
        ({"model": "harsh", "temperature": 1.5}, "temperature"),  # OpenAI's range, over Anthropic's 0-1
        ({"top_p": 0}, "top_p"),
    ],
)
def test_a_bad_request_fails_before_the_stream_as_openai_error_json(served, change, param):
    server, _ = served
    request = {"model": "careful", "messages": ask("What is 1 + 1?"), "stream": True, **change}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(server).chat.completions.create(**request)  # raised by create itself: nothing was streamed
    assert raised.value.status_code == 400 and raised.value.param == param
    response = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, json=request)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_stream_options_without_stream_and_a_wrong_token_are_refused(served):
    server, _ = served
    body = {"model": "careful", "messages": ask("What is 1 + 1?"), "stream_options": {"include_usage": True}}
    response = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream_options"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="careful", messages=ask("What is 1 + 1?"), stream=True
        )


def events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n") and b"\r" not in raw
    return raw[:-2].split(b"\n\n")


def test_the_raw_stream_is_openais_framing(served):
    server, _ = served
    body = {"model": "careful", "messages": ask("What is 9 - 4?"), "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=AUTH, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = response.read()
    *chunks, done = events(raw)
    assert done == b"data: [DONE]"
    assert all(e.startswith(b"data: {") and b"\n" not in e for e in chunks)  # one data line per event
    parsed = [orjson.loads(e.removeprefix(b"data: ")) for e in chunks]
    assert all("usage" not in c for c in parsed)  # without include_usage there is no usage field at all
    assert parsed[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert parsed[-1]["choices"][0]["delta"] == {} and parsed[-1]["choices"][0]["finish_reason"] == "stop"
    # Obfuscation, on by default as OpenAI's: each chunk's text and padding together fill whole blocks.
    assert all(
        (len(c["choices"][0]["delta"].get("content") or "") + len(c["obfuscation"])) % Chunks.PAD == 0
        for c in parsed
    )
    body["stream_options"] = {"include_usage": True, "include_obfuscation": False}
    *chunks, done = events(httpx.post(server.url + "/v1/chat/completions", headers=AUTH, json=body).content)
    *chunks, usage = [orjson.loads(e.removeprefix(b"data: ")) for e in chunks]
    assert done == b"data: [DONE]"
    assert all("obfuscation" not in c and c["usage"] is None for c in chunks)
    assert (
        usage["choices"] == []
        and usage["usage"]["total_tokens"] > 0
        and set(usage) == {"id", "object", "created", "model", "choices", "usage"}
    )


def test_a_teacher_that_fails_after_the_stream_began_ends_it_with_an_error_event(served):
    server, _ = served
    stream = sdk(server).chat.completions.create(model="missing", messages=ask("What is 2 + 2?"), stream=True)
    with pytest.raises(openai.APIError, match="teacher 'missing' failed") as raised:
        for _ in stream:
            pass
    assert raised.value.body["code"] == "teacher_failed" and raised.value.body["type"] == "server_error"
    plain = httpx.post(
        server.url + "/v1/chat/completions", headers=AUTH, json={"model": "missing", "messages": ask("What?")}
    )
    assert plain.status_code == 502 and plain.json()["error"]["type"] == "server_error"


def proxy_replies(server: Served, since: float) -> int:
    """Replies the proxy received since then and committed to its cache (it commits in groups, by the half second)."""
    path = server.state / "proxy" / "requests.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM responses WHERE created >= ?", (since,)).fetchone()[0]


def opened(http: httpx.Client, question: str) -> tuple[httpx.Response, Iterator[bytes]]:
    """A stream whose first event (the role) has arrived, and the rest of it; the caller closes it."""
    body = {"model": "careful", "messages": ask(question), "stream": True}
    response = http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    rest = response.iter_raw()
    assert b'"role":"assistant"' in next(rest)
    return response, rest


def until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_request_sent_before_its_client_left_lands_in_the_cache(slow):
    server, sim = slow
    before, since = arrivals(sim), time.time()
    with server.client() as http:
        stream, _ = opened(http, "What is 30 + 12?")
        until(lambda: arrivals(sim) == before + 1)  # sent: the simulator holds it for 3 s
        stream.close()
    until(lambda: proxy_replies(server, since) == 1)  # paid for, so not cancelled: its reply is kept
    reply = sdk(server).chat.completions.create(model="careful", messages=ask("What is 30 + 12?"))
    assert reply.choices[0].message.content and arrivals(sim) == before + 1  # from the cache


def test_a_request_whose_client_left_while_it_waited_is_never_sent(slow):
    server, sim = slow
    before = arrivals(sim)
    with server.client() as http, server.client() as other:
        first, rest = opened(http, "What is 5 + 8?")
        until(lambda: arrivals(sim) == before + 1)  # it holds the teacher's one slot for 3 s
        waiting, _ = opened(other, "What is 50 + 80?")  # queued behind it
        waiting.close()
        # Asked after the one that left, so sent after it: when this is answered, the other has gone or been sent.
        reply = sdk(server).chat.completions.create(model="careful", messages=ask("What is 500 + 800?"))
        assert reply.choices[0].message.content and arrivals(sim) == before + 2
        assert b"data: [DONE]" in b"".join(rest)  # the first stream was not disturbed
        first.close()
    log = (server.state.parent / f"{server.state.name}.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_a_plain_request_whose_client_left_while_it_waited_is_never_sent(slow):
    """Not streamed: the proxy watches the connection while the request waits, and cancels it when it closes."""
    server, sim = slow
    before = arrivals(sim)
    with server.client() as http:
        first, rest = opened(http, "What is 6 + 9?")
        until(lambda: arrivals(sim) == before + 1)  # it holds the teacher's one slot for 3 s
        body = {"model": "careful", "messages": ask("What is 60 + 90?")}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            http.post("/v1/chat/completions", json=body, timeout=0.5)
        until(lambda: sum(g["queue"] for g in http.get("/v1/fair/limits").json()["gates"]) == 0, timeout=10)
        assert b"data: [DONE]" in b"".join(rest)
        first.close()
    assert arrivals(sim) == before + 1  # the one that left was taken out of the queue, never sent


def test_a_request_that_can_never_fit_its_teachers_tpm_is_a_400(served):
    server, _ = served
    big = "word " * 1_000_000  # ~1.25M tokens at 4 characters a token: over the offline teachers' tpm of 1M
    with server.client() as http:
        response = http.post("/v1/chat/completions", json={"model": "careful", "messages": ask(big)})
    assert response.status_code == 400, response.text
    assert "tpm" in response.json()["error"]["message"] and response.json()["error"]["param"] == "messages"


def test_a_stop_waits_for_a_sent_request_whose_client_left(slow):
    server, sim = slow
    before, since = arrivals(sim), time.time()
    with server.client() as http:
        stream, _ = opened(http, "What is 7 + 70?")
        until(lambda: arrivals(sim) == before + 1)
        stream.close()
    server.stop()  # SIGTERM while the simulator still holds the request: the whole shutdown path runs
    assert server.process.returncode == 0 and proxy_replies(server, since) == 1
    log = (server.state.parent / f"{server.state.name}.log").read_text()
    assert log.rstrip().endswith("fair serve: stopped; open jobs and batches resume at the next start"), log[-500:]
    server.start()


def test_truncated_and_refused_replies_finish_as_openai_says():
    teacher = load_committee("offline")[0]
    request = ChatRequest.for_teacher(teacher, (("user", "Explain."),))
    options = StreamOptions(include_usage=True, include_obfuscation=False)
    cut = ChatResponse("  Step one:\nadd", 5, 3, truncated=True)
    assert chat_completion(teacher, request, cut)["choices"][0]["finish_reason"] == "length"
    chunks = list(Chunks(teacher, request, options).reply(cut))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == cut.text
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}

    refused = ChatResponse("", 5, 0, refusal="SAFETY")
    choice = chat_completion(teacher, request, refused)["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": "SAFETY"}
    *deltas, finish, usage = [
        c["choices"][0] if c["choices"] else c for c in Chunks(teacher, request, options).reply(refused)
    ]
    assert [d["delta"] for d in deltas] == [{"refusal": "SAFETY"}] and finish[
        "finish_reason"
    ] == "content_filter"
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5,
                              "prompt_tokens_details": {"cached_tokens": 0}}
