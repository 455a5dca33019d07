"""What the offline simulator shares with the APIs it imitates: their wire formats and per-key rate limits.

Requests in: OpenAI's chat completions and Gemini's generateContent bodies, read into (model, prompt text,
max_tokens). Replies out: each format's JSON with usage, or its error object. Limits: requests and tokens per
minute per (key, model) over sliding 60 s windows, with OpenAI's x-ratelimit-* headers. The one answer
pipeline (OfflineServer.answer in gen/offline/server.py) uses these for the live routes and the Batch API alike.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import orjson

WINDOW_S = 60.0
GEMINI_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE"}
GEMINI_RE = re.compile(r"^(?:/v1beta|/v1)?/models/([^/:]+):generateContent$")
# What reading a body of the wrong shape raises (orjson.JSONDecodeError is a ValueError): a 400, on the live
# routes and for a batch line alike, never a crashed handler or batch.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)
INTERNAL = "internal error in the offline committee simulator (see its stderr)"  # a bug, said rather than hidden
UNREADABLE = "could not read the request body: not the expected JSON shape (streaming is not simulated)"
MALFORMED = b'{"id": "chatcmpl-sim", "choices": [{"index": 0, "message": {"role": "assi'  # the malformed fault


def tokens(text: str) -> int:
    return len(text) // 4 + 1


def duration(seconds: float) -> str:
    """OpenAI's reset format: "120ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    secs_text = f"{round(secs, 3):g}s"
    return f"{int(minutes)}m{secs_text}" if minutes else secs_text


@dataclass
class Bucket:
    """One (key, model)'s admitted requests in the last minute, as [time, tokens] events."""

    events: deque = field(default_factory=deque)
    tokens: int = 0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.tokens -= self.events.popleft()[1]


class Limiter:
    """Requests and tokens per minute per (key, model), over sliding 60 s windows, as real APIs enforce them.
    A request is charged its prompt on admission and its completion once written (max_tokens is not reserved,
    so one request can never be too large to ever pass)."""

    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.lock = threading.Lock()

    def admit(self, key: str, model: str, cost: int) -> tuple[float | None, dict[str, str], list | None]:
        """(None, headers, event) when admitted, else (seconds to wait, headers, None)."""
        now = time.monotonic()
        with self.lock:
            b = self.buckets.setdefault((key, model), Bucket())
            b.expire(now)
            wait, event = None, None
            if len(b.events) >= self.rpm:
                wait = b.events[len(b.events) - self.rpm][0] + WINDOW_S - now
            elif b.tokens + cost > self.tpm:
                excess, wait = b.tokens + cost - self.tpm, WINDOW_S  # a request over the whole tpm waits a window
                for t, n in b.events:
                    excess -= n
                    if excess <= 0:
                        wait = t + WINDOW_S - now
                        break
            else:
                event = [now, cost]
                b.events.append(event)
                b.tokens += cost
            reset = b.events[0][0] + WINDOW_S - now if b.events else 0.0
            headers = {
                "x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-limit-tokens": str(self.tpm),
                "x-ratelimit-remaining-requests": str(max(0, self.rpm - len(b.events))),
                "x-ratelimit-remaining-tokens": str(max(0, self.tpm - b.tokens)),
                "x-ratelimit-reset-requests": duration(reset), "x-ratelimit-reset-tokens": duration(reset),
            }
            return wait, headers, event

    def settle(self, key: str, model: str, event: list, actual: int) -> None:
        with self.lock:
            b = self.buckets.get((key, model))
            # Still in the window? Events are in time order, so it is iff it is not older than the first.
            if b is not None and b.events and event[0] >= b.events[0][0]:
                b.tokens += actual - event[1]
                event[1] = actual


def bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def openai_text(body: dict) -> tuple[str, int]:
    messages = body["messages"]
    if not isinstance(messages, list) or not messages or body.get("stream"):
        raise ValueError("messages")
    text = "\n\n".join(str(m["content"]) for m in messages)
    return text, int(body.get("max_tokens") or body.get("max_completion_tokens") or 4096)


def read_chat(raw: bytes, gemini_model: str | None) -> tuple[str, str, int]:
    """(model, prompt text, max_tokens) of a chat-completions body, or of a generateContent body for the model
    its URL names; one of SHAPE_ERRORS when the body is not of that shape."""
    body = orjson.loads(raw)
    if gemini_model is not None:
        return gemini_model, *gemini_text(body)
    return str(body["model"]), *openai_text(body)


def gemini_text(body: dict) -> tuple[str, int]:
    parts = [p["text"] for p in (body.get("systemInstruction") or {}).get("parts", [])]
    for content in body["contents"]:
        parts += [p["text"] for p in content["parts"]]
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError("contents")
    config = body.get("generationConfig") or {}
    return "\n\n".join(map(str, parts)), int(config.get("maxOutputTokens") or 8192)


def response(model: str, text: str, completion: int, prompt: int, finish: str, gemini: bool,
             body_sha: str) -> dict:
    """The reply in the wire format; an empty text is Gemini's reply with no candidates (as when it blocks one)."""
    usage_total = prompt + completion
    if gemini:
        candidates = [] if not text else [{"content": {"role": "model", "parts": [{"text": text}]},
                                        "finishReason": "STOP" if finish == "stop" else "MAX_TOKENS", "index": 0}]
        return {"candidates": candidates, "modelVersion": model, "usageMetadata": {
            "promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": usage_total}}
    return {"id": f"chatcmpl-sim-{body_sha[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": usage_total}}


def error_body(status: int, message: str, gemini: bool, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    """An error in the wire format: Gemini's {code, status, message}, OpenAI's {message, type, code}."""
    if gemini:
        return {"error": {"code": status, "status": GEMINI_STATUS.get(status, "UNKNOWN"), "message": message}}
    return {"error": {"message": message, "type": kind, "code": code}}
