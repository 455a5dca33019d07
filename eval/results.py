"""docs/results.md, rebuilt from the committed unit files in docs/results/ (cli/experiment.py writes them).

Every comparison is paired, question by question on the same 300 SVAMP test questions: the difference in
accuracy with a 95% paired-bootstrap interval (10,000 resamples of the questions, fixed seed) and McNemar's
exact test on the questions that one unit answered correctly and the other did not. A hand-written reading
of the numbers, docs/results/DISCUSSION.md, is appended when it exists.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
RECIPES_NOTE = ("A recipe's data cost is what its teacher calls cost at the teachers' prices "
                "(the paper's files: `configs/teachers/paper.yaml`, tokens estimated from the texts at 4 characters a "
                "token; our loop: the tokens each reply recorded, at `configs/teachers/offline.yaml`'s prices, those of "
                "the default committee's models), counting review requests only where the recipe's filter needs them "
                "(review, gold+review) and one teacher's requests for a one-teacher recipe; alpha 0 and 1 are costed as "
                "the FAIR data they were cut from; a round of our loop (own-rounds-r<r>, whose round 0 is own-gold) "
                "costs every round's data up to its own. Points per $1,000: the mean gain over no training (in the "
                "recipe's dtype) divided by that cost. Clean: accuracy on the test questions the train split does not "
                "contaminate (fair/decontam.py), where the same questions' no-training accuracy is the baseline.")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of a minus accuracy of b (0/1 arrays over the same questions), with a 95% interval."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(RESAMPLES, len(a)))
    diffs = a[picks].mean(axis=1) - b[picks].mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p: under no difference, each discordant question goes either way with p 1/2."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


PRECISION_NOTE = ("The same data and budget in bfloat16 against float32 (a unit's `-bf16` twin): what the dtype alone "
                  "changes, in answering for the untrained student and in training and answering together for a trained "
                  "one. Every other comparison on this page is between units of one dtype.")
FLOAT32 = "float32"  # every unit from before the unit files recorded their dtype ran in it (configs/train/experiment.yaml)


def dtype_of(result: dict) -> str:
    """The dtype a unit answered in (and trained in: cli/experiment.py gives both the unit's)."""
    return ((result.get("dtype") or {}).get("eval") or {}).get("dtype", FLOAT32)


def same_dtype(result: dict, other: dict | None) -> dict | None:
    return other if other is not None and dtype_of(other) == dtype_of(result) else None


def no_training(result: dict, units: dict, results: dict[str, dict]) -> dict | None:
    """The untrained student answering in the unit's dtype, the unit's baseline."""
    return next((r for n, r in results.items() if n in units and units[n].train is None and same_dtype(result, r)),
                None)


def load_units(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def correct_vector(result: dict, order: list[str]) -> np.ndarray:
    right = set(result["correct_ids"])
    return np.array([i in right for i in order])


def question_order(folder: Path, results: dict[str, dict]) -> list[str]:
    """The test ids every unit was graded on (from any unit's predictions file)."""
    import gzip

    name = next(iter(results))
    with gzip.open(folder / f"{name}.predictions.jsonl.gz", "rt") as f:
        return [json.loads(line)["id"] for line in f]


def comparison(result: dict, other: dict | None, order: list[str]) -> str:
    if other is None or other is result:
        return "-"
    a, b = correct_vector(result, order), correct_vector(other, order)
    diff, low, high = paired_bootstrap(a, b)
    return f"{diff * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}], p={mcnemar_exact(a, b):.3g}"


def source_table(source: str, units: dict, results: dict[str, dict], order: list[str]) -> list[str]:
    names = [n for n, u in units.items() if u.source == source]
    lines = ["| unit | variant | accuracy | correct | vs no training: pt [95% CI], McNemar p | vs FAIR (same seed) "
             "| examples | loss first→last 10% | wall min |", "| --- | --- | ---: | ---: | --- | --- | ---: | --- | ---: |"]
    for name in names:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | {units[name].description} | not yet run | | | | | | |")
            continue
        fair = same_dtype(r, results.get(fair_reference(source, name, units)))
        report = (r.get("data_report") or {}).get("tokenize", {})
        loss = r.get("loss") or {}
        lines.append(
            f"| {name} | {r['description']} | {r['accuracy']:.1%} | {r['correct']}/{r['total']} | "
            f"{comparison(r, no_training(r, units, results), order)} | {comparison(r, fair, order)} | {report.get('examples', '')} | "
            f"{loss.get('first_10pct', '')}→{loss.get('last_10pct', '')} | {r['wall_s'] / 60:.0f} |")
    return lines


def fair_reference(source: str, name: str, units: dict) -> str:
    """The FAIR unit trained with the same seed (the paired comparison: only the variant differs)."""
    if source == "own":
        return "own-fair"
    return f"paper-fair-s{(units[name].train or {}).get('seed', 0)}"


def seed_summary(results: dict[str, dict], prefix: str) -> str | None:
    done = [r["accuracy"] * 100 for n, r in results.items() if n.startswith(prefix)]
    if not done:
        return None
    spread = f" ± {statistics.stdev(done):.1f} (sd)" if len(done) > 1 else ""
    return f"{prefix.removesuffix('-s')}: {statistics.mean(done):.1f}%{spread} over {len(done)} seed(s): " + \
        ", ".join(f"{a:.1f}%" for a in done)


def recipe_of(name: str) -> str:
    """A unit's recipe: its name without the seed (`paper-gold-s1` -> `paper-gold`)."""
    return re.sub(r"-s\d+$", "", name)


def recipes(source: str, units: dict, results: dict[str, dict]) -> dict[str, list[str]]:
    """Recipe -> its finished units, in the units' order."""
    out: dict[str, list[str]] = {}
    for name, unit in units.items():
        if unit.source == source and name in results:
            out.setdefault(recipe_of(name), []).append(name)
    return out


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def clean_accuracy(result: dict, clean: set[str]) -> float:
    return 100 * len(clean & set(result["correct_ids"])) / len(clean)


def recipe_table(source: str, units: dict, results: dict[str, dict], costs: dict[str, dict],
                 clean: set[str]) -> list[str]:
    """A row a recipe: accuracy over its seeds (all test questions, and the clean ones), what its data cost in
    teacher calls, and points per $1,000."""
    lines = [f"| recipe | variant | seeds | accuracy % (mean ± sd) | vs no training, pt | clean ({len(clean)}) % | "
             "clean vs no training, pt | teacher requests | input / output tokens | data cost $ | pt per $1,000 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for recipe, names in recipes(source, units, results).items():
        accuracy, base = [results[n]["accuracy"] * 100 for n in names], no_training(results[names[0]], units, results)
        gain = statistics.mean(accuracy) - base["accuracy"] * 100 if base else None
        on_clean = [clean_accuracy(results[n], clean) for n in names] if clean else []
        clean_gain = statistics.mean(on_clean) - clean_accuracy(base, clean) if base and clean else None
        cost = costs.get(names[0])
        per_1000 = f"{gain / cost['usd'] * 1000:+.0f}" if cost and gain is not None and cost["usd"] else "-"
        lines.append(
            f"| {recipe} | {results[names[0]]['description']} | {len(names)} | {mean_sd(accuracy)} | "
            f"{'-' if gain is None else f'{gain:+.1f}'} | {mean_sd(on_clean) if on_clean else '-'} | "
            f"{'-' if clean_gain is None else f'{clean_gain:+.1f}'} | "
            + (f"{cost['requests']:,} | {cost['input_tokens']:,} / {cost['output_tokens']:,} | {cost['usd']:.2f} | "
               if cost else "- | - | - | ")
            + f"{per_1000} |")
    return lines


def pairwise_table(source: str, units: dict, results: dict[str, dict], order: list[str]) -> list[str]:
    """Every pair of recipes on the seeds both ran in one dtype: each seed's paired difference, then their mean ± sd."""
    lines = ["| A vs B | per seed: A - B, pt [95% CI], McNemar p | mean ± sd over seeds, pt |", "| --- | --- | ---: |"]
    by_recipe = recipes(source, units, results)
    seed = lambda name: (units[name].train or {}).get("seed", 0)  # noqa: E731
    for a, b in itertools.combinations(by_recipe, 2):
        pairs = [(x, y) for x in by_recipe[a] for y in by_recipe[b]
                 if seed(x) == seed(y) and same_dtype(results[x], results[y])]
        if not pairs:
            continue
        cells, diffs = [], []
        for x, y in pairs:
            cells.append(f"s{seed(x)}: {comparison(results[x], results[y], order)}")
            diffs.append((results[x]["accuracy"] - results[y]["accuracy"]) * 100)
        lines.append(f"| {a} vs {b} | {'; '.join(cells)} | {mean_sd(diffs)} |")
    return lines


def precision_table(units: dict, results: dict[str, dict], order: list[str]) -> list[str]:
    """Each unit run again in another dtype against the unit it repeats."""
    twins = [(n, u.twin) for n, u in units.items() if u.twin in units and n in results and u.twin in results]
    if not twins:
        return []
    lines = ["| unit | dtype | accuracy | its twin | twin's dtype | twin's accuracy | unit - twin: pt [95% CI], McNemar p "
             "| questions graded differently | loss first→last 10%: unit; twin |",
             "| --- | --- | ---: | --- | --- | ---: | --- | ---: | --- |"]
    for name, twin in twins:
        r, t = results[name], results[twin]
        losses = "; ".join(f"{x['loss']['first_10pct']}→{x['loss']['last_10pct']}" if x.get("loss") else "-"
                           for x in (r, t))
        differ = int((correct_vector(r, order) != correct_vector(t, order)).sum())
        lines.append(f"| {name} | {dtype_of(r)} | {r['accuracy']:.1%} | {twin} | {dtype_of(t)} | {t['accuracy']:.1%} | "
                     f"{comparison(r, t, order)} | {differ} | {losses} |")
    return ["## Precision: bfloat16 against float32", "", PRECISION_NOTE, "", *lines, ""]


def render_results(folder: Path, units: dict, target: Path, costs: dict[str, dict] | None = None,
                   clean: set[str] | None = None) -> Path:
    """`costs`: unit -> the API cost of its data ({requests, input_tokens, output_tokens, usd}), where known;
    `clean`: the test ids the train split does not contaminate (their column is left out without them)."""
    costs, clean = costs or {}, clean or set()
    results = load_units(folder)
    lines = ["# Does FAIR distillation help SmolLM2-135M on SVAMP?", "",
             "Generated by `python -m cli.experiment --render` from the unit files in `docs/results/` "
             "(one per trained and evaluated variant; each holds its command, commit, machine and the ids it "
             "answered correctly; `<unit>.predictions.jsonl.gz` holds every answer for re-grading).", ""]
    if not results:
        target.write_text("\n".join(lines + ["No unit has finished yet.", ""]))
        return target
    order = question_order(folder, results)
    any_result = next(iter(results.values()))
    budget = next((r["budget"] for r in results.values() if r.get("budget") and dtype_of(r) == FLOAT32), None)
    budget_line = f"Training budget (frozen for every unit; a `-bf16` unit runs it in bfloat16): `{json.dumps(budget)}`."
    lines += ["The intervals cover the variation over test questions only, not over training runs (the seeds "
              "show that), and each table makes about ten comparisons without correction.", ""]
    lines += [f"Student SmolLM2-135M-Instruct; test: the {any_result['total']} SVAMP test questions, greedy, at most "
              f"{any_result['max_new_tokens']} new tokens, graded as in mining. Units done: {len(results)} of "
              f"{len(units)}. Machines: {'; '.join(sorted({r['device'] + ': ' + r['machine'] for r in results.values()}))}.",
              "", *([budget_line, ""] if budget else []),
              "Differences are percentage points, paired on the same questions: 95% paired-bootstrap interval "
              f"({RESAMPLES:,} resamples) and McNemar's exact p.", ""]
    for source, title in (("paper", "The paper's teachers (real GPT-3.5, Gemini and Mixtral texts, peer-review scores)"),
                          ("own", "Our loop (the offline committee on SmolLM2's own SVAMP train mistakes)")):
        lines += [f"## {title}", ""]
        if untrained := [results[n] for n, u in units.items() if u.train is None and n in results]:
            lines += ["No training: " + "; ".join(f"{b['accuracy']:.1%} ({b['correct']}/{b['total']}) in {dtype_of(b)}"
                                                 for b in untrained) + ".", ""]
        lines += source_table(source, units, results, order) + [""]
        seeds = [s for p in (f"{source}-fair-s", f"{source}-noreview-s") if (s := seed_summary(results, p))]
        lines += [f"- {s}" for s in seeds] + ([""] if seeds else [])
        lines += [f"### Recipes: what each costs and buys ({source})", "", RECIPES_NOTE, "",
                  *recipe_table(source, units, results, costs, clean), "", "Pairwise, on the same seeds and dtype:", "",
                  *pairwise_table(source, units, results, order), ""]
    lines += precision_table(units, results, order)
    discussion = folder / "DISCUSSION.md"
    if discussion.exists():
        lines += [discussion.read_text().rstrip(), ""]
    target.write_text("\n".join(lines))
    return target
