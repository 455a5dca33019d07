"""What one request may cost `fair serve`: its body's bytes by route, and the HTTP server's own limits.

A body is capped BEFORE it is read: a Content-Length over the route's cap is a 413 at once (the body never
read), and a chunked body is counted as it arrives and cut off with a 413 the moment it passes the cap. Either
way the connection is closed, so a client cannot go on sending into it.

    POST /login       LOGIN_BYTES (a token field: under 1 KB)
    POST /v1/files    the server's max_upload_mb, plus FORM_MARGIN for the multipart framing and `purpose`
    everything else   JSON_BYTES (a chat request with a long conversation fits many times over)

Form field counts are capped where forms are parsed: /login's body is under 1 KB, an upload's parts by
fair/wire/multipart.py's MAX_FIELDS.
Headers, idle connections and the number of connections: serve/connections.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fair.wire.errors import ApiError

LOGIN_BYTES = 1024
JSON_BYTES = 8 * 2**20
FORM_MARGIN = 64 * 2**10
CLOSE = {"connection": "close"}  # after a reply to a request whose body may be left unread


def body_cap(method: str, path: str, max_upload: int) -> tuple[int, str]:
    """(bytes, what sets them) for a request's body."""
    if path == "/login":
        return LOGIN_BYTES, "the login form"
    if method == "POST" and path == "/v1/files":
        return max_upload + FORM_MARGIN, "max_upload_mb"
    return JSON_BYTES, "a JSON body"


def too_large(cap: int, setting: str) -> str:
    return f"the request body is larger than this route's limit of {cap} bytes ({setting})"


class BodyCap:
    """ASGI middleware: every request's body within its route's cap (the module docstring)."""

    def __init__(self, app: ASGIApp, max_upload: int):
        self.app, self.max_upload = app, max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap, setting = body_cap(scope["method"], scope["path"], self.max_upload)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > cap:
            return await refuse(send, ApiError(413, too_large(cap, setting), code="request_too_large"))
        seen, refused = 0, False

        async def capped() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:  # answered here: the app sees its client gone, whatever reads the body
                    refused = True
                    await refuse(send, ApiError(413, too_large(cap, setting), code="request_too_large"))
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, capped, unless_refused)
        except Exception:
            if not refused:  # the app's reading of a body cut off is no error of the server's
                raise


async def refuse(send: Send, error: ApiError) -> None:
    body = orjson.dumps(error.body())
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
