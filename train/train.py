"""Stage 3, train the student: loss = alpha * feedback loss + (1 - alpha) * rationale loss.

    fair train --task svamp                                        # one CPU or GPU, defaults below
    fair train --config configs/train/paper.yaml                   # the paper's settings
    deepspeed --num_gpus 8 -m train.train --config configs/train/paper.yaml --deepspeed configs/deepspeed/zero3.json
    torchrun --nproc_per_node 8 -m train.train --config ... --deepspeed configs/deepspeed/zero2.json
    launch/multi_node.sh HOSTFILE ...   and   sbatch launch/slurm.sbatch ...     (multi-node; see launch/)

Why a plain torch loop and not HF Trainer / TRL: the loss needs two per-token means (feedback and rationale
tokens) over the whole global batch, exact under gradient accumulation and data parallelism; here each
rank knows every micro-batch of a step up front (the data order is a pure function of seed and epoch), so
it divides by the step's global token counts with no communication, and DeepSpeed only averages gradients.
The same loop runs with and without DeepSpeed, and checkpoints are the same safetensors either way.

Data: committee.jsonl from `fair committee`, or the paper's feedback/rationale files. Output: checkpoints
under <out>/checkpoints/step-N (resumable: rerun the same command; SIGTERM or Ctrl-C saves the step in flight
first, train/preempt.py) and a plain HF model in <out>/final.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from fair.config import Validated, at_least, save_config
from fair.decontam import drop_contaminated
from fair.dtype import Dtype, Precision, dtype_field, resolve_dtype
from fair.errors import FairError, Stopped, main_guard
from fair.jsonl import read_jsonl, write_json
from fair.lock import folder_lock
from fair.models import DEFAULT_STUDENT, load_causal_lm, model_short_name, resolve_model
from fair.recipes import DEFAULT_FILTER, Filter, recorded_filter, run_filter
from fair.student import run_dir
from fair.tasks import get_task
from train.card import write_cards
from train.checkpoint import export, load_optimizer, save_checkpoint, trainable
from train.data import FEEDBACK, RATIONALE, build_examples, load_records, tokenize_examples
from train.distributed import Dist, setup_distributed
from train.preempt import StopRequests
from train.resume import check_settings, data_digest, resume_point
from train.step import Run, learning_rate, take_step
from train.trackers import RunLog, tracker_names
from train.varlen import VARLEN, varlen_supported


@dataclass
class TrainConfig(Validated):
    # --- data
    task: str = "svamp"  # the benchmark the committee's records are from (`fair tasks` lists them)
    student: str = DEFAULT_STUDENT  # the model to train: bundled SmolLM2, a local directory or a hub id
    committee: str | None = None  # default data/<task>/<student>/committee.jsonl
    paper_feedback: str | None = None  # or the paper's *_feedback_round0.json ...
    paper_rationale: str | None = None  # ... with its *_rationale_round0.json
    teacher: str = "mixed"  # mixed (one random text a mistake: FAIR) | all | a teacher's name
    filter: Filter | None = None  # which rationales qualify: review | gold | gold+review | none; None: the committee's
    decontaminate: bool = True  # drop mistakes whose question overlaps a test question (fair/decontam.py)
    prompt_format: Literal["chat", "paper"] = "chat"  # chat: the student's template, as at evaluation
    data_dir: str | None = None  # local data in shared/data layout; default $FAIR_DATA_DIR or ../shared/data
    # --- objective
    alpha: float = 0.5  # weight of the feedback loss; 1 - alpha weighs the rationale loss
    # --- optimisation
    lr: float = 1e-5  # peak learning rate (AdamW)
    batch_size: int = 8  # examples per optimizer step, over all ranks and accumulation steps
    micro_batch_size: int = 4  # examples per forward pass on one rank
    epochs: int = 10  # passes over the training examples
    max_steps: int | None = None  # stop after this many steps (smoke runs, benchmarks)
    max_length: int = 512  # tokens per example, prompt and target; a longer one is left out (data_report.json counts them)
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    grad_clip: float = 1.0  # the gradient's largest global norm
    schedule: Literal["constant", "cosine"] = "constant"  # the learning rate after warm-up
    warmup_ratio: float = 0.03  # share of the steps over which the learning rate rises linearly from 0
    seed: int = 0  # of the examples' draw, each epoch's order and torch (dropout, LoRA's initialisation)
    pack: bool = False  # pack examples into rows of max_length (no attention across them)
    compile: bool = False  # torch.compile each decoder layer: fuses its elementwise ops (no DeepSpeed yet)
    # --- model
    lora: bool = False  # train LoRA adapters (merged into the exported model) instead of every weight
    lora_r: int = 16  # LoRA: the adapters' rank
    lora_alpha: int = 32  # LoRA: the adapters' scale is lora_alpha / lora_r
    lora_dropout: float = 0.05  # LoRA: dropout on the adapters' input (on a CPU its masks cost a sixth of a step)
    save_adapter: bool = False  # LoRA: also save the adapter alone in <out>/adapter (PEFT's format), for PEFT users
    dtype: Dtype = dtype_field()  # bf16: autocast, fp32 master weights (auto: fair/dtype.py)
    deepspeed: str | None = None  # a ZeRO config (configs/deepspeed/*.json); needed for more than one process
    # --- output
    out: str | None = None  # default checkpoints/<task>-<student>-<teacher>[-<filter> but the default's]
    save_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch
    log_every: int = 1  # steps between lines of the console (log.jsonl has every step)
    report_to: tuple[str, ...] = ()  # trackers of each step's losses, lr, grad norm, tokens/s: tensorboard, wandb, mlflow, trackio (train/trackers.py)

    def __post_init__(self) -> None:
        self.report_to = tracker_names(self.report_to)  # a comma list (`--report-to tensorboard,wandb`) or a list
        super().__post_init__()

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
        at_least(self, 1, "max_steps", "lora_r", "lora_alpha", "log_every")  # log_every 0 divides by zero
        at_least(self, 0, "save_every")
        if self.grad_clip <= 0 or self.weight_decay < 0:
            raise FairError(f"grad_clip must be positive and weight_decay >= 0, got {self.grad_clip} and "
                            f"{self.weight_decay}")
        if not 0 <= self.warmup_ratio <= 1:
            raise FairError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise FairError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.save_adapter and not self.lora:
            raise FairError("save_adapter saves a LoRA adapter: it needs lora")
        if self.compile and self.deepspeed:
            raise FairError("compile does not go with deepspeed yet (ZeRO's hooks are untested under compile)")

    @property
    def out_dir(self) -> Path:
        default = self.filter in (None, DEFAULT_FILTER)
        teacher = self.teacher if default else f"{self.teacher}-{self.filter.replace('+', '-')}"
        teacher = teacher if self.paper_feedback is None else f"paper-{teacher}"
        return Path(self.out or Path("checkpoints") / f"{get_task(self.task).name}-{model_short_name(self.student)}-{teacher}")

    @property
    def committee_path(self) -> Path:
        return Path(self.committee or run_dir(self.task, self.student) / "committee.jsonl")


# ----------------------------------------------------------------------------------------------------------
# Setup


def load_model(config: TrainConfig, device: str):
    from transformers import AutoTokenizer

    path = resolve_model(config.student)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 master weights for everything trained. LoRA under bf16 stores the frozen base in bf16 (half its
    # memory; autocast computes in bf16 anyway), and peft makes the adapters, the trained part, fp32.
    bf16_base = config.lora and resolve_dtype(config.dtype).bf16
    model = load_causal_lm(path, torch.bfloat16 if bf16_base else torch.float32)  # bf16: a tensor at a time
    if config.pack and model.config._attn_implementation != "flash_attention_2" and varlen_supported(model):
        model.set_attn_implementation(VARLEN)  # packed examples without a mask or padding
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise FairError(f"tokenizer of {path} has {len(tokenizer)} tokens but the model embeds only "
                        f"{model.get_input_embeddings().num_embeddings}: they do not belong together")
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    if config.compile:
        # Per layer and in place: the parameter names (checkpoints) stay as they are, and a graph break in the
        # varlen attention's per-example loop stays inside one layer. dynamic: every micro-batch has its own length.
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
    return tokenizer, model.to(device)


class TooFewExamples(FairError):
    """Less than one batch to train on: no step can be taken (`fair loop` ends its rounds there)."""


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
    records, decontamination = drop_contaminated(records, task, config.data_dir) if config.decontaminate else (records, None)
    filter = config.filter or run_filter(map(recorded_filter, records), "the records")  # train() resolved it: only for other callers
    examples, report = build_examples(records, task, config.teacher, config.seed, config.prompt_format, filter)
    tokenized, token_report = tokenize_examples(examples, tokenizer, config.max_length, config.prompt_format)
    if config.alpha == 0 or config.alpha == 1:  # a zero-weight kind costs compute and teaches nothing
        keep = RATIONALE if config.alpha == 0 else FEEDBACK
        tokenized = [t for t in tokenized if t.kind == keep]
    if dist.rank == 0:
        print(report.summary())
        print(token_report.summary())
        print(f"decontamination: {decontamination['dropped']} of {decontamination['checked']} mistakes dropped "
              f"(their question overlaps {decontamination['against']})" if decontamination else "not decontaminated")
        write_json(config.out_dir / "data_report.json", {"build": asdict(report), "tokenize": asdict(token_report),
                                                          "decontamination": decontamination})
    if len(tokenized) < config.batch_size:
        raise TooFewExamples(f"{len(tokenized)} training examples is fewer than one batch of {config.batch_size}")
    return tokenized


# ----------------------------------------------------------------------------------------------------------
# The run


def step_plan(n: int, config: TrainConfig, step: int, steps_per_epoch: int) -> list[int]:
    """The global batch of a step: a pure function of (seed, epoch), so every rank and every resume agree."""
    epoch, within = divmod(step, steps_per_epoch)
    order = list(range(n))
    random.Random(f"{config.seed}-{epoch}").shuffle(order)
    return order[within * config.batch_size : (within + 1) * config.batch_size]


def train(config: TrainConfig) -> Path:
    if config.filter is None and (config.paper_feedback or config.committee_path.exists()):  # saved resolved,
        records = [] if config.paper_feedback else read_jsonl(config.committee_path)  # in the folder it names
        config = replace(config, filter=run_filter(map(recorded_filter, records), str(config.committee_path)), out=str(config.out_dir))
    dist = setup_distributed(config.deepspeed)
    with contextlib.ExitStack() as stack:
        # One run per folder, held by rank 0 for all ranks (they share the folder, so each taking the lock
        # would shut out the others); then nothing in the folder changes unless the settings are its own.
        dist.on_rank_zero(lambda: stack.enter_context(folder_lock(config.out_dir, "train")))
        dist.on_rank_zero(lambda: check_settings(config, config.out_dir / "train.yaml"))
        return train_locked(config, dist)


def train_locked(config: TrainConfig, dist: Dist) -> Path:
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_dtype(config.dtype)
    tokenizer, model = load_model(config, device)
    items = load_data(config, tokenizer, dist)

    micro_per_step = config.batch_size // config.micro_batch_size
    if micro_per_step % dist.world:
        raise FairError(f"batch_size / micro_batch_size = {micro_per_step} micro-batches must split evenly over "
                        f"{dist.world} processes")
    accumulation = micro_per_step // dist.world
    steps_per_epoch = len(items) // config.batch_size  # the remainder (< one batch) is reshuffled into the next epoch
    total = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)

    digest = data_digest(items)
    resume_from, start = resume_point(config, model, digest, dist.rank)
    if dist.rank == 0:  # once the checks passed: a refused run leaves the folder's settings as they were
        save_config(config, config.out_dir / "train.yaml")
    params = [p for _, p in trainable(model)]
    engine, optimizer, autocast = optimizer_for(config, model, params, dist, accumulation, precision.bf16)
    attention = getattr(model.config, "_attn_implementation", "sdpa")

    if resume_from:
        if start >= total and (config.out_dir / "final" / "config.json").exists():
            if dist.rank == 0:
                print(f"{config.out_dir} is trained ({start} steps); nothing to do")
            return config.out_dir / "final"  # not exported again: its weights (and evaluations of them) stand
        load_optimizer(resume_from, model, optimizer, dist.zero, start)
        if dist.rank == 0:
            print(f"resumed from {resume_from}")
    if dist.rank == 0:
        print(f"training {model_short_name(config.student)} on {len(items)} examples: {total} steps of "
              f"{config.batch_size} ({dist.world} process(es) x {accumulation} x {config.micro_batch_size}), "
              f"alpha={config.alpha}, {'LoRA' if config.lora else 'full'}, {describe(precision)}, from step {start}")
    model.train()
    run_began = time.perf_counter()
    run = Run(config, dist, tokenizer, engine, optimizer, params, device, attention, autocast, accumulation)
    with RunLog(config, start, total, dist) as log:  # log.jsonl, the console, the progress bar, the trackers
        with StopRequests() as stop:  # SIGTERM and the like: stop at the end of the step in flight, saved
            for step in range(start, total):
                saved = run_step(config, run, items, step, total, steps_per_epoch, digest, model, log)
                if signum := stop.agreed(dist):
                    if not saved:
                        save_step(config, run, step + 1, digest, model)
                    stop_run(dist, signum, step + 1, total, step_folder(config, step + 1))
        log.end({"steps": total, "resumed_from": start, "seconds_this_run": round(time.perf_counter() - run_began, 2),
                 "examples": len(items), "processes": dist.world, "dtype": precision.to_json(),
                 "committee": None if config.paper_feedback else str(config.committee_path)})  # for the model card
    target = config.out_dir / "final"
    export(target, model, tokenizer, student=config.student, lora=config.lora, zero=dist.zero, rank=dist.rank,
           adapter=config.out_dir / "adapter" if config.save_adapter else None)
    if dist.rank == 0:
        write_cards(config.out_dir)  # final/'s and adapter/'s: `fair push-model` adds the evaluations
    dist.barrier()
    return target


def describe(precision: Precision) -> str:
    if precision.bf16:
        return f"bf16 autocast, fp32 weights and optimizer ({precision.reason})"
    return f"float32 ({precision.reason})"


def optimizer_for(config: TrainConfig, model, params, dist: Dist, accumulation: int, bf16: bool):
    """(what steps the model, its optimizer, whether to autocast): DeepSpeed's engine under ZeRO (it casts the
    model itself when bf16 is on, keeping fp32 master weights in its optimizer), else the model (fp32) and
    torch's AdamW (fp32 state), with the forward autocast to bf16 when bf16 is on, on CPUs as on GPUs."""
    if dist.zero:
        engine, optimizer = deepspeed_engine(config, model, params, accumulation, bf16)
        return engine, optimizer, False
    # fused: one kernel for all of AdamW's element-wise updates (CPU and CUDA), same arithmetic
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    return model, optimizer, bf16


def run_step(config: TrainConfig, run: Run, items: list, step: int, total: int, steps_per_epoch: int, digest: str,
             model, log: RunLog) -> bool:
    """One optimizer step: its batch, the step, its record (`log`), and a checkpoint when the save rule says so
    (then True)."""
    began = time.perf_counter()
    batch = [items[i] for i in step_plan(len(items), config, step, steps_per_epoch)]
    lr = learning_rate(config, step, total)
    record = take_step(run, batch, step, lr)
    record["step_s"] = round(time.perf_counter() - began, 3)
    record["target_tokens_per_s"] = record["target_tokens"] / (time.perf_counter() - began)
    record["tokens_per_s"] = record["tokens"] / (time.perf_counter() - began)
    log.step(record)
    if not save_due(config, step + 1, total, steps_per_epoch):
        return False
    save_step(config, run, step + 1, digest, model)
    return True


def save_step(config: TrainConfig, run: Run, done: int, digest: str, model) -> None:
    save_checkpoint(step_folder(config, done), model, run.optimizer, run.dist.zero, done, asdict(config),
                    run.dist.rank, digest)


def step_folder(config: TrainConfig, done: int) -> Path:
    return config.out_dir / "checkpoints" / f"step-{done}"


def stop_run(dist: Dist, signum: int, done: int, total: int, folder: Path) -> None:
    """End the run with `Stopped` once step `done` is saved (train/preempt.py). Rank 0 writes the checkpoint
    while the others return from the save: they wait for it here, since a launcher that sees one rank exit may
    kill the rest, rank 0 in the middle of its write."""
    dist.barrier()
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name} after step {done} of {total}, saved in "
                          f"{folder}; rerun the same command to resume")


def save_due(config: TrainConfig, done: int, total: int, steps_per_epoch: int) -> bool:
    """Every save_every steps, else at each epoch's end; always after the last step."""
    every = config.save_every or steps_per_epoch
    return done % every == 0 or done == total


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


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fair.config import build_config, config_parser

    parser = config_parser(TrainConfig, "fair train", __doc__)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = parser.parse_args(argv)

    def work() -> None:
        train(build_config(TrainConfig, args))

    return main_guard("fair train", work)


if __name__ == "__main__":
    sys.exit(main())
