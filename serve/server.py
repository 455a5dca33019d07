"""`fair serve`: one long-running process for every committee job, batch and chat request, under one budget.

    make serve                                            # the offline committee (a simulator), state in data/serve
    fair serve --teachers default --state data/serve      # real teachers: their keys come from this environment
    FAIR_SERVE_TOKEN=... fair serve --host 0.0.0.0        # any other bind than loopback needs an explicit token

Settings and the bearer token: serve/config.py.
Routes (serve/app.py): OpenAI's /v1/files and /v1/batches, /v1/chat/completions (a gated, cached proxy,
streaming too: serve/chat.py), /v1/fair/jobs (committee jobs), /v1/fair/limits, the page at /. Every route
but /healthz needs the bearer token: FAIR_SERVE_TOKEN, else a random one kept in STATE/token (mode 0600; the
server prints the file's path, never the token). Teachers, keys and limits are this server's committee file's
(`teachers`, `base_url`); requests cannot set them. All work shares the teachers' gates (serve/budget.py),
lives in the state folder (serve/store.py; files 0600, folders 0700), and resumes by itself after a restart, also after SIGKILL. One
server per state folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from fair.config import save_config
from fair.errors import FairError
from fair.lock import folder_lock
from fair.wire.listen import http_url, listen
from gen.teachers.config import load_committee, missing_keys
from serve.config import TOKEN_ENV, ServeConfig, bearer_token
from serve.store import foreign


def make_private(state: Path) -> None:
    """The state folder holds uploads, teachers' replies and the token: this user's alone. Every file the server
    makes is 0600 and every folder 0700 (its umask), and what an older version left readable is made so too."""
    os.umask(0o077)
    state.mkdir(parents=True, exist_ok=True)
    for path in [state, *state.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


class Stopped(BaseException):
    """SIGTERM, raised in the main thread wherever it is, so that every `finally` of the shutdown path runs."""


def stopped(signum: int, frame: object) -> None:
    raise Stopped


def serve(config: ServeConfig) -> int:
    """Run until SIGTERM or Ctrl-C. uvicorn handles SIGTERM while it serves (the app's shutdown: jobs, batches
    and the proxy stop) and then raises it again: to `stopped`, not to the default action, which would end the
    process before the simulator stops and the last line is printed."""
    signal.signal(signal.SIGTERM, stopped)
    with contextlib.suppress(Stopped):
        _serve(config)
    print("fair serve: stopped; open jobs and batches resume at the next start", file=sys.stderr, flush=True)
    return 0


def _serve(config: ServeConfig) -> None:
    import uvicorn

    from serve.app import make_app
    from serve.connections import BACKLOG, HEADER_BYTES, KEEP_ALIVE_S, guarded_h11  # uvicorn's, so only here
    from simulator.server import OfflineServer

    state = Path(config.state)
    if found := foreign(state):  # before make_private, which would change their modes
        raise FairError(f"{state} holds files that are not fair serve's ({', '.join(found[:5])}"
                        f"{', ...' if len(found) > 5 else ''}): pick an empty or fair serve state folder for --state")
    make_private(state)
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
            sock = listen(config.host, config.port, BACKLOG)
            port = sock.getsockname()[1]
            app = make_app(config, teachers, token)
            where = "$" + TOKEN_ENV if os.environ.get(TOKEN_ENV) else state / "token"
            print(
                f"fair serve: {http_url(config.host, port)}/ (bearer token in {where}); committee "
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
                    app, loop="asyncio", log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                    http=guarded_h11(), h11_max_incomplete_event_size=HEADER_BYTES, timeout_keep_alive=KEEP_ALIVE_S,
                    backlog=BACKLOG,
                )
            )
            server.run(sockets=[sock])
        finally:
            if simulator is not None:
                simulator.stop()
