"""Stage 1, mine mistakes: run the student over a task's train split and keep what it gets wrong.

    fair mine --task svamp --limit 32                      # default student (SmolLM2-135M), auto engine
    fair mine --task gsm8k --model meta-llama/Llama-2-7b-chat-hf --engine vllm --tensor-parallel-size 2
    fair mine --config configs/mine.yaml task=strategyqa

Writes to data/<task>/<student>/ (or --out):
    answers.jsonl   every graded answer (StudentAnswer records), the resume log
    mistakes.jsonl  the wrong or unparseable ones, read by the committee stage
    stats.json      accuracy, counts, tokens/s        config.yaml  the resolved settings
Each chunk of answers is appended and fsynced as soon as it is graded; a rerun skips finished ids, so a
killed run loses at most the chunk in flight and never duplicates a record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from fair.config import save_config
from fair.errors import FairError
from fair.eval.tasks import get_task
from fair.gen.engine import Engine, EngineName, Sampling, make_engine
from fair.gen.models import DEFAULT_STUDENT, model_short_name
from fair.gen.paper_format import export_mistakes
from fair.gen.records import StudentAnswer, answer_examples, check_resumable, finished_answers
from fair.jsonl import append_jsonl, write_json


@dataclass
class MineConfig:
    task: str = "svamp"
    model: str = DEFAULT_STUDENT  # the bundled SmolLM2-135M-Instruct, a local directory or a hub id
    split: str = "train"
    limit: int | None = None  # first N examples of the split; None for all
    engine: EngineName = "auto"  # auto = vLLM when installed, else transformers
    batch_size: int = 32  # transformers engine: prompts per forward batch (vLLM batches on its own)
    chunk_size: int = 256  # prompts per engine call and per durable write: a kill loses at most one chunk
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy; the paper sampled at 0.3 with top_p 0.9
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True  # wrap prompts in the student's chat template (the paper used raw text)
    prompt_style: Literal["fair", "paper"] = "fair"  # ours asks for a gradeable final line; "paper" for parity
    data_dir: str | None = None  # local data in shared/data layout; default $FAIR_DATA_DIR or ../shared/data
    out: str | None = None  # default data/<task>/<student>
    tensor_parallel_size: int = 1  # vLLM: GPUs per replica
    data_parallel_size: int = 1  # replicas, each in its own process on its own GPUs
    export_seed: bool = False  # also write the paper's <student>_<task>_false_round0.json

    def validate(self) -> None:
        get_task(self.task)
        if self.prompt_style not in ("fair", "paper"):
            raise FairError(f"prompt_style must be 'fair' or 'paper', got {self.prompt_style!r}")
        for name in ("batch_size", "chunk_size", "max_new_tokens", "tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise FairError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise FairError(f"limit must be at least 1, got {self.limit}")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise FairError("temperature must be in [0, 2] and top_p in (0, 1]")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("data") / get_task(self.task).name / model_short_name(self.model))

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.seed)


def mine(config: MineConfig, engine: Engine | None = None) -> dict:
    task = get_task(config.task)
    out = config.out_dir
    check_resumable(config, out / "config.yaml", ("task",))
    examples = task.load(config.split, config.data_dir)[: config.limit]
    answers_path, mistakes_path = out / "answers.jsonl", out / "mistakes.jsonl"
    done = finished_answers(mistakes_path, answers_path)
    todo = [e for e in examples if e.id not in done]
    save_config(config, out / "config.yaml")

    generated_tokens, seconds = 0, 0.0
    if todo:
        print(f"mining {len(todo)} of {len(examples)} {task.name} {config.split} examples ({len(done)} done) -> {out}")
        engine = engine or make_engine(
            config.engine, config.model, chat=config.chat, batch_size=config.batch_size, seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size, data_parallel_size=config.data_parallel_size,
        )
        progress = tqdm(total=len(todo), unit="q", desc=f"mine {task.name}", dynamic_ncols=True)
        for start in range(0, len(todo), config.chunk_size):
            began = time.perf_counter()
            chunk = answer_examples(engine, task, todo[start : start + config.chunk_size], config.sampling, config.prompt_style)
            seconds += time.perf_counter() - began
            generated_tokens += sum(a.generated_tokens for a in chunk)
            # Mistakes first: if a kill lands between the two writes, the resume log still knows the id.
            append_jsonl(mistakes_path, (a.to_json() for a in chunk if a.is_mistake))
            append_jsonl(answers_path, (a.to_json() for a in chunk))
            progress.update(len(chunk))
            progress.set_postfix(tok_s=f"{generated_tokens / seconds:.0f}", wrong=sum(a.is_mistake for a in chunk))
        progress.close()

    wanted = {e.id for e in examples}
    answers = [a for a in finished_answers(mistakes_path, answers_path).values() if a.id in wanted]
    stats = summarize(answers, generated_tokens, seconds)
    write_json(out / "stats.json", stats)
    if config.export_seed:
        mistakes = [a for a in answers if a.is_mistake]
        paper_path = out / f"{model_short_name(config.model)}_{task.name}_false_round0.json"
        write_json(paper_path, export_mistakes(task, mistakes))
        print(f"wrote {len(mistakes)} mistakes in the paper's format to {paper_path}")
    print(
        f"{task.name} {config.split}: accuracy {stats['accuracy']:.1%} ({stats['correct']}/{stats['total']}), "
        f"{stats['mistakes']} mistakes ({stats['unparseable']} unparseable) -> {mistakes_path}"
    )
    return stats


def summarize(answers: list[StudentAnswer], generated_tokens: int, seconds: float) -> dict:
    total = len(answers)
    correct = sum(a.correct is True for a in answers)
    return {
        "total": total,
        "correct": correct,
        "mistakes": total - correct,
        "unparseable": sum(a.correct is None for a in answers),
        "accuracy": correct / total if total else 0.0,
        "truncated": sum(a.finish_reason == "length" for a in answers),
        "this_run": {
            "generated_tokens": generated_tokens,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(generated_tokens / seconds, 1) if seconds else None,
        },
    }
