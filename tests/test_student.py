"""The settings mining and evaluation share (fair/student.py), and the one folder of a student's run on a task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eval.evaluate import EvalConfig
from fair.errors import FairError
from fair.student import StudentRun, run_dir
from gen.committee.run import CommitteeConfig
from gen.mine import MineConfig
from train.train import TrainConfig


def test_every_stage_finds_a_run_in_one_folder_whatever_name_the_task_goes_by():
    """An alias (strategyQA) and a student's hub id name the folder mining wrote, for the committee and training."""
    folder = Path("data/strategyqa/Llama-2-7b-chat-hf")
    assert run_dir("strategyQA", "meta-llama/Llama-2-7b-chat-hf") == folder
    assert MineConfig(task="strategyQA", model="meta-llama/Llama-2-7b-chat-hf").out_dir == folder
    assert CommitteeConfig(task="strategyQA", student="meta-llama/Llama-2-7b-chat-hf").mistakes_path == folder / "mistakes.jsonl"
    assert TrainConfig(task="strategyQA", student="meta-llama/Llama-2-7b-chat-hf").committee_path == folder / "committee.jsonl"


def test_training_checkpoints_are_named_by_the_canonical_task():
    """It used to take the name as typed: `--task strategyQA` and `--task strategyqa` wrote two folders."""
    assert TrainConfig(task="strategyQA").out_dir == TrainConfig(task="strategyqa").out_dir
    assert TrainConfig(task="strategyQA").out_dir == Path("checkpoints/strategyqa-smollm2-135m-mixed")


def test_only_a_filter_other_than_the_default_names_the_checkpoint_folder():
    assert TrainConfig(task="svamp", filter="gold").out_dir == Path("checkpoints/svamp-smollm2-135m-mixed")
    assert TrainConfig(task="svamp", filter="review").out_dir == Path("checkpoints/svamp-smollm2-135m-mixed-review")
    assert TrainConfig(task="svamp", teacher="all", filter="gold+review").out_dir.name == "svamp-smollm2-135m-all-gold-review"


@pytest.mark.parametrize("config", [MineConfig, EvalConfig])
def test_mining_and_evaluation_share_the_student_run_settings_and_their_checks(config):
    shared = {f.name for f in dataclasses.fields(StudentRun)}
    assert shared <= {f.name for f in dataclasses.fields(config)}
    with pytest.raises(FairError, match=r"temperature must be in \[0, 2\] and top_p in \(0, 1\], got 0.0 and 1.5"):
        config(top_p=1.5)
    with pytest.raises(FairError, match="data_parallel_size must be at least 1"):
        config(data_parallel_size=0)
    run = config(max_new_tokens=7, temperature=0.3, top_p=0.9, seed=5)
    assert (run.sampling.max_new_tokens, run.sampling.temperature, run.sampling.top_p, run.sampling.seed) == (7, 0.3, 0.9, 5)


def test_each_stage_keeps_its_own_split_and_output():
    assert (MineConfig().split, EvalConfig().split) == ("train", "test")
    assert EvalConfig(model="a/b").out_dir == Path("data/eval/b")
    with pytest.raises(FairError, match="chunk_size must be at least 1"):
        MineConfig(chunk_size=0)


def test_gen_takes_its_stages_settings_as_they_are_there_and_flat_on_the_command_line():
    import argparse
    import typing

    from cli.pipeline import FROM_COMMITTEE, FROM_MINING, GenConfig
    from fair.config import add_config_arguments, build_config, field_doc

    for stage, names in ((MineConfig, FROM_MINING), (CommitteeConfig, FROM_COMMITTEE)):
        theirs = {f.name: f for f in dataclasses.fields(stage)}
        for f in dataclasses.fields(GenConfig):
            if f.name in names:
                assert (f.default, f.default_factory) == (theirs[f.name].default, theirs[f.name].default_factory)
                assert f.metadata["help"].startswith(field_doc(stage, theirs[f.name]))  # documented there, once
                assert typing.get_type_hints(GenConfig)[f.name] == typing.get_type_hints(stage)[f.name]
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, GenConfig)
    config = build_config(GenConfig, parser.parse_args(["--task", "gsm8k", "--limit", "50", "--teachers", "offline",
                                                        "--student", "org/tiny", "window=8"]))
    mine = config.mine_config()
    assert (mine.task, mine.limit, mine.model, mine.export_seed) == ("gsm8k", 50, "org/tiny", True)
    committee = config.committee_config("http://127.0.0.1:1")
    assert (committee.teachers, committee.window, committee.student) == ("offline", 8, "org/tiny")
    assert committee.mistakes_path == Path("data/gsm8k/tiny/mistakes.jsonl")
