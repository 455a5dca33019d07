"""`fair serve`'s settings and who may talk to it: the config (serve/server.py runs it) and the bearer token.

Apart from the server, which starts the app (serve/app.py), because the app reads both: so neither of the
two imports the other.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fair.config import Validated
from fair.errors import FairError
from gen.teachers.cache import is_loopback

TOKEN_ENV = "FAIR_SERVE_TOKEN"


@dataclass
class ServeConfig(Validated):
    host: str = "127.0.0.1"  # another address needs FAIR_SERVE_TOKEN set
    port: int = 8765  # 0 picks a free one (see port_file)
    state: str = "data/serve"  # files, batches, jobs, the token; one server per folder
    teachers: str = "offline"  # the committee every job, batch and chat request uses (configs/teachers/)
    base_url: str | None = None  # send every teacher to this server (e.g. `fair teachers serve`)
    offline: bool = False  # start the offline simulator in this process and point the teachers at it
    reserve: float = 0.0  # fraction of each key's rpm kept for /v1/chat/completions (jobs and batches wait)
    max_upload_mb: float = 200.0  # OpenAI's batch input limit
    port_file: str | None = None  # write the bound port here once listening (for scripts and tests)

    def validate(self) -> None:
        if not 0 <= self.reserve < 1:
            raise FairError(f"reserve must be in 0..1 (a fraction of each key's rpm), got {self.reserve}")
        if not 0 <= self.port <= 65535 or self.max_upload_mb <= 0:
            raise FairError(
                f"port must be in 0..65535 and max_upload_mb positive, got {self.port} and "
                f"{self.max_upload_mb}"
            )
        if self.offline and self.base_url:
            raise FairError("offline starts its own simulator: leave base_url unset")


def bearer_token(state: Path, host: str) -> str:
    """FAIR_SERVE_TOKEN, else STATE/token (made once, 0600). Off loopback only an explicit token will do."""
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token
    if not is_loopback(host):
        raise FairError(f"binding {host} (not loopback) needs an explicit token: set {TOKEN_ENV}")
    path = state / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def same_token(given: str | None, token: str) -> bool:
    """Constant-time: how long a comparison takes must not tell an attacker how much of a guess was right."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
