"""The wire formats the offline simulator speaks: requests read in, replies, errors and rate-limit headers out.

    openai     POST /v1/chat/completions                       key: Authorization: Bearer KEY
    gemini     POST /v1beta/models/{model}:generateContent      key: x-goog-api-key or ?key=
    anthropic  POST /v1/messages                               key: x-api-key (anthropic-version is not checked)

A request is read into a `Chat` (model, prompt text, max_tokens, streaming, cache breakpoints); the answer
pipeline (simulator/simulator.py) writes an `Answer`, which `body` renders as each API's JSON, usage included:
OpenAI's prompt_tokens counts cached tokens (prompt_tokens_details.cached_tokens), Gemini's promptTokenCount too
(cachedContentTokenCount), while Anthropic's input_tokens leaves out cache reads and writes. Refusals, thinking
that spent the whole budget and truncations come out as each API sends them (see `body`); streams are in
simulator/stream.py. The shapes follow the official SDKs' types (openai, anthropic, google-genai).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from simulator.api import Window, duration

Format = Literal["openai", "gemini", "anthropic"]
# stop: a whole reply; length: cut at max_tokens; refusal: the model declined (Gemini: SAFETY with no content);
# blocked: Gemini's prompt block (promptFeedback, no candidates); thinking: the budget went on thoughts, no text
Finish = Literal["stop", "length", "refusal", "blocked", "thinking"]

GEMINI_RE = re.compile(r"^(?:/v1beta|/v1)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
GEMINI_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
ANTHROPIC_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                  404: "not_found_error", 408: "invalid_request_error", 413: "request_too_large",
                  429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
# What reading a body of the wrong shape raises (orjson.JSONDecodeError is a ValueError): a 400, on the live
# routes and for a batch line alike, never a crashed handler or batch.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)
INTERNAL = "internal error in the offline committee simulator (see its stderr)"  # a bug, said rather than hidden
UNREADABLE = "could not read the request body: not the expected JSON shape"
MALFORMED = b'{"id": "chatcmpl-sim", "choices": [{"index": 0, "message": {"role": "assi'  # the malformed fault
REFUSAL = "I'm sorry, but I can't help with that request. (simulated refusal)"
SAFETY = [{"category": c, "probability": "HIGH" if c.endswith("DANGEROUS_CONTENT") else "NEGLIGIBLE",
           **({"blocked": True} if c.endswith("DANGEROUS_CONTENT") else {})}
          for c in ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_HARASSMENT",
                    "HARM_CATEGORY_SEXUALLY_EXPLICIT")]


@dataclass(frozen=True)
class Chat:
    """A chat request in any format: what the answer pipeline needs of it."""

    model: str
    text: str  # every message's text, system prompt first, joined by blank lines
    max_tokens: int
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage: a last chunk with the usage
    breakpoints: tuple[int, ...] | None = None  # Anthropic cache_control: where cached prefixes end; None: automatic
    boundaries: tuple[int, ...] = ()  # Anthropic: where each block ends (a cache lookup may stop at any of them)
    thinking_budget: int = 0  # Gemini thinkingConfig.thinkingBudget (-1: the model decides); 0: no thoughts
    # Above 0 the reply is a new sample at each arrival of the body (simulator/simulator.py). A body that sets none
    # is answered as at 0, unlike the real APIs' default of 1: clients and tests that say nothing stay deterministic.
    temperature: float = 0.0


@dataclass(frozen=True)
class Answer:
    """The simulator's reply to one Chat, before any wire format."""

    id: str
    model: str
    text: str
    finish: Finish
    prompt_tokens: int  # every prompt token, cache reads and writes included
    completion_tokens: int  # billed output: visible and thinking tokens
    thoughts_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)


# --- requests ----------------------------------------------------------------------------------------------

def read_chat(raw: bytes, fmt: Format, gemini_model: str | None = None, gemini_stream: bool = False) -> Chat:
    """The Chat of a body in `fmt` (Gemini's model, and whether it streams, come from the URL); one of
    SHAPE_ERRORS when the body is not of that shape."""
    body = orjson.loads(raw)
    if fmt == "gemini":
        return gemini_chat(body, str(gemini_model), gemini_stream)
    if fmt == "anthropic":
        return anthropic_chat(body)
    return openai_chat(body)


def message_text(content: Any) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not all(isinstance(p["text"], str) for p in content):
        raise ValueError("content")
    return "".join(p["text"] for p in content)


def openai_chat(body: dict) -> Chat:
    messages = body["messages"]
    if not isinstance(messages, list) or not messages or not isinstance(body["model"], str):
        raise ValueError("messages")
    text = "\n\n".join(message_text(m["content"]) for m in messages)
    stream = body.get("stream") is True
    usage = stream and (body.get("stream_options") or {}).get("include_usage") is True
    return Chat(body["model"], text, int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096),
                stream, usage, temperature=float(body.get("temperature") or 0))


def proto(message: dict, name: str) -> Any:
    """A Gemini field by its JSON name (maxOutputTokens) or, as the API also accepts and google-genai sends some,
    its proto name (max_output_tokens)."""
    value = message.get(name)
    return value if value is not None else message.get(re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), name))


def gemini_chat(body: dict, model: str, stream: bool) -> Chat:
    parts = [p["text"] for p in (proto(body, "systemInstruction") or {}).get("parts", [])]
    for content in body["contents"]:
        parts += [p["text"] for p in content["parts"]]
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError("contents")
    config = proto(body, "generationConfig") or {}
    budget = int(proto(proto(config, "thinkingConfig") or {}, "thinkingBudget") or 0)
    return Chat(model, "\n\n".join(parts), int(proto(config, "maxOutputTokens") or 8192), stream,
                thinking_budget=budget, temperature=float(proto(config, "temperature") or 0))


def anthropic_chat(body: dict) -> Chat:
    """Anthropic's system (a string or text blocks) and messages; a block with cache_control ends a cached
    prefix, and a top-level cache_control marks the last block."""
    system = body.get("system") or []
    blocks = [{"type": "text", "text": system}, None] if isinstance(system, str) else [*system, None]
    if not isinstance(body["messages"], list) or not body["messages"] or not isinstance(body["model"], str):
        raise ValueError("messages")
    for m in body["messages"]:
        content = m["content"]
        blocks += [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks.append(None)  # a message (or the system prompt) ends: the next one starts after a blank line
    text, breakpoints, boundaries, joined = "", [], [], False
    for block in blocks:
        if block is None:
            joined = False
            continue
        if not isinstance(block["text"], str):
            raise ValueError("text")
        text += ("" if joined or not text else "\n\n") + block["text"]
        joined = True
        boundaries.append(len(text))
        if block.get("cache_control"):
            breakpoints.append(len(text))
    if body.get("cache_control"):  # top-level: a marker on the last block
        breakpoints.append(len(text))
    return Chat(body["model"], text, int(body["max_tokens"]), body.get("stream") is True, False, tuple(breakpoints),
                tuple(boundaries), temperature=float(body.get("temperature") or 0))


# --- replies -----------------------------------------------------------------------------------------------

def body(fmt: Format, a: Answer) -> dict:
    return {"openai": openai_body, "gemini": gemini_body, "anthropic": anthropic_body}[fmt](a)


def openai_usage(a: Answer) -> dict:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": a.thoughts_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def openai_finish(a: Answer) -> str:
    return "length" if a.finish in ("length", "thinking") else "stop"


def openai_body(a: Answer) -> dict:
    """A refusal is message.refusal with null content; spent thinking is empty content, finish_reason length."""
    refused = a.finish in ("refusal", "blocked")
    message = {"role": "assistant", "content": None if refused else a.text,
               "refusal": a.text if refused else None, "annotations": []}
    return {"id": f"chatcmpl-sim-{a.id}", "object": "chat.completion", "created": int(time.time()),
            "model": a.model, "system_fingerprint": "fp_simulator", "service_tier": "default",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": openai_finish(a)}],
            "usage": openai_usage(a)}


def gemini_usage(a: Answer) -> dict:
    visible = a.completion_tokens - a.thoughts_tokens
    usage = {"promptTokenCount": a.prompt_tokens, **({"candidatesTokenCount": visible} if visible else {}),
             "totalTokenCount": a.prompt_tokens + a.completion_tokens,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": a.prompt_tokens}]}
    if a.cached_tokens:
        usage["cachedContentTokenCount"] = a.cached_tokens
    if a.thoughts_tokens:
        usage["thoughtsTokenCount"] = a.thoughts_tokens
    return usage


def gemini_candidate(a: Answer) -> dict:
    if a.finish == "refusal":  # a blocked reply: no content at all
        return {"finishReason": "SAFETY", "index": 0, "safetyRatings": SAFETY}
    parts = {"parts": [{"text": a.text}]} if a.text else {}  # spent thinking: a content with no parts
    return {"content": {"role": "model", **parts}, "finishReason": "STOP" if a.finish == "stop" else "MAX_TOKENS",
            "index": 0}


def gemini_body(a: Answer) -> dict:
    """Gemini: a refusal is finishReason SAFETY with no content, or (blocked) promptFeedback and no candidates;
    an empty reply (the empty fault) has no candidates either."""
    reply: dict[str, Any] = {}
    if a.finish == "blocked":
        reply["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": SAFETY}
    elif a.text or a.finish != "stop":
        reply["candidates"] = [gemini_candidate(a)]
    else:
        reply["candidates"] = []
    return {**reply, "usageMetadata": gemini_usage(a), "modelVersion": a.model, "responseId": f"sim-{a.id}"}


ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "thinking": "max_tokens", "refusal": "refusal",
                  "blocked": "refusal"}


def anthropic_usage(a: Answer) -> dict:
    uncached = a.prompt_tokens - a.cached_tokens - a.cache_write_tokens
    return {"input_tokens": uncached, "cache_creation_input_tokens": a.cache_write_tokens,
            "cache_read_input_tokens": a.cached_tokens, "output_tokens": a.completion_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": a.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard"}


def anthropic_body(a: Answer) -> dict:
    """Anthropic: stop_reason refusal (with what was written before it), max_tokens for a cut reply."""
    return {"id": f"msg_sim{a.id}", "type": "message", "role": "assistant", "model": a.model,
            "content": [{"type": "text", "text": a.text}] if a.text else [],
            "stop_reason": ANTHROPIC_STOP[a.finish], "stop_sequence": None, "usage": anthropic_usage(a)}


# --- errors and headers ------------------------------------------------------------------------------------

def error_body(fmt: Format, status: int, message: str, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    """An error in the wire format: Gemini's {code, message, status}, Anthropic's {type: error, error: {type,
    message}}, OpenAI's {message, type, param, code}."""
    if fmt == "gemini":
        return {"error": {"code": status, "message": message, "status": GEMINI_STATUS.get(status, "UNKNOWN")}}
    if fmt == "anthropic":
        return {"type": "error", "error": {"type": ANTHROPIC_TYPE.get(status, "api_error"), "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def limit_headers(fmt: Format, w: Window) -> dict[str, str]:
    """A reply's rate-limit headers: OpenAI's x-ratelimit-*, Anthropic's anthropic-ratelimit-* (the simulator
    limits input and output tokens together, so the input and output budgets are each the whole tpm, each
    reduced by its own use); Gemini sends none."""
    if fmt == "openai":
        return {"x-ratelimit-limit-requests": str(w.rpm), "x-ratelimit-limit-tokens": str(w.tpm),
                "x-ratelimit-remaining-requests": str(w.remaining_requests),
                "x-ratelimit-remaining-tokens": str(w.remaining_tokens),
                "x-ratelimit-reset-requests": duration(w.reset_s), "x-ratelimit-reset-tokens": duration(w.reset_s)}
    if fmt == "gemini":
        return {}
    reset = (datetime.now(UTC) + timedelta(seconds=w.reset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    budgets = {"requests": (w.rpm, w.remaining_requests), "tokens": (w.tpm, w.remaining_tokens),
               "input-tokens": (w.tpm, max(0, w.tpm - w.input_tokens)),
               "output-tokens": (w.tpm, max(0, w.tpm - w.output_tokens))}
    headers = {}
    for name, (limit, remaining) in budgets.items():
        headers |= {f"anthropic-ratelimit-{name}-limit": str(limit),
                    f"anthropic-ratelimit-{name}-remaining": str(remaining),
                    f"anthropic-ratelimit-{name}-reset": reset}
    return headers
