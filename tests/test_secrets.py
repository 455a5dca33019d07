"""API keys of every shape: cleaned or refused when loaded, and redacted in every spelling a message may use.

Keys are planted with a Windows line end, a newline, a tab, spaces and URL-special characters; the servers
here echo what they receive in every encoding (raw, repr of str and bytes, URL- and JSON-encoded), and
transport errors quote the raw environment value the way h11 does. Nothing may carry "PLANTED" or the tail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from urllib.parse import quote, quote_plus

import httpx
import pytest

from fair.errors import FairError
from gen.teachers.batch import BatchAPI, BatchRun, Ledger
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient, TeacherFailed, TeacherStats
from gen.teachers.config import Teacher, missing_keys
from gen.teachers.keys import read_key, redact
from gen.teachers.providers import ChatRequest, FatalError, make_provider

ENV = "FAIR_TEST_SHAPED_KEY"
CORE = "sk-PLANTED+a/b=c%Zq7x"  # URL-special characters: its encoded forms differ from it
TAIL = "Zq7x"
SHAPES = [CORE + "\r", CORE + "\n", CORE + "\t", CORE + "\r\n", f"  {CORE} \r\n", CORE]
REFUSED = ["sk-PLANTED\x1bZq7x", "sk-PLANTED\rZq7x", "sk-PLANTED Zq7x", "sk-PLANTÉD-Zq7x", "sk-PLANTED\x7fZq7x"]
REQUEST = ChatRequest((("system", "s"), ("user", "2+2?")), max_tokens=8)


def spellings(value: str) -> list[str]:
    return [value, repr(value), repr(value.encode()), quote(value, safe=""), quote(value), quote_plus(value),
            json.dumps(value), f"Bearer {value}"]


def leaks(texts) -> list[str]:
    return [t for t in texts if "PLANTED" in t or TAIL in t or "planted" in t.lower()]


def teacher(provider: str, url: str, **kw) -> Teacher:
    return Teacher(name="t1", provider=provider, model="m-1", base_url=url, api_key_env=ENV, max_retries=1, rpm=60_000,
                   retry_backoff_s=0.001, timeout_s=5.0, **kw)


async def echo_server(raw: str) -> asyncio.AbstractServer:
    """A server that answers every request 401, quoting the key it got and the raw variable in every spelling."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except asyncio.IncompleteReadError:  # the client refused to send the request (h11 checks headers)
            writer.close()
            return
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        headers = {k.lower(): v for k, v in headers.items()}
        await reader.readexactly(int(headers.get("content-length", 0)))
        got = headers.get("authorization") or headers.get("x-api-key") or headers.get("x-goog-api-key") or ""
        message = " | ".join(spellings(got) + spellings(raw))
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {message}"}}).encode()
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def url_of(server: asyncio.AbstractServer, provider: str) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/v1" + ("beta" if provider == "gemini" else "")


# ---------------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("raw", SHAPES)
def test_surrounding_whitespace_is_stripped_when_a_key_is_loaded(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    assert read_key(ENV) == CORE
    assert teacher("openai", "http://x").api_key() == CORE
    assert missing_keys([teacher("openai", "http://x")]) == []


@pytest.mark.parametrize("raw", ["", "\r\n", " \t "])
def test_a_blank_key_counts_as_missing(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    assert read_key(ENV) is None and missing_keys([teacher("openai", "http://x")]) == [ENV]


@pytest.mark.parametrize("raw", REFUSED)
@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
def test_a_key_with_characters_inside_it_is_refused_in_one_line_naming_the_variable(monkeypatch, raw, provider):
    monkeypatch.setenv(ENV, raw)
    t = teacher(provider, "http://127.0.0.1:9/v1")
    errors = []
    for load in (lambda: read_key(ENV), t.api_key, lambda: missing_keys([t])):
        with pytest.raises(FairError) as info:
            load()
        errors.append(str(info.value))

    async def go():  # a provider call refuses it too, before anything is sent
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as http:
            with pytest.raises(FairError) as info:
                await make_provider(t, http).complete(REQUEST)
            errors.append(str(info.value))

    asyncio.run(go())
    for text in errors:
        assert ENV in text and "\n" not in text
    assert not leaks(errors + [repr(e) for e in errors])


# ---------------------------------------------------------------------------------------------------------
# Redaction


@pytest.mark.parametrize("raw", SHAPES)
def test_redact_covers_every_spelling(raw):
    for spelling in spellings(raw) + spellings(CORE):
        text = redact(f"before {spelling} after", [raw])
        assert not leaks([text]), (spelling, text)
        assert text.startswith("before ") and text.endswith(" after")


def test_redact_leaves_short_secrets_and_other_text_alone():
    assert redact("abc is fine", ["abc"]) == "abc is fine"
    assert redact("https://x/y?api_key=abcd&b=1", []) == "https://x/y?api_key=***&b=1"


# ---------------------------------------------------------------------------------------------------------
# Every provider, over a real socket (h11 checks the headers), and through the shared client


@pytest.mark.parametrize("raw", SHAPES)
@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
def test_planted_keys_of_every_shape_never_leak_through_a_provider(monkeypatch, caplog, tmp_path, raw, provider):
    monkeypatch.setenv(ENV, raw)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def refused(req: httpx.Request) -> httpx.Response:  # a library error quoting the raw value, as h11 does
        raise httpx.ConnectError(" ".join(spellings(raw)), request=req)

    async def go():
        server = await echo_server(raw)
        async with server:
            t = teacher(provider, url_of(server, provider))
            async with httpx.AsyncClient() as http:
                error = await _raises(make_provider(t, http).complete(REQUEST))
                texts.extend([str(error), repr(error)])
                with ResponseCache(tmp_path / "c.sqlite") as cache:
                    client = TeacherClient(t, cache, http, backoff_s=0.001)
                    failed = await _raises(client.complete(REQUEST))
                    texts.extend([str(failed), repr(failed), repr(client), repr(client.stats)])
            async with httpx.AsyncClient(transport=httpx.MockTransport(refused)) as http:
                with ResponseCache(tmp_path / "d.sqlite") as cache:
                    failed = await _raises(TeacherClient(t, cache, http, backoff_s=0.001).complete(REQUEST))
                    texts.extend([str(failed), repr(failed)])
        return error

    error = asyncio.run(go())
    assert isinstance(error, FatalError) and "HTTP 401" in str(error)  # the key was sent, and was echoed
    texts += [r.getMessage() for r in caplog.records]
    assert not leaks(texts), leaks(texts)
    assert not [p for p in tmp_path.iterdir() if b"PLANTED" in p.read_bytes() or TAIL.encode() in p.read_bytes()]


async def _raises(coro) -> BaseException:
    try:
        await coro
    except (FatalError, TeacherFailed) as e:
        return e
    raise AssertionError("expected a provider failure")


# ---------------------------------------------------------------------------------------------------------
# The Batch API path


@pytest.mark.parametrize("raw", SHAPES)
def test_planted_keys_never_leak_through_the_batch_api(monkeypatch, caplog, capsys, tmp_path, raw):
    monkeypatch.setenv(ENV, raw)
    caplog.set_level(logging.DEBUG)

    async def go():
        server = await echo_server(raw)
        async with server, httpx.AsyncClient() as http:
            t = teacher("openai", url_of(server, "openai"), batch_api=True)
            with ResponseCache(tmp_path / "c.sqlite") as cache:
                run = BatchRun([t], cache, http, {"t1": TeacherStats("t1")}, poll_s=0.01)
                with pytest.raises(FairError) as info:  # the upload is refused, the key echoed
                    await run.run([(t, REQUEST)])
                # A batch that failed validation with a message quoting the key: printed, redacted.
                Ledger(cache.db).uploaded("file-1", "t1", {"k1"})
                failed = {"id": "batch-1", "status": "failed",
                          "errors": {"data": [{"message": " ".join(spellings(raw))}]}}
                await run.collect(BatchAPI(t, http), "file-1", failed)
        return str(info.value)

    message = asyncio.run(go())
    assert "HTTP 401" in message
    out = capsys.readouterr()
    assert "batch-1 failed" in out.out
    texts = [message, out.out, out.err] + [r.getMessage() for r in caplog.records]
    assert not leaks(texts), leaks(texts)
    assert not [p for p in tmp_path.iterdir() if b"PLANTED" in p.read_bytes()]


# ---------------------------------------------------------------------------------------------------------
# A whole committee run: committee.jsonl, the cache and stderr


@pytest.mark.parametrize("raw", [CORE + "\r", f"  {CORE}\t\r\n"])
def test_a_committee_run_with_a_windows_key_works_and_writes_no_key(tmp_path, data_dir, monkeypatch, caplog,
                                                                    capsys, raw):
    from fair.jsonl import read_jsonl
    from gen.committee.run import CommitteeConfig, run_committee
    from gen.teachers.config import load_committee
    from simulator.server import OfflineServer
    from tests.conftest import fast, import_seed_mistakes

    monkeypatch.setenv(ENV, raw)
    caplog.set_level(logging.DEBUG)
    (tmp_path / "seed").mkdir()
    mistakes = import_seed_mistakes(tmp_path / "seed", data_dir, count=2)
    config = CommitteeConfig(task="svamp", mistakes=str(mistakes), out=str(tmp_path / "committee.jsonl"), limit=2,
                             progress=False)
    with OfflineServer(port=0, p_5xx=0.3, seed=3) as server:
        teachers = fast(load_committee("offline", server.url), api_key_env=ENV)
        teachers[0] = dataclasses.replace(teachers[0], model="no-such-model")  # errors are recorded too
        asyncio.run(run_committee(config, teachers))
    records = list(read_jsonl(config.out_path))
    assert len(records) == 2
    errors = [f["error"] for r in records for f in r["feedback"].values() if f["error"]]
    assert errors and all("HTTP 404" in e for e in errors)  # only the unknown model failed: the key was good
    out = capsys.readouterr()
    assert not leaks([out.out, out.err, caplog.text])
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"PLANTED" in p.read_bytes()]
