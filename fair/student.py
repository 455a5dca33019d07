"""A student run: the settings mining (gen/mine.py) and evaluation (eval/evaluate.py) share, and the folder of a
student's work on a task.

Both stages run a student over a task's split with one engine and grade every answer with the task's grader;
`MineConfig` and `EvalConfig` inherit `StudentRun`, which holds those settings once, with their checks, the
sampling they make and the engine they start. What differs stays in each stage's config: the task (one, or
several), the split's default, where the output goes.

`run_dir(task, student)` is the one spelling of `data/<task>/<student>/`: mining writes there, the committee and
training read there, `fair import-mistakes` fills it. The task is named by its canonical name, so an alias
(`strategyQA`) finds the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fair.config import Validated, at_least
from fair.dtype import Dtype, dtype_field
from fair.engines.base import Engine, EngineName, Sampling
from fair.engines.factory import make_engine
from fair.errors import FairError
from fair.models import DEFAULT_STUDENT, model_short_name
from fair.tasks import get_task


def run_dir(task: str, student: str) -> Path:
    """data/<task>/<student>: a student's mistakes, committee replies and paper files for one task."""
    return Path("data") / get_task(task).name / model_short_name(student)


@dataclass
class StudentRun(Validated):
    model: str = DEFAULT_STUDENT  # the bundled SmolLM2-135M-Instruct, a local (or trained) folder or a hub id
    limit: int | None = None  # first N examples of the split (of each task's); None for all
    engine: EngineName = "auto"  # auto = vLLM on a GPU where installed, else transformers
    batch_size: int = 32  # transformers engine: prompts per forward batch (vLLM batches on its own)
    max_new_tokens: int = 512  # the longest answer, in tokens; a cut-off answer is graded as it stands
    temperature: float = 0.0  # 0 = greedy; the paper sampled at 0.3 with top_p 0.9
    top_p: float = 1.0  # nucleus sampling; 1 keeps every token
    seed: int = 0  # of the sampling; used only when temperature > 0
    chat: bool = True  # wrap prompts in the student's chat template (the paper used raw text)
    prompt_style: Literal["fair", "paper"] = "fair"  # ours asks for a gradeable final line; "paper" for parity
    data_dir: str | None = None  # local data in shared/data layout; default $FAIR_DATA_DIR or ../shared/data
    tensor_parallel_size: int = 1  # vLLM: GPUs per replica
    data_parallel_size: int = 1  # replicas, each in its own process on its own GPUs
    dtype: Dtype = dtype_field()  # auto: bf16 on GPUs and CPUs with AMX or AVX512-BF16, else fp32 (fair/dtype.py)

    def validate(self) -> None:
        at_least(self, 1, "limit", "batch_size", "max_new_tokens", "tensor_parallel_size", "data_parallel_size")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise FairError(f"temperature must be in [0, 2] and top_p in (0, 1], got {self.temperature} and "
                            f"{self.top_p}")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def start_engine(self, dtype: str) -> Engine:
        """The student's engine, in `dtype` as resolved by the stage (fair/dtype.py): it records why."""
        return make_engine(self.engine, self.model, chat=self.chat, batch_size=self.batch_size, seed=self.seed,
                           tensor_parallel_size=self.tensor_parallel_size,
                           data_parallel_size=self.data_parallel_size, dtype=dtype)
