"""`fair gen` / `make gen`: mine the student's mistakes, ask the committee, export the paper's files.

    make gen DATASET=gsm8k                          # default committee (needs its API keys)
    make gen DATASET=svamp TEACHERS=offline LIMIT=50  # the offline simulator, started and stopped here
    fair gen --task strategyqa --teachers paper --student meta-llama/Llama-2-7b-chat-hf --engine vllm

Everything lands in data/<task>/<student>/: mistakes.jsonl, committee.jsonl, requests.sqlite, and the
paper's <student>_<task>_{false,feedback,rationale}_round0.json (--paper-round r: _round<r>, as `fair loop` names
round r's). Each stage resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass

from fair.config import Validated, field_doc
from fair.errors import FairError
from fair.paper import write_paper_files
from fair.tasks import get_task
from gen.committee.run import CommitteeConfig, committee, finished_ids, run_recipe
from gen.mine import MineConfig, mine
from gen.teachers.config import load_committee, missing_keys

OFFLINE = "offline"
# `fair gen`'s settings are its stages': these are taken by name from their configs, where each is typed, given
# its default and documented once. The command line and configs/gen.yaml see them flat: --task, --limit, --teachers.
FROM_MINING = ("task", "limit", "engine", "batch_size", "max_new_tokens", "dtype", "data_dir", "out", "paper_student",
               "paper_round")
FROM_COMMITTEE = ("student", "teachers", "prompts", "filter", "samples", "teacher_temperature", "threshold", "window",
                  "batch_api", "max_cost_usd", "cache")


def settings_from(stage: type, names: tuple[str, ...], notes: dict[str, str] | None = None) -> Callable[[type], type]:
    """A class decorator (under @dataclass) that gives the class these fields of a stage's config dataclass, as
    they are there: type, default and documentation (its comment there becomes the copy's help, plus a note on
    what the field does here), ahead of the class's own fields."""
    fields = {f.name: f for f in dataclasses.fields(stage)}
    hints = typing.get_type_hints(stage)

    def add(cls: type) -> type:
        cls.__annotations__ = {**{n: hints[n] for n in names}, **cls.__dict__.get("__annotations__", {})}
        for name in names:
            f = fields[name]
            words = "; ".join(filter(None, (field_doc(stage, f), (notes or {}).get(name))))
            setattr(cls, name, dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                 metadata={**f.metadata, "help": words}))
        return cls

    return add


@dataclass
@settings_from(MineConfig, FROM_MINING)
@settings_from(CommitteeConfig, FROM_COMMITTEE, {"teachers": f'"{OFFLINE}": the simulator, started and stopped here',
                                                  "cache": "max_cost_usd caps what was spent through it"})
class GenConfig(Validated):
    export_paper: bool = True  # write the paper's feedback and rationale files at the end
    offline_latency_ms: tuple[int, int] = (50, 500)  # the simulator's reply latency range

    def validate(self) -> None:
        """The settings are its stages': building their configs checks them by the stages' own rules, before
        an hour of mining rather than at the committee."""
        self.mine_config()
        self.committee_config()
        low, high = self.offline_latency_ms
        if not 0 <= low <= high:
            raise FairError(f"offline_latency_ms must be MIN MAX with 0 <= MIN <= MAX, got {low} {high}")

    def mine_config(self) -> MineConfig:
        return MineConfig(**{n: getattr(self, n) for n in FROM_MINING}, model=self.student,
                          export_seed=self.export_paper)

    def committee_config(self, base_url: str | None = None) -> CommitteeConfig:
        mistakes = str(self.mine_config().out_dir / "mistakes.jsonl")
        return CommitteeConfig(**{n: getattr(self, n) for n in FROM_COMMITTEE}, task=self.task, base_url=base_url,
                               mistakes=mistakes)


def generate(config: GenConfig) -> None:
    check_teachers(config)
    mine(config.mine_config())
    with offline_server(config) as base_url:
        committee_config = config.committee_config(base_url)
        committee(committee_config)
    if config.export_paper:
        export(config, committee_config)


def check_teachers(config: GenConfig) -> None:
    """Before mining: an hour of student inference should not end in a missing key, in a temperature the
    teachers' APIs refuse (--teacher-temperature over their YAML's), or in a committee output of another recipe."""
    committee_config = config.committee_config()
    teachers = committee_config.sampled(load_committee(config.teachers))
    if config.teachers != OFFLINE and (missing := missing_keys(teachers)):
        raise FairError(f"committee {config.teachers!r} needs the environment variable(s) {', '.join(missing)}; "
                        f"set them, or use the offline simulator: make gen DATASET={config.task} TEACHERS=offline")
    finished_ids(committee_config.out_path, run_recipe(committee_config, teachers))


@contextlib.contextmanager
def offline_server(config: GenConfig):
    """Start the simulator on a free loopback port for an offline committee; nothing for a real one."""
    if config.teachers != OFFLINE:
        yield None
        return
    from simulator.server import OfflineServer

    with OfflineServer(port=0, latency_ms=config.offline_latency_ms, data_dir=config.data_dir,
                       tasks=(config.task,)) as server:  # a task declared in YAML is not among the built-ins
        print(f"offline committee (a simulator) listening on {server.url}")
        yield server.url


def export(config: GenConfig, committee_config: CommitteeConfig) -> None:
    mining = config.mine_config()
    feedback, rationale = write_paper_files(get_task(config.task), committee_config.out_path, mining.paper_stem,
                                            mining.paper_round)
    print(f"wrote the paper's files: {feedback}, {rationale}")
