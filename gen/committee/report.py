"""The per-teacher summary printed after a committee run: work done this run, and review outcomes so far."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fair.jsonl import read_jsonl, unique_ids
from gen.teachers.config import Teacher


def review_outcomes(path: Path) -> dict[str, dict[str, Any]]:
    """Per author: rationales written, accepted, failed, and the sum and count of the scores their peers gave
    them (counters, not lists: the file may hold a million records)."""
    outcome: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"written": 0, "accepted": 0, "failed": 0, "score_sum": 0, "scores": 0})
    if path.exists():
        for record in unique_ids(read_jsonl(path)):
            for author, rationale in record["rationales"].items():
                entry = outcome[author]
                if rationale["text"] is None:
                    entry["failed"] += 1
                    continue
                entry["written"] += 1
                entry["accepted"] += bool(rationale["accepted"])
                scores = [r["score"] for r in rationale["reviews"].values() if r["score"] is not None]
                entry["score_sum"] += sum(scores)
                entry["scores"] += len(scores)
    return outcome


def teacher_table(path: Path, teachers: list[Teacher], stats: dict[str, Any]) -> str:
    outcome = review_outcomes(path)
    header = (f"{'teacher':<12} {'sent':>6} {'cached':>6} {'batch':>6} {'failed':>6} {'retries':>7} {'429s':>5} "
              f"{'tokens in':>10} {'tokens out':>10} {'cost $':>9} {'accepted':>9} {'mean score':>10}")
    lines = [header, "-" * len(header)]
    for teacher in teachers:
        s, o = stats[teacher.name], outcome[teacher.name]
        rate = f"{o['accepted'] / o['written']:.0%}" if o["written"] else "-"
        mean = f"{o['score_sum'] / o['scores']:.2f}" if o["scores"] else "-"
        lines.append(
            f"{teacher.name:<12} {s.requests:>6} {s.cache_hits:>6} {s.batched:>6} {s.failures:>6} {s.retries:>7} {s.rate_limited:>5} "
            f"{s.input_tokens:>10} {s.output_tokens:>10} {s.cost:>9.4f} {rate:>9} {mean:>10}"
        )
    lines.append("(sent, cached, batch (Batch API replies, then read from the cache), tokens and cost: this run; "
                 "accepted and mean score: every record so far)")
    return "\n".join(lines)
