"""Streamed replies: an Answer as each API's server-sent events (the non-streamed bodies: simulator/formats.py).

    openai     chat.completion.chunk objects: the role first, the text in pieces, the finish_reason, then (with
               stream_options.include_usage) a last chunk with no choices and the usage, and `data: [DONE]`
    anthropic  message_start, content_block_start, ping, content_block_delta..., content_block_stop, message_delta
               (stop_reason and the usage), message_stop; each with its `event:` line
    gemini     (:streamGenerateContent?alt=sse) GenerateContentResponse chunks; the last has the finishReason and
               the usage
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from simulator.formats import (
    ANTHROPIC_STOP,
    Answer,
    Format,
    anthropic_body,
    anthropic_usage,
    gemini_body,
    openai_finish,
    openai_usage,
)

PIECE = 32  # characters of text per event


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return head.encode() + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def events(fmt: Format, a: Answer, include_usage: bool) -> list[bytes]:
    if fmt == "anthropic":
        return anthropic_events(a)
    if fmt == "gemini":
        return gemini_events(a)
    return openai_events(a, include_usage)


def openai_events(a: Answer, include_usage: bool) -> list[bytes]:
    """A refusal streams in delta.refusal instead of delta.content."""
    base = {"id": f"chatcmpl-sim-{a.id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": a.model, "system_fingerprint": "fp_simulator", "service_tier": "default"}
    usage = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return sse(base | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                   | usage)

    field = "refusal" if a.finish in ("refusal", "blocked") else "content"
    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out += [chunk({field: piece}) for piece in pieces(a.text)]
    out.append(chunk({}, openai_finish(a)))
    if include_usage:
        out.append(sse(base | {"choices": [], "usage": openai_usage(a)}))
    return [*out, sse(b"[DONE]")]


def anthropic_events(a: Answer) -> list[bytes]:
    usage = anthropic_usage(a)
    start = anthropic_body(a) | {"content": [], "stop_reason": None, "usage": usage | {"output_tokens": 1}}
    out = [sse({"type": "message_start", "message": start}, "message_start")]
    if a.text:
        out.append(sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                       "content_block_start"))
        out.append(sse({"type": "ping"}, "ping"))
        out += [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                    "content_block_delta") for piece in pieces(a.text)]
        out.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    delta_usage = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                         "output_tokens")}
    out.append(sse({"type": "message_delta", "delta": {"stop_reason": ANTHROPIC_STOP[a.finish],
                                                        "stop_sequence": None}, "usage": delta_usage},
                   "message_delta"))
    return [*out, sse({"type": "message_stop"}, "message_stop")]


def gemini_events(a: Answer) -> list[bytes]:
    """The text in pieces, the last piece with the whole reply's finishReason and usage; a reply with no text
    (refused, blocked, spent thinking, empty) is one chunk, its whole body."""
    last = gemini_body(a)
    if not a.text:
        return [sse(last)]
    head = {"modelVersion": a.model, "responseId": last["responseId"]}
    *early, final = pieces(a.text)
    out = [sse({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}], **head})
           for piece in early]
    candidate = last["candidates"][0]
    final_chunk = last | {"candidates": [candidate | {"content": {"role": "model", "parts": [{"text": final}]}}]}
    return [*out, sse(final_chunk)]
