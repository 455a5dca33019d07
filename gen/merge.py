"""`fair merge`: join the shards of a sharded `fair mine` run into the run's folder, checked.

    fair mine --task gsm8k --limit 100000 --shard 0/4   # ... one per GPU or SLURM task (launch/README.md)
    fair merge --task gsm8k --limit 100000               # the same flags as `fair mine`, without --shard
    fair merge --task gsm8k --limit 100000 --force       # replace an earlier merge

Reads <run>/shard-<i>-of-<N>/ for i = 0..N-1 and writes <run>/answers.jsonl, mistakes.jsonl, stats.json and
config.yaml: what one unsharded run would have written, records in the split's order, so `fair committee`
reads the mistakes as usual and `fair mine` without --shard finds nothing left to do there.

Refused, in one line that names the shard folders: a shard (or the run folder) in use by a `fair mine`; a
missing shard folder; shards made with other settings than these flags or than each other (config.yaml,
model_fingerprint, task_definition.yaml); an id of the (limited) split that no shard answered, or that two shards
answered. Answers beyond --limit (a shard mined with a larger one earlier)
are left out, as `fair mine` leaves them out of its stats.

Streaming: the first pass keeps only where each id's line is (shard, file, byte offset); the second copies
those lines in the split's order into temp files that are renamed into place once both are complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from fair.config import save_config
from fair.errors import FairError
from fair.jsonl import read_jsonl, scan_jsonl, write_json
from fair.lock import folder_lock
from fair.records import ANSWER_DEFINING, StudentAnswer
from fair.tasks import Example, get_task
from gen.mine import MineConfig, shard_folder_name, summarize

# Shards must agree on these (and the model's weights) to be one run; engine and batching settings may differ.
SHARED_SETTINGS = ("task", "limit", "data_dir", *ANSWER_DEFINING)
SHOWN = 5  # ids listed in an error message


@dataclass(frozen=True, slots=True)
class Line:
    shard: int
    file: Path
    offset: int
    is_mistake: bool


def merge(config: MineConfig, force: bool = False) -> dict:
    if config.shard is not None:
        raise FairError(f"fair merge joins every shard: leave out --shard (got {config.shard!r})")
    with contextlib.ExitStack() as locks:  # the run folder, and no shard may still be mining
        locks.enter_context(folder_lock(config.run_dir, "mine"))
        for shard in sorted(p for p in config.run_dir.glob("shard-*-of-*") if p.is_dir()):
            locks.enter_context(folder_lock(shard, "mine"))
        return merge_unlocked(config, force)


def merge_unlocked(config: MineConfig, force: bool) -> dict:
    task = get_task(config.task)
    run = config.run_dir
    answers_path, mistakes_path = run / "answers.jsonl", run / "mistakes.jsonl"
    if not force and (answers_path.exists() or mistakes_path.exists()):
        raise FairError(f"{run} already holds answers.jsonl or mistakes.jsonl (an earlier merge, or an "
                        "unsharded run): pass --force to replace them")
    shards = find_shards(run)
    check_settings(config, shards)
    examples = task.load(config.split, config.data_dir, config.limit)
    lines, duplicated, left_out = locate(shards, {e.id for e in examples})
    check_complete(examples, lines, duplicated, shards)

    with contextlib.ExitStack() as stack:
        answers_out = stack.enter_context(replaced_when_done(answers_path))
        mistakes_out = stack.enter_context(replaced_when_done(mistakes_path))
        sources = {}
        for example in examples:
            line = lines[example.id]
            if line.file not in sources:
                sources[line.file] = stack.enter_context(line.file.open("rb"))
            source = sources[line.file]
            source.seek(line.offset)
            raw = source.readline().rstrip(b"\n") + b"\n"  # a valid last line may lack its newline
            answers_out.write(raw)
            if line.is_mistake:
                mistakes_out.write(raw)

    # The run folder now describes itself as one unsharded run with these (checked) settings.
    save_config(config, run / "config.yaml")
    for name in ("model_fingerprint", "task_definition.yaml"):  # checked the same in every shard
        if (made := shards[0] / name).exists():
            shutil.copyfile(made, run / name)
    stats = summarize((StudentAnswer.from_json(r, f"{answers_path} record {i}")
                       for i, r in enumerate(read_jsonl(answers_path))), *last_runs(shards))
    stats["shards"] = len(shards)
    stats["dtype"] = shard_dtypes(shards)
    write_json(run / "stats.json", stats)
    print(f"merged {len(shards)} shards into {run}: {task.name} {config.split} accuracy "
          f"{stats['accuracy']:.1%} ({stats['correct']}/{stats['total']}), {stats['mistakes']} mistakes -> "
          f"{mistakes_path}"
          + (f" ({left_out} answers beyond --limit left out)" if left_out else ""))
    return stats


def last_runs(shards: list[Path]) -> tuple[int, float]:
    """Tokens generated by the shards' last runs, summed, and their seconds: the slowest shard's, since shards
    run side by side. `fair report` shows the latter as the mining time."""
    paths = [shard / "stats.json" for shard in shards]
    runs = [orjson.loads(path.read_bytes())["this_run"] for path in paths if path.exists()]
    return sum(r["generated_tokens"] for r in runs), max((r["seconds"] for r in runs), default=0.0)


def shard_dtypes(shards: list[Path]) -> dict | list[dict] | None:
    """What the shards ran in (fair/dtype.py): one record when they agree, else each distinct one; shards on
    machines of different kinds may resolve `auto` differently."""
    found = [orjson.loads(path.read_bytes()).get("dtype") for path in (s / "stats.json" for s in shards)
             if path.exists()]
    distinct = [d for i, d in enumerate(found) if d is not None and d not in found[:i]]
    return distinct[0] if len(distinct) == 1 else distinct or None


# ----------------------------------------------------------------------------------------------------------
# Checks


def find_shards(run: Path) -> list[Path]:
    """The folders shard-0-of-N .. shard-(N-1)-of-N, all of them, for one N."""
    found: dict[int, dict[int, Path]] = {}
    for path in run.glob("shard-*-of-*"):
        if (match := re.fullmatch(r"shard-(\d+)-of-(\d+)", path.name)) and path.is_dir():
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise FairError(f"no shard folders (shard-<i>-of-<N>) in {run}: run `fair mine --shard i/N` first")
    if len(found) > 1:
        raise FairError(f"{run} holds shards of runs split {' and '.join(map(str, sorted(found)))} ways: "
                        "move the folders of the one not to merge elsewhere")
    [(count, by_index)] = found.items()
    if missing := [shard_folder_name(i, count) for i in range(count) if i not in by_index]:
        raise FairError(f"{run}: missing shard folder(s) {', '.join(missing)}: run "
                        f"`fair mine --shard i/{count}` for each")
    return [by_index[i] for i in range(count)]


def check_settings(config: MineConfig, shards: list[Path]) -> None:
    fingerprints = {}
    for index, shard in enumerate(shards):
        path = shard / "config.yaml"
        if not path.exists():
            raise FairError(f"{path} is missing: was this shard made by `fair mine --shard`?")
        saved = yaml.safe_load(path.read_text()) or {}
        if saved.get("shard") != f"{index}/{len(shards)}":
            raise FairError(f"{path}: shard {saved.get('shard')!r} does not match its folder {shard.name}")
        for key in SHARED_SETTINGS:
            if key in saved and saved[key] != getattr(config, key):
                raise FairError(f"{path}: made with {key}={saved[key]!r}, but this merge has {key}="
                                f"{getattr(config, key)!r}; give fair merge the flags the shards were mined "
                                "with")
        if (fingerprint := shard / "model_fingerprint").exists():
            fingerprints[shard.name] = fingerprint.read_text()
        definition = shard / "task_definition.yaml"  # a task file edited between two shards' runs
        if definition.exists() and yaml.safe_load(definition.read_text()) != get_task(config.task).definition():
            raise FairError(f"{definition}: mined with another definition of task {config.task!r} than its file "
                            "gives now: re-mine the shard, or restore the file")
    if len(set(fingerprints.values())) > 1:
        raise FairError(f"shards {', '.join(fingerprints)} were mined with different builds of "
                        f"{config.model} (model_fingerprint differs): re-mine the odd ones")


def shard_files(shard: Path) -> list[Path]:
    """The answers log, then the mistakes for ids it lacks: a kill between mine's two writes leaves an id in
    mistakes.jsonl only, and `finished_answers` counts it as done."""
    return [p for p in (shard / "answers.jsonl", shard / "mistakes.jsonl") if p.exists()]


def locate(shards: list[Path], wanted: set[str]) -> tuple[dict[str, Line], list[tuple[str, Line, Line]], int]:
    """Where each wanted id's line is; ids found in two shards (with both lines); how many were not wanted."""
    lines: dict[str, Line] = {}
    duplicated: list[tuple[str, Line, Line]] = []
    left_out = 0
    for index, shard in enumerate(shards):
        found: dict[str, Line] = {}
        for path in shard_files(shard):
            for number, (offset, record) in enumerate(scan_jsonl(path)):
                if record.get("id") not in found:  # parsed once: a mistake's line repeats its answer's
                    answer = StudentAnswer.from_json(record, f"{path} record {number}")
                    found[answer.id] = Line(index, path, offset, answer.is_mistake)
        for id_, line in found.items():
            if id_ not in wanted:
                left_out += 1
            elif id_ in lines:
                duplicated.append((id_, lines[id_], line))
            else:
                lines[id_] = line
    return lines, duplicated, left_out


def check_complete(examples: list[Example], lines: dict[str, Line], duplicated: list[tuple[str, Line, Line]],
                   shards: list[Path]) -> None:
    count = len(shards)
    if missing := [e for e in examples if e.id not in lines]:
        shown = ", ".join(f"{e.id} ({shard_folder_name(e.index % count, count)})" for e in missing[:SHOWN])
        raise FairError(f"{len(missing)} id(s) of the split have no answer in any shard, e.g. {shown}: rerun "
                        "those shards (they resume)")
    if duplicated:
        shown = ", ".join(f"{id_} ({shards[first.shard].name} and {shards[second.shard].name})"
                          for id_, first, second in duplicated[:SHOWN])
        raise FairError(f"{len(duplicated)} id(s) answered by more than one shard, e.g. {shown}: the shard "
                        "folders do not belong to one run")


@contextlib.contextmanager
def replaced_when_done(path: Path):
    """A binary file written under a temporary name and renamed over `path` only if the block succeeds."""
    tmp = path.with_name(path.name + ".merging")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
