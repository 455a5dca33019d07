"""Checkpoints in safetensors only, identical for one process and for DeepSpeed ZeRO-1/2/3.

A checkpoint is a folder:
    model.safetensors       every trainable parameter, full and fp32, by name (LoRA: the adapter only)
    optimizer.safetensors   AdamW's exp_avg / exp_avg_sq per trainable parameter, same names
    state.json              step, the config that made it, a digest of the training data, the RNG states (base64)
Under ZeRO the tensors are partitioned across ranks; DeepSpeed's documented safe_get_full_* /
safe_set_full_* calls assemble and scatter them (collectives: every rank calls them), so a checkpoint does
not depend on the number of ranks or the ZeRO stage, and no pickle is ever written or read.

A trained model is exported as a plain Hugging Face folder (`export`): LoRA merged, shards gathered.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fair.errors import FairError
from fair.models import resolve_model

OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq")


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def full_param(param: torch.nn.Parameter, zero: bool) -> torch.Tensor:
    if zero:
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(param).detach().float().cpu()
    return param.detach().float().cpu()


def gather_state(model, optimizer, zero: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Full trainable weights and optimizer moments, by parameter name (collective under ZeRO)."""
    weights, moments = {}, {}
    for name, param in trainable(model):
        weights[name] = full_param(param, zero)
        for key in OPTIMIZER_KEYS:
            if zero:
                from deepspeed.utils import safe_get_full_optimizer_state

                value = safe_get_full_optimizer_state(param, key)
            else:
                value = optimizer.state.get(param, {}).get(key)
            if value is not None:
                moments[f"{key}.{name}"] = value.detach().float().cpu().contiguous()
    return weights, moments


def save_checkpoint(folder: Path, model, optimizer, zero: bool, step: int, config: dict, rank: int,
                    data: str | None = None) -> None:
    """`data`: the digest of the training examples (train/resume.py), checked when a run resumes from here."""
    weights, moments = gather_state(model, optimizer, zero)
    require_finite(weights, f"checkpoint {folder}")  # on every rank (each holds the full weights): all stop
    if rank != 0:
        return
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():  # a save cut short by a kill: nothing of it is reused
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
    save_file(moments, tmp / "optimizer.safetensors")
    rng = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():  # LoRA dropout on a GPU draws from the CUDA generator
        rng["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config, "data": data, "rng": rng}, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():  # the same step saved again after a resume: set aside whole, never half deleted
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)  # a kill mid-save leaves only a .partial folder, never a half checkpoint
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The last complete save: step-N folders only (not the .partial or .old a kill mid-save leaves)."""
    steps = [(int(match[1]), p) for p in (folder.iterdir() if folder.exists() else ())
             if (match := re.fullmatch(r"step-(\d+)", p.name)) and (p / "state.json").is_file()]
    return max(steps)[1] if steps else None


def require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Never write weights that are NaN or infinite: a model that only produces garbage, or poisons a resume."""
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise FairError(f"{what}: {len(bad)} tensor(s) not finite, e.g. {bad[0]}: not saved")


def load_weights(folder: Path, model) -> dict[str, Any]:
    """Put a checkpoint's weights into the model, before DeepSpeed wraps it (its fp32 partitions are copied
    from the model at initialisation, so the forward weights and the optimizer's master copy agree)."""
    weights = load_file(folder / "model.safetensors")
    params = dict(trainable(model))
    if set(weights) != set(params):
        missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise ValueError(f"{folder}: checkpoint does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    return json.loads((folder / "state.json").read_text())


def load_optimizer(folder: Path, model, optimizer, zero: bool, step: int) -> None:
    """Restore AdamW's moments and step count, and the RNG (after DeepSpeed has built its optimizer)."""
    moments = load_file(folder / "optimizer.safetensors")
    if zero:
        materialize_adam_state(optimizer)
    for name, param in trainable(model):
        if f"exp_avg.{name}" not in moments:
            continue
        if zero:
            from deepspeed.utils import safe_set_full_optimizer_state

            for key in OPTIMIZER_KEYS:
                safe_set_full_optimizer_state(param, moments[f"{key}.{name}"].to(param.device), key)
        else:
            optimizer.state[param] = {key: moments[f"{key}.{name}"].clone() for key in OPTIMIZER_KEYS}
    set_adam_step(optimizer, zero, step)
    state = json.loads((folder / "state.json").read_text())
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["rng"]["torch"])), dtype=torch.uint8))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["rng"]["cuda"])), dtype=torch.uint8))


def materialize_adam_state(zero_optimizer) -> None:
    """AdamW creates its moments at the first step, but a resume sets them before any step: create them now
    (zeros, as AdamW would) on ZeRO's flat fp32 partitions so that safe_set_full_optimizer_state has a target.
    ZeRO-1/2 then link the new state to each parameter's fragment (a DeepSpeed internal, done at first step)."""
    base = zero_optimizer.optimizer
    flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3 keeps its own list
    flats = flats if flats is not None else [p for group in base.param_groups for p in group["params"]]
    for flat in flats:
        state = base.state[flat]  # ZeRO-3 may already hold an entry without the moments
        state.setdefault("step", torch.tensor(0.0))
        for key in OPTIMIZER_KEYS:
            state.setdefault(key, torch.zeros_like(flat))
    if hasattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state"):
        zero_optimizer._lazy_init_hp_params_optimizer_state()


def set_adam_step(optimizer, zero: bool, step: int) -> None:
    """AdamW's bias correction depends on its step count; it lives beside the moments."""
    base = optimizer.optimizer if zero else optimizer  # ZeRO wraps the torch optimizer
    for param_state in base.state.values():
        if "step" in param_state:
            param_state["step"] = torch.tensor(float(step)) if torch.is_tensor(param_state["step"]) else step
        elif "exp_avg" in param_state:
            param_state["step"] = torch.tensor(float(step))


def export(target: Path, model, tokenizer, *, student: str, lora: bool, zero: bool, rank: int,
           adapter: Path | None = None) -> None:
    """A plain HF directory (safetensors) that `fair eval` and vLLM load: LoRA merged, ZeRO-3 shards gathered.
    LoRA's frozen base comes from the student's own (fp32) files, not from the model in memory, which may hold
    it in bf16 (train/train.py). With `adapter` (LoRA), the adapter alone is saved there too, before the merge:
    PEFT's adapter_config.json and adapter_model.safetensors, and the tokenizer. Collective under ZeRO: every
    rank calls it; rank 0 writes."""
    weights = dict(trainable_state(model, zero))  # full fine-tuning trains every weight
    require_finite(weights, f"export to {target}")  # every rank holds them all: all stop
    if rank == 0:
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(resolve_model(student), dtype=torch.float32)
        if lora:
            from peft import PeftModel

            fresh = PeftModel(fresh, model.peft_config["default"])
        result = fresh.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight", "base_model.model.lm_head.weight"} if fresh.config.tie_word_embeddings else set()
        # LoRA: only the adapters come from here (the base is fresh's own); else every weight but a tied head
        unplaced = result.unexpected_keys + ([] if lora else sorted(set(result.missing_keys) - tied))
        if unplaced:
            raise RuntimeError(f"export could not place weights: {unplaced[:5]}")
        if adapter is not None:
            fresh.save_pretrained(adapter, safe_serialization=True)
            tokenizer.save_pretrained(adapter)
            print(f"saved the LoRA adapter alone in {adapter}")
        if lora:
            fresh = fresh.merge_and_unload()
        fresh.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        print(f"exported {target}")


def trainable_state(model, zero: bool) -> list[tuple[str, torch.Tensor]]:
    """The trained parameters, full and fp32 (collective under ZeRO)."""
    return [(name, full_param(param, zero)) for name, param in trainable(model)]
