"""One optimizer step: the two-part loss, the forward pass, this rank's micro-batches, and the guard that
stops a run on a loss or gradient that is not finite (before anything is saved, so the last checkpoint on
disk is the last good one)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from fair.errors import FairError
from fair.models import PLAIN_DECODERS
from fair.rss import release_freed
from train.checkpoint import latest_checkpoint
from train.data import FEEDBACK, RATIONALE, attention_mask_4d, collate, single_row
from train.varlen import VARLEN, example_bounds

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def target_tokens(items) -> tuple[int, int]:
    counts = [0, 0]
    for item in items:
        counts[item.kind] += sum(label != -100 for label in item.labels)
    return counts[FEEDBACK], counts[RATIONALE]


def shifted_targets(labels, kinds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token t predicts token t + 1: the (small) labels move left rather than the (large) logits, whose slice
    would be copied. Returns the [B,T] mask of positions that predict a target, and their labels and kinds."""
    labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    kinds = F.pad(kinds[:, 1:], (0, 1), value=-1)
    targets = labels != -100
    return targets, labels[targets], kinds[targets]


def weighted_loss(logits, labels, kinds, n_feedback: int, n_rationale: int, alpha: float):
    """This micro-batch's share of alpha * mean CE(feedback tokens) + (1 - alpha) * mean CE(rationale tokens),
    where the means are over the whole step's tokens of each kind (n_feedback, n_rationale). `labels` and
    `kinds` are the batch's [B,T]; `logits` those of every position ([B,T,vocab]) or of the positions that
    predict a target only ([N,vocab], in the order of `shifted_targets`)."""
    targets, labels, kinds = shifted_targets(labels, kinds)
    if logits.dim() == 3:
        logits = logits[targets]
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    feedback_sum, rationale_sum = ce[kinds == FEEDBACK].sum(), ce[kinds == RATIONALE].sum()
    loss = alpha * feedback_sum / max(n_feedback, 1) + (1 - alpha) * rationale_sum / max(n_rationale, 1)
    return loss, feedback_sum.item(), rationale_sum.item()


def forward(model, batch: dict, device: str, attention: str, autocast: bool, targets: torch.Tensor | None = None):
    """Logits for a batch; packed rows get restarted positions and no attention across their examples.
    With `targets` (a [B,T] mask), only those positions go through the output layer: [N, vocab]. On SmolLM2
    the output layer (49,152 x 576) is a fifth of the model's compute, and most positions are prompt."""
    inputs = {"input_ids": batch["input_ids"].to(device)}
    if "seq_ids" in batch:
        inputs["position_ids"] = batch["position_ids"].to(device)
        if attention == VARLEN:  # one row, each example its own causal attention (train/varlen.py)
            inputs["example_bounds"] = example_bounds(batch["seq_ids"])
        elif attention != "flash_attention_2":  # flash finds the boundaries from position_ids (one row: single_row)
            # Eager attention adds the mask to its scores, so it needs the additive form; sdpa takes either.
            inputs["attention_mask"] = attention_mask_4d(batch["seq_ids"], torch.float32).to(device)
    else:
        inputs["attention_mask"] = batch["attention_mask"].to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):  # "cpu" or "cuda"; bf16 matmuls, fp32 weights
        # use_cache=False: no KV cache in training, and with one transformers would ignore packed positions.
        if targets is None:
            return model(**inputs, use_cache=False).logits
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps it
        body = getattr(causal_lm, causal_lm.base_model_prefix)
        hidden = body(**inputs, use_cache=False).last_hidden_state
        return causal_lm.get_output_embeddings()(hidden[targets.to(device)])


def my_micro_batches(batch: list, size: int, dist) -> list[list]:
    """This rank's micro-batches of a step. Examples are sorted by length first, so each micro-batch pads to
    a similar length (a third fewer padded positions here), and dealt to the ranks in snake order (0,1,1,0,...)
    so that no rank waits on one with all the long ones. The loss divides by the step's token counts, so
    neither choice changes the result."""
    ordered = sorted(batch, key=lambda item: len(item.input_ids))
    micro = [ordered[k : k + size] for k in range(0, len(ordered), size)]
    period = 2 * dist.world
    return [chunk for i, chunk in enumerate(micro) if min(i % period, period - 1 - i % period) == dist.rank]


class StepConfig(Protocol):
    """What a step reads of its TrainConfig (train/train.py, which imports this module: named here by shape)."""

    alpha: float
    micro_batch_size: int
    max_length: int
    pack: bool
    grad_clip: float
    lr: float  # the schedule's (learning_rate)
    warmup_ratio: float
    schedule: str

    @property
    def out_dir(self) -> Path: ...


class Ranks(Protocol):
    """The run's processes (train/distributed.py): this one's rank, how many, whether ZeRO runs, a sum over all."""

    rank: int
    world: int
    zero: bool

    def all_sum(self, values: list[float]) -> list[float]: ...


@dataclass
class Run:
    """What every step needs, built once by train_locked."""
    config: StepConfig
    dist: Ranks
    tokenizer: PreTrainedTokenizerBase
    engine: torch.nn.Module  # the model, or DeepSpeed's engine around it (a Module too)
    optimizer: torch.optim.Optimizer  # or DeepSpeed's ZeRO optimizer, which has the same param_groups
    params: list[torch.nn.Parameter]
    device: str
    attention: str
    autocast: bool
    accumulation: int


def take_step(run: Run, batch: list, step: int, lr: float) -> dict:
    """One optimizer step on this rank's share of `batch`; its log record. A loss or gradient that is not
    finite stops the run before anything is saved, so the last checkpoint on disk stays the last good one."""
    config, dist = run.config, run.dist
    n_feedback, n_rationale = target_tokens(batch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    sums = [0.0, 0.0, 0.0]  # this rank's loss (the sum of its micro-batches' shares), feedback and rationale CE sums
    for chunk in my_micro_batches(batch, config.micro_batch_size, dist):
        if config.pack and run.attention == VARLEN:  # the whole micro-batch in one row: no padding at all
            tensors = collate(chunk, run.tokenizer.pad_token_id, True, sum(len(i.input_ids) for i in chunk))
        else:
            tensors = collate(chunk, run.tokenizer.pad_token_id, config.pack, config.max_length)
        if config.pack and run.attention == "flash_attention_2":
            tensors = single_row(tensors)
        targets = None
        if not dist.zero and run.engine.config.model_type in PLAIN_DECODERS:  # ZeRO hooks need the engine's forward
            targets = shifted_targets(tensors["labels"], tensors["kinds"])[0]
        logits = forward(run.engine, tensors, run.device, run.attention, run.autocast, targets)
        loss, feedback_sum, rationale_sum = weighted_loss(logits, tensors["labels"].to(run.device),
                                                          tensors["kinds"].to(run.device), n_feedback, n_rationale,
                                                          config.alpha)
        sums[0] += loss.item()
        sums[1] += feedback_sum
        sums[2] += rationale_sum
        if dist.zero:  # DeepSpeed divides by accumulation steps and averages over ranks: undo both
            run.engine.backward(loss * run.accumulation * dist.world)
            run.engine.step()
        else:
            loss.backward()
        del logits, loss
        release_freed()  # this micro-batch's activations, freed, leave the heap (fair/rss.py)
    # Every rank sees the same sums, so all stop together. The shares add up to the step's loss as weighted_loss
    # defines it: what is logged is what was minimised.
    total_loss, feedback_total, rationale_total = dist.all_sum(sums)
    require_finite_step(step, "loss", total_loss, config)
    if dist.zero:  # DeepSpeed has stepped already (on bf16 it does not skip): the weights in memory are lost
        norm = run.engine.get_global_grad_norm()
        require_finite_step(step, "gradient norm", norm, config)
    else:
        norm = torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip).item()  # the norm before clipping
        require_finite_step(step, "gradient norm", norm, config)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return {
        "step": step + 1, "lr": lr, "loss": total_loss,
        "feedback_loss": feedback_total / n_feedback if n_feedback else None,
        "rationale_loss": rationale_total / n_rationale if n_rationale else None,
        "target_tokens": n_feedback + n_rationale, "tokens": sum(len(item.input_ids) for item in batch),
        "grad_norm": None if norm is None else float(norm),
    }


def require_finite_step(step: int, what: str, value, config: StepConfig) -> None:
    if value is not None and not math.isfinite(float(value)):  # DeepSpeed's norm may be a tensor
        last = latest_checkpoint(config.out_dir / "checkpoints")
        raise FairError(f"step {step + 1}: the {what} is {value}, not finite; stopped without saving (last good "
                        f"checkpoint: {last or 'none'}); try a lower lr or grad_clip, or dtype=float32")


def learning_rate(config: StepConfig, step: int, total: int) -> float:
    """The step's learning rate: linear warm-up, then constant or cosine to zero."""
    warmup = max(1, round(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
