"""The simulated replies that go wrong the way real ones do, and the out-of-quota errors of each API.

`compose` writes the persona's reply (simulator/personas.py), cut at max_tokens, or, when the pipeline drew one
of OUTCOMES for the body, what a real API sends instead, billed as it bills it:

    refusal   OpenAI: message.refusal, content null; Anthropic: stop_reason "refusal" after what it had written;
              Gemini: finishReason SAFETY with no content, or (half of them) the prompt blocked (promptFeedback)
    thinking  the whole budget went on thoughts: no text, finishReason MAX_TOKENS / finish_reason length /
              stop_reason max_tokens, and max_tokens billed as thinking (Gemini thoughtsTokenCount)
    truncate  a reply that runs on to max_tokens and is cut there (max_tokens billed)

A Gemini request with a thinkingConfig.thinkingBudget thinks first (`thoughts`, drawn per body): thoughtsTokenCount,
billed as output, and the answer gets what is left of maxOutputTokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from simulator.api import tokens
from simulator.formats import REFUSAL, Chat, Finish, Format
from simulator.personas import GREEDY, Kind, Persona, QuestionIndex, classify, write_reply

OUTCOMES = ("refusal", "thinking", "truncate")
# What an account out of credit gets: (status, message, OpenAI's type and code).
QUOTA: dict[Format, tuple[int, str, str]] = {
    "openai": (429, "You exceeded your current quota, please check your plan and billing details. For more "
                    "information on this error, read the docs: https://platform.openai.com/docs/guides/"
                    "error-codes/api-errors. (simulated)", "insufficient_quota"),
    "anthropic": (400, "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
                       "to upgrade or purchase credits. (simulated)", "invalid_request_error"),
    "gemini": (429, "You exceeded your current quota, please check your plan and billing details. (simulated)",
               "insufficient_quota"),
}
RAMBLE = "\nLet me double-check this once more before I give the final answer."


@dataclass(frozen=True)
class HttpReply:
    """The simulator's answer to one chat request, live or a batch line: what the route sends or files (an HTTP
    reply: not gen/committee/mistake.py's Reply, which is a teacher's answer as the committee reads it)."""

    status: int
    body: dict | bytes  # bytes: the malformed fault's cut-off JSON
    headers: dict[str, str] = field(default_factory=dict)  # rate limits and retry-after (live routes only)
    fault: str | None = None
    outcome: str | None = None  # refusal, thinking, truncate, quota: what the counters call it
    events: list[bytes] | None = None  # a stream's server-sent events


def thoughts(chat: Chat, rng: random.Random) -> int:
    """Tokens a Gemini request with a thinking budget thinks before it answers: a quarter to a half of the budget
    (of half of max_tokens when the model decides), always leaving room for some answer."""
    budget = chat.max_tokens // 2 if chat.thinking_budget < 0 else chat.thinking_budget
    return min(rng.randint(budget // 4, budget // 2), max(0, chat.max_tokens - 8)) if budget > 0 else 0


# How a sampled rationale (temperature above 0) may open, number its steps and end: a real model words each sample
# its own way. Every ending keeps "answer is", the line the graders read.
OPENINGS = ("Let's think step by step.", "Let's work through it.", "Here is the reasoning.",
            "We solve it one step at a time.")
STEP_FORMS = ("Step {i}: {s}", "{i}. {s}", "- {s}")
ENDINGS = ("The answer is {answer}.", "So the answer is {answer}.", "Therefore, the answer is {answer}.")


def sampled_wording(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(OPENINGS), rng.choice(STEP_FORMS), rng.choice(ENDINGS)


def compose(index: QuestionIndex, fmt: Format, chat: Chat, persona: Persona, outcome: str | None,
            rng: random.Random, thought: int = 0) -> tuple[str, Finish, int, Kind]:
    """(text, finish, thinking tokens, kind of request): the persona's reply to the prompt after `thought`
    thinking tokens, cut where they and it reach max_tokens, or the drawn outcome's."""
    entry = index.find(chat.text)
    kind = classify(chat.text, entry)
    reply = write_reply(kind, entry, persona, chat.text, rng, sampled_wording(rng) if chat.temperature > 0 else GREEDY)
    if outcome == "thinking":
        return "", "thinking", chat.max_tokens, kind
    if outcome == "refusal":
        if fmt == "openai":
            return REFUSAL, "refusal", 0, kind
        if fmt == "anthropic":  # a streaming classifier stops the reply part of the way through
            return reply[: rng.randint(0, len(reply) // 2)], "refusal", 0, kind
        return "", rng.choice(("refusal", "blocked")), 0, kind
    room = chat.max_tokens - thought
    if outcome == "truncate":
        reply += RAMBLE * (room * 4 // len(RAMBLE) + 1)
    if tokens(reply) > room:
        return reply[: max(4, (room - 1) * 4)], "length", thought, kind  # tokens(reply) <= room
    return reply, "stop", thought, kind
