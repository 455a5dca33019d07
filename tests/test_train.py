"""The trainer: the two-part loss, accumulation-invariance, alpha, resume == uninterrupted, LoRA export,
and DeepSpeed ZeRO-2/3 with two CPU processes matching one process step for step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import train.train as trainer
from fair.config import make_config
from fair.errors import FairError
from fair.jsonl import read_jsonl
from tests.conftest import ROOT, cli_args, tiny_train_config, torchrun
from train.data import FEEDBACK, RATIONALE
from train.step import forward, shifted_targets, weighted_loss
from train.train import TrainConfig, train


@pytest.fixture
def config(tmp_path, tiny_model_dir, data_dir) -> TrainConfig:
    return tiny_train_config(tmp_path, tiny_model_dir, data_dir)


def losses(folder: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(folder / "log.jsonl")]


def test_weighted_loss_is_alpha_mix_of_per_token_means():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 7]])
    kinds = torch.where(labels == -100, -1, torch.tensor([[FEEDBACK] * 5, [RATIONALE] * 5]))
    loss, feedback_sum, rationale_sum = weighted_loss(logits, labels, kinds, n_feedback=2, n_rationale=3, alpha=0.25)
    ce = torch.nn.functional.cross_entropy
    feedback = ce(logits[0, 0:2], labels[0, 1:3], reduction="sum")  # token t predicts t + 1
    rationale = ce(logits[1, 1:4], labels[1, 2:5], reduction="sum")
    assert feedback_sum == pytest.approx(feedback.item(), rel=1e-6)
    assert rationale_sum == pytest.approx(rationale.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.25 * feedback.item() / 2 + 0.75 * rationale.item() / 3, rel=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_output_layer_on_target_positions_only_gives_the_same_loss_and_gradients(lora, config):
    """The trainer runs the output layer only where a label is predicted; loss and gradients must not change."""
    from train.data import build_examples, collate, load_records, tokenize_examples
    from train.train import load_model

    config = dataclasses.replace(config, lora=lora, lora_dropout=0.0, max_length=160)  # no dropout: two equal passes
    tokenizer, model = load_model(config, "cpu")
    task = trainer.get_task("svamp")
    records = load_records(config.paper_feedback, task, rationale_path=config.paper_rationale)[:4]
    items, _ = tokenize_examples(build_examples(records, task, "mixed", 0)[0], tokenizer, 160)
    batch = collate(items, tokenizer.pad_token_id, pack=True, max_length=320)
    results = []
    for targets in (None, shifted_targets(batch["labels"], batch["kinds"])[0]):
        model.zero_grad()
        logits = forward(model, batch, "cpu", "sdpa", False, targets)
        loss, *_ = weighted_loss(logits, batch["labels"], batch["kinds"], 100, 100, 0.5)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((logits.shape, loss.item(), grads))
    (full_shape, full_loss, full_grads), (only_shape, only_loss, only_grads) = results
    assert len(full_shape) == 3 and len(only_shape) == 2 and only_shape[0] < full_shape[0] * full_shape[1] / 2
    assert only_loss == pytest.approx(full_loss, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(full_grads, only_grads, strict=True))


def test_alpha_out_of_range_is_refused(config):
    with pytest.raises(FairError, match=r"alpha must be in \[0, 1\]"):
        make_config(TrainConfig, {"alpha": 1.5}, source="test")
    with pytest.raises(FairError, match="multiple of micro_batch_size"):
        make_config(TrainConfig, {"batch_size": 8, "micro_batch_size": 3}, source="test")


def test_micro_batch_size_does_not_change_the_step(config, tmp_path):
    """Gradient accumulation is exact: 4 micro-batches of 2 == 1 of 8 (per-token means over the step)."""
    train(dataclasses.replace(config, max_steps=3))
    train(dataclasses.replace(config, max_steps=3, micro_batch_size=8, out=str(tmp_path / "big")))
    assert losses(Path(config.out)) == pytest.approx(losses(tmp_path / "big"), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_compiled_layers_train_as_the_eager_ones(config, tmp_path, lora):
    """torch.compile per decoder layer (packed rows, varlen attention, LoRA or not) changes the speed, not the
    steps: the same losses (step 3's after two updates), and an exported model with the same parameter names.
    (Not the same values to 1e-5: Adam turns float-level gradient differences into lr-sized steps.)"""
    from safetensors.torch import load_file

    base = dataclasses.replace(config, max_steps=3, pack=True, lora=lora, lora_r=4, lora_alpha=8)
    eager = train(base)
    compiled = train(dataclasses.replace(base, compile=True, out=str(tmp_path / "compiled")))
    assert losses(tmp_path / "compiled") == pytest.approx(losses(Path(config.out)), rel=1e-4)
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    with pytest.raises(FairError, match="compile does not go with deepspeed"):
        dataclasses.replace(base, compile=True, deepspeed="configs/deepspeed/zero2.json")


def test_loss_falls_and_resume_equals_uninterrupted(config, tmp_path, monkeypatch):
    full = dataclasses.replace(config, max_steps=6, save_every=2, out=str(tmp_path / "full"))
    train(full)
    uninterrupted = losses(tmp_path / "full")
    assert uninterrupted[-1] < uninterrupted[0]

    killed = dataclasses.replace(full, out=str(tmp_path / "killed"))
    real_save = trainer.save_checkpoint

    def save_then_die(folder, *args, **kwargs):
        real_save(folder, *args, **kwargs)
        if folder.name == "step-4":
            raise KeyboardInterrupt  # as if killed right after the checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    train(killed)  # the same command again resumes from step 4
    resumed = losses(tmp_path / "killed")
    assert [r["step"] for r in read_jsonl(tmp_path / "killed" / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert resumed == pytest.approx(uninterrupted, rel=1e-5)
    assert not list((tmp_path / "killed").rglob("*.bin")) and not list((tmp_path / "killed").rglob("*.pt"))
    exported = (tmp_path / "killed" / "final" / "model.safetensors").stat().st_mtime_ns
    train(killed)  # finished: a rerun neither trains nor exports again
    assert (tmp_path / "killed" / "final" / "model.safetensors").stat().st_mtime_ns == exported
    assert len(losses(tmp_path / "killed")) == 6


def test_alpha_zero_trains_on_rationales_only(config, tmp_path):
    train(dataclasses.replace(config, alpha=0.0, max_steps=2))
    log = list(read_jsonl(Path(config.out) / "log.jsonl"))
    assert all(r["feedback_loss"] is None and r["rationale_loss"] == pytest.approx(r["loss"]) for r in log)


def test_lora_exports_a_merged_model_that_evaluates(config, tmp_path, capsys):
    from cli.main import main

    lora = dataclasses.replace(config, lora=True, lora_r=4, lora_alpha=8, max_steps=2, pack=True)
    final = train(lora)
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    from safetensors.torch import load_file
    base, tuned = load_file(Path(config.student) / "model.safetensors"), load_file(final / "model.safetensors")
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all(("proj" in k) for k in changed)  # LoRA touched the linear layers only
    assert main(["eval", "--model", str(final), "--engine", "hf", "--limit", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "eval")]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_two_processes_match_one(config, tmp_path, zero):
    """Data-parallel equivalence on CPU (gloo): two ZeRO processes take the same steps as one process on the
    same global batch; then a resumed two-process run picks up the safetensors checkpoint."""
    single = dataclasses.replace(config, max_steps=4, out=str(tmp_path / "single"))
    train(single)
    ds = cli_args(config, max_steps=2, deepspeed=str(ROOT / "configs" / "deepspeed" / f"{zero}.json"))
    first = torchrun(ds, tmp_path / "ds", nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(cli_args(config, max_steps=4, deepspeed=str(ROOT / "configs" / "deepspeed" / f"{zero}.json")),
                       tmp_path / "ds", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert losses(tmp_path / "ds") == pytest.approx(losses(tmp_path / "single"), rel=2e-4)
    assert losses(tmp_path / "ds")[-1] < losses(tmp_path / "ds")[0]
    from transformers import AutoModelForCausalLM
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "ds" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4), name


def test_tokenizer_model_mismatch_is_refused(config, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(small)
    AutoTokenizer.from_pretrained(config.student).save_pretrained(small)  # 49,152 tokens for 100 embeddings
    with pytest.raises(FairError, match="do not belong together"):
        train(dataclasses.replace(config, student=str(small)))
