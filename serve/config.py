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
from fair.wire.listen import is_loopback

TOKEN_ENV = "FAIR_SERVE_TOKEN"


@dataclass
class ServeConfig(Validated):
    host: str = "127.0.0.1"  # another address needs FAIR_SERVE_TOKEN set
    port: int = 8765  # 0 picks a free one (see port_file)
    state: str = "data/serve"  # files, batches, jobs, the token; one server per folder
    teachers: str = "offline"  # the committee every job, batch and chat request uses (configs/teachers/)
    base_url: str | None = None  # send every teacher to this server (e.g. `fair teachers serve`)
    offline: bool = False  # start the offline simulator in this process and point the teachers at it
    reserve: float = 0.0  # fraction of each key's rpm and tpm kept for /v1/chat/completions (jobs and batches wait)
    max_upload_mb: float = 200.0  # OpenAI's batch input limit
    max_jobs: int = 4  # committee jobs running at once; more wait, queued, oldest first
    port_file: str | None = None  # write the bound port here once listening (for scripts and tests)

    def validate(self) -> None:
        if not 0 <= self.reserve < 1:
            raise FairError(f"reserve must be in 0..1 (a fraction of each key's rpm and tpm), got {self.reserve}")
        if not 0 <= self.port <= 65535 or self.max_upload_mb <= 0:
            raise FairError(
                f"port must be in 0..65535 and max_upload_mb positive, got {self.port} and "
                f"{self.max_upload_mb}"
            )
        if self.max_jobs < 1:
            raise FairError(f"max_jobs must be at least 1, got {self.max_jobs}")
        if self.offline and self.base_url:
            raise FairError("offline starts its own simulator: leave base_url unset")


MIN_TOKEN = 43  # characters of a token off loopback, and of STATE/token: secrets.token_urlsafe(32), 32 bytes
MIN_DISTINCT = 16  # distinct characters: a long run of one character is not 32 bytes of entropy
MIN_LOOPBACK_TOKEN = 16  # a user's FAIR_SERVE_TOKEN on loopback: only this machine's users can reach it


def bearer_token(state: Path, host: str) -> str:
    """FAIR_SERVE_TOKEN, else STATE/token (made once, atomically, 0600). Off loopback only an explicit token will
    do, and it must carry 32 bytes of entropy (MIN_TOKEN characters, MIN_DISTINCT of them distinct); on loopback
    a user's token needs MIN_LOOPBACK_TOKEN characters. Never an empty token: a 0-byte STATE/token (what a start
    that failed mid-write left, before writes were atomic) is replaced; a short one is refused."""
    loopback = is_loopback(host)
    if token := os.environ.get(TOKEN_ENV, "").strip():
        need = MIN_LOOPBACK_TOKEN if loopback else MIN_TOKEN
        if len(token) < need or (not loopback and len(set(token)) < MIN_DISTINCT):
            raise FairError(
                f"{TOKEN_ENV} is too short: binding {host} needs at least {need} characters"
                + ("" if loopback else f", {MIN_DISTINCT} of them distinct (e.g. python -c "
                   "'import secrets; print(secrets.token_urlsafe(32))')")
            )
        return token
    if not loopback:
        raise FairError(f"binding {host} (not loopback) needs an explicit token: set {TOKEN_ENV}")
    path = state / "token"
    token = path.read_text().strip() if path.exists() else ""
    if not token:
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
    if len(token) < MIN_TOKEN:
        raise FairError(f"{path}: the token is too short (under {MIN_TOKEN} characters); delete the file to get "
                        "a new one")
    return token


def write_private(path: Path, text: str) -> None:
    """`text` into `path` (mode 0600) whole or not at all: a temporary file, fsynced, renamed, the folder fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def same_token(given: str | None, token: str) -> bool:
    """Constant-time: how long a comparison takes must not tell an attacker how much of a guess was right. An
    empty token or guess never matches (compare_digest("", "") is True)."""
    return bool(given) and bool(token) and hmac.compare_digest(given.encode(), token.encode())
