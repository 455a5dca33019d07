"""A job's recipe across versions: the committee's default filter was the paper's (review) before it became the gold
check, so a stored job without a `filter` ran review, and `fair committee --server` names its filter to every
server, whatever that server's own default."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from fair.errors import FairError
from gen.committee.run import CommitteeConfig
from serve.jobs import job_recipe
from serve.remote import same_recipe, submit

OLD_SPEC = {"task": "svamp", "prompts": "fair", "threshold": 3.0, "window": 64, "limit": None}  # before filter


def test_a_job_stored_before_its_spec_had_a_filter_ran_review():
    assert job_recipe(OLD_SPEC) == {"filter": "review", "samples": 1, "teacher_temperature": None, "threshold": 3.0}
    assert job_recipe(OLD_SPEC | {"filter": "none", "samples": 2})["filter"] == "none"
    old_job = {"id": "job-1", "spec": OLD_SPEC}
    same_recipe(old_job, CommitteeConfig(filter="review"), Path("ledger.json"))  # follows it
    with pytest.raises(FairError, match="ledger.json: job job-1 runs filter review, not gold"):
        same_recipe(old_job, CommitteeConfig(), Path("ledger.json"))  # today's default is not what it ran


@pytest.mark.parametrize("filter", ["gold", "review"])
def test_a_submitted_job_names_its_filter_even_the_default(tmp_path, filter):
    mistakes = tmp_path / "mistakes.jsonl"
    mistakes.write_text("{}\n")
    sent = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": "file-1"})
        sent.append(orjson.loads(request.content))
        return httpx.Response(200, json={"id": "job-1"})

    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://server") as http:
        submit(http, CommitteeConfig(mistakes=str(mistakes), filter=filter))
    [spec] = sent
    assert spec["filter"] == filter and spec["mistakes_file_id"] == "file-1"
    assert "samples" not in spec and "teacher_temperature" not in spec  # defaults every server version runs
