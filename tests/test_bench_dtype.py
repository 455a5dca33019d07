"""make bench-dtype (bench/bench_dtype.py): the parts that need no model. The loss check fails on a real
difference and passes on bf16-sized ones; the page states the verdict the numbers give."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("bench_dtype")
    finally:
        sys.path.remove(str(BENCH))


def test_losses_a_rounding_apart_are_within_tolerance(bench):
    fp32 = [2.0, 1.5, 1.0, 0.8]
    parity = bench.loss_parity(fp32, [x * (1 + 3e-3) for x in fp32])
    assert parity["within_tolerance"] is True
    assert parity["max_rel_diff"] == pytest.approx(3e-3)
    assert parity["fp32_step_to_step_movement"] == pytest.approx((0.5 + 0.5 + 0.2) / 3)
    assert parity["fp32_step_to_step_median"] == pytest.approx(0.5)


@pytest.mark.parametrize("bf16", [[2.05, 1.5, 1.0, 0.8],  # step 1 off by 2.5%: one forward pass cannot explain it
                                  [2.0, 1.5, 1.0, 0.9]])  # one later step off by 12.5%
def test_a_real_difference_is_outside_tolerance(bench, bf16):
    assert bench.loss_parity([2.0, 1.5, 1.0, 0.8], bf16)["within_tolerance"] is False


def result(bench, beyond_noise: bool) -> dict:
    run = {"accuracy": 0.05, "correct": 15, "total": 300, "unparseable": 2, "generated_tokens": 60000,
           "tokens_per_s": 100.0, "wall_s": 600.0}
    train_run = {"steps": 2, "examples": 16, "s_per_step": 10.0, "losses": [2.0, 1.0]}
    return {
        "command": "python bench/bench_dtype.py", "commit": "abc1234",
        "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 1, "torch": "2.13", "transformers": "5",
                    "cpu_flags": ["avx512_bf16"], "auto": {"dtype": "bfloat16", "reason": "cpu has avx512_bf16"}},
        "eval_settings": {"engine": "hf", "batch_size": 64, "max_new_tokens": 256},
        "eval": {"questions": 300, "runs": {"float32": run, "bfloat16": run | {"tokens_per_s": 150.0}},
                 "agreement": 0.9, "identical_completions": 0.5, "only_float32_right": 1, "only_bfloat16_right": 1,
                 "difference_bf16_minus_fp32": 0.0, "ci95": [-0.01, 0.01], "bootstrap_resamples": 10000,
                 "mcnemar_p": 1.0, "beyond_noise": beyond_noise},
        "train_demo": {"config": "configs/train/demo.yaml", "max_steps": 50, "train_questions": 100,
                       "committee_records": 8, "runs": {"float32": train_run, "bfloat16": train_run},
                       **bench.loss_parity([2.0, 1.0], [2.0, 1.0])},
    }


@pytest.mark.parametrize("beyond_noise", [False, True])
def test_the_page_states_the_numbers_and_the_verdict_they_give(bench, beyond_noise):
    page = "\n".join(bench.markdown(result(bench, beyond_noise), Path("x.json")))
    assert "Commit abc1234; Test CPU" in page
    assert "| float32 | 5.0% | 15/300 | 2 | 60,000 | 100.0 | 600.0 |" in page
    assert "bf16 decoded 1.50x fp32's tokens/s" in page
    assert ("changes the accuracy beyond noise" in page) is beyond_noise
    assert ("does not change the accuracy beyond noise" in page) is not beyond_noise
    assert "| 2 | 1.0000 | 1.0000 | 0.00e+00 |" in page and "**within**" in page
