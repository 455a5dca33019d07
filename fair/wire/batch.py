"""OpenAI's Batch API objects, as the service (gen/serve/batches.py) and the simulator (gen/offline/batch.py) send
them: the batch object, the file object, a page of a list, and the check of a create request.

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


def page_limit(text: str, largest: int = MAX_PAGE) -> int:
    """A list's `limit` query parameter; ApiError(400) unless a whole number from 1 to `largest`."""
    limit = int(text) if text.isdigit() else 0
    if not 1 <= limit <= largest:
        raise ApiError(400, f"limit must be a whole number from 1 to {largest}, got {text!r}", "limit",
                       "invalid_request")
    return limit
