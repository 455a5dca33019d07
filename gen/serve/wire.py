"""OpenAI's shapes as `fair serve` speaks them: errors, chat-completions bodies and replies, batch objects.

A chat body names a teacher of the server's committee as its `model` and may set only the sampling fields
below; keys, base URLs and limits are the server's own (its committee file), so a body that names one of them
gets a 400, as does any other field we would not honour (streaming, tools, n > 1).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest, ChatResponse

ENDPOINT = "/v1/chat/completions"
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
ROLES = {"system", "user", "assistant", "developer"}
# OpenAI's batch statuses; `cancelling` and `finalizing` are passed through on the way to the last three.
BATCH_OPEN = {"validating", "in_progress", "finalizing", "cancelling"}


class ApiError(Exception):
    """An error reply in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        kind = {
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            409: "conflict_error",
        }.get(self.status, "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def chat_request(body: Any, teachers: dict[str, Teacher], where: str = "body") -> tuple[Teacher, ChatRequest]:
    """The teacher and request a chat-completions body asks for; ApiError(400) naming `where` and the field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{where}: expected a JSON object")
    if server_only := sorted(SERVER_ONLY & set(body)):
        raise ApiError(
            400,
            f"{where}: {', '.join(server_only)}: keys, base URLs and limits come from the "
            f"server's committee file, not from a request",
            server_only[0],
        )
    if unknown := sorted(set(body) - SAMPLING - {"model", "messages"}):
        raise ApiError(
            400,
            f"{where}: unsupported field(s) {', '.join(unknown)} (this server takes model, "
            f"messages, {', '.join(sorted(SAMPLING))})",
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
    return teacher, ChatRequest(tuple(pairs), *_sampling(body, teacher, where))


def _sampling(body: dict, teacher: Teacher, where: str) -> tuple[float, float, int]:
    temperature, top_p = body.get("temperature", teacher.temperature), body.get("top_p", teacher.top_p)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", teacher.max_tokens))
    for name, value, low, high in (("temperature", temperature, 0, 2), ("top_p", top_p, 0, 1)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ApiError(400, f"{where}: {name} must be a number in {low}..{high}", name)
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


def chat_completion(teacher: Teacher, request: ChatRequest, response: ChatResponse) -> dict[str, Any]:
    digest = hashlib.sha256(repr((teacher.name, request)).encode()).hexdigest()[:24]
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": teacher.name,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": response.text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": response.input_tokens,
            "completion_tokens": response.output_tokens,
            "total_tokens": response.input_tokens + response.output_tokens,
        },
    }


def batch_object(doc: dict[str, Any]) -> dict[str, Any]:
    """A batch document of the store as OpenAI's Batch object."""
    stamps = {
        f"{s}_at": doc.get(f"{s}_at")
        for s in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    }
    return {
        "id": doc["id"],
        "object": "batch",
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "input_file_id": doc["input_file_id"],
        "status": doc["status"],
        "created_at": int(doc["created_at"]),
        "expires_at": int(doc["created_at"]) + 86400,
        "metadata": doc.get("metadata"),
        "errors": {"object": "list", "data": doc["errors"]} if doc.get("errors") else None,
        "output_file_id": doc.get("output_file_id"),
        "error_file_id": doc.get("error_file_id"),
        "request_counts": {"total": doc["total"], "completed": doc["completed"], "failed": doc["failed"]},
        **stamps,
        # Ours: requests in flight when the server was killed, which may have been sent twice.
        "repeated_after_restart": doc["repeated_after_restart"],
    }


def file_object(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["id"],
        "object": "file",
        "bytes": doc["bytes"],
        "created_at": int(doc["created_at"]),
        "filename": doc["filename"],
        "purpose": doc["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
