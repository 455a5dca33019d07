"""What the offline simulator's routes share (simulator/app.py's live routes, the Batch API's backend, simulator/batch.py):
JSON replies marked as the simulator's, and bounded request bodies (refused with fair/wire's ApiError)."""

from __future__ import annotations

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from fair.wire.errors import ApiError


def json_response(status: int, body: dict | bytes, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content, status, {"x-fair-simulator": "1", **(headers or {})}, "application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a request that declares its content-length, at most `limit` bytes."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or not 0 < int(length) <= limit:
        raise ApiError(400, f"a body with a content-length of at most {limit} bytes is required", close=True)
    try:
        return await request.body()
    except ClientDisconnect:  # the client stalled past the socket timeout, or went away
        raise ApiError(400, "the client disconnected before sending the whole body", close=True) from None
