"""make bench-train: one trainer step's cost on this CPU, padding vs packing vs ZeRO-2 x2, side by side in one run.

    .venv/bin/python bench/bench_train.py                          # SmolLM2-135M, max_length 512, 4 steps each
    .venv/bin/python bench/bench_train.py --max-steps 6 --max-length 256 --keep

Workload: the paper's real SVAMP feedback/rationale files (seed/ under fair.tasks.default_data_dir()),
`python -m train.train` with the same seed, data, global batch (8), micro-batch (4) and max_length in each
configuration; full fine-tuning in fp32. Every configuration is its own subprocess with a fresh --out dir:

    1. padding,  1 process, torch's default threads (OMP_NUM_THREADS unset: all cores)
    2. packing (--pack), 1 process, same threads
    3. ZeRO-2 (configs/deepspeed/zero2.json), 2 processes via torchrun, DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1 each

Measured (step 1 is warm-up and excluded from every rate; setup time covers loading, DeepSpeed init and any
JIT build of its shm comm op, which happens in init_distributed before step 1):
  - target tok/s: supervised target tokens of the measured steps / their wall time. The trainer logs only
    target_tokens_per_s per step; this script rebuilds each step's batch exactly as the trainer does (load_data
    + step_plan, same seed) to get its target tokens n_i, so step time t_i = n_i / rate_i and the rate is
    sum(n_i) / sum(t_i) (the harmonic mean of the logged rates, weighted by tokens). The same t_i give the
    processed-token rate (tensor positions, padding included) and the real-token rate (non-padding tokens).
  - peak memory: VmHWM (the kernel's peak RSS) of every process of the tree, polled every 0.1 s; for ZeRO the
    workers' peaks are summed (an upper bound on their joint peak) and the sampled peak of the tree's summed
    RSS is reported too. wall = process start to exit; setup = start to the trainer's "training ..." line;
    teardown = last step line to exit (final checkpoint + export).
  - loss checks: per-step losses of packing vs padding (packing changes nothing mathematically) and of ZeRO-2
    x2 vs padding x1 (data-parallel equivalence): max relative difference over all steps.
  - foreign load: CPU time used on the machine by processes outside the benchmark, per second (cores busy):
    if it is high the numbers are disturbed.
Results: data/bench/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from fair.config import make_config
from fair.jsonl import read_jsonl, write_json
from fair.models import resolve_model
from fair.tasks import default_data_dir
from train.data import collate
from train.train import Dist, TrainConfig, load_data, step_plan, target_tokens

ROOT = Path(__file__).resolve().parents[1]
DISTURBED = 0.15  # cores busy outside the benchmark, on average over a run, above which its numbers are suspect
PY = Path(sys.executable)
CONFIGS = [  # name, processes, pack
    ("padding x1", 1, False),
    ("packing x1", 1, True),
    ("ZeRO-2 x2", 2, False),
]


def step_tokens(config: TrainConfig, steps: int) -> list[dict]:
    """Per step, as the trainer builds it: target tokens, and positions processed with padding / packing."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.student))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    with contextlib.redirect_stdout(io.StringIO()):
        items = load_data(config, tokenizer, Dist())
    per_epoch, out = len(items) // config.batch_size, []
    for step in range(steps):
        batch = [items[i] for i in step_plan(len(items), config, step, per_epoch)]
        micro = [batch[k : k + config.micro_batch_size] for k in range(0, len(batch), config.micro_batch_size)]
        out.append({"target": sum(target_tokens(batch)), "real": sum(len(i.input_ids) for i in batch)}
                   | {name: sum(collate(m, tokenizer.pad_token_id, pack, config.max_length)["input_ids"].numel()
                                for m in micro) for name, pack in (("padded", False), ("packed", True))})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_config(name: str, nproc: int, pack: bool, train_args: list[str], out: Path, steps: int) -> dict:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if nproc == 1:
        command = [str(PY), "-m", "train.train"]
    else:
        env |= {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        command = [str(PY.with_name("torchrun")), "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
                   "-m", "train.train", "--deepspeed", str(ROOT / "configs" / "deepspeed" / "zero2.json")]
    command += [*train_args, *(["--pack"] if pack else []), "--out", str(out)]
    threads = subprocess.run([str(PY), "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    out.mkdir(parents=True)
    print(f"\n== {name}: {nproc} process(es) x {threads} torch thread(s)\n   {' '.join(command)}", flush=True)
    busy0, began = busy_seconds(), time.perf_counter()
    with open(out / "stderr.log", "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - began, line.rstrip()))
            if line.startswith(("step ", "training ", "exported")):
                print(f"   [{lines[-1][0]:6.1f}s] {line.rstrip()}", flush=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    root, hwm, cpu, peak_sum, workers = psutil.Process(proc.pid), {}, {}, 0, {proc.pid} if nproc == 1 else set()
    train_hwm: dict[int, int] = {}
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error, OSError, StopIteration):
            tree, rss = [root, *root.children(recursive=True)], 0
            for p in tree:
                with contextlib.suppress(psutil.Error, OSError, StopIteration):
                    hwm[p.pid] = max(hwm.get(p.pid, 0), hwm_kib(p.pid))
                    rss += p.memory_info().rss
                    cpu[p.pid] = sum(p.cpu_times()[:2])  # user + system
            if nproc > 1:
                workers |= {p.pid for p in root.children()}
            peak_sum = max(peak_sum, rss)
            if not train_hwm and any(line.startswith(f"step {steps}/") for _, line in lines):
                train_hwm = {p: hwm[p] for p in workers if p in hwm}  # before the final checkpoint and export
        time.sleep(0.1)
    wall = time.perf_counter() - began
    foreign = max(0.0, busy_seconds() - busy0 - sum(cpu.values())) / wall
    thread.join()
    if proc.returncode != 0:
        tail = (out / "stderr.log").read_text()[-3000:]
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")
    at = lambda prefix: [t for t, line in lines if line.startswith(prefix)]  # noqa: E731
    stderr = (out / "stderr.log").read_text()
    worker_gib = sorted((hwm[p] / 2**20 for p in workers if p in hwm), reverse=True)
    return {"processes": nproc, "threads_per_process": int(threads), "pack": pack, "command": command,
            "log": list(read_jsonl(out / "log.jsonl")), "wall_s": wall, "setup_s": at("training ")[0],
            "teardown_s": wall - at("step ")[-1], "worker_peak_rss_gib": worker_gib,
            "peak_rss_gib_sum_of_workers": sum(worker_gib), "peak_rss_gib_max_worker": max(worker_gib),
            "peak_rss_gib_tree_sampled": peak_sum / 2**30,
            "training_peak_rss_gib_sum_of_workers": sum(train_hwm.values()) / 2**20,
            "launcher_peak_rss_gib": hwm.get(root.pid, 0) / 2**20 if nproc > 1 else None,
            "foreign_cpu_load_cores": foreign,
            "shm_op_built_in_run": "Building extension" in stderr or "ninja" in stderr.lower()}


def summarize(result: dict, tokens: list[dict]) -> None:
    log = result["log"]
    times = [tokens[r["step"] - 1]["target"] / r["target_tokens_per_s"] for r in log]
    measured = range(1, len(log))  # step 1 is warm-up
    t = sum(times[i] for i in measured)
    processed = "packed" if result["pack"] else "padded"
    result |= {"step_s": times, "measured_steps": len(measured), "measured_s": t,
               "target_tok_s": sum(tokens[i]["target"] for i in measured) / t,
               "processed_tok_s": sum(tokens[i][processed] for i in measured) / t,
               "real_tok_s": sum(tokens[i]["real"] for i in measured) / t,
               "losses": [r["loss"] for r in log], "final_loss": log[-1]["loss"]}


def max_rel_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    parser.add_argument("--out", default=str(ROOT / "data" / "bench" / "train.json"))
    args = parser.parse_args()
    if args.max_steps < 2:
        parser.error("--max-steps must be >= 2: step 1 is warm-up")
    seed = default_data_dir() / "seed"
    values = {"student": args.student, "paper_feedback": str(seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
              "paper_rationale": str(seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"),
              "max_length": args.max_length, "max_steps": args.max_steps, "batch_size": args.batch_size,
              "micro_batch_size": args.micro_batch_size, "seed": args.seed}
    train_args = [f"{k}={v}" for k, v in values.items()]
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    tokens = step_tokens(make_config(TrainConfig, values | {"out": str(workdir / "data")}, "bench"), args.max_steps)
    shm = list(Path.home().glob(".cache/torch_extensions/*/deepspeed_shm_comm/*.so"))
    print(f"{args.student}, max_length {args.max_length}, batch {args.batch_size} (micro {args.micro_batch_size}), "
          f"{args.max_steps} steps (step 1 = warm-up, excluded); {os.cpu_count()} CPUs; run folders in {workdir}")
    print(f"target tokens per step: {[s['target'] for s in tokens]}; padded positions {[s['padded'] for s in tokens]}; "
          f"packed {[s['packed'] for s in tokens]}; DeepSpeed shm comm op {'prebuilt' if shm else 'not built yet (JIT ~50 s in setup)'}")
    results = {}
    for i, (name, nproc, pack) in enumerate(CONFIGS):
        results[name] = run_config(name, nproc, pack, train_args, workdir / f"run{i}", args.max_steps)
        summarize(results[name], tokens)
    pad, packed, zero = (results[n] for n, _, _ in CONFIGS)
    checks = {"packing_vs_padding_loss_max_rel_diff": max_rel_diff(packed["losses"], pad["losses"]),
              "zero2x2_vs_padding_loss_max_rel_diff": max_rel_diff(zero["losses"], pad["losses"])}
    ratios = {"packing_vs_padding_target_tok_s": packed["target_tok_s"] / pad["target_tok_s"],
              "packing_vs_padding_peak_rss": packed["peak_rss_gib_max_worker"] / pad["peak_rss_gib_max_worker"],
              "zero2x2_vs_padding_target_tok_s": zero["target_tok_s"] / pad["target_tok_s"],
              "zero2x2_vs_padding_peak_rss_sum": zero["peak_rss_gib_sum_of_workers"] / pad["peak_rss_gib_max_worker"],
              "zero2x2_vs_padding_peak_rss_per_worker": zero["peak_rss_gib_max_worker"] / pad["peak_rss_gib_max_worker"]}

    print(f"\n{'config':<12} {'procs x thr':>11} {'target tok/s':>12} {'proc tok/s':>10} {'real tok/s':>10} "
          f"{'s/step':>7} {'peak RSS GiB':>18} {'in steps':>8} {'setup s':>7} {'teardown s':>10} {'wall s':>7} {'final loss':>10} "
          f"{'foreign':>7}")
    for name, r in results.items():
        rss = (f"{r['peak_rss_gib_max_worker']:.2f}" if r["processes"] == 1 else
               f"{r['peak_rss_gib_sum_of_workers']:.2f} ({' + '.join(f'{g:.2f}' for g in r['worker_peak_rss_gib'])})")
        print(f"{name:<12} {r['processes']:>5} x {r['threads_per_process']:<3} {r['target_tok_s']:>12.1f} "
              f"{r['processed_tok_s']:>10.1f} {r['real_tok_s']:>10.1f} {r['measured_s'] / r['measured_steps']:>7.2f} "
              f"{rss:>18} {r['training_peak_rss_gib_sum_of_workers']:>8.2f} {r['setup_s']:>7.1f} {r['teardown_s']:>10.1f} {r['wall_s']:>7.1f} {r['final_loss']:>10.4f} "
              f"{r['foreign_cpu_load_cores']:>6.2f}{'!' if r['foreign_cpu_load_cores'] > DISTURBED else ' '}")
    print("(proc tok/s: tensor positions incl. padding; real: non-padding tokens; peak RSS: whole run, ZeRO: sum of "
          "workers; in steps: before the final checkpoint/export; foreign: cores busy outside the bench)")
    if any(r["foreign_cpu_load_cores"] > DISTURBED for r in results.values()):
        print(f"! other processes kept more than {DISTURBED} cores busy during that run: its numbers are disturbed")
    for key, value in ratios.items():
        print(f"{key:<42} {value:6.3f}x")
    for key, value in checks.items():
        print(f"{key:<42} {value:.2e}")
    for name, r in results.items():
        print(f"{name:<12} losses {' '.join(f'{x:.5f}' for x in r['losses'])}   step s {' '.join(f'{x:.1f}' for x in r['step_s'])}")
    write_json(Path(args.out), {"args": vars(args), "platform": platform.platform(), "cpus": os.cpu_count(),
                                "torch": torch.__version__, "step_tokens": tokens, "shm_op_prebuilt": bool(shm),
                                "configs": results, "ratios": ratios, "checks": checks})
    print(f"\nwrote {args.out}")
    if not args.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
