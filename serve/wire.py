"""OpenAI's chat shapes as `fair serve` speaks them: chat-completions bodies, replies and stream chunks (the
error reply and the Batch API's objects, which the simulator sends too, are fair/wire/).

A chat body names a teacher of the server's committee as its `model` and may set only the sampling fields
below; keys, base URLs and limits are the server's own (its committee file), so a body that names one of them
gets a 400, as does any other field we would not honour (tools, n > 1), and a request that can never fit its
teacher's tokens a minute (its estimate, gen/teachers/client.py's, over tpm: it would wait for them forever). The proxy (serve/chat.py) also takes
`stream` and `stream_options`; a batch line does not, as OpenAI's Batch API does not.

A reply's finish_reason says how it ended, as OpenAI's do: "stop", "length" (truncated at the output limit) or
"content_filter" (the provider refused; its reason is the message's `refusal`). A stream is OpenAI's sequence of
chat.completion.chunk objects (`Chunks`): the role, the content in pieces, the finish, then, with
`include_usage`, the usage with no choices; the route frames them as server-sent events and ends with [DONE].
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fair.wire.errors import ApiError
from gen.teachers.client import estimate_tokens
from gen.teachers.config import Teacher, sampling_range_error
from gen.teachers.providers import ChatRequest, ChatResponse

SAMPLING = {"temperature", "top_p", "max_tokens", "max_completion_tokens"}
SERVER_ONLY = {
    "api_key",
    "api_key_env",
    "base_url",
    "api_base",
    "organization",
    "rpm",
    "tpm",
    "max_concurrency",
    "extra_headers",
    "timeout_s",
    "max_retries",
    "provider",
}
STREAMING = frozenset({"stream", "stream_options"})  # the proxy's, not a batch line's
STREAM_OPTIONS = {"include_usage", "include_obfuscation"}
ROLES = {"system", "user", "assistant", "developer"}


def chat_request(
    body: Any, teachers: dict[str, Teacher], where: str = "body", also: frozenset[str] = frozenset()
) -> tuple[Teacher, ChatRequest]:
    """The teacher and request a chat-completions body asks for; ApiError(400) naming `where` and the field.
    `also`: further fields the caller reads itself (the proxy's STREAMING)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{where}: expected a JSON object")
    if server_only := sorted(SERVER_ONLY & set(body)):
        raise ApiError(
            400,
            f"{where}: {', '.join(server_only)}: keys, base URLs and limits come from the "
            f"server's committee file, not from a request",
            server_only[0],
        )
    if unknown := sorted(set(body) - SAMPLING - also - {"model", "messages"}):
        raise ApiError(
            400,
            f"{where}: unsupported field(s) {', '.join(unknown)} (this server takes model, "
            f"messages, {', '.join(sorted(SAMPLING | also))})",
            unknown[0],
        )
    model = body.get("model")
    if model not in teachers:
        raise ApiError(
            400,
            f"{where}: model {model!r} is not a teacher of this server (known: {', '.join(teachers)})",
            "model",
            "model_not_found",
        )
    teacher = teachers[model]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"{where}: messages must be a non-empty list", "messages")
    pairs = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
            or set(message) - {"role", "content", "name"}
        ):
            raise ApiError(
                400,
                f"{where}: messages[{i}] must be {{role: system|user|assistant, content: text}}",
                "messages",
            )
        pairs.append(("system" if message["role"] == "developer" else message["role"], message["content"]))
    if all(role == "system" for role, _ in pairs):  # Anthropic's and Gemini's APIs refuse such a conversation
        raise ApiError(400, f"{where}: messages need a user or assistant message, not only system ones", "messages")
    request = ChatRequest(tuple(pairs), *_sampling(body, teacher, where))
    if (tokens := estimate_tokens(request, teacher)) > teacher.tpm:  # it would wait for tokens forever
        raise ApiError(
            400,
            f"{where}: the request may use {tokens} tokens (its messages at ~4 characters a token, plus "
            f"max_tokens {request.max_tokens}), more than {teacher.name}'s limit of {teacher.tpm} tokens a minute "
            "(tpm): shorten the messages or lower max_tokens",
            "messages",
            "context_length_exceeded",
        )
    return teacher, request


def _sampling(body: dict, teacher: Teacher, where: str) -> tuple[float, float, int]:
    temperature, top_p = body.get("temperature", teacher.temperature), body.get("top_p", teacher.top_p)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", teacher.max_tokens))
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, f"{where}: {name} must be a number", name)
    if wrong := sampling_range_error(teacher.provider, temperature, top_p):  # else a 400 upstream, every time
        raise ApiError(400, f"{where}: {wrong[1]}", wrong[0])
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= teacher.max_tokens
    ):
        raise ApiError(
            400,
            f"{where}: max_tokens must be an integer in 1..{teacher.max_tokens} (the server's "
            f"setting for {teacher.name})",
            "max_tokens",
        )
    return float(temperature), float(top_p), max_tokens


@dataclass(frozen=True)
class StreamOptions:
    include_usage: bool = False  # a last chunk of the usage and no choices; every other one has usage null
    include_obfuscation: bool = True  # OpenAI's default: pad each chunk so its size does not tell its text's


def stream_options(body: dict[str, Any]) -> StreamOptions | None:
    """None for a plain reply, else how to stream it; ApiError(400) naming the field, in OpenAI's terms."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream not in (None, True, False):
        raise ApiError(400, "body: stream must be true or false", "stream")
    if not stream:
        if options is not None:
            raise ApiError(400, "body: stream_options is only allowed when stream is true", "stream_options")
        return None
    if options is None:
        return StreamOptions()
    if not isinstance(options, dict) or set(options) - STREAM_OPTIONS:
        raise ApiError(
            400, f"body: stream_options takes only {', '.join(sorted(STREAM_OPTIONS))}", "stream_options"
        )
    for name, value in options.items():
        if not isinstance(value, bool):
            raise ApiError(400, f"body: stream_options.{name} must be a boolean", f"stream_options.{name}")
    return StreamOptions(**options)


def completion_head(teacher: Teacher, request: ChatRequest, kind: str) -> dict[str, Any]:
    """What a reply and each of its stream's chunks open with; one request, one id (a digest of it)."""
    digest = hashlib.sha256(repr((teacher.name, request)).encode()).hexdigest()[:24]
    return {"id": f"chatcmpl-{digest}", "object": kind, "created": int(time.time()), "model": teacher.name}


def finish_reason(response: ChatResponse) -> str:
    if response.refusal is not None:
        return "content_filter"
    return "length" if response.truncated else "stop"


def usage(response: ChatResponse) -> dict[str, Any]:
    """OpenAI's usage object; the teacher's prompt-cache reads as OpenAI reports its own (whatever its API)."""
    return {
        "prompt_tokens": response.input_tokens,
        "completion_tokens": response.output_tokens,
        "total_tokens": response.input_tokens + response.output_tokens,
        "prompt_tokens_details": {"cached_tokens": response.cached_input_tokens},
    }


def chat_completion(teacher: Teacher, request: ChatRequest, response: ChatResponse) -> dict[str, Any]:
    # A refusal's content is null when it has no text, as OpenAI's is.
    content = None if response.refusal is not None and not response.text else response.text
    message = {"role": "assistant", "content": content, "refusal": response.refusal}
    finish = finish_reason(response)
    return {
        **completion_head(teacher, request, "chat.completion"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage(response),
    }


class Chunks:
    """One streamed reply's chat.completion.chunk objects, in OpenAI's order: `opening()` (the role) as soon as
    the request is taken, then `reply()`: the content word by word, the refusal, the finish, the usage."""

    PAD = 16  # obfuscation pads each chunk's text to a multiple of this many characters

    def __init__(self, teacher: Teacher, request: ChatRequest, options: StreamOptions):
        self.head = completion_head(teacher, request, "chat.completion.chunk")
        self.options = options

    def opening(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def reply(self, response: ChatResponse) -> Iterator[dict[str, Any]]:
        # Words with their trailing space (leading space alone first): the pieces join back to the exact text.
        for piece in re.findall(r"\S+\s*|\s+", response.text):
            yield self._chunk({"content": piece})
        if response.refusal is not None:
            yield self._chunk({"refusal": response.refusal})
        yield self._chunk({}, finish_reason(response))
        if self.options.include_usage:
            yield {**self.head, "choices": [], "usage": usage(response)}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {
            **self.head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.options.include_usage:
            chunk["usage"] = None
        if self.options.include_obfuscation:
            text = delta.get("content") or delta.get("refusal") or ""
            chunk["obfuscation"] = secrets.token_urlsafe(self.PAD)[: self.PAD - len(text) % self.PAD]
        return chunk
