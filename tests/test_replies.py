"""Teacher replies of any shape: every reply becomes a response or a ProviderError for that one request.

Wrong types in valid JSON (usage a string, counts "n/a", null objects, text a number, nested lists), Batch API
result lines and control-plane replies, oversized bodies and servers that drip bytes. Property-based tests
(hypothesis) mutate each provider's good reply at random places and feed arbitrary text to the review-score
parser and the graders: nothing but the documented error may come out.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fair.errors import FairError
from fair.grading import (
    extract_number,
    extract_option,
    extract_yes_no,
    grade_number,
    grade_option,
    grade_yes_no,
)
from gen.committee.review import parse_review_score
from gen.teachers import transport
from gen.teachers.batch import BatchRun, Ledger
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherStats
from gen.teachers.config import Teacher
from gen.teachers.providers import (
    ChatRequest,
    ChatResponse,
    FatalError,
    ProviderError,
    TransientError,
    make_provider,
)

REQUEST = ChatRequest((("system", "s"), ("user", "2+2?")), max_tokens=8)
OK = {
    "openai": {"choices": [{"message": {"role": "assistant", "content": "4"}}],
               "usage": {"prompt_tokens": 11, "completion_tokens": 2}},
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [{"text": "hm", "thought": True},
                                                                      {"text": "4"}]}}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 5},
               "promptFeedback": {"blockReason": "SAFETY"}},
    "anthropic": {"content": [{"type": "text", "text": "4"}],
                  "usage": {"input_tokens": 8, "output_tokens": 4, "cache_read_input_tokens": 1}},
}
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def teacher(provider: str = "openai", **kw) -> Teacher:
    return Teacher(name="t1", provider=provider, model="m-1", base_url="http://test/v1", **kw)


def call(t: Teacher, handler, timeout: float = 5.0):
    """One provider call against `handler`: the response or the exception (a hang fails the test)."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            try:
                return await asyncio.wait_for(make_provider(t, http).complete(REQUEST), timeout)
            except (ProviderError, TimeoutError) as e:
                return e

    return asyncio.run(go())


def replying(body: bytes, status: int = 200, headers=None):
    return lambda req: httpx.Response(status, content=body, headers=headers)


def shaped(template):
    """Mostly the template, with junk of any JSON type in its place at random depths."""
    if isinstance(template, dict):
        keep = st.fixed_dictionaries({k: shaped(v) for k, v in template.items()})
    elif isinstance(template, list):
        keep = st.tuples(*(shaped(v) for v in template)).map(list) | st.lists(shaped(template[0]), max_size=3)
    else:
        keep = st.just(template)
    return st.one_of(keep, keep, keep, JSON)


def check(outcome) -> None:
    """A response (with a text, unless refused or truncated) and counts that add up, or a provider error."""
    if isinstance(outcome, ChatResponse):
        assert isinstance(outcome.text, str) and (outcome.text.strip() or outcome.truncated or outcome.refusal)
        assert outcome.refusal is None or (isinstance(outcome.refusal, str) and outcome.refusal and not outcome.text)
        for n in (outcome.input_tokens, outcome.output_tokens, outcome.cached_input_tokens, outcome.cache_write_tokens):
            assert type(n) is int and n >= 0
        assert outcome.cached_input_tokens + outcome.cache_write_tokens <= outcome.input_tokens
    else:
        assert isinstance(outcome, ProviderError), repr(outcome)
        assert "\n" not in str(outcome)


# ---------------------------------------------------------------------------------------------------------
# The three providers' parsers


WRONG_TYPES = {
    "openai": [
        {"choices": [{"message": {"content": "4"}}], "usage": "lots"},
        {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": "n/a", "completion_tokens": 1}},
        {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": [1], "completion_tokens": 1}},
        {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 1.5, "completion_tokens": -1}},
        {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 1e300, "completion_tokens": 1}},
        {"choices": [{"message": {"content": 4}}]}, {"choices": [{"message": None}]}, {"choices": None},
        {"choices": [[{"message": {"content": "4"}}]]}, {"choices": "4"}, {"choices": [{"message": ["4"]}]},
    ],
    "gemini": [
        {"candidates": [{"content": {"parts": [{"text": "4"}]}}], "usageMetadata": "n/a"},
        {"candidates": [{"content": {"parts": [{"text": "4"}]}}], "usageMetadata": {"promptTokenCount": "9"}},
        {"candidates": [{"content": {"parts": [{"text": "4"}]}}],
         "usageMetadata": {"candidatesTokenCount": "3", "thoughtsTokenCount": "5"}},
        {"candidates": [{"content": {"parts": [{"text": 4}]}}]}, {"candidates": [{"content": {"parts": "4"}}]},
        {"candidates": [{"content": {"parts": {"text": "4"}}}]}, {"candidates": [{"content": {"parts": [["4"]]}}]},
        {"candidates": None, "promptFeedback": "blocked"}, {"candidates": [], "promptFeedback": {"blockReason": 7}},
        {"candidates": [None]}, {"candidates": {"content": {}}},
    ],
    "anthropic": [
        {"content": [{"type": "text", "text": "4"}], "usage": "n/a"},
        {"content": [{"type": "text", "text": "4"}], "usage": {"input_tokens": "8", "output_tokens": 4}},
        {"content": [{"type": "text", "text": "4"}], "usage": {"input_tokens": 8, "cache_read_input_tokens": []}},
        {"content": [{"type": "text", "text": 4}]}, {"content": [{"type": "text", "text": ["4"]}]},
        {"content": [{"type": "text", "text": None}]}, {"content": [["4"]]}, {"content": None}, {"content": "4"},
    ],
}


@pytest.mark.parametrize(("provider", "body"), [(p, b) for p, bodies in WRONG_TYPES.items() for b in bodies])
def test_valid_json_with_wrong_types_is_a_provider_error(provider, body):
    outcome = call(teacher(provider), replying(orjson.dumps(body)))
    assert isinstance(outcome, TransientError | FatalError), repr(outcome)
    assert outcome.args[0].startswith("t1: ")


@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
def test_the_good_replies_still_parse(provider):
    outcome = call(teacher(provider), replying(orjson.dumps(OK[provider])))
    assert isinstance(outcome, ChatResponse) and outcome.text.endswith("4")


@pytest.mark.parametrize("provider", ["openai", "gemini", "anthropic"])
def test_any_reply_is_a_response_or_a_provider_error(provider):
    t = teacher(provider)

    @PROPERTY
    @given(body=shaped(OK[provider]) | JSON, status=st.sampled_from([200, 200, 200, 201, 400, 429, 500]))
    def prop(body, status):
        check(call(t, replying(orjson.dumps(body), status)))

    @PROPERTY
    @given(raw=st.binary(max_size=64))
    def prop_bytes(raw):
        check(call(t, replying(raw)))

    prop()
    prop_bytes()


# ---------------------------------------------------------------------------------------------------------
# Size and time


def test_an_oversized_reply_is_cut_off(monkeypatch):
    monkeypatch.setattr(transport, "MAX_REPLY_BYTES", 1000, raising=False)
    big = orjson.dumps({"choices": [{"message": {"content": "x" * 5000}}]})
    outcome = call(teacher(), replying(big))
    assert isinstance(outcome, TransientError) and "1000 bytes" in str(outcome)

    def endless(req):  # no Content-Length, no end: reading stops at the cap
        async def body():
            while True:
                yield b"x" * 100
                await asyncio.sleep(0)
        return httpx.Response(200, content=body())

    for handler in (endless, replying(big, 500)):
        outcome = call(teacher(), handler)
        assert isinstance(outcome, TransientError) and "1000 bytes" in str(outcome)


@pytest.mark.parametrize("status", [200, 503])
def test_a_server_that_drips_bytes_meets_one_deadline_per_attempt(status):
    def drip(req):
        async def body():
            for _ in range(10_000):
                yield b" "
                await asyncio.sleep(0.02)
        return httpx.Response(status, content=body())

    started = time.monotonic()
    outcome = call(teacher(timeout_s=0.3), drip, timeout=5.0)
    assert isinstance(outcome, TransientError), repr(outcome)
    assert "0.3 s" in str(outcome) and time.monotonic() - started < 3


# ---------------------------------------------------------------------------------------------------------
# The Batch API: result lines and control-plane replies


class Lines:
    """A BatchAPI whose result file holds the given lines."""

    def __init__(self, t: Teacher, lines: list[str]):
        self.teacher, self.provider, self.got = t, make_provider(t, httpx.AsyncClient()), lines

    async def lines(self, file_id: str):
        for line in self.got:
            yield line


LINE = st.fixed_dictionaries({"custom_id": st.just("k1") | JSON, "response": shaped(
    {"status_code": 200, "body": OK["openai"]})}) | JSON


def test_any_batch_result_line_is_answered_or_left_to_the_live_path(tmp_path):
    t = teacher(batch_api=True)
    files = iter(range(10**6))

    @settings(PROPERTY, max_examples=60)  # each example commits to SQLite twice: a few are enough here
    @given(lines=st.lists(LINE.map(lambda x: orjson.dumps(x).decode()) | st.text(max_size=20), max_size=4))
    def prop(lines):
        run = BatchRun([t], cache, httpx.AsyncClient(), {"t1": TeacherStats("t1")}, poll_s=0.01)
        input_file = f"file-{next(files)}"
        Ledger(cache.db).uploaded(input_file, "t1", {"k1"})
        asyncio.run(run.collect(Lines(t, lines), input_file, {"id": "b", "status": "completed", "output_file_id": "o"}))
        assert run.report.answered + run.report.fell_back == 1

    with ResponseCache(tmp_path / "c.sqlite") as cache:
        prop()


@pytest.mark.parametrize("replies", [
    {"files": {}},  # an upload without an id
    {"files": {"id": None}},
    {"files": {"id": "f1"}, "batches": {"status": "validating"}},  # a batch without an id
    {"files": {"id": "f1"}, "batches": {"id": "b1", "status": "in_progress"}, "batches/b1": {"status": [],
                                                                                             "request_counts": "x"}},
    {"files": {"id": "f1"}, "batches": {"id": "b1", "status": "failed"}, "batches/b1": {
        "id": "b1", "status": "failed", "errors": ["bad"], "output_file_id": 7}},
    {"files": {"id": "f1"}, "batches": {"id": "b1", "status": "failed"}, "batches/b1": {
        "id": "b1", "status": "failed", "errors": {"data": "bad"}}},
])
def test_malformed_batch_api_replies_stop_the_run_with_one_clear_error(tmp_path, replies):
    t = teacher(batch_api=True, max_retries=0)

    def handler(req: httpx.Request) -> httpx.Response:
        path = req.url.path.removeprefix("/v1/")
        return httpx.Response(200, json=replies.get(path, {"id": "x", "status": "completed"}))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with ResponseCache(tmp_path / "c.sqlite") as cache:
                run = BatchRun([t], cache, http, {"t1": TeacherStats("t1")}, poll_s=0.01)
                try:
                    return await asyncio.wait_for(run.run([(t, REQUEST)]), 5)
                except FairError as e:
                    return e

    outcome = asyncio.run(go())
    assert isinstance(outcome, FairError) or outcome.fell_back == 1, repr(outcome)


# ---------------------------------------------------------------------------------------------------------
# Review scores and graders: any text


@PROPERTY
@given(st.text(max_size=300) | st.none())
def test_any_review_reply_gives_a_score_from_1_to_5_or_none(text):
    score = parse_review_score(text)
    assert score is None or (isinstance(score, float) and 1 <= score <= 5 and math.isfinite(score))


REPLY_TEXT = st.text(max_size=200) | st.lists(st.sampled_from(
    ["The answer is", "Answer:", "####", "\\boxed{", "}", "\\frac{3}{4}", "1,000", "-", "3/0", "$", "5", "0.5",
     "9" * 60, ".", "\n", " ", "yes", "no", "not", "true", "false", "True or False", "(B)", "option C", "A.",
     '"alpha"', "\u0663", "\U0001d7d3", "=", "%"]), max_size=30).map("".join)


@PROPERTY
@given(REPLY_TEXT)
def test_the_graders_read_any_text_without_raising(text):
    number = extract_number(text)
    assert number is None or isinstance(number, str)
    assert grade_number(text, "145").correct in (True, False, None)
    assert extract_yes_no(text) in ("yes", "no", None)
    assert grade_yes_no(text, "true").correct in (True, False, None)
    options = ("alpha", "beta gamma", "delta", "alpha beta")
    assert extract_option(text, options) in (*"ABCD", None)
    assert grade_option(text, options, "B").correct in (True, False, None)


# ---------------------------------------------------------------------------------------------------------
# A whole committee run against a server whose replies have the wrong types


def test_a_committee_run_records_wrong_typed_replies_and_finishes(tmp_path, data_dir):
    import http.server
    import threading

    from fair.jsonl import read_jsonl
    from gen.committee.run import CommitteeConfig, run_committee
    from tests.conftest import import_seed_mistakes

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers["content-length"]))
            body = orjson.dumps({"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": "n/a"}})
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        teachers = [Teacher(name=n, provider="openai", model="m", base_url=url, rpm=60_000, max_retries=1,
                            retry_backoff_s=0.001) for n in ("a", "b")]
        (tmp_path / "seed").mkdir()
        config = CommitteeConfig(task="svamp", mistakes=str(import_seed_mistakes(tmp_path / "seed", data_dir, 2)),
                                 out=str(tmp_path / "committee.jsonl"), limit=2, progress=False)
        asyncio.run(run_committee(config, teachers))
    finally:
        server.shutdown()
    records = list(read_jsonl(config.out_path))
    assert len(records) == 2
    errors = [f["error"] for r in records for f in r["feedback"].values()]
    assert errors and all("malformed reply: prompt_tokens is not a token count" in e for e in errors), errors
