"""Resuming `fair train`: a save cut short, settings or data that changed, a loss or gradient that is not
finite, and steps taken again after a kill, each on the tiny model (a few seconds a run)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

import train.step as stepper
import train.train as trainer
from fair.config import make_config
from fair.errors import FairError
from fair.jsonl import append_jsonl, read_jsonl
from tests.conftest import tiny_train_config
from train.checkpoint import latest_checkpoint, save_checkpoint
from train.resume import RUN_ONLY
from train.train import TrainConfig, train

# A value other than the fixture's for every setting that defines the training (all but RUN_ONLY and max_steps).
CHANGES = {
    "task": "gsm8k", "student": "another-model", "committee": "other/committee.jsonl",
    "paper_feedback": "other_feedback.json", "paper_rationale": "other_rationale.json", "teacher": "all",
    "prompt_format": "paper", "data_dir": "elsewhere", "alpha": 0.25, "lr": 2e-3, "batch_size": 4, "epochs": 3,
    "max_length": 64, "weight_decay": 0.1, "grad_clip": 0.5, "schedule": "cosine", "warmup_ratio": 0.1, "seed": 1,
    "lora": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "dtype": "bfloat16", "filter": "none",
    "decontaminate": False,
}


@pytest.fixture
def config(tmp_path, tiny_model_dir, data_dir) -> TrainConfig:
    return tiny_train_config(tmp_path, tiny_model_dir, data_dir, micro_batch_size=4, save_every=2)


def steps(config: TrainConfig) -> list[int]:
    return [r["step"] for r in read_jsonl(Path(config.out) / "log.jsonl")]


def checkpoints(config: TrainConfig) -> list[str]:
    return sorted(p.name for p in (Path(config.out) / "checkpoints").iterdir())


def test_latest_checkpoint_skips_every_folder_that_is_not_a_complete_save(tmp_path):
    for name in ("step-2", "step-4.partial", "step-6.old", "step-x", "step-9"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    (tmp_path / "step-9" / "state.json").unlink()  # a folder copied in by hand, half of it
    (tmp_path / "step-12").write_text("a file")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"


def test_a_save_cut_short_leaves_a_partial_folder_that_resume_skips(config, monkeypatch):
    real_save = trainer.save_checkpoint

    def die_mid_save(folder, *args, **kwargs):
        if folder.name == "step-4":
            partial = folder.with_name("step-4.partial")
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"half")
            (partial / "stray.tmp").write_bytes(b"")
            raise KeyboardInterrupt
        real_save(folder, *args, **kwargs)
    monkeypatch.setattr(trainer, "save_checkpoint", die_mid_save)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    train(config)  # resumes from step-2, saves step-4 whole
    assert checkpoints(config) == ["step-2", "step-4"] and steps(config) == [1, 2, 3, 4]
    assert sorted(p.name for p in (Path(config.out) / "checkpoints" / "step-4").iterdir()) == \
        ["model.safetensors", "optimizer.safetensors", "state.json"]


def test_every_training_defining_setting_is_named_in_the_refusal(config):
    assert set(CHANGES) == {f.name for f in dataclasses.fields(TrainConfig)} - set(RUN_ONLY) - {"max_steps"}
    final = train(dataclasses.replace(config, max_steps=2))
    exported = (final / "model.safetensors").stat().st_mtime_ns
    saved = (Path(config.out) / "train.yaml").read_text()
    for field, value in CHANGES.items():
        changed = make_config(TrainConfig, dataclasses.asdict(config) | {"max_steps": 2, field: value}, "test")
        with pytest.raises(FairError, match=rf"{re.escape(config.out)} was trained with other settings \({field} "):
            train(changed)
    two = make_config(TrainConfig, dataclasses.asdict(config) | {"max_steps": 2, "alpha": 0.1, "seed": 3}, "test")
    with pytest.raises(FairError, match=r"\(alpha 0.5 -> 0.1, seed 0 -> 3\)"):
        train(two)
    assert (Path(config.out) / "train.yaml").read_text() == saved
    assert (final / "model.safetensors").stat().st_mtime_ns == exported  # the old model is not handed back


def test_a_run_stopped_half_way_is_not_continued_under_other_settings(config, monkeypatch):
    monkeypatch.setattr(trainer, "export", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    with pytest.raises(FairError, match=r"other settings \(lr 0.001 -> 0.0005\)"):
        train(dataclasses.replace(config, lr=5e-4))
    train(dataclasses.replace(config, micro_batch_size=8, log_every=2))  # only how the steps run: allowed
    assert steps(config) == [1, 2, 3, 4]


def test_max_steps_may_grow_only_under_a_schedule_that_does_not_depend_on_it(config):
    train(dataclasses.replace(config, max_steps=2))
    train(config)  # constant, no warm-up: steps 1-2 were those of a 4-step run
    assert steps(config) == [1, 2, 3, 4]
    with pytest.raises(FairError, match=r"other settings \(max_steps 4 -> 2\)"):  # not the 4-step model
        train(dataclasses.replace(config, max_steps=2))
    cosine = dataclasses.replace(config, schedule="cosine", max_steps=2, out=str(Path(config.out).with_name("cosine")))
    train(cosine)
    with pytest.raises(FairError, match=r"other settings \(max_steps 2 -> 4\)"):
        train(dataclasses.replace(cosine, max_steps=4))


def test_training_data_that_changed_under_the_same_path_is_refused(config, data_dir, tmp_path):
    from fair.paper import import_committee
    from fair.tasks import get_task

    task = get_task("svamp")
    records = import_committee(task, config.paper_feedback, config.paper_rationale, task.load("train", data_dir))
    committee = tmp_path / "committee.jsonl"
    append_jsonl(committee, records[:300])
    ours = dataclasses.replace(config, paper_feedback=None, paper_rationale=None, committee=str(committee),
                               max_steps=2)
    train(ours)
    append_jsonl(committee, records[300:])  # a later `fair committee` run added mistakes
    with pytest.raises(FairError, match=r"training data .*committee.jsonl.* changed since checkpoint step-2"):
        train(dataclasses.replace(ours, max_steps=4))


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: a finite loss whose gradients overflow."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


@pytest.mark.parametrize("fault", ["nan loss", "inf loss", "inf gradient"])
def test_a_non_finite_step_stops_and_keeps_the_last_good_checkpoint(config, monkeypatch, fault):
    real_loss, calls = stepper.weighted_loss, []

    def poisoned(*args, **kwargs):
        loss, feedback_sum, rationale_sum = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) > 4:  # two micro-batches a step: from step 3 on
            loss = {"nan loss": loss * math.nan, "inf loss": loss * math.inf,
                    "inf gradient": InfiniteGradient.apply(loss)}[fault]
            feedback_sum = loss.item() if fault != "inf gradient" else feedback_sum
        return loss, feedback_sum, rationale_sum
    monkeypatch.setattr(stepper, "weighted_loss", poisoned)
    with pytest.raises(FairError, match=rf"step 3: .*{fault.split()[1]}.* not finite.*last good checkpoint: .*step-2"):
        train(config)
    assert checkpoints(config) == ["step-2"] and not (Path(config.out) / "final").exists()
    assert steps(config) == [1, 2]
    from safetensors.torch import load_file
    assert all(t.isfinite().all() for t in load_file(Path(config.out) / "checkpoints/step-2/model.safetensors").values())


def test_non_finite_weights_are_never_saved(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    with pytest.raises(FairError, match=r"not finite, e\.g\. weight: not saved"):
        save_checkpoint(tmp_path / "step-1", model, torch.optim.AdamW(model.parameters()), False, 1, {}, 0)
    assert not list(tmp_path.iterdir())


def test_steps_taken_again_after_a_kill_are_logged_once(config, monkeypatch):
    real_rate = trainer.learning_rate

    def killed_before_step_6(config, step, total):
        if step == 5:  # steps 1-5 are logged, the last checkpoint is step-4
            raise KeyboardInterrupt
        return real_rate(config, step, total)
    six = dataclasses.replace(config, max_steps=6)
    monkeypatch.setattr(trainer, "learning_rate", killed_before_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(six)
    assert steps(six) == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    train(six)
    assert steps(six) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_a_held_folder_stops_every_rank_of_a_deepspeed_run(config, tmp_path):
    """Only rank 0 takes the lock; its refusal reaches rank 1, which would otherwise wait in a collective."""
    import os

    from fair.lock import folder_lock
    from tests.conftest import ROOT, cli_args, torchrun

    out = tmp_path / "ds"
    with folder_lock(out, "train"):
        result = torchrun(cli_args(config, max_steps=2, deepspeed=str(ROOT / "configs/deepspeed/zero2.json")), out, 2)
    assert result.returncode != 0
    assert result.stderr.count(f"in use by another `fair train` run (pid {os.getpid()},") == 2, result.stderr[-3000:]
    assert not (out / "train.yaml").exists()
