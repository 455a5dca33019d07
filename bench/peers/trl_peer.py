"""TRL's SFTTrainer on bench_train.py's examples, in TRL's own venv (.cache/bench-venvs/trl; never ours).

    python trl_peer.py --data examples.jsonl --model DIR --out DIR --micro-batch-size 4 --accumulation 2 \
        --max-steps 4 --max-length 512 [--padding-free] [--bf16]

Each line of --data is one example already tokenized by train.data ({"input_ids", "completion_mask"}), in
the order our trainer consumes them: step by step, micro-batch by micro-batch. TRL takes tokenized data as it is
(no second tokenization) and builds labels from completion_mask (completion-only loss); the trainer reads the
examples in that order (train_sampling_strategy="sequential"), so both trainers see the same micro-batches.

Everything else is TRL's default except what parity needs: fp32 (SFTConfig defaults to bf16), no gradient
checkpointing (SFTConfig defaults to it; ours does not checkpoint), a constant learning rate without warm-up,
our lr / weight decay / clipping, no checkpoints and no reporting. TRL keeps its fused AdamW and its chunked LM
head (on a CPU it scores every position and computes entropy and token accuracy for its metrics).
--padding-free: TRL's padding-free batches (a micro-batch's examples end to end in one row), the layout its
packing uses; TRL's packing itself would also re-batch the data into rows of max_length, which changes the steps.

Prints "training ..." when training starts and "step i/N loss L" after each optimizer step (bench_train.py
times those lines); writes log.jsonl (step, loss) into --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepLog(TrainerCallback):
    """One line per optimizer step, with the loss Trainer logs (the mean over the step's target tokens)."""

    def __init__(self, out: Path, total: int):
        self.log, self.total = out / "log.jsonl", total

    def on_train_begin(self, args, state, control, **kwargs):
        print(
            f"training TRL {args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
            flush=True,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            with self.log.open("a") as f:
                f.write(
                    json.dumps({"step": state.global_step, "loss": logs["loss"], "time": time.time()}) + "\n"
                )
            print(f"step {state.global_step}/{self.total} loss {logs['loss']:.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--micro-batch-size", type=int, required=True)
    p.add_argument("--accumulation", type=int, required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--padding-free", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs; ours uses it there too)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        max_grad_norm=args.grad_clip,
        lr_scheduler_type="constant",
        warmup_steps=0,
        seed=args.seed,
        # Padding-free without packing refuses a max_length it would not enforce; every example fits already.
        max_length=None if args.padding_free else args.max_length,
        completion_only_loss=True,
        padding_free=args.padding_free,
        bf16=args.bf16,
        fp16=False,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[StepLog(out, args.max_steps)],
    )
    trainer.train()


if __name__ == "__main__":
    main()
