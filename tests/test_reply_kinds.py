"""What each provider's replies mean, as its documentation says: billed usage (cached, thinking), refusals,
truncation, quota exhaustion, x-should-retry, Gemini's thinking budget and Anthropic's cache_control.

Hand-built replies in the documented shapes; tests/test_recorded_replies.py replays real recorded ones.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gen.teachers.config import Teacher
from gen.teachers.providers import (
    ChatRequest,
    ChatResponse,
    FatalError,
    QuotaExhausted,
    RateLimited,
    TransientError,
    Usage,
    anthropic_cache_min_tokens,
    make_provider,
)

REQUEST = ChatRequest((("system", "Be brief."), ("user", "2+2?")), max_tokens=100)


def teacher(provider: str = "openai", **kw) -> Teacher:
    return Teacher(name="t1", provider=provider, model=kw.pop("model", "m-1"), base_url="http://test/v1", **kw)


def call(t: Teacher, body, status: int = 200, headers=None, request: ChatRequest = REQUEST):
    """One provider call: (the response or the exception, the JSON body sent)."""
    sent = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(json.loads(req.content))
        return httpx.Response(status, json=body, headers=headers)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            try:
                return await make_provider(t, http).complete(request)
            except Exception as e:  # noqa: BLE001 - returned for the test to inspect
                return e

    return asyncio.run(go()), sent[0]


def openai(content="4", finish="stop", usage=None, **message):
    return {"choices": [{"message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 20, "completion_tokens": 5}}


def gemini(parts=None, finish="STOP", usage=None, **extra):
    candidate = {"finishReason": finish, **({"content": {"role": "model", "parts": parts}} if parts is not None else {})}
    return {"candidates": [candidate], "usageMetadata": usage or {"promptTokenCount": 20, "candidatesTokenCount": 5},
            **extra}


def anthropic(text="4", stop="end_turn", usage=None):
    return {"type": "message", "content": [{"type": "text", "text": text}] if text is not None else [],
            "stop_reason": stop, "usage": usage or {"input_tokens": 20, "output_tokens": 5}}


# ---------------------------------------------------------------------------------------------------------
# Billed usage


@pytest.mark.parametrize(("provider", "body", "usage"), [
    ("openai", openai(usage={"prompt_tokens": 2006, "completion_tokens": 300,
                             "prompt_tokens_details": {"cached_tokens": 1920},
                             "completion_tokens_details": {"reasoning_tokens": 256}}), Usage(2006, 300, 1920)),
    ("openai", openai(usage={"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": None}), Usage(9, 1)),
    ("gemini", gemini([{"text": "4"}], usage={"promptTokenCount": 3000, "cachedContentTokenCount": 2048,
                                              "toolUsePromptTokenCount": 10, "candidatesTokenCount": 7,
                                              "thoughtsTokenCount": 90}), Usage(3010, 97, 2048)),
    ("anthropic", anthropic(usage={"input_tokens": 21, "cache_creation_input_tokens": 4100,
                                   "cache_read_input_tokens": 0, "output_tokens": 393}), Usage(4121, 393, 0, 4100)),
    ("anthropic", anthropic(usage={"input_tokens": 21, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 4100, "output_tokens": 393}), Usage(4121, 393, 4100, 0)),
])
def test_billed_usage_counts_cached_and_thinking_tokens(provider, body, usage):
    response, _ = call(teacher(provider), body)
    assert isinstance(response, ChatResponse) and response.usage == usage
    assert not response.truncated and response.refusal is None


def test_cached_tokens_are_never_more_than_the_input():
    body = openai(usage={"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}})
    response, _ = call(teacher(), body)
    assert response.usage == Usage(10, 1, 10)


# ---------------------------------------------------------------------------------------------------------
# Refusals and truncation: replies, not errors


@pytest.mark.parametrize(("provider", "body", "refusal"), [
    ("openai", openai(None, refusal="I can't help with that."), "refusal"),
    ("openai", openai("partial", finish="content_filter"), "content_filter"),
    *[("gemini", gemini(None, finish=reason), reason)
      for reason in ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "OTHER", "IMAGE_SAFETY")],
    ("gemini", gemini([{"text": "It is"}], finish="RECITATION"), "RECITATION"),
    ("gemini", {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 8}},
     "PROHIBITED_CONTENT"),
    ("anthropic", anthropic(None, stop="refusal"), "refusal"),
    ("anthropic", anthropic("I started", stop="refusal"), "refusal"),
])
def test_refusals_are_replies_with_their_reason_and_usage(provider, body, refusal):
    response, _ = call(teacher(provider), body)
    assert isinstance(response, ChatResponse), response
    assert (response.text, response.refusal, response.truncated) == ("", refusal, False)
    assert response.input_tokens in (8, 20)


@pytest.mark.parametrize(("provider", "body", "text"), [
    ("openai", openai("The answer is", finish="length"), "The answer is"),
    ("openai", openai("", finish="length"), ""),
    # Every token spent on reasoning: content is null on OpenAI-compatible servers with a reasoning parser (vLLM,
    # DeepInfra): the same request would be cut off again, so it is a truncation, not a malformed reply to re-send.
    ("openai", openai(None, finish="length", reasoning_content="Let me think"), ""),
    ("gemini", gemini([{"text": "The answer"}], finish="MAX_TOKENS"), "The answer"),
    ("gemini", gemini(None, finish="MAX_TOKENS", usage={"promptTokenCount": 20, "thoughtsTokenCount": 100}), ""),
    ("gemini", gemini([{"text": "all thoughts", "thought": True}], finish="MAX_TOKENS"), ""),
    ("anthropic", anthropic("The answer is", stop="max_tokens"), "The answer is"),
    ("anthropic", anthropic(None, stop="max_tokens"), ""),
])
def test_truncated_replies_are_marked(provider, body, text):
    response, _ = call(teacher(provider), body)
    assert isinstance(response, ChatResponse), response
    assert (response.text, response.truncated, response.refusal) == (text, True, None)


def test_a_blocked_prompt_is_a_refusal_only_without_candidates():
    answered = gemini([{"text": "4"}], promptFeedback={"blockReason": "SAFETY"})
    response, _ = call(teacher("gemini"), answered)
    assert (response.text, response.refusal) == ("4", None)


@pytest.mark.parametrize(("provider", "body"), [
    ("openai", openai("  ", usage={"prompt_tokens": 20, "completion_tokens": 3})),
    ("gemini", gemini([], usage={"promptTokenCount": 20, "candidatesTokenCount": 3})),
    ("gemini", gemini(None, finish="MALFORMED_FUNCTION_CALL", usage={"promptTokenCount": 20,
                                                                       "candidatesTokenCount": 3})),
    ("anthropic", anthropic(None, usage={"input_tokens": 20, "output_tokens": 3})),
])
def test_an_empty_reply_without_a_reason_is_transient_and_carries_its_usage(provider, body):
    error, _ = call(teacher(provider), body)
    assert isinstance(error, TransientError), error
    assert error.usage == Usage(20, 3)


# ---------------------------------------------------------------------------------------------------------
# Errors: quota, x-should-retry


@pytest.mark.parametrize(("provider", "status", "body"), [
    ("openai", 429, {"error": {"message": "You exceeded your current quota, please check your plan and billing "
                                          "details.", "type": "insufficient_quota", "param": None,
                               "code": "insufficient_quota"}}),
    ("openai", 429, {"error": {"message": "quota", "type": "requests", "code": "insufficient_quota"}}),
    # An account without an active billing: a 429 too (github.com/lifan0127/ai-research-assistant/issues/174,
    # github.com/BerriAI/litellm/issues/2743), and code null in older replies (binary-husky/gpt_academic#681).
    ("openai", 429, {"error": {"message": "Your account is not active, please check your billing details on our "
                                          "website.", "type": "billing_not_active", "param": None,
                               "code": "billing_not_active"}}),
    ("openai", 429, {"error": {"message": "Your account is not active, please check your billing details on our "
                                          "website.", "type": "billing_not_active", "param": None, "code": None}}),
    ("anthropic", 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance "
                        "is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase "
                        "credits."}}),
    ("anthropic", 402, {"type": "error", "error": {"type": "billing_error", "message": "billing"}}),
    ("gemini", 429, {"error": {"code": 429, "message": "Your prepayment credits are depleted.",
                               "status": "RESOURCE_EXHAUSTED"}}),
    ("gemini", 429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current "
                               "quota.", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                               "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                               {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}]}}),
    ("gemini", 429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "* Quota exceeded for metric: "
                               "generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro"}}),
])
def test_an_account_out_of_quota_is_quota_exhausted(provider, status, body):
    error, _ = call(teacher(provider), body, status, headers={"x-should-retry": "true"})
    assert isinstance(error, QuotaExhausted) and isinstance(error, FatalError), error


@pytest.mark.parametrize(("provider", "body"), [
    ("openai", {"error": {"message": "Rate limit reached for requests", "type": "requests",
                          "code": "rate_limit_exceeded"}}),
    ("gemini", {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.",
                          "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                              {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                              {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}),
    ("anthropic", {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has "
                                                                                   "exceeded your per-minute rate limit"}}),
])
def test_per_minute_limits_stay_rate_limits(provider, body):
    error, _ = call(teacher(provider), body, 429)
    assert type(error) is RateLimited, error


@pytest.mark.parametrize(("status", "header", "kind"), [
    (400, "true", TransientError), (500, "false", FatalError), (503, "true", TransientError),
    (429, "false", FatalError), (429, "true", RateLimited), (409, "false", FatalError), (404, None, FatalError),
])
def test_x_should_retry_overrides_the_status(status, header, kind):
    error, _ = call(teacher("anthropic"), {"error": {"message": "no"}}, status,
                    headers={"x-should-retry": header} if header else None)
    assert type(error) is kind


# ---------------------------------------------------------------------------------------------------------
# Requests: Gemini's thinking budget, Anthropic's cache_control


def test_gemini_sends_its_thinking_budget_on_top_of_max_tokens():
    _, body = call(teacher("gemini", thinking_budget=1024), gemini([{"text": "4"}]))
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}
    assert body["generationConfig"]["maxOutputTokens"] == 100 + 1024
    assert list(body)[0] == "systemInstruction"  # the stable prefix first
    _, body = call(teacher("gemini"), gemini([{"text": "4"}]))
    assert "thinkingConfig" not in body["generationConfig"] and body["generationConfig"]["maxOutputTokens"] == 100


@pytest.mark.parametrize(("model", "minimum"), [
    ("claude-haiku-4-5", 4096), ("claude-haiku-4-5-20251001", 4096), ("claude-3-5-haiku-latest", 2048),
    ("claude-sonnet-4-5", 1024), ("claude-opus-4-1", 1024),
])
def test_anthropic_marks_the_system_prompt_for_caching_only_when_long_enough(model, minimum):
    assert anthropic_cache_min_tokens(model) == minimum
    short = ChatRequest((("system", "x" * (4 * minimum)), ("user", "2+2?")))  # ~minimum tokens: maybe fewer
    long = ChatRequest((("system", "x" * (5 * minimum)), ("user", "2+2?")))
    _, body = call(teacher("anthropic", model=model), anthropic(), request=short)
    assert body["system"] == "x" * (4 * minimum)
    _, body = call(teacher("anthropic", model=model), anthropic(), request=long)
    assert body["system"] == [{"type": "text", "text": "x" * (5 * minimum), "cache_control": {"type": "ephemeral"}}]
    assert list(body).index("system") < list(body).index("messages")
