"""Provider wire formats: one small class per API that turns a ChatRequest into an HTTP call and back.

A provider makes only the raw call (gen/teachers/transport.py: the shared types, the HTTP call and the failure
kinds, all re-exported here); the shared wrapper (gen/teachers/client.py) owns the cache, rate limits, retries
and accounting.

    OpenAIProvider     POST {url}/chat/completions              any OpenAI-compatible server (DeepInfra,
                                                                Mistral, Together, vllm serve, llama.cpp)
    GeminiProvider     POST {url}/models/{model}:generateContent key in x-goog-api-key, never in the URL
    AnthropicProvider  POST {url}/messages                      x-api-key, anthropic-version: 2023-06-01

Every reply is read as its provider documents it:
  * billed usage. OpenAI: prompt_tokens (prompt_tokens_details.cached_tokens of them from its prompt cache),
    completion_tokens (reasoning tokens included). Gemini: promptTokenCount (cachedContentTokenCount of them
    cached) + toolUsePromptTokenCount as input; candidatesTokenCount + thoughtsTokenCount as output. Anthropic:
    input_tokens + cache_read_input_tokens + cache_creation_input_tokens as input (the reads cached, the
    creations written to the cache), output_tokens.
  * refusals, a reply with no text and ChatResponse.refusal = the provider's reason: OpenAI message.refusal
    ("refusal") or finish_reason "content_filter"; Gemini a candidate's finishReason in GEMINI_REFUSALS, or
    promptFeedback.blockReason when no candidate has content; Anthropic stop_reason "refusal".
  * truncation, ChatResponse.truncated: OpenAI finish_reason "length" (with or without content: a reasoning
    model may spend max_tokens on reasoning, and servers with a reasoning parser then send content null), Gemini MAX_TOKENS (with or without text:
    a thinking model may spend the whole budget on thoughts), Anthropic stop_reason "max_tokens" or
    "model_context_window_exceeded".
  * out of quota (QuotaExhausted, which stops the run): OpenAI a 429 whose error.code or error.type is
    "insufficient_quota" or "billing_not_active"; Anthropic error.type "billing_error" or "credit balance is too low" (its 400); Gemini
    "prepayment credits are depleted", or a 429 whose google.rpc.QuotaFailure names a per-day quota
    (quotaId ...PerDay...) or whose message says "limit: 0" (a free tier without this model). Per-minute quotas are
    rate limits, retried after their retryDelay; a per-day one lasts until midnight Pacific time, so the run stops
    and a rerun the next day resumes.

Requests put the stable prefix first (system prompt, then the turns in order), which is what the providers'
prompt caches match on: OpenAI and Gemini cache such prefixes by themselves. Anthropic caches only what is marked:
the system block gets cache_control when it is surely long enough to be cached (anthropic_cache_min_tokens: a
write below the model's minimum is silently not made), counting a token per ANTHROPIC_CHARS_PER_TOKEN characters,
more than the ~3.5 of English text, so that the estimate errs low. Gemini teachers with a thinking_budget send
thinkingConfig.thinkingBudget and maxOutputTokens = max_tokens + thinking_budget (Teacher.max_output_tokens).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gen.teachers.keys import redact
from gen.teachers.ratelimits import RateLimitInfo
from gen.teachers.transport import (
    ChatProvider,
    ChatRequest,
    ChatResponse,
    FatalError,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    TransientError,
    Usage,
    _Provider,
    http_client,
    lookup,
)

if TYPE_CHECKING:
    import httpx

    from gen.teachers.config import Teacher

__all__ = [
    "PROVIDERS", "AnthropicProvider", "ChatProvider", "ChatRequest", "ChatResponse", "FatalError", "GeminiProvider",
    "OpenAIProvider", "ProviderError", "QuotaExhausted", "RateLimited", "TransientError", "Usage", "http_client",
    "lookup", "make_provider", "redact",
]

GEMINI_REFUSALS = frozenset({
    "SAFETY", "RECITATION", "LANGUAGE", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER",
})
# A 429 with either as error.code or error.type is the account's, not a rate limit: out of credit, or no active
# billing ("Your account is not active, please check your billing details").
OPENAI_QUOTA_ERRORS = frozenset({"insufficient_quota", "billing_not_active"})
ANTHROPIC_TRUNCATED = frozenset({"max_tokens", "model_context_window_exceeded"})
ANTHROPIC_CHARS_PER_TOKEN = 5
# The shortest prefix each Claude model caches (Anthropic's prompt-caching docs); models not listed: 1024.
ANTHROPIC_CACHE_MIN = (("claude-haiku-4-5", 4096), ("claude-opus-4-5", 4096), ("claude-opus-4-6", 4096),
                       ("claude-sonnet-4-6", 2048), ("claude-3-5-haiku", 2048), ("claude-3-haiku", 2048))


def _split_system(request: ChatRequest) -> tuple[str | None, list[tuple[str, str]]]:
    system = [c for r, c in request.messages if r == "system"]
    return ("\n\n".join(system) if system else None), [(r, c) for r, c in request.messages if r != "system"]


def anthropic_cache_min_tokens(model: str) -> int:
    return next((n for prefix, n in ANTHROPIC_CACHE_MIN if model.startswith(prefix)), 1024)


# ---------------------------------------------------------------------------------------------------------
# The three APIs


class OpenAIProvider(_Provider):
    async def complete(self, request: ChatRequest) -> ChatResponse:
        data, limits = await self._post(f"{self.teacher.url}/chat/completions", self.auth(), self.body(request))
        return self.parse(data, limits)

    def auth(self) -> dict[str, str]:
        key = self.teacher.api_key()
        return {"authorization": f"Bearer {key}"} if key else {}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions body: sent as is, or as one line of a Batch API input file (gen/teachers/batch.py)."""
        return {
            "model": self.teacher.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        } | ({"seed": request.sample} if request.sample else {})  # a later sample: seeded (see ChatRequest.sample)

    def out_of_quota(self, status: int, data: Any, text: str) -> bool:
        error = lookup(data, "error")
        return status == 429 and bool(OPENAI_QUOTA_ERRORS & {lookup(error, "code"), lookup(error, "type")})

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        """A chat-completions reply (live, or a Batch API result line's body) -> ChatResponse or TransientError."""
        usage = self._usage(data, "usage")
        billed = Usage(self._count(usage, "prompt_tokens"), self._count(usage, "completion_tokens"),
                       self._count(self._usage(usage, "prompt_tokens_details"), "cached_tokens"))
        choice = lookup(data, "choices", 0)
        finish, refusal = lookup(choice, "finish_reason"), lookup(choice, "message", "refusal")
        if isinstance(refusal, str) and refusal.strip():
            return self.reply("", billed, limits, refusal="refusal")
        if finish == "content_filter":
            return self.reply("", billed, limits, refusal="content_filter")
        text = lookup(choice, "message", "content")
        if text is None and finish == "length":  # every token spent on reasoning (content null on some servers)
            return self.reply("", billed, limits, truncated=True)
        if text is None:
            raise self.malformed("no choices[0].message.content", billed)
        return self.reply(text, billed, limits, truncated=finish == "length")


class GeminiProvider(_Provider):
    async def complete(self, request: ChatRequest) -> ChatResponse:
        t, key = self.teacher, self.teacher.api_key()
        system, turns = _split_system(request)
        body: dict[str, Any] = {}
        if system is not None:  # first: the stable prefix, as implicit caching matches it
            body["systemInstruction"] = {"parts": [{"text": system}]}
        body["contents"] = [{"role": "model" if r == "assistant" else "user", "parts": [{"text": c}]}
                            for r, c in turns]
        body["generationConfig"] = {
            "temperature": request.temperature,
            "topP": request.top_p,
            "maxOutputTokens": t.max_output_tokens(request.max_tokens),  # thoughts come out of the same budget
        } | ({"seed": request.sample} if request.sample else {})  # a later sample: seeded (see ChatRequest.sample)
        if t.thinking_budget is not None:
            body["generationConfig"]["thinkingConfig"] = {"thinkingBudget": t.thinking_budget}
        headers = {"x-goog-api-key": key} if key else {}  # a header, so the key never lands in a logged URL
        model = t.model.removeprefix("models/")
        data, limits = await self._post(f"{t.url}/models/{model}:generateContent", headers, body)
        return self.parse(data, limits)

    def out_of_quota(self, status: int, data: Any, text: str) -> bool:
        if "prepayment credits are depleted" in text.lower():
            return True
        if status != 429:
            return False
        details = lookup(data, "error", "details")
        quota_ids = [str(lookup(v, "quotaId")) for d in (details if isinstance(details, list) else [])
                     if str(lookup(d, "@type")).endswith("QuotaFailure")
                     for v in (lookup(d, "violations") or []) if isinstance(v, dict)]
        return any("PerDay" in q for q in quota_ids) or re.search(r"\blimit: 0\b", text) is not None

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        usage = self._usage(data, "usageMetadata")
        billed = Usage(self._count(usage, "promptTokenCount", "toolUsePromptTokenCount"),
                       self._count(usage, "candidatesTokenCount", "thoughtsTokenCount"),  # thoughts billed as output
                       self._count(usage, "cachedContentTokenCount"))  # a part of promptTokenCount
        candidate = lookup(data, "candidates", 0)
        finish, parts = lookup(candidate, "finishReason"), lookup(candidate, "content", "parts")
        if isinstance(finish, str) and finish in GEMINI_REFUSALS:
            return self.reply("", billed, limits, refusal=finish)
        if parts is None and isinstance(block := lookup(data, "promptFeedback", "blockReason"), str) and block:
            return self.reply("", billed, limits, refusal=block)  # the prompt was blocked: no candidate at all
        if parts is None and finish == "MAX_TOKENS":
            return self.reply("", billed, limits, truncated=True)  # thinking spent the whole output budget
        if not isinstance(parts, list):
            raise self.malformed("no candidates[0].content.parts", billed)
        if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in parts):
            raise self.malformed("a part in candidates[0].content.parts is not an object with a text", billed)
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))  # skip thinking summaries
        return self.reply(text, billed, limits, truncated=finish == "MAX_TOKENS")


class AnthropicProvider(_Provider):
    VERSION = "2023-06-01"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        t, key = self.teacher, self.teacher.api_key()
        system, turns = _split_system(request)
        body: dict[str, Any] = {"model": t.model, "max_tokens": request.max_tokens}
        if system is not None:  # first: the stable prefix the prompt cache matches on
            body["system"] = self.system(system)
        body["messages"] = [{"role": r, "content": c} for r, c in turns]
        body["temperature"] = request.temperature
        if request.top_p != 1.0:  # recent Claude models reject temperature and top_p together; 1.0 is the default
            body["top_p"] = request.top_p
        headers = {"anthropic-version": self.VERSION, **({"x-api-key": key} if key else {})}
        data, limits = await self._post(f"{t.url}/messages", headers, body)
        return self.parse(data, limits)

    def system(self, text: str) -> str | list[dict[str, Any]]:
        """The system prompt, marked for the prompt cache when it is surely long enough (module docstring)."""
        if len(text) < ANTHROPIC_CHARS_PER_TOKEN * anthropic_cache_min_tokens(self.teacher.model):
            return text
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]

    def out_of_quota(self, status: int, data: Any, text: str) -> bool:
        return lookup(data, "error", "type") == "billing_error" or "credit balance is too low" in text.lower()

    def parse(self, data: Any, limits: RateLimitInfo | None = None) -> ChatResponse:
        usage = self._usage(data, "usage")
        read, written = self._count(usage, "cache_read_input_tokens"), self._count(usage, "cache_creation_input_tokens")
        billed = Usage(self._count(usage, "input_tokens") + read + written, self._count(usage, "output_tokens"),
                       read, written)
        stop = lookup(data, "stop_reason")
        if stop == "refusal":
            return self.reply("", billed, limits, refusal="refusal")
        content = lookup(data, "content")
        if not isinstance(content, list):
            raise self.malformed("no content list", billed)
        blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if not all(isinstance(b.get("text"), str) for b in blocks):
            raise self.malformed("a text block's text is not a string", billed)
        return self.reply("".join(b["text"] for b in blocks), billed, limits,
                          truncated=isinstance(stop, str) and stop in ANTHROPIC_TRUNCATED)


PROVIDERS: dict[str, type[_Provider]] = {
    "openai": OpenAIProvider, "gemini": GeminiProvider, "anthropic": AnthropicProvider,
}


def make_provider(teacher: Teacher, http: httpx.AsyncClient) -> ChatProvider:
    return PROVIDERS[teacher.provider](teacher, http)
