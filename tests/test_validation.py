"""Validation everywhere: every subcommand answers an invalid value with one line and exit 2, before any work,
and every config checks itself however it is built (the CLI, code, dataclasses.replace)."""

from __future__ import annotations

import dataclasses

import pytest

from cli.main import main
from cli.pipeline import GenConfig
from eval.evaluate import EvalConfig
from fair.errors import FairError
from gen.committee.estimate import EstimateConfig
from gen.committee.run import CommitteeConfig
from gen.mine import MineConfig
from gen.teachers.config import Teacher

pytestmark = pytest.mark.timeout(60)  # a value that slips through could start a server or a training run

INVALID = [
    (["mine", "--batch-size", "0"], "batch_size must be at least 1"),
    (["mine", "--engine", "nope"], "unknown engine 'nope'"),
    (["mine", "--limit", "abc"], "argument --limit: invalid int value: 'abc'"),
    (["mine", "prompt_style=nope"], "unknown prompt_style 'nope'"),
    (["merge", "--shard", "4/4"], "shard must be 'i/N'"),
    (["merge", "--chunk-size", "0"], "chunk_size must be at least 1"),
    (["committee", "--window", "0"], "window must be at least 1"),
    (["committee", "--limit", "0"], "limit must be at least 1"),
    (["committee", "--threshold", "9"], "threshold must be within the 1-5 score range"),
    (["committee", "--prompts", "nope"], "unknown prompts 'nope'"),
    (["estimate", "--sample", "0"], "sample must be at least 1"),
    (["estimate", "--mistake-rate", "2"], "mistake_rate must be in [0, 1]"),
    (["gen", "--threshold", "9"], "threshold must be within the 1-5 score range"),
    (["gen", "--window", "0"], "window must be at least 1"),
    (["gen", "--limit", "0"], "limit must be at least 1"),
    (["gen", "--batch-size", "0"], "batch_size must be at least 1"),
    (["gen", "--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
    (["gen", "--offline-latency-ms", "9", "1"], "offline_latency_ms"),
    (["gen", "--engine", "nope"], "unknown engine 'nope'"),
    (["gen", "offline_latency_ms=[1, a]"], "offline_latency_ms must be a list of 2 int, got [1, 'a']"),
    (["loop", "--rounds", "0"], "rounds must be at least 1"),
    (["loop", "--window", "0"], "window must be at least 1"),
    (["loop", "--eval-split", "dev"], "eval_split: task 'svamp' has no split 'dev'"),
    (["loop", "--train", "{lr: -1}"], "lr > 0"),
    (["loop", "--train", "{out: x}"], "train: out are the loop's to set"),
    (["loop", "--train-config", "dmeo"], "train_config: no 'dmeo' in configs/train/ (known: cpu, default, demo"),
    (["teachers", "serve", "--port", "0", "--rpm", "0"], "rpm and tpm must be >= 1"),
    (["teachers", "serve", "--port", "0", "--p-5xx", "2"], "fault rates"),
    (["teachers", "serve", "--port", "0", "--latency-ms", "9", "1"], "latency_ms"),
    (["teachers", "serve", "--port", "70000"], "port must be in 0..65535"),
    (["train", "--alpha", "2"], "alpha must be in [0, 1]"),
    (["train", "--lora-r", "0"], "lora_r must be at least 1"),
    (["train", "--lora-dropout", "1"], "lora_dropout must be in [0, 1)"),
    (["train", "--warmup-ratio", "2"], "warmup_ratio must be in [0, 1]"),
    (["train", "--max-steps", "0"], "max_steps must be at least 1"),
    (["train", "--log-every", "0"], "log_every must be at least 1"),
    (["train", "--save-every", "-1"], "save_every must be at least 0"),
    (["train", "--grad-clip", "-1"], "grad_clip must be positive"),
    (["train", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["eval", "--batch-size", "0"], "batch_size must be at least 1"),
    (["eval", "--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
    (["eval", "--temperature", "-1"], "temperature must be in [0, 2]"),
    (["eval", "--tensor-parallel-size", "0"], "tensor_parallel_size must be at least 1"),
    (["grade", "--task", "nope", "answers.jsonl"], "unknown task 'nope'"),
    (["import-mistakes", "--task", "svamp", "/nonexistent/false.json"], "/nonexistent/false.json"),
    (["import-committee", "--task", "svamp", "--feedback", "/nonexistent/f.json", "--rationale",
      "/nonexistent/r.json", "--out", "c.jsonl"], "/nonexistent/f.json"),
    (["report", "--gen-dir", ".", "--out", "report", "--threshold", "9"], "threshold must be within the 1-5"),
    (["report", "--gen-dir", ".", "--out", "report", "--task", "nosuch.yaml"], "task file nosuch.yaml not found"),
    (["serve", "--reserve", "1"], "reserve must be in 0..1"),
    (["serve", "--port", "70000"], "port must be in 0..65535"),
    (["view", "--port", "70000", "run"], "port must be in 0..65535"),
    (["view", "/nonexistent/run"], "/nonexistent/run: no committee.jsonl"),
    (["view", "run", "--index-dir", "/nonexistent/index"], "index_dir /nonexistent/index: no such folder"),
    (["tasks", "--bogus"], "unrecognized arguments: --bogus"),
    (["export", "/nonexistent/run"], "no committee file /nonexistent/run/committee.jsonl"),
    (["export", "--shard-rows", "0", "run"], "shard_rows must be at least 1"),
    (["push-model", "/nonexistent/final", "me/repo"], "/nonexistent/final is not a model folder"),
]


def test_the_table_covers_every_subcommand():
    from cli.main import build_parser

    sub = next(a for a in build_parser("train")._actions if a.dest == "command")
    covered = {argv[0] for argv, _ in INVALID}
    assert covered == set(sub.choices)


@pytest.mark.parametrize(("argv", "message"), INVALID, ids=[" ".join(a) for a, _ in INVALID])
def test_every_subcommand_rejects_invalid_values_in_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever slipped through would write here
    monkeypatch.setenv("OPENAI_API_KEY", "k")  # so gen gets past its key check to what it should reject
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit; ours return 2
        raise SystemExit(main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fair"), err
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("cls", "changes", "message"), [
    (MineConfig, {"batch_size": 0}, "batch_size must be at least 1"),
    (MineConfig, {"engine": "nope"}, "unknown engine 'nope'"),
    (CommitteeConfig, {"window": 0}, "window must be at least 1"),
    (CommitteeConfig, {"threshold": 9.0}, "threshold must be within"),
    (GenConfig, {"threshold": 9.0}, "threshold must be within"),
    (GenConfig, {"window": 0}, "window must be at least 1"),
    (EstimateConfig, {"sample": 0}, "sample must be at least 1"),
    (EvalConfig, {"batch_size": 0}, "batch_size must be at least 1"),
    (EvalConfig, {"limit": "3"}, "limit must be int or None, got '3'"),
])
def test_every_config_validates_itself_however_it_is_built(cls, changes, message):
    with pytest.raises(FairError, match=message):
        cls(**changes)
    with pytest.raises(FairError, match=message):
        dataclasses.replace(cls(), **changes)


def test_train_config_validates_itself():
    from train.train import TrainConfig

    with pytest.raises(FairError, match="alpha must be in"):
        TrainConfig(alpha=2.0)
    with pytest.raises(FairError, match="lora_r must be at least 1"):
        dataclasses.replace(TrainConfig(), lora_r=0)


def test_teachers_validate_themselves():
    with pytest.raises(FairError, match="rpm must be at least 1"):
        Teacher(name="t", provider="openai", model="m", rpm=0)
    with pytest.raises(FairError, match="unknown provider 'cohere'"):
        Teacher(name="t", provider="cohere", model="m")
    teacher = Teacher(name="t", provider="openai", model="m", api_key_env=["A", "B"])
    assert teacher.api_key_env == ("A", "B")  # a YAML list, coerced wherever the teacher is built
    with pytest.raises(FairError, match="api_key_env"):
        dataclasses.replace(teacher, api_key_env=("A", "A"))


def test_coercions_still_apply():
    assert EvalConfig(task="svamp").task == ("svamp",)
    assert GenConfig(offline_latency_ms=[5, 9]).offline_latency_ms == (5, 9)
    assert CommitteeConfig(threshold=4).threshold == 4.0 and isinstance(CommitteeConfig(threshold=4).threshold, float)


def test_fair_gen_refuses_a_temperature_its_teachers_apis_refuse_before_it_mines(monkeypatch):
    import cli.pipeline

    monkeypatch.setattr(cli.pipeline, "mine", lambda config: pytest.fail("mined before the teachers were checked"))
    with pytest.raises(FairError, match="teacher 'harsh': temperature must be within 0-1 for provider anthropic"):
        cli.pipeline.generate(GenConfig(teachers="offline", teacher_temperature=1.5))
