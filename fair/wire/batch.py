"""OpenAI's Batch API objects, as the service (serve/batches.py) and the simulator (simulator/batch.py) send
them (fair/wire/batch_api.py, their one Files and Batch API, builds and checks them here): the batch object,
the file object, a page of a list, an input line's check and a result line, and the
check of a create request.

A batch is kept as a document (a dict) by either side: id, input_file_id, status, created_at, metadata, total,
completed, failed, and as it goes errors, output_file_id, error_file_id and `<status>_at` stamps. Statuses as
OpenAI's: validating -> in_progress -> finalizing -> completed, or failed (its `errors` say why), or cancelling ->
cancelled; BATCH_OPEN are those a batch may still leave.
"""

from __future__ import annotations

from typing import Any

from fair.wire.errors import ApiError

ENDPOINT = "/v1/chat/completions"  # the one endpoint a batch line may call
COMPLETION_WINDOW = "24h"
BATCH_OPEN = {"validating", "in_progress", "finalizing", "cancelling"}
STAMPED = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
MAX_PAGE = 100  # OpenAI's largest page of GET /batches


def check_create(body: dict[str, Any]) -> str:
    """The input file id of a POST /batches body; ApiError(400) naming the field that is not OpenAI's."""
    if body.get("endpoint") != ENDPOINT or body.get("completion_window") != COMPLETION_WINDOW:
        raise ApiError(400, f"endpoint must be {ENDPOINT} and completion_window {COMPLETION_WINDOW}", "endpoint",
                       "invalid_request")
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str):
        raise ApiError(400, f"input_file_id must be a file id (a string), got {file_id!r}", "input_file_id",
                       "invalid_request")
    return file_id


def check_line(record: Any, n: int, seen: dict[str, int]) -> str:
    """The custom_id of input line n (its JSON value): a POST to ENDPOINT with a custom_id no line before it in
    `seen` (custom_id -> line, updated) has; else ApiError(400, "line n: ...", "file", a code of OpenAI's).
    The line's body is each side's to read."""
    if not isinstance(record, dict) or record.get("method") != "POST" or record.get("url") != ENDPOINT:
        raise ApiError(400, f"line {n}: method must be POST and url {ENDPOINT}", "file", "invalid_request")
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ApiError(400, f"line {n}: custom_id must be a non-empty string", "file", "invalid_request")
    if custom_id in seen:
        raise ApiError(400, f"line {n}: duplicate custom_id {custom_id!r} (first on line {seen[custom_id]})", "file",
                       "duplicate_custom_id")
    seen[custom_id] = n
    return custom_id


def result_line(line_id: str, custom_id: str, status: int | None = None, request_id: str | None = None,
                body: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A line of a batch's output or error file: the response (status, request id, body) the request got, or
    (status None) the error of a request that got none."""
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}


def batch_object(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A batch document as OpenAI's Batch object; `extra`: fields of our own beside OpenAI's."""
    return {
        "id": doc["id"],
        "object": "batch",
        "endpoint": ENDPOINT,
        "completion_window": COMPLETION_WINDOW,
        "input_file_id": doc["input_file_id"],
        "status": doc["status"],
        "created_at": int(doc["created_at"]),
        "expires_at": int(doc["created_at"]) + 86400,
        "metadata": doc.get("metadata"),
        "errors": {"object": "list", "data": doc["errors"]} if doc.get("errors") else None,
        "output_file_id": doc.get("output_file_id"),
        "error_file_id": doc.get("error_file_id"),
        "request_counts": {"total": doc["total"], "completed": doc["completed"], "failed": doc["failed"]},
        **{f"{s}_at": doc.get(f"{s}_at") for s in STAMPED},
        **extra,
    }


def file_object(doc: dict[str, Any]) -> dict[str, Any]:
    """A file document (id, bytes, created_at, filename, purpose) as OpenAI's File object."""
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


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a list (GET /files, GET /batches), with OpenAI's cursor fields."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }


def page_limit(text: str | int, largest: int = MAX_PAGE) -> int:
    """A list's `limit` query parameter, clamped to 1..largest as OpenAI clamps it; ApiError(400) unless a whole
    number."""
    try:
        limit = int(text)
    except ValueError:
        raise ApiError(400, f"limit must be a whole number, got {text!r}", "limit", "invalid_request") from None
    return max(1, min(limit, largest))
