"""Who may talk to `fair serve` (serve/app.py): a bearer token, or the page's session cookie.

    Authorization: Bearer TOKEN     API clients: OpenAI's SDKs, curl, `fair committee --server`
    Cookie: fair_serve_session=ID   the page, after POST /login with the token

The cookie never holds the token: /login hands out a random session id that this process maps to a login (in
memory, at most MAX_SESSIONS, the oldest forgotten first; a restart logs the page out). A browser sends a
127.0.0.1 cookie to every service on that host, so a cookie that leaks there is at worst a session of this
process, never the token. The cookie is HttpOnly and SameSite=Strict. A request that the cookie authenticates
and that may change something (any method but GET, HEAD and OPTIONS) must also come from the page itself: its
Origin header (browsers send one with every such request) must name this server's own host, else 403. Bearer
requests are not browser requests and need no Origin. Tokens and session ids are compared in constant time.

Auth is plain ASGI middleware, not Starlette's BaseHTTPMiddleware: it answers before anything reads a body, and
leaves the routes the connection's own `receive`, so a route hears when its client disconnects (serve/chat.py).
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fair.wire.errors import ApiError
from serve.config import same_token

COOKIE = "fair_serve_session"
MAX_SESSIONS = 1000
OPEN = ("/healthz", "/login")  # the routes without credentials
SAFE = ("GET", "HEAD", "OPTIONS")
LOGIN = (
    "<!doctype html><title>fair serve</title><form method=post action=/login>"
    "<label>Token <input name=token type=password autofocus></label> <button>Open</button></form>"
)


class Sessions:
    """The page's logins: random ids, oldest forgotten first past MAX_SESSIONS."""

    def __init__(self) -> None:
        self.ids: dict[str, float] = {}

    def open(self) -> str:
        while len(self.ids) >= MAX_SESSIONS:
            del self.ids[next(iter(self.ids))]
        session = secrets.token_urlsafe(32)
        self.ids[session] = time.time()
        return session

    def valid(self, given: str | None) -> bool:
        # A dict lookup alone would compare by hash and then by ==: constant time over what is held instead.
        return bool(given) and any([same_token(given, known) for known in self.ids])


def same_origin(request: Request) -> bool:
    """The request's Origin names the host it was sent to (scheme aside: a proxy may end TLS before us)."""
    origin, host = request.headers.get("origin"), request.headers.get("host")
    return bool(origin and host) and urlsplit(origin).netloc.lower() == host.lower()


class Auth:
    """ASGI middleware: every route but OPEN needs the token or a session (the module docstring)."""

    def __init__(self, app: ASGIApp, token: str, sessions: Sessions):
        self.app, self.token, self.sessions = app, token, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN:
            return await self.app(scope, receive, send)
        request = Request(scope)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_token(given.strip(), self.token):
            return await self.app(scope, receive, send)
        if self.sessions.valid(request.cookies.get(COOKIE)):
            if request.method in SAFE or same_origin(request):
                return await self.app(scope, receive, send)
            error = ApiError(403, "a change made with the page's cookie must come from the page (its Origin)")
            return await JSONResponse(error.body(), status_code=403)(scope, receive, send)
        if scope["path"] == "/" and request.method == "GET":
            return await HTMLResponse(LOGIN, status_code=401)(scope, receive, send)
        error = ApiError(401, "a bearer token is required (Authorization: Bearer TOKEN)")
        await JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
