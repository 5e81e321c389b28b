"""Usage adapters: the token counts of one LLM response, read from the SDK's own response object, so
an orchestrator never counts tokens itself.

Supported shapes (objects of the SDKs, or the same as plain dicts, e.g. decoded JSON):

=====================================  =====================================================================
response                               fields read
=====================================  =====================================================================
OpenAI Chat Completions                ``usage.prompt_tokens``, ``usage.completion_tokens``,
(``openai.types.chat.ChatCompletion``) ``usage.prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``,
                                       ``usage.completion_tokens_details.reasoning_tokens``
OpenAI Responses API                   ``usage.input_tokens``, ``usage.output_tokens``,
(``openai.types.responses.Response``)  ``usage.input_tokens_details.cached_tokens`` / ``cache_write_tokens``,
                                       ``usage.output_tokens_details.reasoning_tokens``
Anthropic Messages                     ``usage.input_tokens``, ``usage.output_tokens``,
(``anthropic.types.Message``)          ``usage.cache_read_input_tokens``, ``usage.cache_creation_input_tokens``
anything with OpenAI-style ``usage``   as Chat Completions
=====================================  =====================================================================

Mapping to a turn (:class:`TokenUsage`, then ``models.schemas.TurnIn``):

- ``prompt_tokens`` is every input token, cache reads and cache writes included.  OpenAI already
  reports it so (``cached_tokens`` is part of ``prompt_tokens``); Anthropic's ``input_tokens`` exclude
  both, so ``prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
- ``cached_prompt_tokens`` are the cache reads (billed at genai-prices' ``cache_read_mtok``).
- ``cache_write_tokens`` are Anthropic's ``cache_creation_input_tokens`` and OpenAI's
  ``*_tokens_details.cache_write_tokens`` (part of OpenAI's prompt count) (genai-prices'
  ``cache_write_mtok``, 1.25 × the input price for Anthropic's 5-minute cache), passed to
  ``TurnIn.cache_write_tokens`` so the gate charges them at that price.
- ``completion_tokens`` include reasoning tokens (both SDKs report them so); ``reasoning_tokens`` is
  kept for information only.

Model names are kept as the SDK reports them (``gpt-4o-2024-08-06``); the gate resolves them with
genai-prices, dated snapshots included.  :func:`resolve_model` does the same lookup up front.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP
from typing import Any, Mapping

from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot

from models.schemas import TurnIn
from worker.pricing import NANOS_PER_USD, PricingError

#: TurnIn can carry cache-write tokens (a field the gate prices at the cache-write price)
TURN_HAS_CACHE_WRITES = "cache_write_tokens" in TurnIn.model_fields


class AdapterError(ValueError):
    """A response carries no usable usage: missing ``usage``, or a count that is not an integer ≥ 0
    (the message names the field, e.g. ``usage.prompt_tokens``)."""


class UnknownModel(PricingError):
    """A model name (as the SDK reported it) that genai-prices does not know at that provider and no
    price override covers.  ``model`` and ``provider`` are the names given."""

    def __init__(self, model: str, provider: str | None, detail: str = "") -> None:
        super().__init__(
            f"model: {model!r} (provider {provider!r}) has no price: not in genai-prices and no override"
            + (f" ({detail})" if detail else "")
        )
        self.model = model
        self.provider = provider


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model name resolved by genai-prices: the provider id and the canonical model id it prices
    (``gpt-4o-2024-08-06`` → ``("openai", "gpt-4o")``)."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one LLM response (all integers ≥ 0, tokens).

    Attributes:
        model: the model as the response names it.
        prompt_tokens: every input token, cache reads and writes included.
        completion_tokens: every output token, reasoning included.
        cached_prompt_tokens: input tokens read from the prompt cache (part of ``prompt_tokens``).
        cache_write_tokens: input tokens written to the prompt cache (part of ``prompt_tokens``).
        reasoning_tokens: output tokens spent reasoning (part of ``completion_tokens``; information).
        provider: genai-prices provider id the SDK implies (``openai``, ``anthropic``) or None.
        response_id: the provider's response id (``chatcmpl-…``, ``resp_…``, ``msg_…``) or None;
            used as the turn's idempotency key.
    """

    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    provider: str | None = None
    response_id: str | None = None

    @property
    def unbilled_cache_write_tokens(self) -> int:
        """Cache-write tokens :func:`turn_fields` cannot price at the cache-write price (billed at
        the input price) because ``TurnIn`` lacks the field: all of them today, 0 once it exists."""
        return 0 if TURN_HAS_CACHE_WRITES else self.cache_write_tokens

    def genai_usage(self) -> Usage:
        """The same counts as genai-prices' ``Usage`` (its ``input_tokens`` include cache reads/writes)."""
        return Usage(
            input_tokens=self.prompt_tokens,
            cache_read_tokens=self.cached_prompt_tokens,
            cache_write_tokens=self.cache_write_tokens,
            output_tokens=self.completion_tokens,
        )


def turn_fields(usage: TokenUsage) -> dict[str, Any]:
    """The ``TurnIn`` fields of a usage: ``model``, ``provider``, ``prompt_tokens``,
    ``completion_tokens``, ``cached_prompt_tokens`` (and ``cache_write_tokens`` when TurnIn has it)."""
    fields: dict[str, Any] = {
        "model": usage.model,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
    }
    if usage.provider:
        fields["provider"] = usage.provider
    if TURN_HAS_CACHE_WRITES and usage.cache_write_tokens:
        fields["cache_write_tokens"] = usage.cache_write_tokens
    return fields


def resolve_model(model: str, provider: str | None = None) -> ResolvedModel:
    """Resolve a model name as an SDK reports it with genai-prices (snapshots such as
    ``gpt-4o-2024-08-06`` or ``claude-sonnet-4-20250514`` included).

    Raises: :class:`UnknownModel` naming the model and provider.
    """
    if not isinstance(model, str) or not model:
        raise AdapterError(f"model: must be a non-empty string, got {model!r}")
    try:
        prov, info = get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError as exc:
        raise UnknownModel(model, provider, str(exc)) from exc
    return ResolvedModel(prov.id, info.id)


def cost_nanos(usage: TokenUsage, when: datetime | None = None) -> int:
    """What genai-prices says ``usage`` costs at ``when`` (default now, UTC), in integer nano-USD,
    rounded half-up once, as ``worker.pricing`` does; cache writes at the cache-write price.

    This is the reference figure (e.g. to see what a cache write costs before ``TurnIn`` can carry
    it); the gate's own price is what a wallet is charged.  Raises :class:`UnknownModel`.
    """
    when = when or datetime.now(UTC)
    resolved = resolve_model(usage.model, usage.provider)
    _prov, info = get_snapshot().find_provider_model(usage.model, None, resolved.provider, None)
    total = info.get_prices(when).calc_price(usage.genai_usage())["total_price"] * NANOS_PER_USD
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


# readers ----------------------------------------------------------------------------------------
def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str, where: str, *, required: bool = True) -> int:
    value = _get(obj, name)
    if value is None:
        if required:
            raise AdapterError(f"{where}.{name}: missing from the response's usage")
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AdapterError(f"{where}.{name}: must be an integer >= 0, got {value!r}")
    return value


def _model(response: Any) -> str:
    model = _get(response, "model")
    if not isinstance(model, str) or not model:
        raise AdapterError(f"model: the response names no model (got {model!r})")
    return model


def _usage(response: Any) -> Any:
    usage = _get(response, "usage")
    if usage is None:
        raise AdapterError("usage: the response carries no usage (streamed without include_usage?)")
    return usage


def _id(response: Any) -> str | None:
    value = _get(response, "id")
    return value if isinstance(value, str) and value else None


def from_openai_chat(response: Any, *, provider: str | None = "openai") -> TokenUsage:
    """Usage of an OpenAI Chat Completion (``openai.types.chat.ChatCompletion`` or its dict), or any
    response with OpenAI-style ``usage.prompt_tokens`` / ``completion_tokens``.  Raises AdapterError."""
    usage = _usage(response)
    prompt = _count(usage, "prompt_tokens", "usage")
    completion = _count(usage, "completion_tokens", "usage")
    details = _get(usage, "prompt_tokens_details")
    cached = _count(details, "cached_tokens", "usage.prompt_tokens_details", required=False)
    writes = _count(details, "cache_write_tokens", "usage.prompt_tokens_details", required=False)
    reasoning = _count(_get(usage, "completion_tokens_details"), "reasoning_tokens",
                       "usage.completion_tokens_details", required=False)
    if cached + writes > prompt:
        raise AdapterError(f"usage.prompt_tokens_details.cached_tokens: {cached} (+ {writes} cache writes) "
                           f"exceeds prompt_tokens {prompt}")
    return TokenUsage(_model(response), prompt, completion, cached, writes, reasoning, provider, _id(response))


def from_openai_responses(response: Any, *, provider: str | None = "openai") -> TokenUsage:
    """Usage of an OpenAI Responses API response (``openai.types.responses.Response`` or its dict).
    Raises AdapterError."""
    usage = _usage(response)
    prompt = _count(usage, "input_tokens", "usage")
    completion = _count(usage, "output_tokens", "usage")
    details = _get(usage, "input_tokens_details")
    cached = _count(details, "cached_tokens", "usage.input_tokens_details", required=False)
    writes = _count(details, "cache_write_tokens", "usage.input_tokens_details", required=False)
    reasoning = _count(_get(usage, "output_tokens_details"), "reasoning_tokens", "usage.output_tokens_details",
                       required=False)
    if cached + writes > prompt:
        raise AdapterError(f"usage.input_tokens_details.cached_tokens: {cached} (+ {writes} cache writes) "
                           f"exceeds input_tokens {prompt}")
    return TokenUsage(_model(response), prompt, completion, cached, writes, reasoning, provider, _id(response))


def from_anthropic(response: Any, *, provider: str | None = "anthropic") -> TokenUsage:
    """Usage of an Anthropic message (``anthropic.types.Message`` or its dict).  Anthropic's
    ``input_tokens`` exclude cache reads and writes, so they are added back (see the module
    docstring).  Raises AdapterError."""
    usage = _usage(response)
    uncached = _count(usage, "input_tokens", "usage")
    completion = _count(usage, "output_tokens", "usage")
    reads = _count(usage, "cache_read_input_tokens", "usage", required=False)
    writes = _count(usage, "cache_creation_input_tokens", "usage", required=False)
    return TokenUsage(_model(response), uncached + reads + writes, completion, reads, writes, 0, provider,
                      _id(response))


def _looks_anthropic(response: Any, usage: Any) -> bool:
    if _get(response, "type") == "message" and _get(usage, "prompt_tokens") is None:
        return True
    return _get(usage, "cache_read_input_tokens") is not None or _get(usage, "cache_creation_input_tokens") is not None


def usage_from_response(response: Any, *, provider: str | None = None) -> TokenUsage:
    """Token counts of any supported response (see the module docstring), chosen by shape:
    ``usage.prompt_tokens`` → Chat Completions; Anthropic's message shape or cache fields →
    Anthropic; ``usage.input_tokens`` → Responses API.

    ``provider`` (a genai-prices provider id) overrides the one the SDK implies, e.g. for an
    OpenAI-compatible server of another vendor.  Returns :class:`TokenUsage`.
    Raises: AdapterError naming the field (no usage, no model, a bad count).
    """
    usage = _usage(response)
    if _get(usage, "prompt_tokens") is not None:
        result = from_openai_chat(response)
    elif _looks_anthropic(response, usage):
        result = from_anthropic(response)
    elif _get(usage, "input_tokens") is not None:
        result = from_openai_responses(response)
    else:
        raise AdapterError("usage: neither prompt_tokens (OpenAI Chat) nor input_tokens (Responses, Anthropic)")
    if provider is None:  # the SDK's own types imply their provider; a plain dict implies none
        module = type(response).__module__
        provider = "openai" if module.startswith("openai.") else "anthropic" if module.startswith("anthropic.") else None
    return replace(result, provider=provider)
