"""Configs: every YAML in configs/ loads into its stage's dataclass, overrides win, unknown keys fail."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cli.loop import LoopConfig
from cli.pipeline import GenConfig
from eval.evaluate import EvalConfig
from eval.regrade import GradeConfig
from eval.report import ReportConfig
from fair.config import add_config_arguments, build_config, field_default, save_config
from fair.errors import FairError
from gen.committee.estimate import EstimateConfig
from gen.committee.run import CommitteeConfig
from gen.export import ExportConfig
from gen.from_paper import ImportCommitteeConfig, ImportMistakesConfig
from gen.mine import MineConfig
from gen.teachers.config import Teacher, load_committee, rebase
from gen.teachers.providers import Usage
from serve.config import ServeConfig
from serve.view import ViewConfig
from simulator.cli import SimulatorConfig
from tests.conftest import ROOT
from train.card import PushModelConfig

CONFIGS = ROOT / "configs"
STAGES = {"mine.yaml": MineConfig, "eval.yaml": EvalConfig, "committee.yaml": CommitteeConfig, "gen.yaml": GenConfig,
          "serve.yaml": ServeConfig, "simulator.yaml": SimulatorConfig, "grade.yaml": GradeConfig,
          "report.yaml": ReportConfig, "import-mistakes.yaml": ImportMistakesConfig,
          "import-committee.yaml": ImportCommitteeConfig, "estimate.yaml": EstimateConfig, "loop.yaml": LoopConfig,
          "view.yaml": ViewConfig, "export.yaml": ExportConfig, "push-model.yaml": PushModelConfig}
# Each file under configs/ is checked by the test that reads its folder; a file in no folder here fails below.
CHECKED = {".": "*.yaml", "train": "*.yaml", "teachers": "*.yaml", "deepspeed": "*.json",
           "tasks": "*.yaml", "tasks/arithmetic": "*.csv"}  # declared tasks and their data: tests/test_tasks.py


def config_files(folder: str) -> list[str]:
    return sorted(p.name for p in (CONFIGS / folder).glob(CHECKED[folder]))


def parse(cls, *argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return build_config(cls, parser.parse_args(list(argv)))


def test_every_config_file_is_checked():
    checked = {(CONFIGS / folder / name).resolve() for folder in CHECKED for name in config_files(folder)}
    assert set(STAGES) == set(config_files("."))  # a new stage YAML needs its class here
    assert {p.resolve() for p in CONFIGS.rglob("*") if p.is_file()} == checked


def command_settings(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, type | None]:
    """Each leaf command of cli/main.py's parser and its settings class (None for `tasks`, and for `train`,
    whose class is mirrored by configs/train/ and added to the parser only when it is the command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {k: v for name, sub in action.choices.items() for k, v in command_settings(sub, (*path, name)).items()}
    return {" ".join(path): parser.get_default("settings")}


def test_every_command_has_its_yaml():
    from cli.main import build_parser

    commands = command_settings(build_parser())
    assert {"estimate", "teachers serve", "merge"} <= set(commands)
    missing = {name: cls.__name__ for name, cls in commands.items() if cls and cls not in STAGES.values()}
    assert not missing, f"commands whose settings no configs/*.yaml mirrors: {missing}"


@pytest.mark.parametrize("name", config_files("."))
def test_each_stage_yaml_documents_the_defaults_and_round_trips(name, tmp_path):
    """Each YAML names every setting; the required ones (no default: the files a command reads) commented out,
    given here as key=value."""
    cls = STAGES[name]
    text = (CONFIGS / name).read_text()
    assert not [f.name for f in dataclasses.fields(cls) if f"\n{f.name}:" not in text and f"# {f.name}:" not in text]
    required = {f.name: str(tmp_path) for f in dataclasses.fields(cls) if field_default(f) is dataclasses.MISSING}
    required |= {"task": "svamp"} if "task" in required else {}
    config = parse(cls, "--config", str(CONFIGS / name), *(f"{k}={v}" for k, v in required.items()))
    assert config == cls(**required)  # the YAML files document the defaults
    save_config(config, tmp_path / "saved.yaml")
    assert parse(cls, "--config", str(tmp_path / "saved.yaml")) == config


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task: gsm8k\nbatch_size: 4\nlimit: 10\n")
    config = parse(MineConfig, "--config", str(path), "--batch-size", "8", "limit=3", "--no-chat")
    assert (config.task, config.batch_size, config.limit, config.chat) == ("gsm8k", 8, 3, False)


def test_typed_flags():
    assert parse(EvalConfig, "--task", "svamp", "gsm8k").task == ("svamp", "gsm8k")
    assert parse(GenConfig, "--offline-latency-ms", "5", "9").offline_latency_ms == (5, 9)
    with pytest.raises(FairError, match="bad override 'nonsense'"):
        parse(MineConfig, "nonsense")


def test_required_settings_and_positional_arguments(tmp_path):
    """`fair grade --task T FILE`: FILE is a field too, so a YAML may give it; a missing one is named."""
    from fair.config import config_parser

    def grade(*argv):
        return build_config(GradeConfig, config_parser(GradeConfig, "g", None, ("file",)).parse_args(list(argv)))

    assert grade("--task", "svamp", "p.jsonl", "json=true") == GradeConfig(task="svamp", file="p.jsonl", json=True)
    (tmp_path / "g.yaml").write_text("task: gsm8k\nfile: q.jsonl\n")
    assert grade("--config", str(tmp_path / "g.yaml"), "r.jsonl").file == "r.jsonl"
    with pytest.raises(FairError, match=r"command line: missing setting\(s\) file \(no default\)"):
        grade("--task", "svamp")


def test_a_mapping_flag_is_yaml_flow_style():
    teacher = parse(Teacher, "--name", "t", "--provider", "openai", "--model", "m", "--extra-headers", "{X-A: b}")
    assert teacher.extra_headers == {"X-A": "b"}
    with pytest.raises(FairError, match="extra_headers must be dict, got 'plain'"):
        parse(Teacher, "name=t", "provider=openai", "model=m", "--extra-headers", "plain")


@pytest.mark.parametrize("name", config_files("teachers"))
def test_teacher_committees_load(name):
    teachers = load_committee(Path(name).stem)
    assert len(teachers) >= 2 and len({t.name for t in teachers}) == len(teachers)


def test_cost_prices_cached_input_and_cache_writes_at_their_own_rates():
    t = Teacher(name="c", provider="anthropic", model="m", price_input=1.0, price_output=5.0, price_cached_input=0.1,
                price_cache_write=1.25)
    usage = Usage(input_tokens=1_000_000 + 2_000_000 + 4_000_000, output_tokens=1_000_000,
                  cached_input_tokens=2_000_000, cache_write_tokens=4_000_000)
    assert t.cost(usage) == pytest.approx(1.0 + 0.2 + 5.0 + 5.0)
    assert t.cost(usage, batch=True) == pytest.approx((1.0 + 0.2 + 5.0 + 5.0) / 2)
    plain = Teacher(name="p", provider="openai", model="m", price_input=0.4, price_output=1.6)  # no cache prices
    assert plain.cost(Usage(1_000_000, 0, cached_input_tokens=500_000)) == pytest.approx(0.4)


def test_thinking_budget_is_gemini_only_and_adds_to_the_output_limit():
    g = Teacher(name="g", provider="gemini", model="m", max_tokens=768, thinking_budget=1024)
    assert g.max_output_tokens() == 1792 and g.max_output_tokens(100) == 1124
    assert Teacher(name="o", provider="openai", model="m", max_tokens=768).max_output_tokens() == 768
    with pytest.raises(FairError, match="thinking_budget must be a whole number >= 0, for provider gemini"):
        Teacher(name="g", provider="gemini", model="m", thinking_budget=-1)
    with pytest.raises(FairError, match="thinking_budget"):
        Teacher(name="o", provider="openai", model="m", thinking_budget=100)
    with pytest.raises(FairError, match="prices must be >= 0"):
        Teacher(name="o", provider="openai", model="m", price_cached_input=-0.1)


def test_a_temperature_outside_the_providers_range_is_refused_also_when_overridden():
    import dataclasses

    from gen.committee.run import CommitteeConfig

    claude = Teacher(name="h", provider="anthropic", model="m", temperature=1.0)
    with pytest.raises(FairError, match=r"teacher 'h': temperature must be within 0-1 for provider anthropic"):
        dataclasses.replace(claude, temperature=1.5)
    assert Teacher(name="g", provider="gemini", model="m", temperature=1.5).temperature == 1.5
    with pytest.raises(FairError, match=r"top_p must be within \(0, 1\]"):
        Teacher(name="o", provider="openai", model="m", top_p=0)
    with pytest.raises(FairError, match="temperature must be within 0-1"):  # --teacher-temperature over the YAML's
        CommitteeConfig(teacher_temperature=1.2).sampled([claude])


def test_the_default_committee_prices_cached_input_and_bounds_thinking():
    teachers = {t.name: t for t in load_committee("default")}
    assert all(t.price_cached_input is not None and t.price_cached_input < t.price_input for t in teachers.values())
    assert teachers["claude"].price_cache_write > teachers["claude"].price_input
    gemini = teachers["gemini"]
    assert gemini.thinking_budget is not None and gemini.max_output_tokens() >= gemini.max_tokens + 256


def test_bad_committee_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teachers:\n  - name: a\n    provider: openai\n    model: m\n    rpmm: 3\n")
    with pytest.raises(FairError, match=r"c.yaml teacher 0: unknown setting 'rpmm'"):
        load_committee(str(path))
    path.write_text("teachers:\n  - name: a\n    provider: cohere\n    model: m\n")
    with pytest.raises(FairError, match="unknown provider 'cohere'"):
        load_committee(str(path))
    with pytest.raises(FairError, match="no teacher committee 'nope'"):
        load_committee("nope")


def test_rebase_keeps_each_teachers_api_path():
    assert rebase("http://127.0.0.1:8765/v1beta", "http://127.0.0.1:9000") == "http://127.0.0.1:9000/v1beta"
    assert rebase("https://api.openai.com/v1", "http://localhost:8000/v1") == "http://localhost:8000/v1"


@pytest.mark.parametrize("name", config_files("train"))
def test_train_yamls_load_and_round_trip(name, tmp_path):
    from train.train import TrainConfig

    config = parse(TrainConfig, "--config", str(CONFIGS / "train" / name))
    assert 0 <= config.alpha <= 1
    if name == "default.yaml":
        assert config == TrainConfig()  # the file documents the defaults
    if name == "paper.yaml":  # the paper's settings
        assert (config.lr, config.batch_size, config.max_length, config.epochs, config.alpha) == (1e-5, 8, 512, 10, 0.5)
    save_config(config, tmp_path / "saved.yaml")
    assert parse(TrainConfig, "--config", str(tmp_path / "saved.yaml")) == config


@pytest.mark.parametrize("name", config_files("deepspeed"))
def test_deepspeed_configs_are_valid_json_with_a_zero_stage(name):
    import json

    config = json.loads((CONFIGS / "deepspeed" / name).read_text())
    assert config["zero_optimization"]["stage"] in (2, 3)


def test_unknown_top_level_committee_keys_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  - name: a\n    provider: openai\n    model: m\n")
    with pytest.raises(FairError, match="unknown setting\\(s\\) teacher"):
        load_committee(str(path))
