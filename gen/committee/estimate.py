"""`fair estimate`: what `fair committee` will cost before it runs: requests, tokens, USD and wall time.

    fair estimate --task gsm8k --teachers default                     # the split x an assumed mistake rate
    fair estimate --task gsm8k --teachers default --mistake-rate 0.3 --limit 5000
    fair estimate --task svamp --student smollm2-135m   # counts data/svamp/smollm2-135m/mistakes.jsonl
    fair estimate --task gsm8k --num-mistakes 1000000 --json          # a machine-readable answer

How many mistakes: --num-mistakes N; else the mistakes.jsonl that `fair committee` would read, when it
exists; else the split's size (or --limit) times --mistake-rate.

Requests per mistake, as gen/committee/run.py sends them with T teachers and --samples K: each teacher writes one
feedback and K rationales, and under --filter review reviews the other T - 1 teachers' K rationales each: T(1 + K
+ K(T - 1)) requests, T(T + 1) = 12 for 3 teachers and one sample. Under gold and none no review is sent (T(1 + K));
under gold+review only the rationales that pass the gold check are reviewed: the share of each teacher's
rationales that passed it in committee_stats.json beside the mistakes, when a run of this code left one, else all
of them (an upper bound). Every filter's figures are shown side by side (fair/recipes.py says what each keeps).

Input tokens: the real prompts (gen/committee/prompts.py) built for --sample mistakes spread over the file (or over
the split, with a student answer of --answer-tokens), counted as the client's rate limiter counts them
(~4 characters per token, gen/teachers/client.py); a review's prompt also holds the reviewed rationale, counted at
its author's output length. Output tokens: each teacher's mean per request in committee_stats.json beside
the mistakes, when a committee run left one (thinking included: providers bill it as output); else
DEFAULT_OUTPUT_TOKENS per request type, capped at the teacher's max_tokens, plus the whole of its
thinking_budget, which a thinking model may spend on every reply (teacher.max_output_tokens() bounds the two).
Both are approximations: real tokenizers count differently.

Cost: tokens x the teacher's prices (USD per million, configs/teachers/*.yaml), as Teacher.cost bills them.
Input read from the provider's prompt cache is priced at price_cached_input, and written to it at
price_cache_write, in the shares of input that committee_stats.json measured per teacher; with no measured
cache hits, none are assumed: the cost is then an upper bound (the prompts share their prefix, so a run
usually hits, gen/committee/prompts.py).
"batch $" prices the feedback and rationales of teachers marked `batch_api: true` at the Batch API's half
price, as `fair committee --batch-api` sends them (reviews need the rationales first, so they stay online).
Wall time: the larger of requests / rpm and tokens / tpm per teacher, each of its API keys bringing its own
limits; the committee takes as long as its slowest teacher. It is a floor: latency x max_concurrency,
retries and 429s only add to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from fair.config import Validated, at_least
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.models import DEFAULT_STUDENT
from fair.prices import REVIEW_OUTPUT_TOKENS
from fair.recipes import DEFAULT_FILTER, FILTERS, Filter, check_filter, gold_checks, reviews
from fair.records import Messages, StudentAnswer
from fair.tasks import Example, Task, get_task
from gen.committee.prompts import PROMPT_SETS, PromptSet
from gen.committee.run import CommitteeConfig, count_mistakes
from gen.teachers.client import estimate_tokens
from gen.teachers.config import Teacher, load_committee
from gen.teachers.providers import ChatRequest, Usage

# Output tokens per request when no committee run has been measured. The paper's SVAMP files
# (shared/data/seed) average 116-160 tokens of feedback and 28-126 of rationale (chars / 4) from 2023's
# teachers; current ones write about twice that, and the review prompt asks for a brief judgement and a score.
DEFAULT_OUTPUT_TOKENS = {"feedback": 300, "rationale": 300, "review": REVIEW_OUTPUT_TOKENS}


@dataclass
class EstimateConfig(Validated):
    task: str = "svamp"  # the benchmark (`fair tasks` lists them)
    teachers: str = "default"  # a committee in configs/teachers/ or a YAML path
    student: str = DEFAULT_STUDENT  # names the default mistakes file data/<task>/<student>/mistakes.jsonl
    mistakes: str | None = None  # the mistakes.jsonl to count and sample (default: the one committee reads)
    num_mistakes: int | None = None  # assume this many mistakes instead of counting or guessing
    split: str = "train"  # with no mistakes file: the split `fair mine` would answer
    limit: int | None = None  # with no mistakes file: first N examples of the split, as `fair mine --limit`
    mistake_rate: float = 0.5  # with no mistakes file: the share of the split the student gets wrong
    answer_tokens: int = 200  # with no mistakes file: the length of a student's wrong answer, in tokens
    prompts: Literal["fair", "paper"] = "fair"  # the committee's prompts: ours, or the paper's for parity
    filter: Filter = DEFAULT_FILTER  # the committee's --filter priced in the table (every filter is shown side by side)
    samples: int = 1  # the committee's --samples: rationales per teacher and mistake
    sample: int = 200  # mistakes whose prompts are built and measured
    data_dir: str | None = None  # local data in shared/data layout; default $FAIR_DATA_DIR or ../shared/data
    json: bool = False  # print JSON instead of a table

    def validate(self) -> None:
        get_task(self.task)
        if not 0 <= self.mistake_rate <= 1:
            raise FairError(f"mistake_rate must be in [0, 1], got {self.mistake_rate}")
        check_filter(self.filter)
        at_least(self, 1, "sample", "answer_tokens", "limit", "samples")
        at_least(self, 0, "num_mistakes")

    @property
    def committee(self) -> CommitteeConfig:
        """The committee run being estimated: it says where the mistakes are, and counts them."""
        return CommitteeConfig(task=self.task, student=self.student, mistakes=self.mistakes,
                               teachers=self.teachers, prompts=self.prompts, filter=self.filter, samples=self.samples)

    @property
    def stats_path(self) -> Path:
        """A committee run's committee_stats.json beside the mistakes: its measured output tokens and cache hits."""
        return self.committee.mistakes_path.with_name("committee_stats.json")


# ----------------------------------------------------------------------------------------------------------
# What one mistake costs


def prompt_tokens(messages: Messages) -> int:
    """The prompt part of the client's own estimate (max_tokens=0 leaves the completion out)."""
    return estimate_tokens(ChatRequest(messages, max_tokens=0))


def mean_prompt_tokens(task: Task, prompts: PromptSet, answers: list[StudentAnswer]) -> dict[str, float]:
    """Mean input tokens per request type; "review" without the rationale under review (added per author)."""
    if not answers:
        raise FairError("no mistakes to measure prompts on")
    return {
        "feedback": sum(prompt_tokens(prompts.feedback(task, a)) for a in answers) / len(answers),
        "rationale": sum(prompt_tokens(prompts.rationale(task, a)) for a in answers) / len(answers),
        "review": sum(prompt_tokens(prompts.review(task, a, "")) for a in answers) / len(answers),
    }


def output_tokens(teacher: Teacher, measured: dict[str, Any] | None) -> dict[str, float]:
    """Per request type: the teacher's measured mean per request, else the defaults capped at max_tokens plus
    all the thinking the teacher allows (what a thinking model may bill as output on every reply)."""
    if replies := measured_replies(measured):
        return dict.fromkeys(DEFAULT_OUTPUT_TOKENS, measured["output_tokens"] / replies)
    thinking = thinking_tokens(teacher, measured)
    return {kind: min(tokens, teacher.max_tokens) + thinking for kind, tokens in DEFAULT_OUTPUT_TOKENS.items()}


def measured_replies(measured: dict[str, Any] | None) -> int:
    """The replies a run's output_tokens were billed for: live ones and the Batch API's (counted apart)."""
    return (measured.get("successes") or 0) + (measured.get("batched") or 0) if measured else 0


def thinking_tokens(teacher: Teacher, measured: dict[str, Any] | None) -> int:
    """What output_tokens counts for thinking apart from the text (never reviewed: a review holds only the
    text): all of the thinking budget, or 0 when measured (a measured mean holds it)."""
    return 0 if measured_replies(measured) else teacher.max_output_tokens() - teacher.max_tokens


def cache_shares(measured: dict[str, Any] | None) -> tuple[float, float]:
    """The shares of a teacher's input tokens that a committee run measured as read from and written to the
    provider's prompt cache; (0, 0) when none was measured (no cache hits assumed)."""
    if not measured or not measured.get("input_tokens"):
        return 0.0, 0.0
    total = measured["input_tokens"]
    return measured.get("cached_input_tokens", 0) / total, measured.get("cache_write_tokens", 0) / total


def per_mistake(teachers: list[Teacher], inputs: dict[str, float], outputs: dict[str, dict[str, float]],
                thinking: dict[str, int] | None = None, samples: int = 1,
                reviewed: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Requests and tokens per mistake for each teacher: what the Batch API could take (its feedback and its
    `samples` rationales), and its reviews; `reviewed`: the share of each author's rationales sent for review
    (default all)."""
    result = {}
    for t in teachers:
        others = [o for o in teachers if o.name != t.name]
        share = {o.name: samples * (reviewed or {}).get(o.name, 1.0) for o in others}  # o's rationales t reviews
        out = outputs[t.name]
        result[t.name] = {
            "requests": 1 + samples + sum(share.values()),
            "batchable_input": inputs["feedback"] + samples * inputs["rationale"],
            "batchable_output": out["feedback"] + samples * out["rationale"],
            "review_input": sum(share[o.name] * (inputs["review"] + outputs[o.name]["rationale"]
                                                 - (thinking or {}).get(o.name, 0)) for o in others),
            "review_output": sum(share.values()) * out["review"],
        }
    return result


def review_shares(filter: Filter, teachers: list[Teacher], gold_rates: dict[str, float]) -> dict[str, float]:
    """The share of each teacher's rationales that `filter` sends for review: all, none, or those that pass the
    gold check (its measured rate; all where none was measured)."""
    if not reviews(filter):
        return dict.fromkeys((t.name for t in teachers), 0.0)
    return {t.name: gold_rates.get(t.name, 1.0) if gold_checks(filter) else 1.0 for t in teachers}


def usage(input_tokens: float, output_tokens: float, share: tuple[float, float]) -> Usage:
    """Estimated tokens as Teacher.cost takes them, `share` of the input read from and written to the cache
    (fractional counts: means over many requests)."""
    return Usage(input_tokens, output_tokens, input_tokens * share[0], input_tokens * share[1])  # type: ignore[arg-type]


def costs(teachers: list[Teacher], unit: dict[str, dict[str, float]], mistakes: int,
          shares: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Per teacher and in total; `shares`: each teacher's cache_shares (none: no cache hits assumed)."""
    rows = {}
    for t in teachers:
        u, share = unit[t.name], (shares or {}).get(t.name, (0.0, 0.0))
        cached, written = share
        requests = u["requests"] * mistakes
        input_tokens = (u["batchable_input"] + u["review_input"]) * mistakes
        output_tokens = (u["batchable_output"] + u["review_output"]) * mistakes
        cost = t.cost(usage(input_tokens, output_tokens, share))
        batchable = usage(u["batchable_input"] * mistakes, u["batchable_output"] * mistakes, share)
        keys = len(t.per_key())  # each key has the teacher's whole rpm and tpm
        minutes = max(requests / (t.rpm * keys), (input_tokens + output_tokens) / (t.tpm * keys))
        batch_cost = cost - t.cost(batchable) + t.cost(batchable, batch=True) if t.batch_api else cost
        rows[t.name] = {
            "model": t.model, "requests": requests, "input_tokens": input_tokens,
            "cached_input_share": cached, "cache_write_share": written,
            "output_tokens": output_tokens, "cost_usd": cost, "batch_cost_usd": batch_cost,
            "rpm": t.rpm, "tpm": t.tpm, "api_keys": keys, "hours": minutes / 60,
        }
    total = {key: sum(r[key] for r in rows.values())
             for key in ("requests", "input_tokens", "output_tokens", "cost_usd", "batch_cost_usd")}
    total["hours"] = max((r["hours"] for r in rows.values()), default=0.0)
    return {"teachers": rows, "total": total}


# ----------------------------------------------------------------------------------------------------------
# The mistakes: how many, and a sample to build prompts from


def spread(items: Iterable[Any], total: int, sample: int) -> list[Any]:
    """`sample` of an iterable's `total` items, evenly spaced; only those are kept (files stream through)."""
    chosen = {k * total // sample for k in range(sample)}
    return [item for i, item in enumerate(items) if i in chosen]


def stand_in(task: Task, example: Example, answer_tokens: int) -> StudentAnswer:
    """A mistake not mined yet: the example with a wrong answer of the assumed length."""
    return StudentAnswer.graded(task, example, "x" * (4 * answer_tokens), finish_reason="stop",
                                generated_tokens=answer_tokens)


def mistakes_and_sample(config: EstimateConfig, task: Task) -> tuple[int, str, list[StudentAnswer]]:
    """How many mistakes (and how we know), and a sample: real ones from the file when there is one."""
    path = config.committee.mistakes_path
    counted = count_mistakes(config.committee) if path.exists() else 0
    if counted:
        records = spread(enumerate(read_jsonl(path)), counted, config.sample)
        sample = [StudentAnswer.from_json(r, f"{path} record {i}") for i, r in records]
    else:
        examples = task.load(config.split, config.data_dir, config.limit)
        chosen = spread(examples, len(examples), config.sample)
        sample = [stand_in(task, e, config.answer_tokens) for e in chosen]
    if config.num_mistakes is not None:
        return config.num_mistakes, "--num-mistakes", sample
    if path.exists():
        return counted, f"counted in {path}", sample
    return (round(len(examples) * config.mistake_rate),
            f"{len(examples)} {config.split} examples x mistake rate {config.mistake_rate}", sample)


def measured_outputs(path: Path) -> dict[str, Any]:
    """Per teacher, the requests and tokens a committee run recorded in committee_stats.json (if any)."""
    return orjson.loads(path.read_bytes()).get("teachers", {}) if path.exists() else {}


def measured_gold_rates(path: Path) -> dict[str, float]:
    """Per teacher, the share of its rationales so far that passed the gold check, from a committee_stats.json
    written since runs record it (one with a `filter`); none otherwise."""
    stats = orjson.loads(path.read_bytes()) if path.exists() else {}
    if "filter" not in stats:
        return {}
    return {n: o["gold"] / o["written"] for n, o in stats.get("outcomes", {}).items() if o.get("written")}


# ----------------------------------------------------------------------------------------------------------
# The command


def estimate(config: EstimateConfig) -> dict[str, Any]:
    result = committee_estimate(config)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if config.json
          else table(result, config.stats_path))
    return result


def committee_estimate(config: EstimateConfig, teachers: list[Teacher] | None = None) -> dict[str, Any]:
    """What `fair estimate` prints, for `teachers` (default: config.teachers' whole committee; `fair serve` passes
    a job's)."""
    task = get_task(config.task)
    teachers = load_committee(config.teachers) if teachers is None else teachers
    mistakes, source, sample = mistakes_and_sample(config, task)
    measured = measured_outputs(config.stats_path)
    outputs = {t.name: output_tokens(t, measured.get(t.name)) for t in teachers}
    shares = {t.name: cache_shares(measured.get(t.name)) for t in teachers}
    inputs = mean_prompt_tokens(task, PROMPT_SETS[config.prompts], sample)
    thinking = {t.name: thinking_tokens(t, measured.get(t.name)) for t in teachers}
    gold = measured_gold_rates(config.stats_path)

    def unit(filter: Filter) -> dict[str, dict[str, float]]:
        return per_mistake(teachers, inputs, outputs, thinking, config.samples, review_shares(filter, teachers, gold))

    return {
        "task": task.name, "teachers_file": config.teachers, "prompts": config.prompts, "filter": config.filter,
        "samples": config.samples, "mistakes": mistakes, "mistakes_source": source, "sample": len(sample),
        "requests_per_mistake": sum(u["requests"] for u in unit(config.filter).values()),
        "input_tokens_per_request": inputs,
        "output_tokens_per_request": outputs,
        "output_tokens_source": "committee_stats" if measured else "defaults",
        "cached_input_source": "committee_stats" if any(any(v) for v in shares.values()) else "none assumed",
        "gold_rate_source": "committee_stats" if gold else "none measured: all pass",
        **costs(teachers, unit(config.filter), mistakes, shares),
        "filters": {f: {"requests_per_mistake": sum(u["requests"] for u in unit(f).values())}
                    | costs(teachers, unit(f), mistakes, shares)["total"] for f in FILTERS},
    }


def table(result: dict[str, Any], stats_path: Path) -> str:
    measured = f"measured in {stats_path}" if result["output_tokens_source"] == "committee_stats" else \
        f"assumed: {', '.join(f'{k} {v}' for k, v in DEFAULT_OUTPUT_TOKENS.items())} (capped at max_tokens), plus " \
        "each teacher's whole thinking_budget"
    if result["cached_input_source"] == "committee_stats":
        cached = "cached input: " + ", ".join(
            f"{name} {r['cached_input_share']:.0%} read, {r['cache_write_share']:.0%} written"
            for name, r in result["teachers"].items()) + f" of input tokens (measured in {stats_path})"
    else:
        cached = "cached input: no cache hits assumed (none measured), so the cost is an upper bound"
    inputs = ", ".join(f"{k} {v:.0f}" for k, v in result["input_tokens_per_request"].items())
    lines = [
        f"{result['task']}: {result['mistakes']:,} mistakes ({result['mistakes_source']}), committee "
        f"{result['teachers_file']!r}, --filter {result['filter']}, --samples {result['samples']}: "
        f"{result['requests_per_mistake']:g} requests per mistake",
        f"input tokens per request (mean of {result['sample']} built prompts): {inputs} "
        "(+ the rationale reviewed)",
        f"output tokens per request: {measured}",
        cached,
        "",
    ]
    header = (f"{'teacher':<10} {'model':<24} {'requests':>11} {'input tok':>14} {'output tok':>14} "
              f"{'cost $':>11} {'batch $':>11} {'rpm x keys':>11} {'time':>8}")
    lines += [header, "-" * len(header)]
    for name, r in result["teachers"].items():
        lines.append(f"{name:<10} {r['model'][:24]:<24} {r['requests']:>11,.0f} {r['input_tokens']:>14,.0f} "
                     f"{r['output_tokens']:>14,.0f} {r['cost_usd']:>11,.2f} {r['batch_cost_usd']:>11,.2f} "
                     f"{str(r['rpm']) + ' x ' + str(r['api_keys']):>11} {duration(r['hours']):>8}")
    t = result["total"]
    lines.append(f"{'total':<10} {'':<24} {t['requests']:>11,.0f} {t['input_tokens']:>14,.0f} "
                 f"{t['output_tokens']:>14,.0f} {t['cost_usd']:>11,.2f} {t['batch_cost_usd']:>11,.2f} "
                 f"{'':>11} {duration(t['hours']):>8}")
    lines.append("(time: the rate limits' floor, set by the slowest teacher; batch $: with the feedback and "
                 "rationales of batch_api teachers at the Batch API's half price)")
    return "\n".join(lines + filter_table(result))


def filter_table(result: dict[str, Any]) -> list[str]:
    """Every filter's totals side by side (fair/recipes.py): what the review requests cost, and what they save."""
    gold = "measured in committee_stats.json" if result["gold_rate_source"] == "committee_stats" else \
        "none measured, so every rationale is assumed to pass: an upper bound"
    header = (f"{'--filter':<12} {'req/mistake':>11} {'requests':>11} {'input tok':>14} {'output tok':>14} "
              f"{'cost $':>11} {'batch $':>11} {'time':>8}")
    lines = ["", f"by filter, {result['samples']} rationale(s) per teacher and mistake (gold+review reviews the "
             f"rationales that pass the gold check: {gold}):", header, "-" * len(header)]
    for name, t in result["filters"].items():
        lines.append(f"{name:<12} {t['requests_per_mistake']:>11.1f} {t['requests']:>11,.0f} {t['input_tokens']:>14,.0f} "
                     f"{t['output_tokens']:>14,.0f} {t['cost_usd']:>11,.2f} {t['batch_cost_usd']:>11,.2f} "
                     f"{duration(t['hours']):>8}")
    return lines


def duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"

