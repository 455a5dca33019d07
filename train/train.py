"""Stage 3, train the student: loss = alpha * feedback loss + (1 - alpha) * rationale loss.

    fair train --task svamp                                        # one CPU or GPU, defaults below
    fair train --config configs/train/paper.yaml                   # the paper's settings
    deepspeed --num_gpus 8 -m fair.train.train --config configs/train/paper.yaml --deepspeed configs/deepspeed/zero3.json
    torchrun --nproc_per_node 8 -m fair.train.train --config ... --deepspeed configs/deepspeed/zero2.json
    launch/multi_node.sh HOSTFILE ...   and   sbatch launch/slurm.sbatch ...     (multi-node; see launch/)

Why a plain torch loop and not HF Trainer / TRL: the loss needs two per-token means (feedback and rationale
tokens) over the whole global batch, exact under gradient accumulation and data parallelism; here each
rank knows every micro-batch of a step up front (the data order is a pure function of seed and epoch), so
it divides by the step's global token counts with no communication, and DeepSpeed only averages gradients.
The same loop runs with and without DeepSpeed, and checkpoints are the same safetensors either way.

Data: committee.jsonl from `fair committee`, or the paper's feedback/rationale files. Output: checkpoints
under <out>/checkpoints/step-N (resumable: rerun the same command) and a plain HF model in <out>/final.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from fair.config import save_config
from fair.errors import FairError
from fair.eval.tasks import get_task
from fair.gen.models import DEFAULT_STUDENT, model_short_name, resolve_model
from fair.jsonl import append_jsonl, write_json
from fair.train.checkpoint import (
    full_param,
    latest_checkpoint,
    load_optimizer,
    load_weights,
    save_checkpoint,
    trainable,
)
from fair.train.data import (
    FEEDBACK,
    RATIONALE,
    attention_mask_4d,
    build_examples,
    collate,
    load_records,
    single_row,
    tokenize_examples,
)


@dataclass
class TrainConfig:
    # --- data
    task: str = "svamp"
    student: str = DEFAULT_STUDENT  # the model to train: bundled SmolLM2, a local directory or a hub id
    committee: str | None = None  # default data/<task>/<student>/committee.jsonl
    paper_feedback: str | None = None  # or the paper's *_feedback_round0.json ...
    paper_rationale: str | None = None  # ... with its *_rationale_round0.json
    teacher: str = "mixed"  # mixed | all | no-review | a teacher's name (raw, unreviewed)
    prompt_format: Literal["chat", "paper"] = "chat"  # chat: the student's template, as at evaluation
    data_dir: str | None = None
    # --- objective
    alpha: float = 0.5  # weight of the feedback loss; 1 - alpha weighs the rationale loss
    # --- optimisation
    lr: float = 1e-5
    batch_size: int = 8  # examples per optimizer step, over all ranks and accumulation steps
    micro_batch_size: int = 4  # examples per forward pass on one rank
    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (smoke runs, benchmarks)
    max_length: int = 512
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_ratio: float = 0.03
    seed: int = 0
    pack: bool = False  # pack examples into rows of max_length (no attention across them)
    # --- model
    lora: bool = False  # train LoRA adapters (merged into the exported model) instead of every weight
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPUs, fp32 on CPUs
    deepspeed: str | None = None  # a ZeRO config (configs/deepspeed/*.json); needed for more than one process
    # --- output
    out: str | None = None  # default checkpoints/<task>-<student>-<teacher>
    save_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch
    log_every: int = 1

    def validate(self) -> None:
        get_task(self.task)
        if not 0 <= self.alpha <= 1:
            raise FairError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise FairError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        if (self.paper_feedback is None) != (self.paper_rationale is None):
            raise FairError("paper_feedback and paper_rationale go together")
        if self.max_length < 8 or self.lr <= 0 or self.epochs < 1:
            raise FairError("max_length must be >= 8, lr > 0 and epochs >= 1")

    @property
    def out_dir(self) -> Path:
        teacher = self.teacher if self.paper_feedback is None else f"paper-{self.teacher}"
        return Path(self.out or Path("checkpoints") / f"{self.task}-{model_short_name(self.student)}-{teacher}")

    @property
    def committee_path(self) -> Path:
        default = Path("data") / get_task(self.task).name / model_short_name(self.student) / "committee.jsonl"
        return Path(self.committee or default)


# ----------------------------------------------------------------------------------------------------------
# Setup


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    zero: bool = False  # DeepSpeed ZeRO engine in use

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def setup_distributed(config: TrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.deepspeed is None:
        if world > 1:
            raise FairError("training in several processes needs a ZeRO config: --deepspeed configs/deepspeed/zero2.json")
        return Dist()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), zero=True)


def load_model(config: TrainConfig, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(config.student)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights everywhere
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise FairError(f"tokenizer of {path} has {len(tokenizer)} tokens but the model embeds only "
                        f"{model.get_input_embeddings().num_embeddings}: they do not belong together")
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return tokenizer, model.to(device)


def load_data(config: TrainConfig, tokenizer, dist: Dist):
    task = get_task(config.task)
    if config.paper_feedback:
        records = load_records(config.paper_feedback, task, rationale_path=config.paper_rationale,
                               data_dir=config.data_dir)
    else:
        if not config.committee_path.exists():
            raise FairError(f"no committee data at {config.committee_path}: run `fair gen --task {task.name}` "
                            "(or --paper-feedback/--paper-rationale for the paper's files)")
        records = load_records(config.committee_path, task)
    examples, report = build_examples(records, task, config.teacher, config.seed, config.prompt_format)
    tokenized, token_report = tokenize_examples(examples, tokenizer, config.max_length, config.prompt_format)
    if config.alpha == 0 or config.alpha == 1:  # a zero-weight kind costs compute and teaches nothing
        keep = RATIONALE if config.alpha == 0 else FEEDBACK
        tokenized = [t for t in tokenized if t.kind == keep]
    if dist.rank == 0:
        print(report.summary())
        print(f"tokenized {token_report.examples} examples: {token_report.truncated} truncated to "
              f"{config.max_length} tokens, {token_report.skipped_too_long_prompt} skipped (prompt too long)")
        write_json(config.out_dir / "data_report.json", {"build": asdict(report), "tokenize": asdict(token_report)})
    if len(tokenized) < config.batch_size:
        raise FairError(f"{len(tokenized)} training examples is fewer than one batch of {config.batch_size}")
    return tokenized


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    warmup = max(1, round(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------------------------------------
# The loss


def target_tokens(items) -> tuple[int, int]:
    counts = [0, 0]
    for item in items:
        counts[item.kind] += sum(label != -100 for label in item.labels)
    return counts[FEEDBACK], counts[RATIONALE]


def weighted_loss(logits, labels, kinds, n_feedback: int, n_rationale: int, alpha: float):
    """This micro-batch's share of alpha * mean CE(feedback tokens) + (1 - alpha) * mean CE(rationale tokens),
    where the means are over the whole step's tokens of each kind (n_feedback, n_rationale)."""
    # Token t predicts token t + 1: shift the (small) labels left rather than slicing the (large) logits, whose
    # slice would be copied; then only target positions go through the softmax (prompt and padding don't).
    labels = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
    kinds = F.pad(kinds[:, 1:], (0, 1), value=-1).reshape(-1)
    targets = labels != -100
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[targets].float(), labels[targets], reduction="none")
    kinds = kinds[targets]
    feedback_sum, rationale_sum = ce[kinds == FEEDBACK].sum(), ce[kinds == RATIONALE].sum()
    loss = alpha * feedback_sum / max(n_feedback, 1) + (1 - alpha) * rationale_sum / max(n_rationale, 1)
    return loss, feedback_sum.item(), rationale_sum.item()


def forward(model, batch: dict, device: str, attention: str, autocast: bool):
    """Logits for a batch; packed rows get restarted positions and no attention across their examples."""
    inputs = {"input_ids": batch["input_ids"].to(device)}
    if "seq_ids" in batch:
        inputs["position_ids"] = batch["position_ids"].to(device)
        if attention != "flash_attention_2":  # flash finds the boundaries from position_ids (one row: single_row)
            # Eager attention adds the mask to its scores, so it needs the additive form; sdpa takes either.
            inputs["attention_mask"] = attention_mask_4d(batch["seq_ids"], torch.float32).to(device)
    else:
        inputs["attention_mask"] = batch["attention_mask"].to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        # use_cache=False: no KV cache in training, and with one transformers would ignore packed positions.
        return model(**inputs, use_cache=False).logits


# ----------------------------------------------------------------------------------------------------------
# The run


def step_plan(n: int, config: TrainConfig, step: int, steps_per_epoch: int) -> list[int]:
    """The global batch of a step: a pure function of (seed, epoch), so every rank and every resume agree."""
    epoch, within = divmod(step, steps_per_epoch)
    order = list(range(n))
    random.Random(f"{config.seed}-{epoch}").shuffle(order)
    return order[within * config.batch_size : (within + 1) * config.batch_size]


def my_micro_batches(batch: list, size: int, dist: Dist) -> list[list]:
    """This rank's micro-batches of a step. Examples are sorted by length first, so each micro-batch pads to
    a similar length (a third fewer padded positions here), and dealt to the ranks in snake order (0,1,1,0,...)
    so that no rank waits on one with all the long ones. The loss divides by the step's token counts, so
    neither choice changes the result."""
    ordered = sorted(batch, key=lambda item: len(item.input_ids))
    micro = [ordered[k : k + size] for k in range(0, len(ordered), size)]
    period = 2 * dist.world
    return [chunk for i, chunk in enumerate(micro) if min(i % period, period - 1 - i % period) == dist.rank]


def train(config: TrainConfig) -> Path:
    dist = setup_distributed(config)
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and dist.zero:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device == "cuda")
    tokenizer, model = load_model(config, device)
    items = load_data(config, tokenizer, dist)
    if dist.rank == 0:
        save_config(config, config.out_dir / "train.yaml")

    micro_per_step = config.batch_size // config.micro_batch_size
    if micro_per_step % dist.world:
        raise FairError(f"batch_size / micro_batch_size = {micro_per_step} micro-batches must split evenly over "
                        f"{dist.world} processes")
    accumulation = micro_per_step // dist.world
    steps_per_epoch = len(items) // config.batch_size  # the remainder (< one batch) is reshuffled into the next epoch
    total = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)

    resume_from = latest_checkpoint(config.out_dir / "checkpoints")
    start = load_weights(resume_from, model)["step"] if resume_from else 0
    params = [p for _, p in trainable(model)]
    if dist.zero:
        engine, optimizer = deepspeed_engine(config, model, params, accumulation, bf16)
        autocast = False  # DeepSpeed casts the model itself when bf16 is on
    else:
        engine = model
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        autocast = bf16 and device == "cuda"
    attention = getattr(model.config, "_attn_implementation", "sdpa")

    if resume_from:
        if start >= total and (config.out_dir / "final" / "config.json").exists():
            if dist.rank == 0:
                print(f"{config.out_dir} is trained ({start} steps); nothing to do")
            return config.out_dir / "final"  # not exported again: its weights (and evaluations of them) stand
        load_optimizer(resume_from, model, optimizer, dist.zero, start)
        if dist.rank == 0:
            print(f"resumed from {resume_from}")
    log_path = config.out_dir / "log.jsonl"
    if dist.rank == 0:
        print(f"training {model_short_name(config.student)} on {len(items)} examples: {total} steps of "
              f"{config.batch_size} ({dist.world} process(es) x {accumulation} x {config.micro_batch_size}), "
              f"alpha={config.alpha}, {'LoRA' if config.lora else 'full'}, from step {start}")
    model.train()
    run_began = time.perf_counter()
    for step in range(start, total):
        began = time.perf_counter()
        batch = [items[i] for i in step_plan(len(items), config, step, steps_per_epoch)]
        n_feedback, n_rationale = target_tokens(batch)
        lr = learning_rate(config, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = [0.0, 0.0]
        for chunk in my_micro_batches(batch, config.micro_batch_size, dist):
            tensors = collate(chunk, tokenizer.pad_token_id, config.pack, config.max_length)
            if config.pack and attention == "flash_attention_2":
                tensors = single_row(tensors)
            logits = forward(engine, tensors, device, attention, autocast)
            loss, feedback_sum, rationale_sum = weighted_loss(logits, tensors["labels"].to(device),
                                                              tensors["kinds"].to(device), n_feedback, n_rationale,
                                                              config.alpha)
            sums[0] += feedback_sum
            sums[1] += rationale_sum
            if dist.zero:  # DeepSpeed divides by accumulation steps and averages over ranks: undo both
                engine.backward(loss * accumulation * dist.world)
                engine.step()
            else:
                loss.backward()
        if not dist.zero:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        feedback_total, rationale_total = dist.all_sum(sums)
        record = {
            "step": step + 1, "lr": lr,
            "loss": config.alpha * feedback_total / max(n_feedback, 1)
            + (1 - config.alpha) * rationale_total / max(n_rationale, 1),
            "feedback_loss": feedback_total / n_feedback if n_feedback else None,
            "rationale_loss": rationale_total / n_rationale if n_rationale else None,
            "target_tokens": n_feedback + n_rationale, "step_s": round(time.perf_counter() - began, 3),
            "target_tokens_per_s": (n_feedback + n_rationale) / (time.perf_counter() - began),
        }
        if dist.rank == 0:
            append_jsonl(log_path, [record])
            if (step + 1) % config.log_every == 0 or step + 1 == total:
                print(f"step {step + 1}/{total} loss {record['loss']:.4f} lr {lr:.2e} "
                      f"{record['target_tokens_per_s']:.0f} target tok/s", flush=True)
        epoch_end = (step + 1) % steps_per_epoch == 0
        if (config.save_every and (step + 1) % config.save_every == 0) or (not config.save_every and epoch_end) \
                or step + 1 == total:
            save_checkpoint(config.out_dir / "checkpoints" / f"step-{step + 1}", model, optimizer, dist.zero,
                            step + 1, asdict(config), dist.rank)
    if dist.rank == 0:
        write_json(config.out_dir / "train_summary.json", {
            "steps": total, "resumed_from": start, "seconds_this_run": round(time.perf_counter() - run_began, 2),
            "examples": len(items), "processes": dist.world,
        })
    return export(config, model, tokenizer, dist)


def deepspeed_engine(config: TrainConfig, model, params, accumulation: int, bf16: bool):
    import json

    import deepspeed

    ds_config = json.loads(Path(config.deepspeed).read_text())
    ds_config.update(train_batch_size=config.batch_size, train_micro_batch_size_per_gpu=config.micro_batch_size,
                     gradient_accumulation_steps=accumulation, gradient_clipping=config.grad_clip,
                     bf16={"enabled": bf16})
    optimizer = ds_config.setdefault("optimizer", {"type": "AdamW", "params": {}})
    optimizer["params"].update(lr=config.lr, weight_decay=config.weight_decay)
    if not torch.cuda.is_available():
        optimizer["params"]["torch_adam"] = True  # DeepSpeed's fused/CPU Adam would compile for minutes on a CPU
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine, ds_optimizer


def export(config: TrainConfig, model, tokenizer, dist: Dist) -> Path:
    """A plain HF directory (safetensors) that `fair eval` and vLLM load: LoRA merged, ZeRO-3 shards gathered."""
    weights = full_state(model, dist.zero)  # collective under ZeRO
    target = config.out_dir / "final"
    if dist.rank == 0:
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(resolve_model(config.student), dtype=torch.float32)
        if config.lora:
            from peft import PeftModel

            fresh = PeftModel(fresh, model.peft_config["default"])
        result = fresh.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight", "base_model.model.lm_head.weight"} if fresh.config.tie_word_embeddings else set()
        if result.unexpected_keys or set(result.missing_keys) - tied:
            raise RuntimeError(f"export could not place weights: {(result.unexpected_keys + result.missing_keys)[:5]}")
        if config.lora:
            fresh = fresh.merge_and_unload()
        fresh.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        print(f"exported {target}")
    if dist.world > 1:
        torch.distributed.barrier()
    return target


def full_state(model, zero: bool) -> dict[str, torch.Tensor]:
    """Every parameter, full and fp32 (collective under ZeRO: all ranks call it)."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            state[name] = full_param(param, zero)
        elif zero and hasattr(param, "ds_id"):  # a frozen ZeRO-3 shard (LoRA's base weights): gather it
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                state[name] = param.detach().float().cpu().clone()
        else:
            state[name] = param.detach().float().cpu()
    return state


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fair.config import add_config_arguments, build_config

    parser = argparse.ArgumentParser(prog="fair train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = parser.parse_args(argv)
    try:
        train(build_config(TrainConfig, args))
    except FairError as e:
        print(f"fair train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
