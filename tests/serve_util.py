"""A real `fair serve` process for the serve tests, its teachers pointed at an offline simulator of the test's."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from fair.jsonl import read_jsonl
from simulator.server import OfflineServer

TOKEN = "test-token-5b1f0e"
OFFLINE = Path(__file__).resolve().parents[1] / "configs" / "teachers" / "offline.yaml"
TEACHERS = ("careful", "harsh", "sloppy")  # committee_record's committee


def teachers_yaml(folder: Path, url: str, rpm: int = 600, concurrency: int = 16) -> Path:
    """configs/teachers/offline.yaml pointed at `url`, with quick retries and the given limits."""
    text = OFFLINE.read_text().replace("max_retries: 8", "max_retries: 8\n    retry_backoff_s: 0.05")
    text = text.replace("rpm: 600", f"rpm: {rpm}").replace(
        "max_concurrency: 16", f"max_concurrency: {concurrency}"
    )
    path = folder / "teachers.yaml"
    path.write_text(text)
    return path


class Served:
    """`fair serve` in its own process: start(), stop() (SIGTERM) or kill() (SIGKILL), start() again."""

    def __init__(self, state: Path, teachers: Path, sim_url: str, *args: str, token: str | None = TOKEN,
                 nofile: int | None = None):
        self.state, self.teachers, self.sim_url, self.args = state, teachers, sim_url, args
        self.nofile = nofile  # the server's RLIMIT_NOFILE, soft and hard: its descriptors, for flood tests
        self.token = token  # FAIR_SERVE_TOKEN; None: unset, so the server keeps its own in STATE/token
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, timeout: float = 30.0) -> Served:
        port_file = self.state.parent / f"{self.state.name}.port"
        port_file.unlink(missing_ok=True)
        log = self.state.parent / f"{self.state.name}.log"
        command = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--port-file", str(port_file),
                   "--state", str(self.state), "--teachers", str(self.teachers), "--base-url", self.sim_url,
                   *self.args]
        env = {k: v for k, v in os.environ.items() if k != "FAIR_SERVE_TOKEN"}
        if self.token is not None:
            env["FAIR_SERVE_TOKEN"] = self.token
        limit = None if self.nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                             (self.nofile, self.nofile))
        self.process = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=limit)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fair serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        while True:  # the port is bound before the app's start-up (resuming jobs) has run
            try:
                if httpx.get(self.url + "/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)

    def client(self, token: str = TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def upload(http: httpx.Client, content: bytes, purpose: str, name: str = "input.jsonl") -> httpx.Response:
    return http.post(
        "/v1/files", files={"file": (name, content, "application/jsonl")}, data={"purpose": purpose}
    )


def upload_mistakes(http: httpx.Client, path: Path, count: int | None = None, start: int = 0) -> str:
    lines = path.read_bytes().splitlines(keepends=True)[start:][:count]
    response = upload(http, b"".join(lines), "fair-mistakes")
    assert response.status_code == 200, response.text
    return response.json()["id"]


def submit(http: httpx.Client, file_id: str, **spec) -> dict:
    """A job of the paper's filter unless told: its reviews send every kind of request there is."""
    response = http.post("/v1/fair/jobs", json={"mistakes_file_id": file_id, "task": "svamp", "filter": "review",
                                                **spec})
    assert response.status_code == 200, response.text
    return response.json()


def wait_job(
    http: httpx.Client,
    job_id: str,
    timeout: float = 60.0,
    until=("completed", "failed", "cancelled", "stopped"),
) -> dict:
    deadline = time.monotonic() + timeout
    while (job := http.get(f"/v1/fair/jobs/{job_id}").json())["status"] not in until:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def batch_lines(count: int, model: str = "careful", prefix: str = "q") -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]},
            }
        )
        + b"\n"
        for i in range(count)
    )


def records(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.exists() else []


@contextlib.contextmanager
def served_with_simulator(folder: Path, data_dir, *flags: str):
    """A `fair serve` whose committee is an in-process offline simulator, both stopped on exit."""
    with OfflineServer(port=0, data_dir=data_dir) as sim, Served(
            folder / "state", teachers_yaml(folder, sim.url), sim.url, *flags) as served:
        yield served


def committee_record(i: int, rng: random.Random) -> dict:
    """A committee.jsonl record of the real shape (fair/records.py's committee_replies reads it) with random
    scores, acceptance and marks."""
    def reply(text: str) -> dict:
        mark = rng.random()
        return {"text": None if mark < 0.05 else text, "error": "HTTP 500" if 0.05 <= mark < 0.08 else None,
                "truncated": 0.08 <= mark < 0.12, "refused": "policy" if mark < 0.05 else None}

    rationales = {}
    for t in TEACHERS:
        reviews = {r: {"score": float(rng.randint(1, 5)), "reply": f"review of {t} by {r} {i}", "error": None,
                       "truncated": False, "refused": None} for r in TEACHERS if r != t}
        mean = sum(v["score"] for v in reviews.values()) / len(reviews)
        rationales[t] = reply(f"rationale {t} {i}") | {"reviews": reviews, "mean_score": mean, "accepted": mean >= 3}
    question = f"Question {i}: how many apples" + (" and a Zebra" if i % 97 == 0 else "")
    return {"id": f"q{i}", "mistake": {"id": f"q{i}", "question": question, "gold": str(i), "prediction": "7",
                                       "extracted": "7"},
            "feedback": {t: reply(f"feedback {t} {i}") for t in TEACHERS}, "rationales": rationales,
            "threshold": 3.0}


def write_records(path: Path, count: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = [committee_record(i, rng) for i in range(start, start + count)]
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return records
