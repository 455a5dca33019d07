"""Shared fixtures: a tiny random llama with SmolLM2's tokenizer, a fake engine, and the shared data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fair.engines.base import Generation, Sampling
from fair.tasks import default_data_dir

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers imports deepspeed; keep it off CUDA probing


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "svamp").is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random llama that shares SmolLM2's tokenizer and chat template: loads in well under a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fair.models import smollm2_dir

    source = smollm2_dir()  # converted once per machine, then cached
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


class FakeEngine:
    """Answers from a script: `answers[id]` by prompt order; counts calls; can fail after N calls (a 'kill')."""

    tokenizer = None

    def __init__(self, reply, fail_after_calls: int | None = None):
        self.reply = reply  # prompt -> completion text
        self.calls = 0
        self.prompts_seen: list[str] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like from inside the loop
        self.calls += 1
        self.prompts_seen += prompts
        return [Generation(self.reply(p), 10, 5, "stop") for p in prompts]


@pytest.fixture
def fake_engine_cls():
    return FakeEngine
