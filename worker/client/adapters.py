"""Usage adapters: the token counts of one LLM response, read from the SDK's own response object, so
an orchestrator never counts tokens itself.

Supported shapes (objects of the SDKs, or the same as plain dicts, e.g. decoded JSON):

=====================================  =====================================================================
response                               fields read
=====================================  =====================================================================
OpenAI Chat Completions                ``usage.prompt_tokens``, ``usage.completion_tokens``,
(``openai.types.chat.ChatCompletion``) ``usage.prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``,
                                       ``usage.completion_tokens_details.reasoning_tokens``, ``service_tier``
OpenAI Responses API                   ``usage.input_tokens``, ``usage.output_tokens``,
(``openai.types.responses.Response``)  ``usage.input_tokens_details.cached_tokens`` / ``cache_write_tokens``,
                                       ``usage.output_tokens_details.reasoning_tokens``, ``service_tier``
Anthropic Messages                     ``usage.input_tokens``, ``usage.output_tokens``,
(``anthropic.types.Message``)          ``usage.cache_read_input_tokens``, ``usage.cache_creation_input_tokens``,
                                       ``usage.cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_…``,
                                       ``usage.service_tier``
anything with OpenAI-style ``usage``   as Chat Completions
=====================================  =====================================================================

Mapping to a turn (:class:`TokenUsage`, then ``models.turn.TurnIn``):

- ``prompt_tokens`` is every input token, cache reads and cache writes included.  OpenAI already
  reports it so (``cached_tokens`` is part of ``prompt_tokens``); Anthropic's ``input_tokens`` exclude
  both, so ``prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
- ``cached_prompt_tokens`` are the cache reads (billed at genai-prices' ``cache_read_mtok``).
- ``cache_write_tokens`` are Anthropic's ``cache_creation_input_tokens`` and OpenAI's
  ``*_tokens_details.cache_write_tokens`` (part of OpenAI's prompt count) (genai-prices'
  ``cache_write_mtok``, 1.25 × the input price for Anthropic's 5-minute cache), passed to
  ``TurnIn.cache_write_tokens`` so the gate charges them at that price.
- ``cache_write_1h_tokens`` are Anthropic's ``cache_creation.ephemeral_1h_input_tokens``, the part of
  the cache writes made to the 1-hour cache (genai-prices' ``cache_write_1h_mtok``, 2 × the input
  price against 1.25 × for the 5-minute cache), passed to ``TurnIn.cache_write_1h_tokens``.  The
  breakdown must add up to ``cache_creation_input_tokens`` when both are given.
- ``service_tier`` is the tier the response says it was served at (OpenAI: ``default``, ``flex``,
  ``priority``, …; Anthropic's ``usage.service_tier``, where ``standard`` means the standard price
  and is passed as None), passed to ``TurnIn.service_tier``: the gate bills genai-prices' price for
  that tier and refuses (``PricingError``, HTTP 422) a tier genai-prices has no price for on that
  model (e.g. OpenAI ``scale``, Anthropic ``priority`` or ``batch``).
- ``completion_tokens`` include reasoning tokens (both SDKs report them so); ``reasoning_tokens`` is
  kept for information only.
- Every count must be an integer in 0..:data:`MAX_TOKENS`; anything else (a float, a string, a
  bool, a negative or huge number, parts exceeding their whole, a malformed model, id or tier, an
  attribute that raises) is an :class:`AdapterError` naming the field, never another exception.

Model names are kept as the SDK reports them (``gpt-4o-2024-08-06``); the gate resolves them with
genai-prices, dated snapshots included.  :func:`resolve_model` does the same lookup up front.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP
from typing import Any, Mapping

from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot
from pydantic import ValidationError

from models.turn import TurnIn
from worker import NANOS_PER_USD, InputError, PricingError

#: TurnIn can carry cache-write tokens (a field the gate prices at the cache-write price)
TURN_HAS_CACHE_WRITES = "cache_write_tokens" in TurnIn.model_fields
#: the largest count one turn may carry (``TurnIn``'s token bound)
MAX_TOKENS = next(m.le for m in TurnIn.model_fields["prompt_tokens"].metadata if getattr(m, "le", None) is not None)
#: the TurnIn fields an adapter fills from a response (a refusal of one of them is an AdapterError)
USAGE_FIELDS = frozenset(
    {
        "model",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "cached_prompt_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "service_tier",
    }
)
#: what a service tier, a response id may look like (TurnIn's patterns)
_TIER = re.compile(r"^[a-z0-9_.-]{1,32}\Z")
_RESPONSE_ID = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}\Z")


class AdapterError(InputError, ValueError):
    """A response carries no usable usage: missing ``usage``, or a count that is not an integer ≥ 0
    (the message names the field, e.g. ``usage.prompt_tokens``)."""


class UnknownModel(PricingError):
    """A model name (as the SDK reported it) that genai-prices does not know at that provider and no
    price override covers.  ``model`` and ``provider`` are the names given."""

    def __init__(self, model: str, provider: str | None, detail: str = "") -> None:
        super().__init__(
            f"model: {model!r} (provider {provider!r}) has no price: not in genai-prices and no override"
            + (f" ({detail})" if detail else ""),
            field="model",
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
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written to the 1-hour cache.
        service_tier: the tier the response was served at (``flex``, ``priority``, …) or None.
    """

    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    provider: str | None = None
    response_id: str | None = None
    cache_write_1h_tokens: int = 0
    service_tier: str | None = None

    @property
    def unbilled_cache_write_tokens(self) -> int:
        """Cache-write tokens :func:`turn_fields` cannot price at the cache-write price (billed at
        the input price) because ``TurnIn`` lacks the field: all of them today, 0 once it exists."""
        return 0 if TURN_HAS_CACHE_WRITES else self.cache_write_tokens

    def genai_usage(self) -> Usage:
        """The same counts as genai-prices' ``Usage`` (its ``input_tokens`` include cache reads/writes)."""
        usage = Usage(
            input_tokens=self.prompt_tokens,
            cache_read_tokens=self.cached_prompt_tokens,
            cache_write_tokens=self.cache_write_tokens,
            output_tokens=self.completion_tokens,
        )
        if self.cache_write_1h_tokens:
            usage.cache_write_1h_tokens = self.cache_write_1h_tokens
        return usage


def turn_fields(usage: TokenUsage) -> dict[str, Any]:
    """The ``TurnIn`` fields of a usage: ``model``, ``provider``, ``prompt_tokens``,
    ``completion_tokens``, ``cached_prompt_tokens``, and when not 0/None ``cache_write_tokens``,
    ``cache_write_1h_tokens``, ``service_tier``."""
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
    if usage.cache_write_1h_tokens:
        fields["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.service_tier is not None:
        fields["service_tier"] = usage.service_tier
    return fields


def adapter_error(exc: ValidationError, fields: frozenset[str] = USAGE_FIELDS) -> AdapterError | None:
    """The :class:`AdapterError` for ``TurnIn``'s refusal of values an adapter read from a response
    (an error on one of ``fields``, or on the turn as a whole, e.g. cache reads exceeding the
    prompt), naming the field; None if every error is on another field (the caller's own)."""
    bad = [e for e in exc.errors() if not e.get("loc") or e["loc"][0] in fields]
    if not bad:
        return None
    return AdapterError(
        "; ".join(
            f"{'usage.' + str(e['loc'][0]) if e.get('loc') else 'usage'}: {e.get('msg', 'invalid')}" for e in bad
        ),
        field="usage." + str(bad[0]["loc"][0]) if bad[0].get("loc") else "usage",
    )


def resolve_model(model: str, provider: str | None = None) -> ResolvedModel:
    """Resolve a model name as an SDK reports it with genai-prices (snapshots such as
    ``gpt-4o-2024-08-06`` or ``claude-sonnet-4-20250514`` included).

    Raises: :class:`UnknownModel` naming the model and provider.
    """
    if not isinstance(model, str) or not model:
        raise AdapterError(f"model: must be a non-empty string, got {model!r}", field="model")
    try:
        prov, info = get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError as exc:
        raise UnknownModel(model, provider, str(exc)) from exc
    return ResolvedModel(prov.id, info.id)


def cost_nanos(usage: TokenUsage, when: datetime | None = None) -> int:
    """What genai-prices says ``usage`` costs at ``when`` (default now, UTC), in integer nano-USD,
    rounded half-up once, as ``worker.pricing.prices`` does; cache writes at the cache-write price.

    This is the reference figure (e.g. to see what a cache write costs before ``TurnIn`` can carry
    it); the gate's own price is what a wallet is charged.  Raises :class:`UnknownModel`.
    """
    when = when or datetime.now(UTC)
    resolved = resolve_model(usage.model, usage.provider)
    _prov, info = get_snapshot().find_provider_model(usage.model, None, resolved.provider, None)
    context = {"service_tier": usage.service_tier} if usage.service_tier else None
    total = info.get_prices(when, context).calc_price(usage.genai_usage())["total_price"] * NANOS_PER_USD
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


# readers ----------------------------------------------------------------------------------------
def _get(obj: Any, name: str, where: str = "response") -> Any:
    if obj is None:
        return None
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception as exc:  # a property or a mapping that raises: the response is unusable
        raise AdapterError(
            f"{where}.{name}: cannot be read ({type(exc).__name__}: {exc})", field=f"{where}.{name}"
        ) from exc


def _count(obj: Any, name: str, where: str, *, required: bool = True) -> int:
    value = _get(obj, name, where)
    if value is None:
        if required:
            raise AdapterError(f"{where}.{name}: missing from the response's usage", field=f"{where}.{name}")
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AdapterError(f"{where}.{name}: must be an integer >= 0, got {_short(value)}", field=f"{where}.{name}")
    if value > MAX_TOKENS:
        raise AdapterError(
            f"{where}.{name}: must be at most {MAX_TOKENS} tokens, got {_short(value)}", field=f"{where}.{name}"
        )
    return int(value)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _tier(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TIER.match(value):
        raise AdapterError(
            f"{where}: must be a service tier name (a-z, 0-9, _ . -; up to 32), got {_short(value)}", field=where
        )
    return value


def _checked(usage: TokenUsage) -> TokenUsage:
    """The sums an adapter makes stay within a turn's bound (each part was checked alone)."""
    if usage.prompt_tokens > MAX_TOKENS:
        raise AdapterError(
            f"usage.input_tokens: with cache reads and writes, {usage.prompt_tokens} prompt tokens exceed {MAX_TOKENS}",
            field="usage.input_tokens",
        )
    return usage


def _model(response: Any) -> str:
    model = _get(response, "model")
    if not isinstance(model, str) or not model:
        raise AdapterError(f"model: the response names no model (got {_short(model)})", field="model")
    return model


def _usage(response: Any) -> Any:
    usage = _get(response, "usage")
    if usage is None:
        raise AdapterError("usage: the response carries no usage (streamed without include_usage?)", field="usage")
    return usage


def _id(response: Any) -> str | None:
    value = _get(response, "id")
    if not isinstance(value, str) or not value:
        return None
    if not _RESPONSE_ID.match(value):
        raise AdapterError(
            f"id: the response id must be 1..200 characters without spaces or control characters, got {_short(value)}",
            field="id",
        )
    return value


def _openai_usage(response: Any, provider: str | None, prompt_name: str, completion_name: str) -> TokenUsage:
    """Usage of an OpenAI-style response whose ``usage`` names its counts ``prompt_name`` and
    ``completion_name`` (Chat Completions: ``prompt_tokens``/``completion_tokens``; Responses API:
    ``input_tokens``/``output_tokens``), with their ``<name>_details`` (cached and cache-write
    tokens of the prompt, reasoning tokens of the completion).  Raises AdapterError naming the field."""
    usage = _usage(response)
    prompt = _count(usage, prompt_name, "usage")
    completion = _count(usage, completion_name, "usage")
    prompt_details = f"{prompt_name}_details"
    completion_details = f"{completion_name}_details"
    details = _get(usage, prompt_details, "usage")
    cached = _count(details, "cached_tokens", f"usage.{prompt_details}", required=False)
    writes = _count(details, "cache_write_tokens", f"usage.{prompt_details}", required=False)
    reasoning = _count(
        _get(usage, completion_details, "usage"), "reasoning_tokens", f"usage.{completion_details}", required=False
    )
    if cached + writes > prompt:
        raise AdapterError(
            f"usage.{prompt_details}.cached_tokens: {cached} (+ {writes} cache writes) exceeds {prompt_name} {prompt}",
            field=f"usage.{prompt_details}.cached_tokens",
        )
    return TokenUsage(
        _model(response),
        prompt,
        completion,
        cached,
        writes,
        reasoning,
        provider,
        _id(response),
        service_tier=_tier(_get(response, "service_tier"), "service_tier"),
    )


def from_openai_chat(response: Any, *, provider: str | None = "openai") -> TokenUsage:
    """Usage of an OpenAI Chat Completion (``openai.types.chat.ChatCompletion`` or its dict), or any
    response with OpenAI-style ``usage.prompt_tokens`` / ``completion_tokens``.  Raises AdapterError."""
    return _openai_usage(response, provider, "prompt_tokens", "completion_tokens")


def from_openai_responses(response: Any, *, provider: str | None = "openai") -> TokenUsage:
    """Usage of an OpenAI Responses API response (``openai.types.responses.Response`` or its dict).
    Raises AdapterError."""
    return _openai_usage(response, provider, "input_tokens", "output_tokens")


def from_anthropic(response: Any, *, provider: str | None = "anthropic") -> TokenUsage:
    """Usage of an Anthropic message (``anthropic.types.Message`` or its dict).  Anthropic's
    ``input_tokens`` exclude cache reads and writes, so they are added back (see the module
    docstring).  Raises AdapterError."""
    usage = _usage(response)
    uncached = _count(usage, "input_tokens", "usage")
    completion = _count(usage, "output_tokens", "usage")
    reads = _count(usage, "cache_read_input_tokens", "usage", required=False)
    reported = _get(usage, "cache_creation_input_tokens", "usage")
    writes = _count(usage, "cache_creation_input_tokens", "usage", required=False)
    writes_1h = 0
    creation = _get(usage, "cache_creation", "usage")
    if creation is not None:
        has_5m = _get(creation, "ephemeral_5m_input_tokens", "usage.cache_creation") is not None
        writes_5m = _count(creation, "ephemeral_5m_input_tokens", "usage.cache_creation", required=False)
        writes_1h = _count(creation, "ephemeral_1h_input_tokens", "usage.cache_creation", required=False)
        if reported is None:  # only the breakdown: the writes are its sum
            writes = writes_5m + writes_1h
        elif (writes_5m + writes_1h != writes) if has_5m else (writes_1h > writes):
            raise AdapterError(
                f"usage.cache_creation: ephemeral_5m ({writes_5m}) + ephemeral_1h ({writes_1h}) "
                f"input tokens must add up to cache_creation_input_tokens ({writes})",
                field="usage.cache_creation",
            )
    tier = _tier(_get(usage, "service_tier", "usage"), "usage.service_tier")
    return _checked(
        TokenUsage(
            _model(response),
            uncached + reads + writes,
            completion,
            reads,
            writes,
            0,
            provider,
            _id(response),
            writes_1h,
            None if tier == "standard" else tier,
        )
    )


def _looks_anthropic(response: Any, usage: Any) -> bool:
    if _get(response, "type") == "message" and _get(usage, "prompt_tokens", "usage") is None:
        return True
    return (
        _get(usage, "cache_read_input_tokens", "usage") is not None
        or _get(usage, "cache_creation_input_tokens", "usage") is not None
    )


def usage_from_response(response: Any, *, provider: str | None = None) -> TokenUsage:
    """Token counts of any supported response (see the module docstring), chosen by shape:
    ``usage.prompt_tokens`` → Chat Completions; Anthropic's message shape or cache fields →
    Anthropic; ``usage.input_tokens`` → Responses API.

    ``provider`` (a genai-prices provider id) overrides the one the SDK implies, e.g. for an
    OpenAI-compatible server of another vendor.  Returns :class:`TokenUsage`.
    Raises: AdapterError naming the field (no usage, no model, a bad count).
    """
    usage = _usage(response)
    if _get(usage, "prompt_tokens", "usage") is not None:
        result = from_openai_chat(response)
    elif _looks_anthropic(response, usage):
        result = from_anthropic(response)
    elif _get(usage, "input_tokens", "usage") is not None:
        result = from_openai_responses(response)
    else:
        raise AdapterError(
            "usage: neither prompt_tokens (OpenAI Chat) nor input_tokens (Responses, Anthropic)", field="usage"
        )
    if provider is None:  # the SDK's own types imply their provider; a plain dict implies none
        module = type(response).__module__
        provider = (
            "openai" if module.startswith("openai.") else "anthropic" if module.startswith("anthropic.") else None
        )
    return replace(result, provider=provider)
