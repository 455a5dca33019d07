"""fair.models.load_causal_lm: a checkpoint stored in one dtype loaded in another a tensor at a time gives the
model transformers' own loading gives, its generation settings included; sharded checkpoints too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from fair import models
from fair.models import load_causal_lm


def same_model(ours, theirs) -> None:
    assert type(ours) is type(theirs) and ours.dtype == theirs.dtype
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) for k in mine)
    buffers = dict(theirs.named_buffers())
    assert all(torch.equal(b, buffers[n]) and b.dtype == buffers[n].dtype for n, b in ours.named_buffers())
    def tied(model) -> bool:
        return model.get_output_embeddings().weight is model.get_input_embeddings().weight

    assert tied(ours) == tied(theirs)
    assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_fp32_checkpoint_loaded_in_bf16_tensor_by_tensor(tiny_model_dir, monkeypatch):
    read = []
    real = models.read_tensor
    monkeypatch.setattr(models, "read_tensor", lambda file, name: read.append(name) or real(file, name))
    ours = load_causal_lm(str(tiny_model_dir), torch.bfloat16)
    assert len(read) == len(models.tensor_names(tiny_model_dir / "model.safetensors"))  # our path, a tensor each
    same_model(ours, AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16))


def test_same_dtype_is_transformers_own_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "read_tensor", lambda *_: (_ for _ in ()).throw(AssertionError("converted")))
    same_model(load_causal_lm(str(tiny_model_dir), torch.float32),
               AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))


def test_sharded_checkpoint(tiny_model_dir, tmp_path: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="1MB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, sharded / name)
    shards = set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1 and models.safetensors_files(sharded) == sorted(sharded / s for s in shards)
    same_model(load_causal_lm(str(sharded), torch.bfloat16),
               AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.bfloat16))


def test_tied_embeddings_stay_tied(tiny_model_dir, tmp_path: Path):
    """SmolLM2 ties its output layer to its embeddings; its checkpoint stores the matrix once."""
    from transformers import LlamaForCausalLM

    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    config.tie_word_embeddings = True
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    ours = load_causal_lm(str(tmp_path / "tied"), torch.bfloat16)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    same_model(ours, AutoModelForCausalLM.from_pretrained(tmp_path / "tied", dtype=torch.bfloat16))
