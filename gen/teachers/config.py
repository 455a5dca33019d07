"""Teacher declarations: configs/teachers/<committee>.yaml lists the committee's members.

    teachers:
      - name: gpt
        provider: openai            # openai (and any OpenAI-compatible base_url), gemini, anthropic
        model: gpt-4.1-mini
        api_key_env: OPENAI_API_KEY # the key is read from this variable; never written anywhere
        rpm: 500                    # requests / minute  (the limiter waits; it never rejects)
        tpm: 200000                 # tokens / minute, estimated before a call, settled after
        batch_api: true             # (openai) serves the Batch API: `fair committee --batch-api` uses it
        ...

Several keys: `api_key_env: [OPENAI_KEY_A, OPENAI_KEY_B]`. Each key gets the whole rpm, tpm and
max_concurrency above and its own rate-limit gate; each request goes to the key that can send soonest
(gen/teachers/client.py), and a 429 cools only the key that got it. Providers limit a project or organization rather
than a key string, so only keys with quotas of their own (other projects, other accounts) add throughput.
Which key answered changes nothing in the cache key or the outputs. Every missing variable is reported;
whitespace around a key (a .env written on Windows) is stripped, and a key with other stray characters is
refused (gen/teachers/keys.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from fair.config import Validated, load_yaml, make_config
from fair.errors import FairError
from fair.prices import TEACHERS_DIR, Usage, bill, committee_path
from fair.records import SAMPLE_MARK
from gen.teachers.keys import read_key

Provider = Literal["openai", "gemini", "anthropic"]
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "anthropic": "https://api.anthropic.com/v1",
}
CONFIG_DIR = TEACHERS_DIR
# The APIs' documented ranges: a request outside them is a 400 for every mistake.
MAX_TEMPERATURE: dict[str, float] = {"openai": 2.0, "gemini": 2.0, "anthropic": 1.0}


def sampling_range_error(provider: str, temperature: float, top_p: float) -> tuple[str, str] | None:
    """(field, what is wrong) when a temperature or top_p is outside the provider's API's range, else None."""
    if not 0 <= temperature <= MAX_TEMPERATURE[provider]:
        return "temperature", (f"temperature must be within 0-{MAX_TEMPERATURE[provider]:g} for provider {provider}, "
                               f"got {temperature:g}")
    if not 0 < top_p <= 1:
        return "top_p", f"top_p must be within (0, 1], got {top_p:g}"
    return None


@dataclass(frozen=True)
class Teacher(Validated):
    name: str  # short and unique in the committee: it keys feedback, rationales and reviews
    provider: Provider  # the wire format and auth it speaks (gen/teachers/providers.py)
    model: str  # the provider's model id, e.g. gpt-4o-mini
    base_url: str | None = None  # None = the provider's public endpoint
    # A variable name, or several (one API key each); None for keyless local servers (vllm serve, llama.cpp).
    # A YAML list becomes a tuple wherever a Teacher is built (fair/config.py's Validated).
    api_key_env: tuple[str, ...] | str | None = None  # the environment variable(s) holding its API key(s)
    rpm: int = 60  # requests per minute
    tpm: int = 100_000  # tokens per minute (input + output)
    max_concurrency: int = 16  # requests in flight at once
    price_input: float = 0.0  # USD per million input tokens
    price_output: float = 0.0  # USD per million output tokens (thinking and reasoning tokens included)
    price_cached_input: float | None = None  # USD / M input tokens read from the provider's prompt cache; None = price_input
    price_cache_write: float | None = None  # USD / M tokens written to the prompt cache (Anthropic); None = price_input
    # Gemini only: thinkingConfig.thinkingBudget, the most tokens the model may think; sent with maxOutputTokens =
    # max_tokens + thinking_budget, so thoughts cannot eat the answer's max_tokens. 0 turns thinking off (2.5 Flash).
    # None sends neither: a 2.5 model then thinks as much as it likes out of max_tokens, and may leave no answer.
    thinking_budget: int | None = None  # Gemini only: the most tokens it may think (see above)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1 keeps every token
    max_tokens: int = 512  # the longest reply, in tokens
    timeout_s: float = 60.0  # per attempt, from connect to the last byte of the reply
    max_retries: int = 8  # per request, for 5xx, timeouts and malformed replies (429s get twice as many)
    retry_backoff_s: float = 1.0  # first retry's wait, doubled each retry (with jitter); Retry-After wins if longer
    extra_headers: dict[str, str] = field(default_factory=dict)  # HTTP headers sent with every request, beside the provider's own
    batch_api: bool = False  # the endpoint serves OpenAI's Batch API: `fair committee --batch-api` may use it

    def validate(self) -> None:
        if not self.name or SAMPLE_MARK in self.name:  # "<teacher>#<k>" keys a later sample's rationale
            raise FairError(f"teacher {self.name!r}: a name must be non-empty and without {SAMPLE_MARK!r}")
        for name in ("rpm", "tpm", "max_concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise FairError(f"teacher {self.name!r}: {name} must be at least 1")
        if self.timeout_s <= 0 or self.max_retries < 0:
            raise FairError(f"teacher {self.name!r}: timeout_s must be > 0 and max_retries >= 0")
        env = self.api_key_env
        names = (env,) if isinstance(env, str) else env if isinstance(env, tuple) and env else None
        if env is not None and (names is None or not all(isinstance(n, str) and n for n in names)
                                or len(set(names)) != len(names)):
            raise FairError(f"teacher {self.name!r}: api_key_env must be a variable name or a list of "
                            f"distinct names, got {env!r}")
        prices = (self.price_input, self.price_output, self.price_cached_input, self.price_cache_write)
        if any(p is not None and p < 0 for p in prices):
            raise FairError(f"teacher {self.name!r}: prices must be >= 0")
        if self.thinking_budget is not None and (self.provider != "gemini" or self.thinking_budget < 0):
            raise FairError(f"teacher {self.name!r}: thinking_budget must be a whole number >= 0, for provider gemini "
                            f"(Gemini's thinkingConfig.thinkingBudget), got {self.thinking_budget!r}")
        if wrong := sampling_range_error(self.provider, self.temperature, self.top_p):
            raise FairError(f"teacher {self.name!r}: {wrong[1]}")
        if self.batch_api and self.provider != "openai":
            raise FairError(f"teacher {self.name!r}: batch_api needs provider openai (OpenAI's Batch API)")

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.provider]).rstrip("/")

    @property
    def key_envs(self) -> tuple[str, ...]:
        env = self.api_key_env
        return (env,) if isinstance(env, str) else tuple(env or ())

    def api_key(self) -> str | None:
        """The key of a one-key teacher, stripped (gen/teachers/keys.py); providers only ever see those (see `per_key`)."""
        return read_key(self.key_envs[0]) if self.key_envs else None

    def api_keys(self) -> list[str | None]:
        """Every key's raw value, for redaction: never refused, so that even an unusable key is redacted."""
        return [os.environ.get(env) for env in self.key_envs]

    def per_key(self) -> list[Teacher]:
        """One one-key teacher per API key (the teacher itself when keyless): the unit providers limit."""
        return [dataclasses.replace(self, api_key_env=env) for env in self.key_envs] or [self]

    def max_output_tokens(self, max_tokens: int | None = None) -> int:
        """The most output one reply can bill: max_tokens (the teacher's, or a request's) plus the thinking budget."""
        return (self.max_tokens if max_tokens is None else max_tokens) + (self.thinking_budget or 0)

    def cost(self, usage: Usage, batch: bool = False) -> float:
        """USD for a reply's billed usage at this teacher's prices (fair/prices.py's `bill`)."""
        return bill(self, usage, batch)


def load_committee(name_or_path: str, base_url_override: str | None = None) -> list[Teacher]:
    """Read a committee file; `base_url_override` points every teacher at one server (the offline one)."""
    path = committee_path(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FairError(f"no teacher committee {name_or_path!r} (known: {', '.join(known)}; or a path to a YAML file)")
    entries = load_yaml(path, {"teachers"}).get("teachers")  # unknown top-level keys are errors there
    if not isinstance(entries, list) or not entries:
        raise FairError(f"{path}: expected a non-empty list under 'teachers'")
    teachers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise FairError(f"{path}: teacher {i} must be a mapping")
        if base_url_override:
            entry = entry | {"base_url": rebase(entry.get("base_url"), base_url_override)}
        teachers.append(make_config(Teacher, dict(entry), source=f"{path} teacher {i}"))
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise FairError(f"{path}: teacher names must be unique, got {names}")
    return teachers


def rebase(url: str | None, server: str) -> str:
    """Point a teacher at another server, keeping its API path: (http://127.0.0.1:8765/v1beta, :9000) -> :9000/v1beta."""
    target = urlsplit(server)
    if target.path.strip("/") or not url:
        return server
    return urlunsplit(urlsplit(url)._replace(scheme=target.scheme, netloc=target.netloc))


def missing_keys(teachers: list[Teacher]) -> list[str]:
    """The variables that are unset or blank; FairError (naming it) for one whose key is unusable."""
    return sorted({env for t in teachers for env in t.key_envs if read_key(env) is None})
