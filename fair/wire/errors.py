"""OpenAI's error reply, as the service and the simulator send it: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

TYPES = {401: "authentication_error", 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error"}


class ApiError(Exception):
    """A request refused: its status, OpenAI's error body (`body()`), and whether the connection closes after the
    reply (`close`: a request whose body may be left unread)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, *,
                 close: bool = False):
        super().__init__(message)
        self.status, self.param, self.code, self.close = status, param, code, close

    @property
    def kind(self) -> str:
        return TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}
