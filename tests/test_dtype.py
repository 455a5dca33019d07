"""The dtype setting (fair/dtype.py): what `auto` picks on which hardware (the detection stubbed), that an
explicit value wins, bad values, and that every stage runs in it and records it: mine's stats.json, eval's
summary.json, training's train_summary.json (bf16 autocast over fp32 weights, finite losses)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
from pathlib import Path

import orjson
import pytest
import torch

import fair.dtype
from fair.config import add_config_arguments, make_config
from fair.dtype import DTYPE_HELP, Precision, cpu_bf16_feature, cpu_flags, resolve_dtype
from fair.errors import FairError
from fair.jsonl import read_jsonl
from tests.conftest import svamp_reply, tiny_train_config

AMX_CPU = frozenset({"avx2", "avx512_f", "avx512_bf16", "amx_tile", "amx_bf16"})  # Sapphire Rapids and later
AVX512_BF16_CPU = frozenset({"avx2", "avx512_f", "avx512_bf16"})  # e.g. AMD Zen 4
PLAIN_CPU = frozenset({"avx2", "avx512_f"})  # AVX-512 without bf16 (Skylake-SP), or any older x86


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda, cpu_features): what the detection reports from now on in this test."""
    def stub(cuda: bool, features: frozenset[str]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(fair.dtype, "cpu_flags", lambda: features)
    return stub


@pytest.mark.parametrize(("cuda", "features", "expected"), [
    (False, AMX_CPU, Precision("auto", "bfloat16", "cpu has amx_bf16")),
    (False, AVX512_BF16_CPU, Precision("auto", "bfloat16", "cpu has avx512_bf16")),
    (False, PLAIN_CPU, Precision("auto", "float32", "cpu has neither amx_bf16 nor avx512_bf16")),
    (False, frozenset(), Precision("auto", "float32", "cpu has neither amx_bf16 nor avx512_bf16")),
    (True, PLAIN_CPU, Precision("auto", "bfloat16", "cuda gpu")),
])
def test_auto_picks_bf16_where_the_hardware_has_fast_bf16(machine, cuda, features, expected):
    machine(cuda, features)
    assert resolve_dtype("auto") == expected


@pytest.mark.parametrize(("cuda", "features"), [(False, AMX_CPU), (False, PLAIN_CPU), (True, AMX_CPU)])
def test_an_explicit_dtype_wins_over_the_hardware(machine, cuda, features):
    machine(cuda, features)
    assert resolve_dtype("float32") == Precision("float32", "float32", "asked for")
    assert resolve_dtype("bfloat16") == Precision("bfloat16", "bfloat16", "asked for")


def test_bad_dtypes_are_one_line_errors_naming_the_setting():
    from cli.pipeline import GenConfig
    from eval.evaluate import EvalConfig
    from gen.mine import MineConfig
    from train.train import TrainConfig

    with pytest.raises(FairError, match=r"^unknown dtype 'fp16' \(choose from auto, float32, bfloat16\)$"):
        resolve_dtype("fp16")
    for cls in (MineConfig, EvalConfig, GenConfig, TrainConfig):
        with pytest.raises(FairError, match=r"^test: unknown dtype 'half' \(choose from 'auto', 'float32', "
                                            r"'bfloat16'\)$"):
            make_config(cls, {"dtype": "half"}, source="test")


def test_every_stage_offers_the_setting_with_one_help_text():
    from cli.pipeline import GenConfig
    from eval.evaluate import EvalConfig
    from gen.mine import MineConfig
    from train.train import TrainConfig

    for cls in (MineConfig, EvalConfig, GenConfig, TrainConfig):
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, cls)
        [action] = [a for a in parser._actions if a.dest == "dtype"]
        assert action.option_strings == ["--dtype"] and action.help.startswith(DTYPE_HELP)
        assert cls().dtype == "auto"
    assert GenConfig(dtype="float32").mine_config().dtype == "float32"


def test_torch_and_proc_cpuinfo_agree_on_this_cpu(monkeypatch):
    """The fallback for a torch without `torch.cpu.get_capabilities` reads /proc/cpuinfo's flags; on this machine
    both must name the same bf16 feature (or none)."""
    if not hasattr(torch.cpu, "get_capabilities") or not Path("/proc/cpuinfo").exists():
        pytest.skip("needs both torch's CPU query and Linux's /proc/cpuinfo")
    from_torch = cpu_bf16_feature()
    cpu_flags.cache_clear()
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    try:
        from_proc = cpu_bf16_feature()
        assert "sse2" in cpu_flags() or "fp" in cpu_flags() or "neon" in cpu_flags()  # it did parse the flags
    finally:
        cpu_flags.cache_clear()  # the next caller asks torch again
    assert from_proc == from_torch


def test_mine_and_eval_record_the_dtype_they_ran_in(tmp_path, data_dir, fake_engine_cls, machine):
    from eval.evaluate import EvalConfig, evaluate
    from gen.mine import MineConfig, mine

    machine(False, AMX_CPU)
    recorded = {"requested": "auto", "dtype": "bfloat16", "reason": "cpu has amx_bf16"}
    stats = mine(MineConfig(task="svamp", limit=6, out=str(tmp_path / "mine")), fake_engine_cls(svamp_reply()))
    assert stats["dtype"] == recorded
    assert orjson.loads((tmp_path / "mine" / "stats.json").read_bytes())["dtype"] == recorded

    machine(False, PLAIN_CPU)
    engine = fake_engine_cls(lambda prompt: "The answer is 1.")
    [row] = evaluate(EvalConfig(task=("svamp",), limit=4, out=str(tmp_path / "eval")), engine)
    summary = orjson.loads((tmp_path / "eval" / "svamp-test" / "summary.json").read_bytes())
    assert row["dtype"] == summary["dtype"] == {"requested": "auto", "dtype": "float32",
                                                "reason": "cpu has neither amx_bf16 nor avx512_bf16"}


def test_answers_in_another_dtype_are_not_added_to_a_folder(tmp_path, data_dir, fake_engine_cls):
    from gen.mine import MineConfig, mine

    mine(MineConfig(task="svamp", limit=4, dtype="float32", out=str(tmp_path)), fake_engine_cls(svamp_reply()))
    with pytest.raises(FairError, match=r"other settings \(dtype changed\)"):
        mine(MineConfig(task="svamp", limit=8, dtype="bfloat16", out=str(tmp_path)), fake_engine_cls(svamp_reply()))


def test_engines_get_the_resolved_dtype(monkeypatch, machine, tiny_model_dir):
    """make_engine resolves once and hands the engine float32 or bfloat16; vLLM (on a CPU too) is told it."""
    import fair.engines.hf
    from fair.engines.factory import make_engine
    from fair.engines.vllm import VLLMEngine

    machine(False, AMX_CPU)
    built = []
    monkeypatch.setattr(fair.engines.hf, "HFEngine", lambda model, **kwargs: built.append(kwargs["dtype"]))
    make_engine("hf", "student")
    make_engine("hf", "student", dtype="float32")
    assert built == ["bfloat16", "float32"]

    class FakeLLM:
        def __init__(self, **kwargs):
            built.append(kwargs["dtype"])

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr("fair.engines.vllm.resolve_model", lambda model: model)
    assert VLLMEngine("student").precision == Precision("auto", "bfloat16", "cpu has amx_bf16")
    machine(False, PLAIN_CPU)
    VLLMEngine("student")
    assert built[2:] == ["bfloat16", "float32"]


def test_the_transformers_engine_answers_in_bf16(tiny_model_dir):
    from fair.engines.base import Sampling
    from fair.engines.hf import HFEngine

    engine = HFEngine(str(tiny_model_dir), batch_size=2, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16 and engine.continuous is not None
    out = engine.generate(["What is 2 + 3?", "Name a colour.", "Count to three."], Sampling(max_new_tokens=5))
    assert len(out) == 3 and all(0 < g.generated_tokens <= 5 and g.finish_reason in ("stop", "length") for g in out)


def test_bf16_training_autocasts_over_fp32_weights_and_records_it(tmp_path, tiny_model_dir, data_dir):
    """The demo's path (LoRA, packed rows through the varlen attention) in bf16 against fp32."""
    from train.train import train

    fp32 = tiny_train_config(tmp_path, tiny_model_dir, data_dir, max_steps=2, lora=True, lora_r=4, lora_alpha=8,
                             pack=True, save_every=1, out=str(tmp_path / "fp32"))
    bf16 = dataclasses.replace(fp32, dtype="bfloat16", out=str(tmp_path / "bf16"))
    final = train(bf16)
    train(fp32)
    losses = {name: [r["loss"] for r in read_jsonl(tmp_path / name / "log.jsonl")] for name in ("fp32", "bf16")}
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    # bf16 carries 8 bits of mantissa: the same steps, losses within a few percent (not bit-equal: it did cast)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05) and losses["bf16"] != losses["fp32"]
    summary = orjson.loads((tmp_path / "bf16" / "train_summary.json").read_bytes())
    assert summary["dtype"] == {"requested": "bfloat16", "dtype": "bfloat16", "reason": "asked for"}
    from safetensors.torch import load_file

    exported, base = load_file(final / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.float32}
    # LoRA trains no embedding: the export's is the student's own fp32 one, not the bf16 copy trained over
    assert torch.equal(exported["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    moments = load_file(tmp_path / "bf16" / "checkpoints" / "step-2" / "optimizer.safetensors")
    assert moments and {t.dtype for t in moments.values()} == {torch.float32}


def test_the_forward_pass_runs_in_bf16_and_the_weights_stay_fp32(tmp_path, tiny_model_dir, data_dir):
    from train.data import build_examples, collate, load_records, tokenize_examples
    from train.step import forward, shifted_targets
    from train.train import get_task, load_model

    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, dtype="bfloat16")
    tokenizer, model = load_model(config, "cpu")
    task = get_task("svamp")
    records = load_records(config.paper_feedback, task, rationale_path=config.paper_rationale)[:2]
    items, _ = tokenize_examples(build_examples(records, task, "mixed", 0)[0], tokenizer, 160)
    batch = collate(items, tokenizer.pad_token_id, pack=False, max_length=160)
    targets = shifted_targets(batch["labels"], batch["kinds"])[0]
    assert forward(model, batch, "cpu", "sdpa", True, targets).dtype == torch.bfloat16
    assert forward(model, batch, "cpu", "sdpa", False, targets).dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_lora_in_bf16_keeps_the_frozen_base_in_bf16_and_trains_fp32_adapters(tmp_path, tiny_model_dir, data_dir):
    from train.train import load_model

    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, dtype="bfloat16", lora=True, lora_r=4)
    _, model = load_model(config, "cpu")
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}


def test_a_merge_records_what_its_shards_ran_in(tmp_path, data_dir, fake_engine_cls, machine):
    """Shards mined on machines of two kinds resolve `auto` differently: the merged stats.json says so."""
    from gen.merge import merge
    from gen.mine import MineConfig, mine

    def shard(i: int) -> MineConfig:
        return MineConfig(task="svamp", limit=6, shard=f"{i}/2", out=str(tmp_path))

    machine(False, AMX_CPU)
    mine(shard(0), fake_engine_cls(svamp_reply()))
    machine(False, PLAIN_CPU)
    mine(shard(1), fake_engine_cls(svamp_reply()))
    stats = merge(MineConfig(task="svamp", limit=6, out=str(tmp_path)), force=False)
    assert [d["dtype"] for d in stats["dtype"]] == ["bfloat16", "float32"]
    assert orjson.loads((tmp_path / "stats.json").read_bytes())["dtype"] == stats["dtype"]
