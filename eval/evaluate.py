"""Stage 4, evaluate: accuracy of a student on one or more tasks, with the grader mining uses.

    fair eval --model smollm2-135m --task svamp
    fair eval --model checkpoints/svamp-smollm2-135m-mixed/final --task svamp gsm8k strategyqa --engine vllm
    fair eval --config configs/eval.yaml

For each task, writes to <out>/<task>-<split>/ (default out: data/eval/<student>):
    predictions.jsonl  every graded answer (StudentAnswer records), appended; a rerun answers only what is missing
    wrong.json         the wrong predictions in the shape of the paper's `*_test.json`
    summary.json       accuracy and counts, and the dtype the answers were made in (and why: fair/dtype.py); also
                       the accuracy on the clean questions, those the task's train split does not contaminate
                       (fair/decontam.py: SVAMP's test split has 29 of 300 whose 8-grams are mostly in train)
and prints one summary row per task. Greedy decoding by default; sampling is seeded, so runs repeat.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from fair.config import save_config
from fair.decontam import clean_ids
from fair.dtype import resolve_dtype
from fair.engines.base import Engine
from fair.jsonl import append_jsonl, write_json
from fair.lock import folder_lock
from fair.models import model_short_name
from fair.paper import export_mistakes
from fair.progress import Progress
from fair.records import answer_examples, check_resumable, finished_answers
from fair.student import StudentRun
from fair.tasks import get_task

CHUNK = 512  # answers per engine call and per append: a kill loses at most one chunk (SVAMP test: one)


@dataclass
class EvalConfig(StudentRun):  # model, limit, engine, sampling, dtype, ...: fair/student.py
    task: tuple[str, ...] = ("svamp",)  # one or more tasks, evaluated with one engine
    split: str = "test"  # the split of every task to answer
    out: str | None = None  # default data/eval/<student>

    def __post_init__(self) -> None:
        if isinstance(self.task, str):  # `task: svamp` in a YAML file, or EvalConfig(task="svamp")
            self.task = (self.task,)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        for name in self.task:
            get_task(name)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("data") / "eval" / model_short_name(self.model))


def evaluate(config: EvalConfig, engine: Engine | None = None) -> list[dict]:
    with contextlib.ExitStack() as locks:  # every task's folder before any is read: one run per folder
        for name in config.task:
            locks.enter_context(folder_lock(config.out_dir / f"{get_task(name).name}-{config.split}", "eval"))
        return evaluate_locked(config, engine)


def evaluate_locked(config: EvalConfig, engine: Engine | None = None) -> list[dict]:
    """Each task's predictions are appended as they are graded; a rerun with the same settings and the same
    model weights answers only what is missing (nothing, the second time: the engine is not even started)."""
    tasks = [get_task(name) for name in config.task]
    datasets = {task.name: task.load(config.split, config.data_dir, config.limit) for task in tasks}
    precision = resolve_dtype(config.dtype)
    rows = []
    for task in tasks:
        out = config.out_dir / f"{task.name}-{config.split}"
        check_resumable(config, out / "config.yaml", task)
        save_config(config, out / "config.yaml")
        done = finished_answers(out / "predictions.jsonl")
        todo = [e for e in datasets[task.name] if e.id not in done]
        began = time.perf_counter()
        if todo:
            engine = engine or config.start_engine(precision.dtype)
            with Progress(f"eval {task.name} {config.split}", len(todo), unit="q") as bar:
                for start in range(0, len(todo), CHUNK):
                    chunk = answer_examples(engine, task, todo[start : start + CHUNK], config.sampling,
                                            config.prompt_style)
                    append_jsonl(out / "predictions.jsonl", (a.to_json() for a in chunk))
                    bar.update(len(chunk))
        seconds = time.perf_counter() - began
        wanted = {e.id for e in datasets[task.name]}
        answers = [a for a in finished_answers(out / "predictions.jsonl").values() if a.id in wanted]
        write_json(out / "wrong.json", export_mistakes(task, [a for a in answers if a.is_mistake]))
        correct = sum(a.correct is True for a in answers)
        uncontaminated = clean_ids(task, config.split, config.data_dir)
        clean = [a for a in answers if a.id in uncontaminated]
        clean_correct = sum(a.correct is True for a in clean)
        row = {
            "task": task.name, "split": config.split, "model": config.model, "total": len(answers),
            "correct": correct, "accuracy": correct / len(answers) if answers else 0.0,
            "unparseable": sum(a.correct is None for a in answers),
            "generated_tokens": sum(a.generated_tokens for a in answers), "seconds": round(seconds, 2),
            "dtype": precision.to_json(), "clean_total": len(clean), "clean_correct": clean_correct,
            "clean_accuracy": clean_correct / len(clean) if clean else 0.0,
        }
        write_json(out / "summary.json", row)
        rows.append(row)
        print(f"{task.name:<12} {config.split:<10} accuracy {row['accuracy']:7.2%}  {correct:>5}/{len(answers):<5}"
              f"  unparseable {row['unparseable']:>4}  clean {clean_correct}/{len(clean)}  {precision.dtype} "
              f"({precision.reason})  -> {out}")
    return rows
