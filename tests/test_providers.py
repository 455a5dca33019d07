"""Wire formats of the three providers against httpx.MockTransport: requests, replies, errors, no key leaks."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient, TeacherFailed
from gen.teachers.config import Teacher
from gen.teachers.providers import (
    AnthropicProvider,
    ChatRequest,
    FatalError,
    GeminiProvider,
    OpenAIProvider,
    RateLimited,
    TransientError,
    make_provider,
    redact,
)
from gen.teachers.ratelimits import parse_duration, parse_retry_after

KEY = "sk-test-PLANTED-123"
REQUEST = ChatRequest((("system", "Be brief."), ("user", "2+2?"), ("assistant", "5"), ("user", "Sure?")),
                      temperature=0.3, top_p=0.9, max_tokens=77)
OPENAI_OK = {"choices": [{"message": {"role": "assistant", "content": "4"}}],
             "usage": {"prompt_tokens": 11, "completion_tokens": 2}}
GEMINI_OK = {"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                                                     {"text": "It is "}, {"text": "4"}]}}],
             "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 5}}
ANTHROPIC_OK = {"content": [{"type": "text", "text": "It is 4"}], "usage": {"input_tokens": 8, "output_tokens": 4}}
OK = {"openai": OPENAI_OK, "gemini": GEMINI_OK, "anthropic": ANTHROPIC_OK}


@pytest.fixture(autouse=True)
def planted_key(monkeypatch):
    monkeypatch.setenv("FAIR_TEST_KEY", KEY)


def teacher(provider="openai", **kw) -> Teacher:
    return Teacher(name="t1", provider=provider, model=kw.pop("model", "m-1"), api_key_env="FAIR_TEST_KEY", **kw)


def call(t: Teacher, handler, request: ChatRequest = REQUEST):
    """Run one provider call against `handler`; returns (response or exception, the requests seen)."""
    seen: list[httpx.Request] = []

    def record(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return handler(req)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
            try:
                return await make_provider(t, http).complete(request)
            except Exception as e:  # noqa: BLE001 - returned for the test to inspect
                return e

    return asyncio.run(go()), seen


def reply(body, status=200, headers=None):
    return lambda req: httpx.Response(status, json=body, headers=headers)


# ---------------------------------------------------------------------------------------------------------
# Requests and replies


def test_openai_wire_format():
    response, [req] = call(teacher(), reply(OPENAI_OK))
    assert str(req.url) == "https://api.openai.com/v1/chat/completions" and req.method == "POST"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(req.content)
    assert body == {"model": "m-1", "temperature": 0.3, "top_p": 0.9, "max_tokens": 77, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "5"}, {"role": "user", "content": "Sure?"}]}
    assert (response.text, response.input_tokens, response.output_tokens) == ("4", 11, 2)


def test_openai_compatible_local_server_without_key():
    t = Teacher(name="local", provider="openai", model="m", base_url="http://127.0.0.1:8000/v1/",
                extra_headers={"x-extra": "1"})
    response, [req] = call(t, reply({"choices": [{"message": {"content": "ok"}}]}))  # no usage: counts 0
    assert str(req.url) == "http://127.0.0.1:8000/v1/chat/completions"
    assert "authorization" not in req.headers and req.headers["x-extra"] == "1"
    assert (response.text, response.input_tokens, response.output_tokens) == ("ok", 0, 0)


def test_gemini_wire_format_keeps_the_key_out_of_the_url():
    response, [req] = call(teacher("gemini", model="models/gemini-2.5-flash"), reply(GEMINI_OK))
    assert str(req.url) == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert KEY not in str(req.url) and req.headers["x-goog-api-key"] == KEY
    body = json.loads(req.content)
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"] == [{"text": "5"}]
    assert body["generationConfig"] == {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 77}
    assert (response.text, response.input_tokens, response.output_tokens) == ("It is 4", 9, 8)  # thoughts billed


def test_anthropic_wire_format_and_rate_limit_headers():
    reset = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset,
               "anthropic-ratelimit-tokens-remaining": "5000", "anthropic-ratelimit-tokens-reset": reset}
    response, [req] = call(teacher("anthropic"), reply(ANTHROPIC_OK, headers=headers))
    assert str(req.url) == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    body = json.loads(req.content)
    assert body["system"] == "Be brief." and body["max_tokens"] == 77 and body["top_p"] == 0.9
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert (response.text, response.input_tokens, response.output_tokens) == ("It is 4", 8, 4)
    limits = response.limits
    assert limits.remaining_requests == 0 and limits.remaining_tokens == 5000
    assert 25 < limits.reset_requests_s <= 30


def test_anthropic_sends_top_p_only_when_set():
    _, [req] = call(teacher("anthropic"), reply(ANTHROPIC_OK), ChatRequest((("user", "hi"),)))
    assert "top_p" not in json.loads(req.content) and "system" not in json.loads(req.content)


def test_openai_rate_limit_headers_are_read():
    headers = {"x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "1000",
               "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    response, _ = call(teacher(), reply(OPENAI_OK, headers=headers))
    assert response.limits.remaining_requests == 59 and response.limits.reset_tokens_s == 360


# ---------------------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
@pytest.mark.parametrize(("status", "kind"), [
    (400, FatalError), (401, FatalError), (403, FatalError), (404, FatalError), (422, FatalError),
    (408, TransientError), (409, TransientError), (500, TransientError), (503, TransientError),
    (529, TransientError), (429, RateLimited),
])
def test_status_codes_map_to_error_kinds(provider, status, kind):
    error, _ = call(teacher(provider), reply({"error": {"message": "the provider says no"}}, status))
    assert type(error) is kind
    assert str(error) == f"t1: HTTP {status}: the provider says no"


@pytest.mark.parametrize(("provider", "body"), [
    ("openai", {"choices": []}), ("openai", {"choices": [{"message": {"content": None}}]}),
    ("openai", {"choices": [{"message": {"content": "  "}}]}), ("openai", [1, 2]),
    ("gemini", {"candidates": []}), ("gemini", {"candidates": [{"content": {}}]}),
    ("anthropic", {"content": []}), ("anthropic", {"type": "message"}),
])
def test_malformed_or_empty_replies_are_transient(provider, body):
    error, _ = call(teacher(provider), reply(body))
    assert isinstance(error, TransientError), error


def test_invalid_json_timeouts_and_connection_errors_are_transient():
    error, _ = call(teacher(), lambda req: httpx.Response(200, content=b"<html>oops"))
    assert isinstance(error, TransientError) and "not valid JSON" in str(error)

    def timeout(req):
        raise httpx.ReadTimeout("timed out", request=req)

    error, _ = call(teacher(timeout_s=2.5), timeout)
    assert isinstance(error, TransientError) and "timed out after 2.5 s" in str(error)

    def refused(req):
        raise httpx.ConnectError(f"cannot reach {req.url}?key={KEY}", request=req)

    error, _ = call(teacher(), refused)
    assert isinstance(error, TransientError) and "ConnectError" in str(error) and KEY not in str(error)


def test_per_attempt_timeout_is_passed_to_httpx():
    _, [req] = call(teacher(timeout_s=7.0), reply(OPENAI_OK))
    assert req.extensions["timeout"] == {"connect": 7.0, "read": 7.0, "write": 7.0, "pool": 7.0}


def test_long_error_bodies_are_truncated():
    error, _ = call(teacher(), lambda req: httpx.Response(400, content=b"x" * 5000))
    assert isinstance(error, FatalError) and len(str(error)) < 400


# ---------------------------------------------------------------------------------------------------------
# How long a 429 says to wait


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("20", 20.0),
    ("", None), ("soon", None), ("5x", None), ("inf", None),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"}), now) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "9"}), now) == 9.0
    date = email.utils.formatdate(now + 40, usegmt=True)
    assert 38 <= parse_retry_after(httpx.Headers({"retry-after": date}), now) <= 41
    assert parse_retry_after(httpx.Headers({}), now) is None


@pytest.mark.parametrize(("provider", "headers", "body", "expected"), [
    ("openai", {"retry-after-ms": "1500", "retry-after": "2"}, {}, 1.5),
    ("openai", {"retry-after": "3"}, {}, 3.0),
    ("openai", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "1m"}, {}, 2.0),
    ("gemini", {}, {"error": {"message": "quota", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}, 17.0),
    ("anthropic", {"retry-after": "4"}, {}, 4.0),
    ("openai", {}, {}, None),
])
def test_429_carries_retry_after(provider, headers, body, expected):
    error, _ = call(teacher(provider), reply(body, 429, headers))
    assert isinstance(error, RateLimited) and error.retry_after == expected


# ---------------------------------------------------------------------------------------------------------
# The key never leaks


def test_redact():
    assert redact(f"bad key {KEY} at https://x/y?key={KEY}&alt=json", [KEY, None]) == \
        "bad key *** at https://x/y?key=***&alt=json"
    assert redact("https://x/y?api_key=abcd", []) == "https://x/y?api_key=***"


@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
def test_planted_key_never_reaches_messages_reprs_or_logs(provider, tmp_path, caplog):
    echo = reply({"error": {"message": f"Incorrect API key provided: {KEY}"}}, 401)
    error, _ = call(teacher(provider), echo)
    assert isinstance(error, FatalError)
    texts = [str(error), repr(error), repr(make_provider(teacher(provider), httpx.AsyncClient()))]

    def flaky(req):
        raise httpx.ConnectError(f"[Errno 111] refused: {req.url} key={KEY}", request=req)

    caplog.set_level(logging.DEBUG)
    for handler in (echo, flaky):
        async def go(handler=handler):
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
                with ResponseCache(tmp_path / "c.sqlite") as cache:
                    client = TeacherClient(teacher(provider, max_retries=1, rpm=6000), cache, http, backoff_s=0.001)
                    texts.append(repr(client))
                    with pytest.raises(TeacherFailed) as info:
                        await client.complete(REQUEST)
                    texts.extend([str(info.value), repr(info.value), repr(client.stats)])

        asyncio.run(go())
    texts += [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert len(caplog.records) >= 2
    assert not [t for t in texts if KEY in t]
    assert "***" in str(error)


def test_make_provider_picks_the_class():
    http = httpx.AsyncClient()
    kinds = {p: type(make_provider(teacher(p), http)) for p in ("openai", "gemini", "anthropic")}
    assert kinds == {"openai": OpenAIProvider, "gemini": GeminiProvider, "anthropic": AnthropicProvider}


def test_gemini_blocked_prompt_is_a_refusal_not_an_error():
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}
    response, _ = call(teacher("gemini"), reply(blocked))
    assert (response.text, response.refusal, response.input_tokens) == ("", "SAFETY", 7)
