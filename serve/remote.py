"""`fair committee --server URL`: the committee as a job of a `fair serve`, followed here until it ends.

    fair committee --task svamp --mistakes data/svamp/smollm2-135m/mistakes.jsonl --server http://127.0.0.1:8765

Uploads the mistakes file, submits the job (task, prompts, filter, samples, teacher_temperature, threshold, window,
limit, priority), follows its progress (server-sent events) with the same progress bar as a local run, then
downloads committee.jsonl, committee_stats.json and the paper's files beside where a local run would write them.
The server's committee answers, within the limits it shares with its other jobs. The job's id is kept in
committee-job.json there, so that a rerun after Ctrl-C follows the same job instead of paying for a second one
(a rerun asking for another recipe is refused). The token is FAIR_SERVE_TOKEN, else, for a server on this
machine only, a local server's default token file (data/serve/token).
Only the files a job has are downloaded, by their plain names into the output's folder: a server that lists any
other name (a path) gets an error, not a file written elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from fair.errors import FairError
from fair.jsonl import write_json
from fair.progress import Progress
from fair.wire.listen import is_loopback
from gen.committee.run import CommitteeConfig, existing_mistakes
from serve.config import TOKEN_ENV
from serve.jobs import JOB_RECIPE, job_recipe

LOCAL_TOKEN = Path("data/serve/token")
OUTPUTS = ("committee.jsonl", "committee_stats.json", "committee.yaml")
ROUND0 = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*_round0\.json")  # the paper's files: no folder, no leading dot
TERMINAL = ("completed", "failed", "cancelled", "stopped")
DEFAULT = CommitteeConfig()  # the settings a job's spec may leave out


def client_token(server: str) -> str:
    """FAIR_SERVE_TOKEN, else the local server's token file, but only for a server on this machine: the local
    token is never sent to another host."""
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token
    if is_loopback(urlsplit(server).hostname or "") and LOCAL_TOKEN.exists():
        return LOCAL_TOKEN.read_text().strip()
    raise FairError(f"set {TOKEN_ENV} to the server's token (a local `make serve` keeps it in {LOCAL_TOKEN}, "
                    "which is sent only to a server on this machine)")


def output_name(name: Any) -> str:
    """A file name the server listed, if it is one a job has: never a path, so nothing is written outside the
    output folder whatever a server says."""
    if isinstance(name, str) and (name in OUTPUTS or ROUND0.fullmatch(name)):
        return name
    raise FairError(f"the server listed a job file {name!r}, which is not one of a job's outputs: not downloaded")


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise FairError(f"server {http.base_url}: {type(e).__name__}: {e}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise FairError(f"server {http.base_url}{path}: HTTP {response.status_code}: {message}")
    return response.json()


def submit(http: httpx.Client, config: CommitteeConfig) -> dict[str, Any]:
    path = existing_mistakes(config)
    with path.open("rb") as f:
        file = call(
            http,
            "POST",
            "/v1/files",
            files={"file": (path.name, f, "application/jsonl")},
            data={"purpose": "fair-mistakes"},
        )
    spec = {
        "mistakes_file_id": file["id"],
        "task": config.task,
        "prompts": config.prompts,
        "threshold": config.threshold,
        "window": config.window,
        "limit": config.limit,
        "priority": config.priority,
        "max_cost_usd": config.max_cost_usd,
        # The filter always (a server's default depends on its version); the others only where they differ from
        # the defaults, which a server older than them runs (it refuses any setting it lacks).
        "filter": config.filter,
        **{name: getattr(config, name) for name in JOB_RECIPE if getattr(config, name) != getattr(DEFAULT, name)},
    }
    return call(http, "POST", "/v1/fair/jobs", json=spec)


def same_recipe(job: dict[str, Any], config: CommitteeConfig, ledger: Path) -> None:
    """A rerun follows the job it submitted only when that job runs the recipe asked for now."""
    runs_recipe = {"prompts": job["spec"].get("prompts", DEFAULT.prompts)} | job_recipe(job["spec"])
    for name, runs in runs_recipe.items():
        asked = getattr(config, name)
        if runs != asked:
            raise FairError(f"{ledger}: job {job['id']} runs {name} {runs}, not {asked}: rerun with its settings "
                            f"to follow it, or write to another --out for a new job")


def follow(http: httpx.Client, job: dict[str, Any], progress: bool) -> dict[str, Any]:
    """The job's events until it ends; the job as it ended."""
    bar = Progress(f"job {job['id']}", job["progress"].get("total"), unit="mistakes", enabled=progress)
    try:
        with http.stream(
            "GET", f"/v1/fair/jobs/{job['id']}/events", timeout=httpx.Timeout(60, read=None)
        ) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                job = orjson.loads(line[5:])
                p = job["progress"]
                bar.set_total(p.get("total"))
                bar.note(f"requests={p.get('requests', 0)} 429s={p.get('rate_limited', 0)} ${p.get('cost', 0):.4f}")
                bar.update(p.get("done", 0) - bar.n)
    except httpx.HTTPError as e:
        raise FairError(
            f"server {http.base_url}: lost the job's events ({type(e).__name__}); rerun to follow "
            f"job {job['id']} again"
        ) from None
    finally:
        bar.close()
    return job


def download(http: httpx.Client, job_id: str, out: Path) -> list[str]:
    """The job's outputs, committee.jsonl as `out` and the rest beside it, each written whole or not at all."""
    names = [
        output_name(f["name"])
        for f in call(http, "GET", f"/v1/fair/jobs/{job_id}/files")["data"]
        if f["name"] != "mistakes.jsonl"
    ]
    for name in names:
        target = out if name == "committee.jsonl" else out.with_name(name)
        tmp = target.with_name(f".{target.name}.partial")
        with http.stream("GET", f"/v1/fair/jobs/{job_id}/files/{name}") as response, tmp.open("wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
        tmp.replace(target)
    return names


def run_remote(config: CommitteeConfig) -> dict[str, Any]:
    folder = config.out_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / "committee-job.json"
    headers = {"Authorization": f"Bearer {client_token(config.server)}"}
    with httpx.Client(base_url=config.server.rstrip("/"), headers=headers, timeout=60) as http:
        if ledger.exists():
            job = call(http, "GET", f"/v1/fair/jobs/{orjson.loads(ledger.read_bytes())['id']}")
            same_recipe(job, config, ledger)
            print(f"following job {job['id']} (submitted earlier from {ledger})")
        else:
            job = submit(http, config)
            write_json(ledger, {"id": job["id"], "server": config.server})
            print(f"submitted job {job['id']} to {config.server}")
        job = follow(http, job, config.progress) if job["status"] not in TERMINAL else job
        names = download(http, job["id"], config.out_path)
    p = job["progress"]
    print(
        f"job {job['id']} {job['status']}: {p.get('done')}/{p.get('total')} mistakes, {p.get('requests', 0)} "
        f"requests, {p.get('rate_limited', 0)} 429s, ${p.get('cost', 0):.4f}; downloaded {', '.join(names)} "
        f"to {folder}"
    )
    if job["status"] not in ("completed", "stopped"):
        raise FairError(f"job {job['id']} {job['status']}: {job.get('error') or 'see the server'}")
    return job
