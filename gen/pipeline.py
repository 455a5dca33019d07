"""`fair gen` / `make gen`: mine the student's mistakes, ask the committee, export the paper's files.

    make gen DATASET=gsm8k                          # default committee (needs its API keys)
    make gen DATASET=svamp TEACHERS=offline LIMIT=50  # the offline simulator, started and stopped here
    fair gen --task strategyqa --teachers paper --student meta-llama/Llama-2-7b-chat-hf --engine vllm

Everything lands in data/<task>/<student>/: mistakes.jsonl, committee.jsonl, requests.sqlite, and the
paper's <student>_<task>_{false,feedback,rationale}_round0.json. Each stage resumes where it stopped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

from fair.config import Validated
from fair.dtype import Dtype, dtype_field
from fair.engines.base import EngineName
from fair.errors import FairError
from fair.models import DEFAULT_STUDENT, model_short_name
from fair.paper import write_paper_files
from fair.tasks import get_task
from gen.committee.run import CommitteeConfig, committee
from gen.mine import MineConfig, mine
from gen.teachers.config import load_committee, missing_keys

OFFLINE = "offline"


@dataclass
class GenConfig(Validated):
    task: str = "svamp"
    student: str = DEFAULT_STUDENT
    teachers: str = "default"  # a committee in configs/teachers/ or a YAML path; "offline" starts the simulator
    limit: int | None = None  # first N train examples to mine (and so at most N mistakes)
    engine: EngineName = "auto"
    batch_size: int = 32  # transformers engine: prompts per forward batch while mining (vLLM batches on its own)
    max_new_tokens: int = 512  # the student's answer length while mining
    dtype: Dtype = dtype_field()  # the student's while mining (fair/dtype.py)
    prompts: Literal["fair", "paper"] = "fair"
    threshold: float = 3.0
    window: int = 64
    data_dir: str | None = None
    export_paper: bool = True  # write the paper's feedback and rationale files at the end
    offline_latency_ms: tuple[int, int] = (50, 500)  # the simulator's reply latency range
    batch_api: bool = False  # the committee's feedback and rationales through OpenAI's Batch API (gen/teachers/batch.py)
    max_cost_usd: float | None = None  # the committee stops before its folder's spending could pass this (USD)
    out: str | None = None  # the run's folder (mistakes, committee.jsonl, paper files); default data/<task>/<student>

    def validate(self) -> None:
        """The settings are its stages': building their configs checks them by the stages' own rules, before
        an hour of mining rather than at the committee."""
        self.mine_config()
        self.committee_config()
        low, high = self.offline_latency_ms
        if not 0 <= low <= high:
            raise FairError(f"offline_latency_ms must be MIN MAX with 0 <= MIN <= MAX, got {low} {high}")

    def mine_config(self) -> MineConfig:
        return MineConfig(task=self.task, model=self.student, limit=self.limit, engine=self.engine,
                          batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, dtype=self.dtype,
                          data_dir=self.data_dir, export_seed=self.export_paper, out=self.out)

    def committee_config(self, base_url: str | None = None) -> CommitteeConfig:
        mistakes = str(self.mine_config().out_dir / "mistakes.jsonl")
        return CommitteeConfig(task=self.task, student=self.student, teachers=self.teachers, base_url=base_url,
                               prompts=self.prompts, threshold=self.threshold, window=self.window,
                               batch_api=self.batch_api, max_cost_usd=self.max_cost_usd, mistakes=mistakes)


def generate(config: GenConfig) -> None:
    teachers = load_committee(config.teachers)
    if config.teachers != OFFLINE and (missing := missing_keys(teachers)):
        # Before mining: an hour of student inference should not end in a missing-key error.
        raise FairError(f"committee {config.teachers!r} needs the environment variable(s) {', '.join(missing)}; "
                        f"set them, or use the offline simulator: make gen DATASET={config.task} TEACHERS=offline")
    mine(config.mine_config())
    with offline_server(config) as base_url:
        committee_config = config.committee_config(base_url)
        committee(committee_config)
    if config.export_paper:
        export(config, committee_config)


@contextlib.contextmanager
def offline_server(config: GenConfig):
    """Start the simulator on a free loopback port for an offline committee; nothing for a real one."""
    if config.teachers != OFFLINE:
        yield None
        return
    from gen.offline.server import OfflineServer

    with OfflineServer(port=0, latency_ms=config.offline_latency_ms, data_dir=config.data_dir) as server:
        print(f"offline committee (a simulator) listening on {server.url}")
        yield server.url


def export(config: GenConfig, committee_config: CommitteeConfig) -> None:
    task = get_task(config.task)
    feedback, rationale = write_paper_files(task, committee_config.out_path,
                                            f"{model_short_name(config.student)}_{task.name}")
    print(f"wrote the paper's files: {feedback}, {rationale}")
