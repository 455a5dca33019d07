"""The official SDKs (openai, anthropic, google-genai) against the offline simulator: replies and streams, the
errors each SDK raises, and the failure shapes (refusal, spent thinking, truncation, quota, cached tokens) as
the SDKs' own types read them. A shape the real API would not send fails here as it would in a user's code."""

from __future__ import annotations

import pytest

from simulator.server import OfflineServer

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
genai = pytest.importorskip("google.genai")
types = pytest.importorskip("google.genai.types")
pytestmark = pytest.mark.timeout(60)

QUESTION = "What is 2 + 2? End with 'The answer is N.'"
SYSTEM = "You are a careful teacher who checks every step. " * 40  # about 500 tokens: a cacheable prefix
MAX_TOKENS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("no-data")  # no benchmark data: generic replies, and a quick start
    with OfflineServer(port=0, data_dir=data, cache_min_tokens=128, cache_block_tokens=64) as s:
        yield s


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """A simulator whose every body draws `outcome` (refusal, thinking, truncate), or whose keys are out of quota."""
    data = tmp_path_factory.mktemp("no-data")

    def start(**settings) -> OfflineServer:
        return OfflineServer(port=0, data_dir=data, **settings)
    return start


def oai(server: OfflineServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)


def claude(server: OfflineServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0)


def gemini(server: OfflineServer) -> genai.Client:
    """Kept in a variable while in use: a Client closes its connections when it is collected."""
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=server.url))


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model="sim-careful", max_tokens=MAX_TOKENS, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], **kw)


def message(client: anthropic.Anthropic, cache: bool = False, question: str = QUESTION):
    system = [{"type": "text", "text": SYSTEM, **({"cache_control": {"type": "ephemeral"}} if cache else {})}]
    return client.messages.create(model="sim-harsh", max_tokens=MAX_TOKENS, system=system,
                                  messages=[{"role": "user", "content": question}])


def generate(client: genai.Client, **kw):
    config = types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=MAX_TOKENS)
    return client.models.generate_content(model="sim-sloppy", contents=QUESTION, config=config, **kw)


# --- OpenAI ------------------------------------------------------------------------------------------------

def test_openai_reply_stream_and_cached_prefix(server):
    client = oai(server)
    first = chat(client, temperature=0)
    assert first.choices[0].finish_reason == "stop" and "The answer is" in first.choices[0].message.content
    usage = first.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = chat(client, temperature=0.0001)  # another body, the same system prompt: its prefix is cached
    assert 128 <= again.usage.prompt_tokens_details.cached_tokens <= again.usage.prompt_tokens

    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *body, last = chunks
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert "The answer is" in text and [c.choices[0].finish_reason for c in body][-1] == "stop"
    assert last.choices == [] and last.usage.completion_tokens == len(text) // 4 + 1
    assert all(c.usage is None for c in body)
    plain = list(chat(client, stream=True, temperature=0.5))  # no include_usage: no usage chunk
    assert all(c.choices and c.usage is None for c in plain)


def test_openai_failure_shapes(failing):
    with failing(p_refusal=1) as s:
        reply = chat(oai(s))
        assert reply.choices[0].message.refusal and reply.choices[0].message.content is None
        assert reply.usage.completion_tokens > 0  # a refusal is billed
        streamed = list(chat(oai(s), stream=True))
        assert "".join(c.choices[0].delta.refusal or "" for c in streamed) == reply.choices[0].message.refusal
    with failing(p_truncate=1) as s:
        reply = chat(oai(s))
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == MAX_TOKENS
    with failing(p_thinking=1) as s:
        reply = chat(oai(s))
        assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
        assert reply.usage.completion_tokens_details.reasoning_tokens == MAX_TOKENS
    with failing(quota_after=1) as s:
        chat(oai(s))
        with pytest.raises(openai.RateLimitError) as quota:
            chat(oai(s))
        assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"
        assert s.counters["quota"] == 1
    with failing(rpm=1) as s:
        chat(oai(s))
        with pytest.raises(openai.RateLimitError) as limited:
            chat(oai(s))
        assert limited.value.code == "rate_limit_exceeded" and int(limited.value.response.headers["retry-after"]) > 0


# --- Anthropic ---------------------------------------------------------------------------------------------

def test_anthropic_reply_stream_and_prompt_cache(server):
    client = claude(server)
    first = message(client, cache=True)
    assert first.type == "message" and first.stop_reason == "end_turn" and first.content[0].type == "text"
    assert "The answer is" in first.content[0].text
    written = first.usage.cache_creation_input_tokens
    assert written >= 128 and first.usage.cache_read_input_tokens == 0 and first.usage.input_tokens > 0
    with client.messages.stream(model="sim-harsh", max_tokens=MAX_TOKENS - 1, messages=[
            {"role": "user", "content": QUESTION}], system=[
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and final.stop_reason == "end_turn"
    assert final.usage.cache_read_input_tokens == written and final.usage.cache_creation_input_tokens == 0
    assert final.usage.output_tokens == len(text) // 4 + 1
    no_marker = message(client, question="What is 3 + 3?")  # without cache_control, Anthropic caches nothing
    assert no_marker.usage.cache_read_input_tokens == no_marker.usage.cache_creation_input_tokens == 0
    top = client.messages.create(model="sim-harsh", max_tokens=MAX_TOKENS, system=SYSTEM, cache_control={
        "type": "ephemeral"}, messages=[{"role": "user", "content": "What is 5 + 5?"}])  # a marker on the last block
    assert top.usage.cache_read_input_tokens == written and top.usage.cache_creation_input_tokens > 0
    raw = client.messages.with_raw_response.create(model="sim-harsh", max_tokens=10, messages=[
        {"role": "user", "content": "hi"}])
    assert int(raw.headers["anthropic-ratelimit-requests-remaining"]) < int(
        raw.headers["anthropic-ratelimit-requests-limit"])
    assert raw.headers["anthropic-ratelimit-input-tokens-reset"].endswith("Z")


def test_anthropic_failure_shapes(failing):
    with failing(p_refusal=1) as s:
        assert message(claude(s)).stop_reason == "refusal"
        with claude(s).messages.stream(model="sim-harsh", max_tokens=MAX_TOKENS,
                                       messages=[{"role": "user", "content": QUESTION}]) as stream:
            assert stream.get_final_message().stop_reason == "refusal"
    with failing(p_truncate=1) as s:
        reply = message(claude(s))
        assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == MAX_TOKENS
    with failing(quota_after=0) as s, pytest.raises(anthropic.BadRequestError) as quota:
        message(claude(s))
    assert "credit balance is too low" in quota.value.message
    with failing(rpm=1) as s:
        message(claude(s))
        with pytest.raises(anthropic.RateLimitError) as limited:
            message(claude(s))
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert int(limited.value.response.headers["retry-after"]) > 0
        assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with failing(p_5xx=1) as s:
        errors = []
        for i in range(12):  # each body draws 500 or 529
            with pytest.raises(anthropic.InternalServerError) as e:
                claude(s).messages.create(model="sim-harsh", max_tokens=10, messages=[
                    {"role": "user", "content": f"q{i}"}])
            errors.append(e.value)
        overloaded = [e for e in errors if isinstance(e, anthropic.OverloadedError)]
        assert overloaded and overloaded[0].body["error"]["type"] == "overloaded_error"
        assert {e.status_code for e in errors} == {500, 529}


# --- Gemini ------------------------------------------------------------------------------------------------

def test_gemini_reply_stream_and_cached_prefix(server):
    client = gemini(server)
    first = generate(client)
    assert "The answer is" in first.text and first.candidates[0].finish_reason == types.FinishReason.STOP
    usage = first.usage_metadata
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    again = client.models.generate_content(model="sim-sloppy", contents="What is 3 + 3?",
                                           config=types.GenerateContentConfig(system_instruction=SYSTEM))
    assert 128 <= again.usage_metadata.cached_content_token_count <= again.usage_metadata.prompt_token_count
    thinking = client.models.generate_content(model="sim-sloppy", contents=QUESTION, config=types.GenerateContentConfig(
        max_output_tokens=MAX_TOKENS + 200, thinking_config=types.ThinkingConfig(thinking_budget=200)))
    usage = thinking.usage_metadata
    assert 50 <= usage.thoughts_token_count <= 100 and "The answer is" in thinking.text  # thoughts, then the answer
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    chunks = list(client.models.generate_content_stream(model="sim-sloppy", contents=QUESTION))
    assert len(chunks) > 1 and "The answer is" in "".join(c.text for c in chunks)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count > 0


def test_gemini_failure_shapes(failing):
    with failing(p_refusal=1) as s:
        reasons, client = set(), gemini(s)
        for i in range(8):  # half finishReason SAFETY with no content, half the prompt blocked
            reply = client.models.generate_content(model="sim-sloppy", contents=f"question {i}")
            assert reply.text is None and reply.usage_metadata.prompt_token_count > 0
            if reply.prompt_feedback is not None:
                reasons.add(("blocked", reply.prompt_feedback.block_reason))
            else:
                assert reply.candidates[0].content is None
                reasons.add(("finish", reply.candidates[0].finish_reason))
        assert reasons == {("blocked", types.BlockedReason.SAFETY), ("finish", types.FinishReason.SAFETY)}
    with failing(p_thinking=1) as s:
        reply = generate(client := gemini(s))
        assert reply.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS and reply.text is None
        assert reply.usage_metadata.thoughts_token_count == MAX_TOKENS
        assert reply.usage_metadata.candidates_token_count is None
    with failing(p_truncate=1) as s:
        reply = generate(client := gemini(s))
        assert reply.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS and reply.text
        assert reply.usage_metadata.candidates_token_count == MAX_TOKENS
    with failing(quota_after=0) as s, pytest.raises(genai.errors.ClientError) as quota:
        generate(client := gemini(s))
    assert quota.value.code == 429 and quota.value.status == "RESOURCE_EXHAUSTED"


# --- every shape, against the SDKs' own types ----------------------------------------------------------------

def unknown_fields(model, path: str = "") -> list[str]:
    """Fields the SDK's type does not know (it keeps them as extras), anywhere in a parsed reply."""
    import pydantic

    if isinstance(model, list):
        return [f for i, m in enumerate(model) for f in unknown_fields(m, f"{path}[{i}]")]
    if not isinstance(model, pydantic.BaseModel):
        return []
    own = [f"{path}.{k}" for k in model.model_extra or {}]
    return own + [f for name in type(model).model_fields for f in unknown_fields(getattr(model, name), f"{path}.{name}")]


def sse_data(text: str) -> list[bytes]:
    blocks = [b for b in text.split("\n\n") if b.strip() and '"type":"ping"' not in b and "[DONE]" not in b]
    return [b.split("data: ", 1)[1].encode() for b in blocks]


@pytest.mark.parametrize("settings", [{}, {"p_refusal": 1}, {"p_thinking": 1}, {"p_truncate": 1}],
                         ids=["reply", "refusal", "thinking", "truncate"])
def test_every_body_and_event_is_of_the_sdk_types(failing, settings):
    import httpx
    import pydantic
    from anthropic.types import Message, RawMessageStreamEvent
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    chat = {"model": "sim-careful", "max_tokens": 50, "messages": [{"role": "user", "content": QUESTION}]}
    gemini_body = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
                   "generationConfig": {"maxOutputTokens": 50}}
    parsed = []
    with failing(**settings) as s, httpx.Client(base_url=s.url, timeout=10) as http:
        for i in range(4):  # Gemini draws its refusal's shape: SAFETY or a blocked prompt
            body = chat | {"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}]}
            parsed.append(ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json()))
            parsed.append(Message.model_validate(http.post("/v1/messages", json=body).json()))
            stream = body | {"stream": True, "stream_options": {"include_usage": True}}
            r = http.post("/v1/chat/completions", json=stream)
            parsed += [ChatCompletionChunk.model_validate_json(d) for d in sse_data(r.text)]
            events = pydantic.TypeAdapter(RawMessageStreamEvent)
            parsed += [events.validate_json(d) for d in sse_data(http.post("/v1/messages", json=body | {
                "stream": True}).text)]
            g = gemini_body | {"contents": [{"role": "user", "parts": [{"text": f"{QUESTION} ({i})"}]}]}
            parsed.append(types.GenerateContentResponse.model_validate(
                http.post("/v1beta/models/sim-careful:generateContent", json=g).json()))
            r = http.post("/v1beta/models/sim-careful:streamGenerateContent", params={"alt": "sse"}, json=g)
            parsed += [types.GenerateContentResponse.model_validate_json(d) for d in sse_data(r.text)]
    assert len(parsed) > 30 and unknown_fields(parsed) == []
