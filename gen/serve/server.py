"""`fair serve`: one long-running process for every committee job, batch and chat request, under one budget.

    make serve                                            # the offline committee (a simulator), state in data/serve
    fair serve --teachers default --state data/serve      # real teachers: their keys come from this environment
    FAIR_SERVE_TOKEN=... fair serve --host 0.0.0.0        # any other bind than loopback needs an explicit token

Routes (gen/serve/app.py): OpenAI's /v1/files and /v1/batches, /v1/chat/completions (a gated, cached proxy,
streaming too: gen/serve/chat.py), /v1/fair/jobs (committee jobs), /v1/fair/limits, the page at /. Every route
but /healthz needs the bearer token: FAIR_SERVE_TOKEN, else a random one kept in STATE/token (mode 0600; the
server prints the file's path, never the token). Teachers, keys and limits are this server's committee file's
(`teachers`, `base_url`); requests cannot set them. All work shares the teachers' gates (gen/serve/budget.py),
lives in the state folder (gen/serve/store.py), and resumes by itself after a restart, also after SIGKILL. One
server per state folder.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from fair.config import Validated, save_config
from fair.errors import FairError
from fair.lock import folder_lock
from gen.teachers.cache import is_loopback
from gen.teachers.config import load_committee, missing_keys

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


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FairError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def serve(config: ServeConfig) -> int:
    import uvicorn

    from gen.offline.server import OfflineServer
    from gen.serve.app import make_app

    state = Path(config.state)
    state.mkdir(parents=True, exist_ok=True)
    with folder_lock(state, "serve"):
        token = bearer_token(state, config.host)
        simulator = OfflineServer(port=0).start() if config.offline else None
        try:
            teachers = load_committee(config.teachers, simulator.url if simulator else config.base_url)
            if missing := missing_keys(teachers):
                raise FairError(
                    f"committee {config.teachers!r} needs the environment variable(s) {', '.join(missing)}"
                )
            save_config(config, state / "serve.yaml")
            sock = listen(config.host, config.port)
            port = sock.getsockname()[1]
            app = make_app(config, teachers, token)
            where = "$" + TOKEN_ENV if os.environ.get(TOKEN_ENV) else state / "token"
            print(
                f"fair serve: http://{config.host}:{port}/ (bearer token in {where}); committee "
                f"{config.teachers}: {', '.join(t.name for t in teachers)}; state in {state}",
                flush=True,
            )
            if config.port_file:
                tmp = Path(f"{config.port_file}.tmp")
                tmp.write_text(f"{port}\n")
                tmp.replace(config.port_file)
            # asyncio's own loop, not uvloop: the response cache reads its timers' when() (gen/teachers/cache.py).
            server = uvicorn.Server(
                uvicorn.Config(
                    app, loop="asyncio", log_level="warning", access_log=False, timeout_graceful_shutdown=5
                )
            )
            server.run(sockets=[sock])
        finally:
            if simulator is not None:
                simulator.stop()
    print("fair serve: stopped; open jobs and batches resume at the next start", file=sys.stderr)
    return 0
