"""Resuming a training run: the same command again continues where the last one stopped, and nothing else does.

A run's folder holds train.yaml (its settings), checkpoints/step-N (train/checkpoint.py) and log.jsonl.
- Settings: any difference from train.yaml in a setting that defines the training is refused, naming the
  fields; continuing old weights under another alpha or schedule, or handing back the old model as "done",
  would pass off one training as another. RUN_ONLY settings change how the same steps are computed or
  recorded, not what they compute (accumulation is exact, ZeRO matches one process: tests/test_train.py; save_adapter
  only adds a folder at the end), so they may change. max_steps may only grow (a shorter run would hand back the
  longer one's model), and only where a step's learning rate does not depend on the run's length (constant schedule, no warm-up): then the
  steps taken are those of the longer run.
- Data: a checkpoint records a digest of the tokenized examples; resuming on other data (the same
  committee.jsonl grown by a later `fair committee`) is refused.
- Log: the lines of steps after the checkpoint resumed from are dropped, since this run takes them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from array import array
from pathlib import Path
from typing import Any

import orjson
import yaml

from fair.errors import FairError
from fair.jsonl import read_jsonl
from train.checkpoint import latest_checkpoint, load_weights

RUN_ONLY = ("micro_batch_size", "deepspeed", "pack", "compile", "out", "save_every", "log_every", "report_to",
            "save_adapter")


def check_settings(config: Any, saved_path: Path) -> None:
    """Refuse a config that differs from the run's saved one in anything but RUN_ONLY (and max_steps grown)."""
    if changed := changed_settings(config, saved_path):
        raise FairError(f"{saved_path.parent} was trained with other settings ({', '.join(changed)}): use "
                        "another --out, or delete that folder to start over")


def changed_settings(config: Any, saved_path: Path) -> list[str]:
    """Each setting that defines the training and differs from the saved run's, as "name old -> new"."""
    if not saved_path.exists():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changed = []
    for field in dataclasses.fields(config):
        name, new = field.name, getattr(config, field.name)
        if name in RUN_ONLY or name not in saved or saved[name] == new:
            continue
        if name == "filter" and new is None:  # "the committee's": train() saves it resolved from the same records
            continue
        if name == "max_steps" and length_free(config) and grows(saved[name], new):
            continue
        changed.append(f"{name} {saved[name]} -> {new}")
    return changed


def length_free(config: Any) -> bool:
    """Whether each step's learning rate is the same however many steps the run has."""
    return config.schedule == "constant" and config.warmup_ratio == 0


def grows(old: int | None, new: int | None) -> bool:
    return old is not None and (new is None or new > old)


def data_digest(items: list) -> str:
    """sha256 of the tokenized examples in order: what the steps train on, whatever file they came from."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(array("q", [item.kind, len(item.input_ids), *item.input_ids, *item.labels]).tobytes())
    return digest.hexdigest()


def check_data(state: dict, digest: str, checkpoint: Path, source: str) -> None:
    if state.get("data", digest) != digest:  # checkpoints from before the digest carry none
        raise FairError(f"the training data ({source}) changed since checkpoint {checkpoint.name} in "
                        f"{checkpoint.parent}: use another --out, or delete that folder to start over")


def trim_log(path: Path, done: int) -> None:
    """Keep the log lines of steps up to the checkpoint resumed from: later ones are taken again."""
    if path.exists():
        records = list(read_jsonl(path))
        if any(r["step"] > done for r in records):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records if r["step"] <= done))
            os.replace(tmp, path)  # a kill here leaves the old log whole, and the next resume trims it


def resume_point(config: Any, model, digest: str, rank: int) -> tuple[Path | None, int]:
    """The checkpoint to resume from (its weights now in the model) and its step; the log trimmed to it."""
    resume_from = latest_checkpoint(config.out_dir / "checkpoints")
    start = 0
    if resume_from:
        state = load_weights(resume_from, model)
        start = state["step"]
        source = config.paper_feedback or config.committee_path
        check_data(state, digest, resume_from, str(source))  # every rank reads the same: all raise together
    if rank == 0:
        trim_log(config.out_dir / "log.jsonl", start)
    return resume_from, start
