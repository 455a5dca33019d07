"""`fair view FOLDER`: the page's record viewer over a local run's folder, read-only, behind `fair serve`'s token.

    fair view data/svamp/smollm2-135m                # http://127.0.0.1:8766/, the token in data/serve/token
    fair view runs/a --state /srv/fair-serve         # another server's token
    FAIR_SERVE_TOKEN=... fair view runs/a --host 0.0.0.0   # a strong token of its own; plain HTTP (it warns)

The folder is what `fair committee` writes into: committee.jsonl, and beside it what else is there of
mistakes.jsonl, committee_stats.json, committee.yaml and the paper's files (links to download). It is served by
the code `fair serve` serves a job's data with: serve/app.py's token check, login, errors and page, and
serve/reading.py's routes, with the folder as the one job RUN. Nothing here submits or spends: no jobs, uploads,
batches or chat, and the page, told it is read-only, offers none. The folder is never written: the records' index
lives in a temporary folder (in index_dir, else $TMPDIR), removed at exit; it grows to about the size of
committee.jsonl.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from fair.config import Validated
from fair.errors import FairError
from fair.wire.errors import ApiError
from fair.wire.listen import http_url, is_loopback, listen
from serve.app import add_auth, add_errors
from serve.config import TOKEN_ENV, bearer_token
from serve.limits import BodyCap
from serve.reading import RUN, Run, add_reading
from serve.records_view import INDEX_NAME


@dataclass
class ViewConfig(Validated):
    folder: str  # a run's folder: its committee.jsonl (and mistakes.jsonl, committee_stats.json, the paper's files)
    host: str = "127.0.0.1"  # another address needs FAIR_SERVE_TOKEN set, as `fair serve` does
    port: int = 8766  # 0 picks a free one (see port_file)
    state: str = "data/serve"  # `fair serve`'s state folder: its token (STATE/token) guards this page too
    port_file: str | None = None  # write the bound port here once listening (for scripts and tests)
    index_dir: str | None = None  # build the records' index here (default: $TMPDIR); as big as committee.jsonl

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise FairError(f"port must be in 0..65535, got {self.port}")
        if self.index_dir is not None and not Path(self.index_dir).is_dir():
            raise FairError(f"index_dir {self.index_dir}: no such folder")


@dataclass
class Viewer:
    """What the shared routes need of their app: the token (serve/app.py's add_auth)."""

    token: str


class Stopped(BaseException):
    """SIGTERM, raised where the main thread is, so that the index's temporary folder is removed on the way out."""


def stopped(signum: int, frame: object) -> None:
    raise Stopped


def make_view_app(config: ViewConfig, token: str, index_dir: Path) -> FastAPI:
    """`index_dir`: where the records' index is kept (a temporary folder: never the run's)."""
    folder = Path(config.folder)

    def run(job_id: str) -> Run:  # one run, one index; its file named as the user named its folder
        if job_id != RUN:
            raise ApiError(404, f"no job {job_id!r}: `fair view` shows one run, {RUN!r}", "job_id")
        return Run(folder, index_dir / INDEX_NAME, str(folder / "committee.jsonl"))

    app = FastAPI(title="fair view", version="1", docs_url=None, redoc_url=None)
    add_auth(app, Viewer(token))
    app.add_middleware(BodyCap, max_upload=0)  # no uploads here; /login's cap as fair serve's
    add_errors(app)
    about = {"read_only": True, "run": RUN, "folder": folder.resolve().name}
    add_reading(app, run, about)
    return app


def view_token(config: ViewConfig) -> tuple[str, str]:
    """`fair serve`'s token (serve/config.py's bearer_token) and where it is, for the banner. STATE/token when
    FAIR_SERVE_TOKEN is unset or blank, as bearer_token reads it: the state folder is made for it then."""
    state = Path(config.state)
    if os.environ.get(TOKEN_ENV, "").strip():
        return bearer_token(state, config.host), "$" + TOKEN_ENV
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    return bearer_token(state, config.host), str(state / "token")


def view(config: ViewConfig) -> int:
    import uvicorn

    from serve.connections import BACKLOG, HEADER_BYTES, KEEP_ALIVE_S, guarded_h11  # uvicorn's, so only here

    if not (Path(config.folder) / "committee.jsonl").is_file():
        raise FairError(f"{config.folder}: no committee.jsonl (view the folder `fair committee` wrote into)")
    token, where = view_token(config)
    sock = listen(config.host, config.port, BACKLOG)
    port = sock.getsockname()[1]
    print(f"fair view: {http_url(config.host, port)}/ (bearer token in {where}); {config.folder}, read-only",
          flush=True)
    if not is_loopback(config.host):
        print(f"fair view: warning: {config.host} is not loopback: the page and its token cross the network "
              "unencrypted (put TLS in front); give it a token of its own, not the one of a fair serve that spends",
              file=sys.stderr, flush=True)
    if config.port_file:
        tmp = Path(f"{config.port_file}.tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(config.port_file)
    # uvicorn stops on SIGTERM and then raises it again: to `stopped`, not to the default action, which would end
    # the process before the temporary folder is removed.
    signal.signal(signal.SIGTERM, stopped)
    with contextlib.suppress(Stopped), tempfile.TemporaryDirectory(prefix="fair-view-", dir=config.index_dir) as index_dir:
        server = uvicorn.Server(uvicorn.Config(
            make_view_app(config, token, Path(index_dir)), loop="asyncio", log_level="warning", access_log=False,
            timeout_graceful_shutdown=5, http=guarded_h11(), h11_max_incomplete_event_size=HEADER_BYTES,
            timeout_keep_alive=KEEP_ALIVE_S, backlog=BACKLOG,
        ))
        server.run(sockets=[sock])
    print("fair view: stopped", file=sys.stderr)
    return 0
