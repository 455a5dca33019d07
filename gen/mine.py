"""Stage 1, mine mistakes: run the student over a task's train split and keep what it gets wrong.

    fair mine --task svamp --limit 32                      # default student (SmolLM2-135M), auto engine
    fair mine --task gsm8k --model meta-llama/Llama-2-7b-chat-hf --engine vllm --tensor-parallel-size 2
    fair mine --config configs/mine.yaml task=strategyqa
    fair mine --task gsm8k --shard 1/4                     # one of 4 independent slices; then `fair merge`

Writes to data/<task>/<student>/ (or --out):
    answers.jsonl   every graded answer (StudentAnswer records), the resume log
    mistakes.jsonl  the wrong or unparseable ones, read by the committee stage
    stats.json      accuracy, counts, tokens/s, the dtype it ran in and why       config.yaml  the resolved settings
    model_fingerprint, task_definition.yaml   the student's weight files and the task's definition, checked on a resume
Each chunk of answers is appended and fsynced as soon as it is graded; a rerun skips finished ids, so a
killed run loses at most the chunk in flight and never duplicates a record. One run per folder: a second
`fair mine` on a folder (or shard) in use fails at once, naming the first one's pid (fair/lock.py).

Memory holds a chunk and the answered ids, never the split: it is read a row at a time, twice (a first pass
counts the work and checks every row before the model loads), and the answer logs are streamed, so a corpus of
millions of questions mines as a small one does.

Sharding (`--shard i/N`, 0-based): shard i takes the examples whose row in the split is i modulo N, after
--limit. Strided rather than hashed or in blocks: shards differ in size by at most one and see the same mix of
the split; a row's shard never depends on --limit, so raising the limit only extends each shard, and its
existing answers still resume. A shard writes to <out>/shard-<i>-of-<N>/, so shards never share a file and
each resumes on its own; `fair merge` (gen/merge.py) then checks and joins them into <out>/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from fair.config import at_least, save_config
from fair.dtype import resolve_dtype
from fair.engines.base import Engine
from fair.errors import FairError
from fair.jsonl import append_jsonl, write_json
from fair.lock import folder_lock
from fair.models import model_short_name
from fair.paper import export_mistakes, paper_file_name
from fair.progress import Progress
from fair.records import StudentAnswer, answer_examples, answered, check_resumable
from fair.student import StudentRun, run_dir
from fair.tasks import Example, Task, get_task


@dataclass
class MineConfig(StudentRun):  # model, limit, engine, sampling, dtype, ...: fair/student.py
    task: str = "svamp"  # the benchmark (`fair tasks` lists them)
    split: str = "train"  # the split to answer; its mistakes are what the committee explains
    chunk_size: int = 256  # prompts per engine call and per durable write: a kill loses at most one chunk
    out: str | None = None  # default data/<task>/<student>
    export_seed: bool = False  # also write the paper's <student>_<task>_false_round<r>.json
    paper_student: str | None = None  # <student> in the paper's file names; default the model's folder or hub name
    paper_round: int = 0  # <r> in the paper's file names: the round whose student this is (`fair loop`)
    shard: str | None = None  # "i/N": mine only rows i, i+N, i+2N, ... into <out>/shard-<i>-of-<N>/

    def validate(self) -> None:
        super().validate()
        get_task(self.task)
        at_least(self, 1, "chunk_size")
        at_least(self, 0, "paper_round")
        if self.shard is not None:
            parse_shard(self.shard)

    @property
    def shard_index_count(self) -> tuple[int, int] | None:
        return None if self.shard is None else parse_shard(self.shard)

    @property
    def paper_stem(self) -> str:
        """`<student>_<task>`, the start of the paper's file names (fair/paper.py's paper_file_name)."""
        return f"{model_short_name(self.paper_student or self.model)}_{get_task(self.task).name}"

    @property
    def run_dir(self) -> Path:
        """The whole run's folder: where an unsharded run writes and where `fair merge` joins the shards."""
        return Path(self.out or run_dir(self.task, self.model))

    @property
    def out_dir(self) -> Path:
        if (shard := self.shard_index_count) is None:
            return self.run_dir
        return self.run_dir / shard_folder_name(*shard)


def mine(config: MineConfig, engine: Engine | None = None) -> dict:
    with folder_lock(config.out_dir, "mine"):  # before the resume log is read: one run per folder
        return mine_unlocked(config, engine)


def mine_unlocked(config: MineConfig, engine: Engine | None) -> dict:
    task = get_task(config.task)
    out = config.out_dir
    check_resumable(config, out / "config.yaml", task, ("task", "shard"))
    answers_path, mistakes_path = out / "answers.jsonl", out / "mistakes.jsonl"
    done = {a.id for a in answered(mistakes_path, answers_path)}
    # The first pass: the bar's total, and every row read and checked before the model loads, not hours in.
    total = todo = 0
    for example in run_examples(task, config):
        total, todo = total + 1, todo + (example.id not in done)
    save_config(config, out / "config.yaml")
    precision = resolve_dtype(config.dtype)

    generated_tokens, seconds = 0, 0.0
    if todo:
        print(f"mining {todo} of {total} {task.name} {config.split} examples ({len(done)} done) in "
              f"{precision.dtype} ({precision.reason}) -> {out}")
        engine = engine or config.start_engine(precision.dtype)
        bar = Progress(f"mine {task.name}", todo, unit="q")
        for batch in chunks((e for e in run_examples(task, config) if e.id not in done), config.chunk_size):
            began = time.perf_counter()
            chunk = answer_examples(engine, task, batch, config.sampling, config.prompt_style)
            seconds += time.perf_counter() - began
            generated_tokens += sum(a.generated_tokens for a in chunk)
            # Mistakes first: if a kill lands between the two writes, the resume log still knows the id.
            append_jsonl(mistakes_path, (a.to_json() for a in chunk if a.is_mistake))
            append_jsonl(answers_path, (a.to_json() for a in chunk))
            bar.note(f"tok/s={generated_tokens / seconds:.0f} wrong={sum(a.is_mistake for a in chunk)}")
            bar.update(len(chunk))  # after the note: a plain line printed here shows this chunk's
        bar.close()

    stats = summarize(run_answers(config, mistakes_path, answers_path), generated_tokens, seconds)
    stats |= {"dtype": precision.to_json()}
    write_json(out / "stats.json", stats)
    if config.export_seed:
        mistakes = [a for a in run_answers(config, mistakes_path, answers_path) if a.is_mistake]
        paper_path = out / paper_file_name(config.paper_stem, "false", config.paper_round)
        write_json(paper_path, export_mistakes(task, mistakes))
        print(f"wrote {len(mistakes)} mistakes in the paper's format to {paper_path}")
    print(
        f"{task.name} {config.split}: accuracy {stats['accuracy']:.1%} ({stats['correct']}/{stats['total']}), "
        f"{stats['mistakes']} mistakes ({stats['unparseable']} unparseable) -> {mistakes_path}"
    )
    return stats


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise FairError(f"shard must be 'i/N' with 0 <= i < N (i counts from 0), got {text!r}")
    return int(match[1]), int(match[2])


def shard_folder_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def shard_examples(examples: Iterable[Example], shard: tuple[int, int] | None) -> Iterator[Example]:
    """Shard i of N: the rows i modulo N (see the module docstring for why strided), read lazily."""
    return (e for e in examples if in_shard(e.index, shard))


def in_shard(row: int, shard: tuple[int, int] | None) -> bool:
    return shard is None or row % shard[1] == shard[0]


def run_examples(task: Task, config: MineConfig) -> Iterator[Example]:
    """This run's examples, read from the split afresh: its first --limit rows, of them this shard's."""
    return shard_examples(islice(task.examples(config.split, config.data_dir), config.limit), config.shard_index_count)


def run_answers(config: MineConfig, *paths: Path) -> Iterator[StudentAnswer]:
    """The answers in the logs to this run's rows (by row number, as `run_examples` picks them), streamed."""
    return (a for a in answered(*paths) if (config.limit is None or a.index < config.limit)
            and in_shard(a.index, config.shard_index_count))


def chunks(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def summarize(answers: Iterable[StudentAnswer], generated_tokens: int, seconds: float) -> dict:
    """Accuracy and counts in one pass, so that `fair merge` can stream a merged file through it."""
    total = correct = unparseable = truncated = 0
    for a in answers:
        total += 1
        correct += a.correct is True
        unparseable += a.correct is None
        truncated += a.finish_reason == "length"
    return {
        "total": total,
        "correct": correct,
        "mistakes": total - correct,
        "unparseable": unparseable,
        "accuracy": correct / total if total else 0.0,
        "truncated": truncated,
        "this_run": {
            "generated_tokens": generated_tokens,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(generated_tokens / seconds, 1) if seconds else None,
        },
    }
