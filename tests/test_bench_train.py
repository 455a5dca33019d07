"""make bench-train (bench/bench_train.py) and bench/gpu.sh: the parts a CPU can check. The plan alternates the
sides, the loss check fails on a real difference, a tiny run through the real runner measures what it says, the
GPU script's arguments and steps, and its report."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    """bench/bench_train.py."""
    return importlib.import_module("bench.bench_train")


def test_each_pair_alternates_which_side_runs_first_and_zero_runs_once(bench):
    args = bench.parse_args(["--repeats", "3", "--zero-procs", "2"])
    order = bench.plan(args, "ours ZeRO-2 x2")
    assert order[:7] == [
        (0, "ours padding"),
        (0, "TRL padding"),
        (0, "ours packing"),
        (0, "TRL padding-free"),
        (0, "ours packing bf16"),
        (0, "TRL padding-free bf16"),
        (0, "ours ZeRO-2 x2"),
    ]
    assert order[7:13] == [
        (1, "TRL padding-free bf16"),
        (1, "ours packing bf16"),
        (1, "TRL padding-free"),
        (1, "ours packing"),
        (1, "TRL padding"),
        (1, "ours padding"),
    ]
    assert [name for _, name in order].count("ours ZeRO-2 x2") == 1 and len(order) == 19
    no_trl = bench.plan(bench.parse_args(["--no-trl", "--no-zero", "--repeats", "2", "--pairs", "padding,packing"]),
                        "z")
    assert no_trl == [(0, "ours padding"), (0, "ours packing"), (1, "ours packing"), (1, "ours padding")]
    # compiled shares packing's TRL run: once a round, and compiled and eager alternate too
    shared = bench.plan(bench.parse_args(["--pairs", "packing,compiled", "--no-zero", "--repeats", "2"]), "z")
    assert [name for _, name in shared] == ["ours packing", "TRL padding-free", "ours packing compiled",
                                            "ours packing compiled", "TRL padding-free", "ours packing"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--pairs", "padding,bogus"],
        ["--max-steps", "1"],
        ["--repeats", "0"],
        ["--batch-size", "6", "--micro-batch-size", "4"],
    ],
)
def test_bad_arguments_are_refused(bench, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "bench_train.py: error: " in capsys.readouterr().err


def test_the_loss_check_passes_agreement_and_fails_a_difference(bench):
    assert bench.loss_check([1.0, 2.0, 3.0], [1.0 + 1e-6, 2.001, 3.0])["ok"]
    assert not bench.loss_check([1.001, 2.0], [1.0, 2.0])["ok"]  # step 1: same weights, same tokens
    assert not bench.loss_check([1.0, 2.1], [1.0, 2.0])["ok"]
    # bf16 against fp32: its rounding passes, a real difference does not
    assert bench.loss_check([1.005, 2.08], [1.0, 2.0], bench.BF16_TOL)["ok"]
    assert not bench.loss_check([1.02, 2.0], [1.0, 2.0], bench.BF16_TOL)["ok"]


def test_our_token_mean_is_rebuilt_from_the_two_kinds(bench):
    tokens = [{"feedback": 30, "rationale": 10, "target": 40}, {"feedback": 0, "rationale": 5, "target": 5}]
    ours = {
        "side": "ours",
        "log": [
            {"feedback_loss": 1.0, "rationale_loss": 3.0},
            {"feedback_loss": None, "rationale_loss": 2.0},
        ],
    }
    assert bench.token_mean_losses(ours, tokens) == [1.5, 2.0]
    trl = {"side": "trl", "log": [{"loss": 1.25}, {"loss": 2.5}]}
    assert bench.token_mean_losses(trl, tokens) == [1.25, 2.5]


def test_the_trl_examples_are_our_micro_batches_in_our_order(bench, data_dir, tmp_path):
    from fair.config import make_config

    seed = data_dir / "seed"
    config = make_config(
        bench.TrainConfig,
        {
            "paper_feedback": str(seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
            "paper_rationale": str(seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"),
            "max_length": 256,
            "out": str(tmp_path / "run"),
        },
        "test",
    )
    tokens = bench.prepare(config, 2, tmp_path / "rows.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * config.batch_size
    for step, counts in enumerate(tokens):
        batch = rows[step * config.batch_size : (step + 1) * config.batch_size]
        assert (
            sum(sum(r["completion_mask"]) for r in batch)
            == counts["target"]
            == counts["feedback"] + counts["rationale"]
        )
        for k in range(0, config.batch_size, config.micro_batch_size):  # each micro-batch sorted by length
            lengths = [len(r["input_ids"]) for r in batch[k : k + config.micro_batch_size]]
            assert lengths == sorted(lengths)


@pytest.mark.slow
def test_a_tiny_run_of_ours_through_the_real_runner(bench, data_dir, tiny_model_dir, tmp_path, capsys):
    """Two configurations of our trainer on a 2-layer model, 3 steps: real processes, real measurements."""
    out = tmp_path / "train.json"
    code = bench.main(
        [
            "--student",
            str(tiny_model_dir),
            "--no-trl",
            "--no-zero",
            "--repeats",
            "1",
            "--max-steps",
            "3",
            "--max-length",
            "256",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    for name in ("ours padding", "ours packing", "ours packing bf16"):
        (run,) = report["runs"][name]
        assert len(run["step_line_s"]) == 3 and run["step_line_s"] == sorted(run["step_line_s"])
        assert run["target_tok_s"] > 0 and 0.05 < run["peak_rss_gib"] < 8
    padding, packing = (report["runs"][n][0]["losses"] for n in ("ours padding", "ours packing"))
    assert bench.loss_check(packing, padding)["ok"]  # packing changes nothing mathematically
    assert "ours packing" in capsys.readouterr().out
    assert report["checks"]["ours packing bf16 / ours packing"]["tolerance"] == list(bench.BF16_TOL)
    assert "ours packing bf16 / ours packing" in report["ratios"]
    page = importlib.import_module("bench.train_report").render(out, tmp_path / "train.md").read_text()
    assert "| ours packing bf16 / ours packing | **" in page and "ours packing bf16 |" in page


def run_gpu_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCH / "gpu.sh"), *args], capture_output=True, text=True, timeout=60)


def test_gpu_sh_dry_run_prints_its_three_steps_with_time_limits():
    result = run_gpu_sh("--dry-run", "--out", "/tmp/x y.md")
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("+ timeout")]
    assert [s.split()[4] for s in steps] == [
        "bench/bench_mine.py",
        "bench/bench_train.py",
        "bench/gpu_report.py",
    ]
    assert sum(int(s.split()[2]) for s in steps) <= 600  # the whole script within 10 minutes
    assert "--out /tmp/x\\ y.md" in steps[2] and "--commit " in steps[2]  # the page names what it measured
    assert "--no-trl" not in steps[1] and "--no-trl" in run_gpu_sh("--dry-run", "--no-trl").stdout


@pytest.mark.parametrize(
    "args,code,message",
    [(["--bogus"], 2, "unknown argument '--bogus'"), (["--out"], 2, "--out needs a file")],
)
def test_gpu_sh_refuses_bad_arguments_in_one_line(args, code, message):
    result = run_gpu_sh(*args)
    assert result.returncode == code and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_gpu_sh_stops_without_a_gpu():
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this host has nvidia-smi")
    result = run_gpu_sh()
    assert result.returncode == 3 and "no GPU here" in result.stderr


def test_gpu_report_names_the_gpu_and_renders_both_benches(tmp_path):
    report = importlib.import_module("bench.gpu_report")
    mine = {
        "settings": {"questions": 4},
        "rows": [{"engine": "ours: VLLMEngine", "tokens_per_s": 5123.4}],
        "agreement": {"ours: VLLMEngine": {"questions": 4, "identical_texts": 4}},
    }
    run = {"target_tok_s": 900.5, "s_per_step": 0.5, "peak_rss_gib": 3.2, "peak_gpu_gib": 4.5}
    train = {
        "args": {"max_length": 512, "batch_size": 8, "micro_batch_size": 4, "max_steps": 12, "repeats": 3},
        "gpu": "NVIDIA H200",
        "cpus": 16,
        "torch": "2.13.0",
        "runs": {"ours padding": [run], "TRL padding": [run | {"target_tok_s": 600.0}]},
        "ratios": {
            "ours padding / TRL padding": {"tok_s_each": [1.5], "tok_s_median": 1.5, "rss_median": 0.9}
        },
        "checks": {"ours padding / TRL padding": {"step1_rel_diff": 1e-6, "max_rel_diff": 1e-3, "ok": True}},
    }
    for name, body in (("mine.json", mine), ("train.json", train)):
        (tmp_path / name).write_text(json.dumps(body))
    out = tmp_path / "docs" / "bench-gpu.md"
    argv = [
        "--gpu",
        "NVIDIA H200, 143771 MiB",
        "--mine",
        str(tmp_path / "mine.json"),
        "--train",
        str(tmp_path / "train.json"),
        "--cpu-train",
        str(tmp_path / "absent.json"),
        "--out",
        str(out),
        "--commit",
        "abc1234",
    ]
    assert report.main(argv) == 0
    text = out.read_text()
    assert "GPU: NVIDIA H200, 143771 MiB. Commit `abc1234`" in text and "5,123.4" in text and "4/4 identical" in text
    assert "tokens/s 1.500x" in text and ": ok" in text and "[benchmarks](benchmarks.md#training)" in text
    assert report.main([*argv[:3], str(tmp_path / "absent.json"), *argv[4:]]) == 2
