"""`fair report`: one Markdown page and its plots for a whole FAIR run.

    fair report --gen-dir data/svamp/smollm2-135m --train-dir checkpoints/svamp-smollm2-135m-mixed \
        --before data/demo/eval-before/svamp-test --after data/demo/eval-after/svamp-test --out data/demo

Reads what the stages leave behind (stats.json, committee.jsonl, committee_stats.json, log.jsonl,
train_summary.json, summary.json) and writes <out>/report.md with accuracy.png, reviews.png and loss.png.
Any part whose inputs are missing is left out of the page, with a line saying so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from eval.results import mcnemar_exact, paired_bootstrap
from fair import recipes
from fair.config import Validated
from fair.errors import FairError
from fair.jsonl import read_jsonl, unique_ids
from fair.records import StudentAnswer, committee_replies, teacher_of
from fair.tasks import Task, get_task


@dataclass
class ReportConfig(Validated):
    gen_dir: str  # the run's folder, data/<task>/<student>: stats.json, committee.jsonl
    out: str  # where report.md and its PNGs go
    train_dir: str | None = None  # the training output folder: log.jsonl, train_summary.json
    before: str | None = None  # `fair eval` folder (<out>/<task>-<split>) of the untrained student
    after: str | None = None  # `fair eval` folder of the trained student
    threshold: float = 3.0  # the committee's: a rationale is accepted above this mean review score
    task: str | None = None  # the run's --task as given to it, for a task file outside configs/tasks/ (the records name it only by its file's name); none: the one gen_dir's committee.yaml names, else the records'

    def validate(self) -> None:
        if not 1 <= self.threshold <= 5:
            raise FairError(f"threshold must be within the 1-5 score range, got {self.threshold}")
        if self.task is not None:
            get_task(self.task)
        for name in ("gen_dir", "train_dir", "before", "after"):  # a typo would give a report of nothing
            if getattr(self, name) and not Path(getattr(self, name)).is_dir():
                raise FairError(f"{name} {getattr(self, name)}: no such folder")


def load_json(path: Path) -> dict | None:
    return orjson.loads(path.read_bytes()) if path.exists() else None


# ----------------------------------------------------------------------------------------------------------
# Numbers


def review_numbers(records: list[dict], threshold: float, task: str | None = None) -> dict[str, Any]:
    """Per teacher: acceptance and scores received; overall: do reviewers agree, and with the gold answer?
    `task`: the run's --task as given, which finds a task file anywhere; else the name each record holds."""
    per_teacher: dict[str, dict[str, Any]] = defaultdict(lambda: {"written": 0, "accepted": 0, "scores": []})
    agree = disagree = 0
    verdicts = Counter()  # (accepted, rationale reaches the gold answer) -> count
    for record in records:
        mistake = StudentAnswer.from_json(record["mistake"], f"committee record {record['id']}")
        grader = record_task(mistake, task, f"committee record {record['id']}")
        for key, rationale in record["rationales"].items():
            if rationale["text"] is None:
                continue
            entry = per_teacher[teacher_of(key)]  # each sample counts as its teacher's
            entry["written"] += 1
            entry["accepted"] += bool(rationale["accepted"])
            scores = [r["score"] for r in rationale["reviews"].values() if r["score"] is not None]
            entry["scores"] += scores
            if len(scores) >= 2:
                passes = {s > threshold for s in scores}
                agree, disagree = agree + (len(passes) == 1), disagree + (len(passes) > 1)
            correct = grader.grade(rationale["text"], mistake.example()).correct is True
            verdicts[(bool(rationale["accepted"]), correct)] += 1
    accepted = verdicts[(True, True)] + verdicts[(True, False)]
    correct = verdicts[(True, True)] + verdicts[(False, True)]
    return {
        "filter": recipes.run_filter(map(recipes.recorded_filter, records), "the committee records"),
        "per_teacher": dict(per_teacher),
        "agreement": agree / (agree + disagree) if agree + disagree else None,
        "accepted_correct": verdicts[(True, True)] / accepted if accepted else None,
        "correct_accepted": verdicts[(True, True)] / correct if correct else None,
        "verdicts": verdicts,
    }


def record_task(mistake: StudentAnswer, given: str | None, where: str) -> Task:
    """The task that grades a record's rationales: the one given, else the one the record names."""
    try:
        task = get_task(given or mistake.task)
    except FairError as e:
        raise FairError(f"{where}: task {mistake.task!r}: {e}; a task file outside configs/tasks/ needs "
                        "--task with its path") from None
    if task.name != mistake.task:
        raise FairError(f"{where}: task {mistake.task!r}, but --task {given!r} is {task.name!r}")
    return task


def run_task(gen_dir: Path) -> str | None:
    """The task as the run named it (committee.yaml, as `fair export` reads it), if it loads from this folder: a
    task file's relative path may not, and then the records' name may find it."""
    saved = gen_dir / "committee.yaml"
    named = (yaml.safe_load(saved.read_text()) or {}).get("task") if saved.exists() else None
    try:
        return named if named and get_task(named) else None
    except FairError:
        return None


USAGE_KEYS = ("input_tokens", "cached_input_tokens", "output_tokens", "cost")


def usage_numbers(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per teacher, what its replies billed (cost at its cached rates); records older than cached-token counts
    count none."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(USAGE_KEYS, 0))
    for record in records:
        for teacher, usage in record.get("usage", {}).items():
            for key in USAGE_KEYS:
                totals[teacher][key] += usage.get(key, 0)
    return dict(totals)


def reply_flags(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per teacher, its replies the provider refused (by its reason) and those cut off at max_tokens, of every
    kind (feedback, rationale, review)."""
    flags: dict[str, dict[str, Any]] = defaultdict(lambda: {"refused": Counter(), "truncated": 0})
    for record in records:
        for teacher, _, entry in committee_replies(record):
            if entry.get("refused") is not None:
                flags[teacher]["refused"][entry["refused"]] += 1
            flags[teacher]["truncated"] += bool(entry.get("truncated"))
    return dict(flags)


def example_rationales(records: list[dict]) -> tuple[dict | None, dict | None]:
    """The first accepted and the first rejected (but reviewed) rationale, for the page."""
    accepted = rejected = None
    for record in records:
        for key, rationale in record["rationales"].items():
            if rationale["text"] is None or not rationale["reviews"]:
                continue
            item = {"question": record["mistake"]["question"], "gold": record["mistake"]["gold"], "author": teacher_of(key),
                    "text": rationale["text"], "scores": {r: v["score"] for r, v in rationale["reviews"].items()}}
            if rationale["accepted"] and accepted is None:
                accepted = item
            elif not rationale["accepted"] and rationale["mean_score"] is not None and rejected is None:
                rejected = item
        if accepted and rejected:
            break
    return accepted, rejected


# ----------------------------------------------------------------------------------------------------------
# Plots


def plot_all(out: Path, before: dict | None, after: dict | None, reviews: dict, log: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    if before and after:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        bars = ax.bar(["before", "after"], [before["accuracy"] * 100, after["accuracy"] * 100], color=["#999", "#2a7"])
        for bar, summary in zip(bars, (before, after), strict=True):
            ax.annotate(f"{summary['accuracy']:.1%}\n{summary['correct']}/{summary['total']}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, max(5, max(before["accuracy"], after["accuracy"]) * 130))
        ax.set_title(f"{after['task']} {after['split']}: before and after training")
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=120)
        written.append("accuracy.png")
    teachers = sorted(reviews["per_teacher"])
    if teachers:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for k, teacher in enumerate(teachers):
            counts = Counter(round(s) for s in reviews["per_teacher"][teacher]["scores"])
            axes[0].bar([s + (k - len(teachers) / 2 + 0.5) * 0.25 for s in range(1, 6)],
                        [counts[s] for s in range(1, 6)], width=0.25, label=teacher)
        axes[0].set(xlabel="score received from peers", ylabel="reviews", title="review scores")
        axes[0].legend()
        rates = [reviews["per_teacher"][t]["accepted"] / max(1, reviews["per_teacher"][t]["written"]) for t in teachers]
        axes[1].bar(teachers, [r * 100 for r in rates], color="#47a")
        axes[1].set(ylabel="accepted (%)", ylim=(0, 105), title=f"rationales accepted (filter {reviews['filter']})")
        fig.tight_layout()
        fig.savefig(out / "reviews.png", dpi=120)
        written.append("reviews.png")
    if log:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [r["step"] for r in log]
        ax.plot(steps, [r["loss"] for r in log], label="total (alpha-weighted)")
        for key in ("feedback_loss", "rationale_loss"):
            if any(r[key] is not None for r in log):
                ax.plot(steps, [r[key] for r in log], label=key.replace("_", " "), alpha=0.7)
        ax.set(xlabel="optimizer step", ylabel="cross-entropy per target token", title="training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=120)
        written.append("loss.png")
    return written


# ----------------------------------------------------------------------------------------------------------
# The page


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def wilson(correct: int, total: int, z: float = 1.96) -> str:
    """Wilson's 95% interval for an accuracy: sound at the low accuracies of a small student, unlike p +- 2 sd."""
    if not total:
        return "-"
    p = correct / total
    centre, half = p + z * z / (2 * total), z * (p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5
    scale = 1 + z * z / total
    return f"{(centre - half) / scale:.1%}, {(centre + half) / scale:.1%}"


def change_line(before_dir: Path, after_dir: Path) -> str:
    """After minus before, paired on the questions both answered: bootstrap interval and McNemar's exact p."""
    before, after = (finished_correct(d / "predictions.jsonl") for d in (before_dir, after_dir))
    shared = sorted(set(before) & set(after))
    if not shared:
        return "(no question answered by both)"
    a, b = (np.array([side[i] for i in shared]) for side in (after, before))
    diff, low, high = paired_bootstrap(a, b)
    return (f"{diff * 100:+.1f} points [{low * 100:+.1f}, {high * 100:+.1f}] (95% paired bootstrap over {len(shared)} "
            f"questions); right only after: {int((a & ~b).sum())}, right only before: {int((~a & b).sum())}, "
            f"McNemar exact p = {mcnemar_exact(a, b):.3g}.")


def finished_correct(path: Path) -> dict[str, bool]:
    return {r["id"]: r.get("correct") is True for r in unique_ids(read_jsonl(path))} if path.exists() else {}


def build_report(gen_dir: Path, train_dir: Path | None, before_dir: Path | None, after_dir: Path | None,
                 out: Path, threshold: float = 3.0, task: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    committee = gen_dir / "committee.jsonl"
    records = list(unique_ids(read_jsonl(committee))) if committee.exists() else []
    mine_stats = load_json(gen_dir / "stats.json")
    committee_stats = load_json(gen_dir / "committee_stats.json")
    before = load_json(before_dir / "summary.json") if before_dir else None
    after = load_json(after_dir / "summary.json") if after_dir else None
    log = list(read_jsonl(train_dir / "log.jsonl")) if train_dir and (train_dir / "log.jsonl").exists() else []
    train_summary = load_json(train_dir / "train_summary.json") if train_dir else None
    reviews = review_numbers(records, threshold, task or run_task(gen_dir))
    plots = plot_all(out, before, after, reviews, log)
    lines = ["# FAIR run report", ""]
    lines += accuracy_section(before, after, before_dir, after_dir, mine_stats)
    lines += committee_section(records, reviews, threshold, gen_dir)
    if stopped := (committee_stats or {}).get("stopped"):  # e.g. a teacher out of quota: the records are partial
        lines += [f"The last committee run stopped early: {stopped}.", ""]
    lines += training_section(log)
    lines += ["## Time per stage", "", "| stage | seconds |", "| --- | ---: |"]
    stages = [("mine (student inference)", (mine_stats or {}).get("this_run", {}).get("seconds")),
              ("committee", (committee_stats or {}).get("seconds")),
              ("train", (train_summary or {}).get("seconds_this_run")),
              ("evaluate before", (before or {}).get("seconds")), ("evaluate after", (after or {}).get("seconds"))]
    lines += [f"| {name} | {'-' if value is None else f'{value:.1f}'} |" for name, value in stages]
    lines += ["", "Times are those of the last run of each stage; a rerun that found its work done shows 0.", ""]
    page = out / "report.md"
    page.write_text("\n".join(lines))
    print(f"wrote {page} and {', '.join(plots) or 'no plots'}")
    return page


def accuracy_section(before: dict | None, after: dict | None, before_dir: Path | None, after_dir: Path | None,
                     mine_stats: dict | None) -> list[str]:
    lines = ["## Accuracy", ""]
    if before and after:
        lines += [f"| model | {after['task']} {after['split']} accuracy [95% CI] | correct | unparseable |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {when}: `{s['model']}` | {s['accuracy']:.1%} [{wilson(s['correct'], s['total'])}] | "
                  f"{s['correct']}/{s['total']} | {s['unparseable']} |" for when, s in (("before", before), ("after", after))]
        lines += ["", f"Change: {change_line(before_dir, after_dir)}", "", "![accuracy](accuracy.png)", ""]
    else:
        lines += ["(no before/after evaluation given)", ""]
    if mine_stats:
        lines += [f"Mining: the student was right on {mine_stats['correct']} of {mine_stats['total']} train questions "
                  f"({mine_stats['accuracy']:.1%}); {mine_stats['mistakes']} mistakes went to the committee.", ""]
    return lines


def committee_section(records: list[dict], reviews: dict, threshold: float, gen_dir: Path) -> list[str]:
    if not records:
        return ["## Committee", "", f"(no committee.jsonl in {gen_dir})", ""]
    usage, flags = usage_numbers(records), reply_flags(records)
    lines = ["## Committee", "",
             "| teacher | rationales | accepted | mean score received | refused | cut off | input tokens | "
             "cached input | output tokens | cost $ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for teacher in sorted(set(reviews["per_teacher"]) | set(flags)):
        entry = reviews["per_teacher"].get(teacher, {"written": 0, "accepted": 0, "scores": []})
        scores, used, flag = entry["scores"], usage.get(teacher, {}), flags.get(teacher)
        mean = f"{sum(scores) / len(scores):.2f}" if scores else "-"
        refused = ", ".join(f"{n} {reason}" for reason, n in flag["refused"].most_common()) if flag else ""
        lines.append(f"| {teacher} | {entry['written']} | {percent(entry['accepted'] / max(1, entry['written']))} | "
                     f"{mean} | {refused or 0} | {flag['truncated'] if flag else 0} | "
                     f"{used.get('input_tokens', 0):,} | {used.get('cached_input_tokens', 0):,} | "
                     f"{used.get('output_tokens', 0):,} | {used.get('cost', 0):.4f} |")
    lines += ["", "Refused: replies the provider declined, by its reason (no text, never sent again); cut off: "
              "feedback, rationales and reviews that reached max_tokens (a cut-off rationale is never reviewed or "
              "accepted, a cut-off review gives no score, and training uses neither). Cost is at each teacher's "
              "prices, cached input at its cached rate."]
    lines += ["", f"Filter {recipes.filter_rule(reviews['filter'], threshold)}."]
    if recipes.reviews(reviews["filter"]):
        lines += [f"Review agreement: on {percent(reviews['agreement'])} of the rationales with two or more valid "
                  f"scores, every reviewer gave the same verdict (above {threshold} or not).",
                  f"Peer review against the gold answer: {percent(reviews['accepted_correct'])} of accepted "
                  f"rationales reach the gold answer, and {percent(reviews['correct_accepted'])} of the rationales that "
                  "reach it were accepted:", "", *verdict_table(reviews["verdicts"])]
    lines += ["", "![reviews](reviews.png)", ""]
    accepted, rejected = example_rationales(records)
    for title, item in (("An accepted rationale", accepted), ("A rejected rationale", rejected)):
        if item:
            text = item["text"].strip().replace("\n", "\n> ")
            lines += [f"### {title} (by {item['author']}; scores: {score_words(item['scores'])})", "",
                      f"Question: {item['question']} (gold: {item['gold']})", "", f"> {text[:1200]}", ""]
    return lines


def verdict_table(verdicts: Counter) -> list[str]:
    """Rationales by the committee's verdict (rows) and by our grader's against the gold answer (columns)."""
    return ["| rationales | reach the gold answer | do not |", "| --- | ---: | ---: |",
            *(f"| {name} | {verdicts[(accepted, True)]} | {verdicts[(accepted, False)]} |"
              for name, accepted in (("accepted", True), ("rejected", False)))]


def score_words(scores: dict[str, float | None]) -> str:
    """'gpt 4, gemini no score': each reviewer's score, as a reader writes it."""
    return ", ".join(f"{reviewer} {'no score' if score is None else f'{score:g}'}" for reviewer, score in scores.items())


def training_section(log: list[dict]) -> list[str]:
    if not log:
        return ["## Training", "", "(no training log given)", ""]
    return ["## Training", "", f"{len(log)} optimizer steps; loss {log[0]['loss']:.3f} at step 1, "
            f"{log[-1]['loss']:.3f} at step {log[-1]['step']}.", "", "![loss](loss.png)", ""]


def run(config: ReportConfig) -> int:
    optional = (Path(p) if p else None for p in (config.train_dir, config.before, config.after))
    build_report(Path(config.gen_dir), *optional, Path(config.out), config.threshold, config.task)
    return 0
