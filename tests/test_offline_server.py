"""The offline committee (`fair teachers serve`): a simulator of teacher APIs, driven in-process over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from fair.errors import FairError
from fair.records import StudentAnswer
from fair.tasks import get_task
from gen.committee.prompts import PROMPT_SETS
from simulator.api import duration
from simulator.server import OfflineServer

EXACT = {"p_wrong": 0, "p_sloppy": 0, "review_noise": 0, "p_unparseable_review": 0, "p_alt_score_format": 0}
PERSONAS = {"sim-careful": EXACT, "sim-harsh": EXACT | {"review_bias": -1.2}}
SCORE_RE = re.compile(r"\[(\d)\]\s*$")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(data_dir):
    with OfflineServer(port=0, data_dir=data_dir, personas=PERSONAS) as s:
        yield s


@pytest.fixture(scope="module")
def answer(data_dir) -> StudentAnswer:
    ex = get_task("svamp").load("train", data_dir)[0]
    return StudentAnswer(
        id=ex.id, index=ex.index, task="svamp", split="train", question=ex.question, gold=ex.gold,
        prediction="290 - 87 = 203.\nThe answer is 203.", extracted="203", correct=False, prompt_tokens=1,
        generated_tokens=1, finish_reason="stop", solution=ex.solution,
    )


def openai(url: str, messages, model: str = "sim-careful", **kw) -> httpx.Response:
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in messages], "temperature": 0,
            "max_tokens": 512}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5, **kw)


def gemini(url: str, messages, model: str = "sim-careful", **kw) -> httpx.Response:
    system = [c for r, c in messages if r == "system"]
    body = {"contents": [{"role": "user", "parts": [{"text": c}]} for r, c in messages if r != "system"],
            "generationConfig": {"temperature": 0, "topP": 1, "maxOutputTokens": 512}}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system[0]}]}
    return httpx.post(f"{url}/v1beta/models/{model}:generateContent", json=body, timeout=5, **kw)


def content(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    data = r.json()
    if "choices" in data:
        return data["choices"][0]["message"]["content"]
    return data["candidates"][0]["content"]["parts"][0]["text"]


def test_rationale_both_formats(server, answer):
    task = get_task("svamp")
    for style in ("fair", "paper"):
        messages = PROMPT_SETS[style].rationale(task, answer)
        r = openai(server.url, messages)
        assert content(r).endswith(f"The answer is {answer.gold}.")
        assert r.headers["x-fair-simulator"] == "1"
        assert int(r.headers["x-ratelimit-remaining-requests"]) < int(r.headers["x-ratelimit-limit-requests"])
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        usage = r.json()["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        g = gemini(server.url, messages)
        assert content(g).endswith(f"The answer is {answer.gold}.")
        assert g.json()["candidates"][0]["finishReason"] == "STOP"
        assert g.json()["usageMetadata"]["totalTokenCount"] > 0


def test_review_scores_follow_correctness(server, answer):
    task = get_task("svamp")
    right = content(openai(server.url, PROMPT_SETS["fair"].rationale(task, answer)))
    wrong = right.replace(answer.gold, str(int(answer.gold) + 7))
    for style in ("fair", "paper"):
        scores = {}
        for name, rationale in (("right", right), ("wrong", wrong)):
            for model in ("sim-careful", "sim-harsh"):
                reply = content(openai(server.url, PROMPT_SETS[style].review(task, answer, rationale), model))
                scores[name, model] = int(SCORE_RE.search(reply).group(1))
        assert scores["right", "sim-careful"] >= 4 and scores["wrong", "sim-careful"] <= 2, scores
        assert scores["right", "sim-harsh"] < scores["right", "sim-careful"], scores


def test_feedback_names_the_gold(server, answer):
    for style in ("fair", "paper"):
        reply = content(gemini(server.url, PROMPT_SETS[style].feedback(get_task("svamp"), answer)))
        assert answer.gold in reply and "203" in reply  # the correct answer and the student's


def test_identical_bodies_get_identical_replies(server, answer):
    messages = PROMPT_SETS["fair"].rationale(get_task("svamp"), answer)
    first = openai(server.url, messages, "sim-sloppy").json()
    assert openai(server.url, messages, "sim-sloppy").json()["choices"] == first["choices"]
    other = openai(server.url, [("user", "What is 2 + 2? Answer with a number.")])
    assert re.search(r"The answer is \d+\.$", content(other))  # unknown question: generic but gradeable


def test_offline_committee_config(server, answer):
    from gen.teachers.config import load_committee

    teachers = load_committee("offline")
    assert {t.provider for t in teachers} == {"openai", "gemini", "anthropic"} and not any(t.api_key_env for t in teachers)
    assert {t.model for t in teachers} <= set(server.personas)
    # `load_committee(..., base_url_override)` gives every teacher one base URL: Gemini routes work under any prefix
    messages = PROMPT_SETS["fair"].rationale(get_task("svamp"), answer)
    for prefix in ("/v1", ""):
        body = {"contents": [{"role": "user", "parts": [{"text": messages[1][1]}]}]}
        r = httpx.post(f"{server.url}{prefix}/models/sim-harsh:generateContent", json=body, timeout=5)
        assert content(r).endswith(f"The answer is {answer.gold}.")


def test_unknown_model_and_route(server):
    r = openai(server.url, [("user", "hi")], model="gpt-5")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert gemini(server.url, [("user", "hi")], model="nope").json()["error"]["status"] == "NOT_FOUND"
    assert httpx.get(f"{server.url}/health").json() == {"ok": True}
    ids = {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert {"sim-careful", "sim-sloppy", "sim-harsh"} <= ids


def test_rate_limit_429(data_dir):
    with OfflineServer(port=0, rpm=3, data_dir=data_dir) as s:
        statuses = [openai(s.url, [("user", f"question {i}")]).status_code for i in range(3)]
        r = openai(s.url, [("user", "question 3")])
        assert statuses == [200, 200, 200] and r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60 and int(r.headers["retry-after-ms"]) > 0
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        g = gemini(s.url, [("user", "q")])  # the same bucket: (anonymous, sim-careful)
        assert g.status_code == 429 and g.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        other_key = openai(s.url, [("user", "q")], headers={"authorization": "Bearer another"})
        assert other_key.status_code == 200  # limits are per key
        assert s.counters["rate_limited"] == 2
    with OfflineServer(port=0, tpm=60, data_dir=data_dir) as s:  # a 51-token prompt fits, its reply tips it over
        assert [openai(s.url, [("user", f"q{i} " + "x" * 200)]).status_code for i in range(2)] == [200, 429]


@pytest.mark.parametrize("fault", ["5xx", "hang", "malformed", "empty"])
def test_each_fault_at_rate_one(data_dir, fault):
    with OfflineServer(port=0, data_dir=data_dir, hang_s=0.5, **{f"p_{fault}": 1.0}) as s:
        if fault == "hang":
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{s.url}/chat/completions", timeout=0.2,
                           json={"model": "sim-careful", "messages": [{"role": "user", "content": "hi"}]})
            return
        r, g = openai(s.url, [("user", "hi")]), gemini(s.url, [("user", "hi")])
        if fault == "5xx":
            assert r.status_code in (500, 503) and g.status_code in (500, 503)
            assert r.json()["error"]["type"] == "server_error"
        elif fault == "malformed":
            assert r.status_code == 200
            with pytest.raises(ValueError):
                orjson.loads(r.content)
        else:
            assert r.json()["choices"][0]["message"]["content"] == "" and g.json()["candidates"] == []
        assert s.counters[f"fault_{fault}"] == 2


def test_retries_can_succeed_deterministically(data_dir):
    def statuses(seed: int) -> list[int]:
        with OfflineServer(port=0, data_dir=data_dir, p_5xx=0.5, seed=seed) as s:
            return [openai(s.url, [("user", "same body")]).status_code for _ in range(12)]

    first = statuses(1)
    assert 200 in first and {500, 503} & set(first)  # the same body fails, then a later attempt succeeds
    assert statuses(1) == first


def test_log_has_no_secrets(data_dir, tmp_path, answer):
    log = tmp_path / "requests.jsonl"
    with OfflineServer(port=0, rpm=2, data_dir=data_dir, log_path=log) as s:
        auth = {"authorization": "Bearer sk-test-SECRET123"}
        messages = PROMPT_SETS["fair"].rationale(get_task("svamp"), answer)
        assert openai(s.url, messages, headers=auth).status_code == 200
        assert openai(s.url, [("user", "x")], headers=auth).status_code == 200
        assert openai(s.url, [("user", "y")], headers=auth).status_code == 429
        assert gemini(s.url, [("user", "z")], params={"key": "SECRET123"}).status_code == 200
    text = log.read_text()
    assert "SECRET123" not in text
    records = [orjson.loads(line) for line in text.splitlines()]
    assert [r["status"] for r in records] == [200, 200, 429, 200]
    assert records[0]["kind"] == "rationale" and len(records[0]["body_sha256"]) == 64
    assert records[1]["kind"] == "other" and records[0]["completion_tokens"] > 0


def test_config_errors(tmp_path):
    with pytest.raises(FairError, match="unknown setting"):
        OfflineServer(personas={"sim-careful": {"p_wrongg": 0.1}})
    with pytest.raises(FairError, match="together at most 1"):
        OfflineServer(p_5xx=0.6, p_empty=0.6)
    assert duration(0.12) == "120ms" and duration(1) == "1s" and duration(360) == "6m0s"


def test_cli_serves_until_sigterm(tmp_path, data_dir):
    config = tmp_path / "offline.yaml"
    config.write_text("rpm: 100\npersonas:\n  sim-new:\n    p_wrong: 0\n")
    port_file = tmp_path / "port"
    env = os.environ | {"FAIR_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "--port", "0", "--port-file", str(port_file),
         "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"listening on (http://\S+)", line).group(1)
        assert url.endswith(f":{port_file.read_text().strip()}")
        assert content(openai(url, [("user", "hi")], model="sim-new"))
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "1 completed" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text("rpms: 5\n")
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "--config", str(bad)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2 and "unknown setting" in done.stderr


def anthropic(url: str, messages, model: str = "sim-careful", **kw) -> httpx.Response:
    system = [c for r, c in messages if r == "system"]
    body = {"model": model, "max_tokens": 512, "messages": [{"role": r, "content": c} for r, c in messages
                                                            if r != "system"], **({"system": system[0]} if system else {})}
    return httpx.post(f"{url}/v1/messages", json=body, timeout=5, **kw)


def test_anthropic_messages_route(server, answer):
    messages = PROMPT_SETS["fair"].rationale(get_task("svamp"), answer)
    r = anthropic(server.url, messages, headers={"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["x-fair-simulator"] == "1"
    data = r.json()
    assert data["type"] == "message" and data["role"] == "assistant" and data["stop_reason"] == "end_turn"
    assert data["content"][0]["type"] == "text" and data["content"][0]["text"].endswith(f"The answer is {answer.gold}.")
    assert {"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"} <= set(
        data["usage"])
    for budget in ("requests", "tokens", "input-tokens"):  # as admitted: its output is not written yet
        assert int(r.headers[f"anthropic-ratelimit-{budget}-remaining"]) < int(
            r.headers[f"anthropic-ratelimit-{budget}-limit"])
    missing = anthropic(server.url, [("user", "hi")], model="claude-x")
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "not_found_error"
    no_max = httpx.post(f"{server.url}/v1/messages", json={"model": "sim-careful", "messages": []}, timeout=5)
    assert no_max.status_code == 400 and no_max.json()["error"]["type"] == "invalid_request_error"


def sse_events(r: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event."""
    out = []
    for block in r.text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((fields.get("event"), fields["data"]))
    return out


def test_streams_on_the_wire(server):
    body = {"model": "sim-careful", "max_tokens": 512, "messages": [{"role": "user", "content": "What is 1 + 1?"}],
            "stream": True}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body | {"stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == (None, "[DONE]") and orjson.loads(events[-2][1])["usage"]["completion_tokens"] > 0
    names = [name for name, _ in sse_events(httpx.post(f"{server.url}/v1/messages", json=body))]
    assert names[:3] == ["message_start", "content_block_start", "ping"] and set(names[3:-3]) == {
        "content_block_delta"} and names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    gemini_body = {"contents": [{"role": "user", "parts": [{"text": "What is 1 + 1?"}]}]}
    url = f"{server.url}/v1beta/models/sim-careful:streamGenerateContent"
    chunks = [orjson.loads(data) for _, data in sse_events(httpx.post(url, params={"alt": "sse"}, json=gemini_body))]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and "usageMetadata" in chunks[-1]
    assert httpx.post(url, json=gemini_body).status_code == 400  # only alt=sse is simulated


def test_reply_outcomes_are_drawn_per_body_and_counted(data_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    with OfflineServer(port=0, data_dir=data_dir, p_refusal=0.3, p_truncate=0.3, seed=4, log_path=log) as s:
        first = [openai(s.url, [("user", f"question {i}")]).json()["choices"][0] for i in range(20)]
        again = [openai(s.url, [("user", f"question {i}")]).json()["choices"][0] for i in range(20)]
        assert first == again  # drawn per body: a re-sent request is refused or cut again
        refused = sum(c["message"]["refusal"] is not None for c in first)
        cut = sum(c["finish_reason"] == "length" for c in first)
        assert refused and cut and refused + cut < 20
        assert (s.counters["refusal"], s.counters["truncate"], s.counters["completed"]) == (2 * refused, 2 * cut, 40)
        assert f"refusal {2 * refused}, thinking 0, truncate {2 * cut}" in s.summary()
    outcomes = [orjson.loads(line).get("outcome") for line in log.read_text().splitlines()]
    assert outcomes.count("refusal") == 2 * refused and outcomes.count("truncate") == 2 * cut


def test_quota_after_n_requests_of_a_key(data_dir):
    with OfflineServer(port=0, data_dir=data_dir, quota_after=2) as s:
        a = {"authorization": "Bearer key-a"}
        assert [openai(s.url, [("user", f"q{i}")], headers=a).status_code for i in range(2)] == [200, 200]
        out = openai(s.url, [("user", "q2")], headers=a)
        assert out.status_code == 429 and out.json()["error"]["code"] == "insufficient_quota"
        assert "retry-after" not in out.headers  # waiting does not help
        assert openai(s.url, [("user", "q2")], headers={"authorization": "Bearer key-b"}).status_code == 200
        credit = anthropic(s.url, [("user", "q3")], headers={"x-api-key": "key-a"})
        assert credit.status_code == 400 and "credit balance is too low" in credit.json()["error"]["message"]
        assert s.counters["quota"] == 2 and s.counters["rate_limited"] == 0


def test_failure_settings_from_flags_and_config(tmp_path):
    """The simulator's settings go the one config path (fair/config.py); its defaults are OfflineServer's."""
    import inspect

    from fair.config import build_config, config_parser
    from simulator.cli import SimulatorConfig

    config = tmp_path / "sim.yaml"
    config.write_text("p_refusal: 0.1\ncache_min_tokens: 0\n")
    argv = ["--config", str(config), "--p-truncate", "0.2", "--quota-after", "5", "latency_ms=[1, 2]"]
    settings = build_config(SimulatorConfig, config_parser(SimulatorConfig, "sim", None).parse_args(argv))
    assert (settings.p_refusal, settings.cache_min_tokens, settings.p_truncate, settings.quota_after,
            settings.latency_ms) == (0.1, 0, 0.2, 5, (1.0, 2.0))
    server = settings.server()
    assert (server.outcome_rates["refusal"], server.quota_after, server.latency_ms) == (0.1, 5, (1.0, 2.0))
    defaults = {n: p.default for n, p in inspect.signature(OfflineServer).parameters.items()} | {"log": None}
    # the port differs on purpose: the command serves a known one, code a free one
    differ = {n for n in defaults if n not in ("log_path", "port") and getattr(SimulatorConfig(), n) != defaults[n]}
    assert not differ
    with pytest.raises(FairError, match="reply rates"):
        SimulatorConfig(p_refusal=0.7, p_thinking=0.7).server()
