"""What teacher replies cost: a reply's billed usage, a teacher's prices, and the API cost of a recipe's data.

Prices are USD per million tokens, as configs/teachers/*.yaml give them (gen/teachers/config.py's Teacher holds
them with everything else about a teacher; `load_prices` reads only them, for the stages that do not send).
A reply costs its input at price_input, except what was read from the provider's prompt cache
(price_cached_input) or written to it (price_cache_write; both default to price_input), plus its output
(thinking included) at price_output; OpenAI's Batch API bills half of all that.

The cost of a recipe's data (`data_cost`): the requests a committee run makes for the records a recipe trains on,
counting the review requests only where the recipe's filter needs them (fair/recipes.py: all of them for review,
those of gold-passing rationales for gold+review, none for gold and none), and a teacher's first `samples`
rationales a mistake (all of them by default). Tokens are the usage each reply recorded (committee.jsonl written
since this field existed). A reply with none recorded (the paper's files, older records) is estimated from its text:
the prompt the paper's code sent for it (fair/paper.py's) and the reply, at 4 characters a token, as the client's
rate limiter counts (gen/teachers/client.py); a review reply the records do not keep (the paper's files keep
only its score) counts REVIEW_OUTPUT_TOKENS. The result says how many requests were estimated so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fair import paper
from fair.config import CONFIGS_DIR, load_yaml
from fair.errors import FairError
from fair.recipes import Filter, check_filter, finds_gold, gold_checks, recorded_filter, reviews, trainable
from fair.records import Messages, StudentAnswer, sample_of, teacher_of, usable_text
from fair.tasks import Task

BATCH_PRICE = 0.5  # OpenAI's Batch API bills input and output tokens at half the synchronous price
TEACHERS_DIR = CONFIGS_DIR / "teachers"
CHARS_PER_TOKEN = 4
REVIEW_OUTPUT_TOKENS = 150  # a review's judgement and score, where its reply was not kept (gen/committee/estimate.py)


@dataclass(frozen=True)
class Usage:
    """What the provider bills for one reply (the transport reads it off each reply; `bill` prices it)."""

    input_tokens: int = 0  # every prompt token, cached reads and cache writes included
    output_tokens: int = 0  # visible + thinking/reasoning tokens
    cached_input_tokens: int = 0  # of input_tokens: read from the provider's prompt cache (cheaper rate)
    cache_write_tokens: int = 0  # of input_tokens: written to the prompt cache (Anthropic; dearer rate)


USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


class Priced(Protocol):
    """A teacher's prices (USD per million tokens): gen/teachers/config.py's Teacher, or `Prices`."""

    price_input: float
    price_output: float
    price_cached_input: float | None
    price_cache_write: float | None


@dataclass(frozen=True)
class Prices:
    price_input: float = 0.0
    price_output: float = 0.0
    price_cached_input: float | None = None
    price_cache_write: float | None = None


PRICE_FIELDS = tuple(f.name for f in dataclasses.fields(Prices))


def bill(prices: Priced, usage: Usage, batch: bool = False) -> float:
    """USD for a reply's billed usage: cached reads and cache writes at their own prices, the rest of the input at
    price_input; halved for the Batch API."""
    cached, written = usage.cached_input_tokens, usage.cache_write_tokens
    price_cached = prices.price_input if prices.price_cached_input is None else prices.price_cached_input
    price_write = prices.price_input if prices.price_cache_write is None else prices.price_cache_write
    full = ((usage.input_tokens - cached - written) * prices.price_input + cached * price_cached
            + written * price_write + usage.output_tokens * prices.price_output) / 1e6
    return full * BATCH_PRICE if batch else full


def committee_path(name_or_path: str) -> Path:
    """A committee's YAML: a path, or a name in configs/teachers/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return TEACHERS_DIR / f"{name_or_path}.yaml"


def load_prices(name_or_path: str) -> dict[str, Prices]:
    """Each teacher's prices in a committee's YAML (configs/teachers/paper.yaml, default.yaml, or a path)."""
    path = committee_path(name_or_path)
    if not path.exists():
        raise FairError(f"no teacher committee {name_or_path!r} at {path}")
    entries = load_yaml(path, {"teachers"}).get("teachers")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        raise FairError(f"{path}: expected a list of teachers with names under 'teachers'")
    return {e["name"]: Prices(**{k: e[k] for k in PRICE_FIELDS if k in e}) for e in entries}


# ----------------------------------------------------------------------------------------------------------
# The cost of a recipe's data


@dataclass
class Tally:
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0


@dataclass
class DataCost:
    filter: str
    samples: int | None  # the first N rationales of each teacher a mistake; None: all recorded
    mistakes: int = 0
    total: Tally = field(default_factory=Tally)
    by_kind: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in ("feedback", "rationale", "review")})
    estimated: int = 0  # requests with no recorded usage, estimated from their text (the module docstring)

    def add(self, kind: str, usage: Usage, usd: float) -> None:
        for tally in (self.total, self.by_kind[kind]):
            tally.requests += 1
            tally.input_tokens += usage.input_tokens
            tally.cached_input_tokens += usage.cached_input_tokens
            tally.output_tokens += usage.output_tokens
            tally.usd += usd

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def data_cost(records: Iterable[dict], prices: dict[str, Prices], filter: Filter, task: Task,
              samples: int | None = None) -> DataCost:
    """What a recipe's data cost in API calls (the module docstring): committee records (train/data.py's
    load_records: ours, or the paper's files imported), each teacher's prices (`load_prices`), the recipe's
    filter and how many rationale samples of each teacher it uses."""
    cost = DataCost(check_filter(filter), samples)
    for record in records:
        if not trainable(filter, recorded_filter(record)):
            raise FairError(f"record {record['id']}: the committee ran with --filter {recorded_filter(record)}: the "
                            f"reviews a {filter} recipe pays for were never asked")
        cost.mistakes += 1
        mistake = StudentAnswer.from_json(record["mistake"], f"record {record['id']}")
        for kind, teacher, entry, estimate in requests(record, mistake, task, filter, samples):
            usage, batch = recorded_usage(entry) or (estimate(), False)
            cost.estimated += "usage" not in entry
            if teacher not in prices:
                raise FairError(f"record {record['id']}: no prices for teacher {teacher!r} (priced: "
                                f"{', '.join(prices)})")
            cost.add(kind, usage, bill(prices[teacher], usage, batch))
    return cost


Request = tuple[str, str, dict, Callable[[], Usage]]  # (kind, teacher billed, its entry, a text estimate of its usage)


def requests(record: dict, mistake: StudentAnswer, task: Task, filter: Filter, samples: int | None) -> Iterator[Request]:
    """Each request a recipe's data took, as a Request."""
    for teacher, entry in record["feedback"].items():
        yield "feedback", teacher, entry, lambda e=entry: estimated(paper.feedback_messages(task, mistake), e.get("text"))
    for key, rationale in record["rationales"].items():
        if samples is not None and sample_of(key) > samples:
            continue
        yield ("rationale", teacher_of(key), rationale,
               lambda e=rationale: estimated(paper.rationale_messages(task, mistake), e.get("text")))
        text = usable_text(rationale)
        needed = text is not None and reviews(filter) and (
            not gold_checks(filter) or rationale.get("gold", finds_gold(task, mistake, text)))
        for reviewer, review in (rationale.get("reviews", {}) if needed else {}).items():
            yield ("review", reviewer, review,
                   lambda e=review, t=text: estimated(paper.review_messages(task, mistake, t), e.get("reply"),
                                                      REVIEW_OUTPUT_TOKENS))


def recorded_usage(entry: dict) -> tuple[Usage, bool] | None:
    usage = entry.get("usage")
    if not usage:
        return None
    return Usage(**{k: usage.get(k, 0) for k in USAGE_FIELDS}), bool(usage.get("batch"))


def estimated(messages: Messages, reply: str | None, missing_reply_tokens: int = 0) -> Usage:
    prompt = sum(len(text) for _, text in messages)
    return Usage(-(-prompt // CHARS_PER_TOKEN),
                 -(-len(reply) // CHARS_PER_TOKEN) if reply is not None else missing_reply_tokens)
