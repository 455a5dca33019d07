"""What a committee run reports: the progress line, the per-teacher table printed at its end, and
committee_stats.json beside its output.

Two kinds of numbers, side by side: this run's requests, tokens and cost (the clients' TeacherStats: replies
from the cache cost nothing this run), and the outcomes of every record in committee.jsonl so far (review
outcomes, refusals with the provider's reasons, replies cut off at max_tokens). Cost is at each teacher's
prices, cached input at price_cached_input and cache writes at price_cache_write (gen/teachers/config.py).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fair.jsonl import read_jsonl, unique_ids, write_json
from fair.records import committee_replies, teacher_of
from gen.teachers.config import Teacher

if TYPE_CHECKING:
    from gen.teachers.client import TeacherClient

KINDS = ("feedback", "rationale", "review")


def new_outcome() -> dict[str, Any]:
    return {"written": 0, "accepted": 0, "gold": 0, "failed": 0, "score_sum": 0, "scores": 0,
            "refused": {}, "truncated": dict.fromkeys(KINDS, 0)}


def review_outcomes(path: Path) -> dict[str, dict[str, Any]]:
    """Per teacher, over every record so far: rationales written (cut-off ones included: written, never
    accepted; every sample counts), accepted (under the run's filter), passing the gold check, and failed (an
    error or a refusal); the sum and count of the scores their peers gave them; every reply it refused, by the
    provider's reason; and its replies cut off, by kind. Counters, not lists: the file may hold a million records."""
    outcome: dict[str, dict[str, Any]] = {}
    if path.exists():
        for record in unique_ids(read_jsonl(path)):
            for teacher, kind, entry in committee_replies(record):
                entry_outcome = outcome.setdefault(teacher, new_outcome())
                if (reason := entry.get("refused")) is not None:
                    entry_outcome["refused"][reason] = entry_outcome["refused"].get(reason, 0) + 1
                entry_outcome["truncated"][kind] += bool(entry.get("truncated"))
            for key, rationale in record["rationales"].items():
                entry = outcome[teacher_of(key)]
                if rationale["text"] is None:
                    entry["failed"] += 1
                    continue
                entry["written"] += 1
                entry["accepted"] += bool(rationale["accepted"])
                entry["gold"] += bool(rationale.get("gold"))
                scores = [r["score"] for r in rationale["reviews"].values() if r["score"] is not None]
                entry["score_sum"] += sum(scores)
                entry["scores"] += len(scores)
    return outcome


def teacher_table(teachers: list[Teacher], stats: dict[str, Any], outcomes: dict[str, dict[str, Any]]) -> str:
    header = (f"{'teacher':<12} {'sent':>6} {'cached':>6} {'batch':>6} {'failed':>6} {'refused':>7} {'cut off':>7} "
              f"{'retries':>7} {'429s':>5} {'tokens in':>10} {'cached in':>10} {'tokens out':>10} {'cost $':>9} "
              f"{'accepted':>9} {'gold':>5} {'mean score':>10}")
    lines = [header, "-" * len(header)]
    for teacher in teachers:
        s, o = stats[teacher.name], outcomes.get(teacher.name, new_outcome())
        rate = f"{o['accepted'] / o['written']:.0%}" if o["written"] else "-"
        gold = f"{o['gold'] / o['written']:.0%}" if o["written"] else "-"
        mean = f"{o['score_sum'] / o['scores']:.2f}" if o["scores"] else "-"
        lines.append(
            f"{teacher.name:<12} {s.requests:>6} {s.cache_hits:>6} {s.batched:>6} {s.failures:>6} {s.refused:>7} "
            f"{s.truncated:>7} {s.retries:>7} {s.rate_limited:>5} {s.input_tokens:>10} {s.cached_input_tokens:>10} "
            f"{s.output_tokens:>10} {s.cost:>9.4f} {rate:>9} {gold:>5} {mean:>10}"
        )
    lines.append("(sent, cached (replies from our cache), batch (Batch API replies, then read from the cache), failed, "
                 "refused, cut off (at max_tokens), tokens and cost: this run; cached in: input tokens the provider "
                 "read from its prompt cache, priced at price_cached_input; accepted (under the run's filter), gold "
                 "(the grader finds the gold answer) and mean score: every rationale so far)")
    lines += [line for teacher in teachers if (line := reply_flags(teacher.name, outcomes.get(teacher.name)))]
    return "\n".join(lines)


def reply_flags(name: str, outcome: dict[str, Any] | None) -> str:
    """One line for a teacher with refused or cut-off replies in the records so far, else ''."""
    if outcome is None or not (outcome["refused"] or any(outcome["truncated"].values())):
        return ""
    refused = ", ".join(f"{reason} x{n}" for reason, n in Counter(outcome["refused"]).most_common()) or "none"
    cut = ", ".join(f"{n} {kind}" for kind, n in outcome["truncated"].items() if n) or "none"
    return f"{name}: refused {refused}; cut off at max_tokens: {cut} (every record so far)"


def progress_line(clients: dict[str, TeacherClient], seconds: float, errors: int) -> str:
    stats = [c.stats for c in clients.values()]
    sent = sum(s.requests for s in stats)
    tokens = sum(s.input_tokens + s.output_tokens for s in stats)
    return (f"req/s={sent / max(seconds, 1e-9):.1f} tokens={tokens} retries={sum(s.retries for s in stats)} "
            f"errors={errors} refused={sum(s.refused for s in stats)} cut={sum(s.truncated for s in stats)} "
            f"${sum(s.cost for s in stats):.4f}")


def write_stats(out_path: Path, result: dict[str, Any]) -> None:
    """committee_stats.json beside the output (committee.jsonl at out_path): the run's filter and samples, this
    run's counts per teacher (`fair estimate` reads them), why the run stopped early (null when it did not), and
    per teacher the outcomes of every record so far."""
    write_json(out_path.with_name("committee_stats.json"), {
        "filter": result["filter"], "samples": result["samples"], "written": result["written"],
        "skipped": result["skipped"], "seconds": round(result["seconds"], 2),
        "repeated_after_kill": result["repeated_after_kill"], "cache_commits": result["cache_commits"],
        "stopped": result["stopped"], "budget": result["budget"],
        "batch": dataclasses.asdict(result["batch"]) if result["batch"] else None,
        "teachers": {name: dataclasses.asdict(stats) for name, stats in result["stats"].items()},
        "outcomes": result["outcomes"],
    })


def print_summary(out_path: Path, teachers: list[Teacher], result: dict[str, Any]) -> None:
    if batch := result["batch"]:
        print(f"\nBatch API: {batch.answered} replies from {batch.batches} batch(es) in {batch.seconds:.1f}s; "
              f"{batch.fell_back} left to the live path")
    print(f"\n{result['written']} mistakes done this run ({result['skipped']} already done) in "
          f"{result['seconds']:.1f}s, filter {result['filter']}, {result['samples']} rationale(s) per teacher "
          f"-> {out_path}")
    print(teacher_table(teachers, result["stats"], result["outcomes"]))
