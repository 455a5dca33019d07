"""The simulated replies that go wrong the way real ones do, and the out-of-quota errors of each API.

`compose` writes the persona's reply (gen/offline/personas.py), cut at max_tokens, or, when the pipeline drew one
of OUTCOMES for the body, what a real API sends instead, billed as it bills it:

    refusal   OpenAI: message.refusal, content null; Anthropic: stop_reason "refusal" after what it had written;
              Gemini: finishReason SAFETY with no content, or (half of them) the prompt blocked (promptFeedback)
    thinking  the whole budget went on thoughts: no text, finishReason MAX_TOKENS / finish_reason length /
              stop_reason max_tokens, and max_tokens billed as thinking (Gemini thoughtsTokenCount)
    truncate  a reply that runs on to max_tokens and is cut there (max_tokens billed)
"""

from __future__ import annotations

import random

from gen.offline.api import tokens
from gen.offline.formats import REFUSAL, Chat, Finish, Format
from gen.offline.personas import Kind, Persona, QuestionIndex, classify, write_reply

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


def compose(index: QuestionIndex, fmt: Format, chat: Chat, persona: Persona, outcome: str | None,
            rng: random.Random) -> tuple[str, Finish, int, Kind]:
    """(text, finish, thinking tokens, kind of request): the persona's reply to the prompt, cut at max_tokens,
    or the drawn outcome's."""
    entry = index.find(chat.text)
    kind = classify(chat.text, entry)
    reply = write_reply(kind, entry, persona, chat.text, rng)
    if outcome == "thinking":
        return "", "thinking", chat.max_tokens, kind
    if outcome == "refusal":
        if fmt == "openai":
            return REFUSAL, "refusal", 0, kind
        if fmt == "anthropic":  # a streaming classifier stops the reply part of the way through
            return reply[: rng.randint(0, len(reply) // 2)], "refusal", 0, kind
        return "", rng.choice(("refusal", "blocked")), 0, kind
    if outcome == "truncate":
        reply += RAMBLE * (chat.max_tokens * 4 // len(RAMBLE) + 1)
    if tokens(reply) > chat.max_tokens:
        return reply[: max(4, (chat.max_tokens - 1) * 4)], "length", 0, kind  # tokens(reply) <= max_tokens
    return reply, "stop", 0, kind
