"""The experiment's statistics and pages: paired intervals, McNemar's exact p, Wilson intervals, results.md."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from cli.experiment import UNITS
from eval.report import change_line, wilson
from eval.results import mcnemar_exact, paired_bootstrap, render_results
from tests.conftest import ROOT

RESULTS = ROOT / "docs" / "results"  # the committed units


def test_mcnemar_exact_counts_only_the_discordant_questions():
    a = np.array([True] * 10 + [False] * 5 + [True] * 50)
    b = np.array([False] * 10 + [False] * 5 + [True] * 50)
    assert mcnemar_exact(a, b) == pytest.approx(2 / 2**10)  # 10 to 0: both tails of Binomial(10, 1/2)
    assert mcnemar_exact(a, a) == 1.0
    c = np.array([True, False] * 10)
    assert mcnemar_exact(c, ~c) == 1.0  # 10 to 10: no evidence either way


def test_paired_bootstrap_interval_brackets_the_difference_and_shrinks_with_agreement():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.3
    flips = rng.random(300) < 0.1
    b = a ^ flips  # b differs from a on about 10% of the questions
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(a.mean() - b.mean()) and low <= diff <= high
    assert high - low < 0.1  # paired: much tighter than two independent 300-question intervals (about 0.15)
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


def test_wilson_interval_matches_the_formula_at_the_edges():
    low, high = (float(x.rstrip("%")) / 100 for x in wilson(0, 10).split(", "))
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-3)  # z^2 / (n + z^2), printed to 0.1%
    low, high = (float(x.rstrip("%")) / 100 for x in wilson(13, 300).split(", "))
    assert low < 13 / 300 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.0433 * 0.9567 / 300), abs=0.01)


def write_unit(folder, name, correct_ids, ids, **extra):
    with gzip.open(folder / f"{name}.predictions.jsonl.gz", "wt") as f:
        for i in ids:
            f.write(json.dumps({"id": i, "prediction": "x", "extracted": "1", "correct": i in correct_ids}) + "\n")
    result = {"unit": name, "source": UNITS[name].source, "description": UNITS[name].description,
              "accuracy": len(correct_ids) / len(ids), "correct": len(correct_ids), "total": len(ids),
              "correct_ids": sorted(correct_ids), "max_new_tokens": 256, "wall_s": 60.0, "machine": "test",
              "device": "cpu", "budget": {"epochs": 1}, **extra}
    (folder / f"{name}.json").write_text(json.dumps(result))


def test_results_page_has_every_unit_and_paired_comparisons(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    ids = [f"q{i}" for i in range(40)]
    write_unit(folder, "base", {"q0", "q1"}, ids)
    write_unit(folder, "paper-fair-s0", {f"q{i}" for i in range(12)}, ids, loss={"first_10pct": 1.2, "last_10pct": 0.7})
    write_unit(folder, "paper-fair-s1", {f"q{i}" for i in range(10)}, ids)
    write_unit(folder, "paper-gold-s0", {f"q{i}" for i in range(14)}, ids)
    cost = {"requests": 4644, "input_tokens": 1_000_000, "output_tokens": 200_000, "usd": 2.5}
    costs = {"paper-fair-s0": cost, "paper-fair-s1": cost}
    page = render_results(folder, UNITS, tmp_path / "results.md", costs).read_text()
    trained = [name for name, unit in UNITS.items() if unit.train is not None]
    assert all(f"| {name} |" in page for name in trained)
    assert "No training: 5.0% (2/40) in float32." in page
    assert page.count("not yet run") == len(trained) - 3
    assert "+25.0 [" in page and "p=0.00195" in page  # 10 questions right only after training, 0 only before
    assert "paper-fair: 27.5% ± 3.5 (sd) over 2 seed(s)" in page
    assert f"Units done: 4 of {len(UNITS)}" in page
    # recipes: seeds pooled as mean ± sd, the gain over no training per $1,000 of the data's teacher calls
    assert "| paper-fair | FAIR: mixed, peer-reviewed, alpha 0.5 | 2 | 27.5 ± 3.5 | +22.5 | - | - | 4,644 | " \
           "1,000,000 / 200,000 | 2.50 | +9000 |" in page
    assert "| paper-gold | mixed, gold check (no review) | 1 | 35.0 | +30.0 | - | - | - | - | - | - |" in page
    # on the clean questions only (the last 20 and q5: q0 and q1, right untrained, are not among them)
    clean = {f"q{i}" for i in range(20, 40)} | {"q5"}
    page = render_results(folder, UNITS, tmp_path / "results.md", costs, clean).read_text()
    assert "| paper-fair | FAIR: mixed, peer-reviewed, alpha 0.5 | 2 | 27.5 ± 3.5 | +22.5 | 4.8 ± 0.0 | +4.8 |" in page
    # pairwise on the seeds both ran: seed 0 only, 12 vs 14 right, the 2 discordant questions both go to gold
    assert "| paper-fair vs paper-gold | s0: -5.0 [" in page and "p=0.5 | -5.0 |" in page


def test_units_compare_only_within_their_dtype_and_bfloat16_with_its_float32_twin(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    ids = [f"q{i}" for i in range(40)]
    bf16 = {"dtype": {"train": {"dtype": "bfloat16"}, "eval": {"dtype": "bfloat16"}}}
    right = lambda n: {f"q{i}" for i in range(n)}  # noqa: E731
    write_unit(folder, "base", right(2), ids)  # recorded no dtype: float32, as every unit before they did
    write_unit(folder, "base-bf16", right(4), ids, **bf16)
    write_unit(folder, "own-fair", right(10), ids)
    write_unit(folder, "own-gold", right(12), ids)
    write_unit(folder, "own-gold-bf16", right(14), ids, **bf16)
    write_unit(folder, "own-k4-gold-bf16", right(20), ids, **bf16)
    page = render_results(folder, UNITS, tmp_path / "results.md").read_text()
    assert "No training: 5.0% (2/40) in float32; 10.0% (4/40) in bfloat16." in page
    row = lambda n: next(line for line in page.splitlines() if line.startswith(f"| {n} |"))  # noqa: E731
    # against the untrained student in its own dtype (16 questions more than base-bf16), and no float32 FAIR
    assert "| +40.0 [" in row("own-k4-gold-bf16") and "| - |" in row("own-k4-gold-bf16")
    assert "| own-k4-gold-bf16 | 4 samples" in page and "| 1 | 50.0 | +40.0 |" in page
    assert "| own-gold-bf16 vs own-k4-gold-bf16 | s0: -15.0 [" in page and "| own-fair vs own-gold | s0:" in page
    assert not any(f"| {a} vs {b} |" in page for a in ("own-fair", "own-gold") for b in ("own-gold-bf16",
                                                                                          "own-k4-gold-bf16"))
    precision = page[page.index("## Precision: bfloat16 against float32"):]
    assert "| base-bf16 | bfloat16 | 10.0% | base | float32 | 5.0% | +5.0 [" in precision
    assert "| own-gold-bf16 | bfloat16 | 35.0% | own-gold | float32 | 30.0% | +5.0 [" in precision
    assert "p=0.5 | 2 |" in precision and "own-k4-gold-bf16" not in precision  # it has no float32 twin


def test_report_change_line_is_paired_on_the_shared_questions(tmp_path):
    for name, right in (("before", {"a"}), ("after", {"a", "b", "c"})):
        (tmp_path / name).mkdir()
        rows = [{"id": i, "correct": i in right} for i in "abcdef"]
        (tmp_path / name / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = change_line(tmp_path / "before", tmp_path / "after")
    assert line.startswith("+33.3 points [") and "right only after: 2, right only before: 0" in line
    assert "p = 0.5" in line


def test_smoke_flags_never_write_into_the_committed_results(capsys):
    from cli.experiment import main

    assert main(["--units", "base", "--test-limit", "2"]) == 2
    assert "give them their own --results" in capsys.readouterr().err


@pytest.mark.slow
def test_a_unit_writes_both_files_and_the_page(tmp_path, data_dir, monkeypatch):
    """The real thing, shortened: SmolLM2 trains one step on the paper's files and answers 3 test questions."""
    from cli import experiment
    from cli.experiment import main

    # The same step in micro-batches of one (the loss is the same sum): eight packed 512-token rows at once hold
    # about 5 GB of fp32 activations, past the suite's memory guard (tests/conftest.py).
    monkeypatch.setitem(experiment.BUDGET, "micro_batch_size", 1)

    results = tmp_path / "results"
    args = ["--units", "base", "paper-alpha1", "--test-limit", "3", "--max-steps", "1",
            "--results", str(results), "--work", str(tmp_path / "work")]
    assert main(args) == 0
    unit = json.loads((results / "paper-alpha1.json").read_text())
    assert unit["total"] == 3 and unit["loss"]["steps"] == 1 and unit["device"] in ("cpu", "gpu")
    assert unit["data_report"]["build"]["mode"] == "mixed" and unit["train"] == {"teacher": "mixed", "alpha": 1.0}
    with gzip.open(results / "paper-alpha1.predictions.jsonl.gz", "rt") as f:
        answers = [json.loads(line) for line in f]
    assert len(answers) == 3 and {a["id"] for a in answers if a["correct"]} == set(unit["correct_ids"])
    assert "| paper-alpha1 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".json") for p in RESULTS.glob("*.json")))
def test_every_committed_unit_regrades_to_what_it_recorded(name):
    """`fair grade --task svamp docs/results/<unit>.predictions.jsonl.gz`: the gold comes from each id's example."""
    from eval.regrade import grade_file

    unit = json.loads((RESULTS / f"{name}.json").read_text())
    regraded = grade_file("svamp", RESULTS / f"{name}.predictions.jsonl.gz")
    assert len(regraded) == unit["total"]
    assert {r["id"] for r in regraded if r["correct"]} == set(unit["correct_ids"])
