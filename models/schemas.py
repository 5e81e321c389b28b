"""Pydantic schemas of records that cross a boundary: a turn as an orchestrator reports it and the
gate's decision about it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.validation import Id, ModelName, ProviderName, TurnId, UtcInWindow

__all__ = ["Id", "TurnIn", "Decision", "BudgetIn", "trusted_decision"]
#: a count of tokens (or ms) in one turn: an integer, 0 ≤ n ≤ 10^9 (sums stay far from BIGINT)
Tokens = Annotated[int, Field(strict=True, ge=0, le=10**9)]


class TurnIn(BaseModel):
    """One agent turn, as an orchestrator records it.

    Token counts are integers ≥ 0 (``cached_prompt_tokens`` is the part of ``prompt_tokens`` read from
    the provider's prompt cache); ``duration_ms`` is the response time in milliseconds;
    ``occurred_at`` is when the turn finished (aware; stored in UTC; defaults to now; inside the
    configured window, see ``models.validation``).  ``turn_id`` is the idempotency key: the same id
    recorded twice is one turn.  Text fields are refused when they hold control, surrogate or
    format characters (``models.validation``: ids 1..200 code points, ``turn_id`` 1..300, model
    1..200, provider 1..100).

    Raises ``pydantic.ValidationError`` naming the field for bad input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn_id: TurnId
    wallet_id: Id
    enterprise_id: Id
    chat_id: Id
    workflow: Id = "default"
    agent: Id = "assistant"
    model: ModelName
    provider: ProviderName | None = None
    prompt_tokens: Tokens
    completion_tokens: Tokens
    cached_prompt_tokens: Tokens = 0
    #: the part of ``prompt_tokens`` written to the provider's prompt cache (Anthropic's
    #: ``cache_creation_input_tokens``), billed at the model's cache-write price
    cache_write_tokens: Tokens = 0
    #: the part of ``cache_write_tokens`` written to the 1-hour cache (Anthropic's
    #: ``cache_creation.ephemeral_1h_input_tokens``), billed at the model's 1-hour cache-write price
    #: (the 5-minute one when genai-prices has none)
    cache_write_1h_tokens: Tokens = 0
    #: the provider's service tier the response was served at (OpenAI's ``service_tier``: ``flex``,
    #: ``priority``, …), billed at genai-prices' price for that tier; None, ``default``, ``auto`` or
    #: ``standard``: the standard price.  A tier genai-prices has no price for on that model is refused.
    service_tier: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")] | None = None
    duration_ms: Tokens = 0
    occurred_at: UtcInWindow = Field(default_factory=lambda: datetime.now(UTC))
    #: the reservation this turn settles (see WalletGate.reserve), if any
    reservation_id: Id | None = None
    #: 'llm' for an LLM turn; else a non-LLM meter of :data:`METERS` (``model`` defaults to the meter's
    #: name, tokens to 0) recording ``quantity`` units through the same gate and ledger
    meter: Literal["llm", "emails", "storage_gb_month", "function_calls"] = "llm"
    #: units of a non-LLM meter (emails sent, MB-months stored, invocations); 0 for an LLM turn
    quantity: Annotated[int, Field(strict=True, ge=0, le=10**12)] = 0

    @model_validator(mode="before")
    @classmethod
    def _meter_defaults(cls, data):
        if isinstance(data, dict) and data.get("meter", "llm") != "llm":
            data = {"model": data["meter"], "prompt_tokens": 0, "completion_tokens": 0, **data}
        return data

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> "TurnIn":
        if self.meter != "llm":
            if self.quantity <= 0:
                raise ValueError(f"quantity must be > 0 for meter {self.meter!r}")
            if (self.prompt_tokens or self.completion_tokens or self.cached_prompt_tokens or self.cache_write_tokens
                    or self.cache_write_1h_tokens):
                raise ValueError(f"meter {self.meter!r} records a quantity, not tokens: give 0 tokens")
        elif self.quantity:
            raise ValueError("quantity is for non-LLM meters: an LLM turn (meter 'llm') records tokens")
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError(
                f"cached_prompt_tokens ({self.cached_prompt_tokens}) exceeds prompt_tokens ({self.prompt_tokens})"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceeds cache_write_tokens "
                f"({self.cache_write_tokens}), of which they are a part"
            )
        if self.cached_prompt_tokens + self.cache_write_tokens > self.prompt_tokens:
            raise ValueError(
                f"cache_write_tokens ({self.cache_write_tokens}) + cached_prompt_tokens "
                f"({self.cached_prompt_tokens}) exceed prompt_tokens ({self.prompt_tokens})"
            )
        return self


class Decision(BaseModel):
    """The gate's answer for one turn.

    Attributes:
        turn_id: the turn decided.
        accepted: the turn was charged (or tracked for free) and queued for persistence.
        action: ``continue`` or ``pause`` (the chat must stop until the wallet is credited).
        balance_nanos: wallet balance after the turn, nano-USD; ``None`` for an unlimited wallet.
        cost_nanos: the turn's cost at its prices, nano-USD.
        billed_nanos: what was debited (0 when denied or in development mode), nano-USD.
        duplicate: this turn_id was seen before; the first answer is returned and nothing changed.
    """

    turn_id: str
    accepted: bool
    action: Literal["continue", "pause"]
    balance_nanos: int | None
    cost_nanos: int
    billed_nanos: int
    duplicate: bool = False


_DECISION_FIELDS = frozenset(Decision.model_fields)


def trusted_decision(turn_id: str, accepted: bool, action: str, balance_nanos: int | None, cost_nanos: int,
                     billed_nanos: int, duplicate: bool) -> Decision:
    """A :class:`Decision` from values the gate's own script produced, without validation: what
    ``Decision.model_construct`` does (the instance dict, fields set, no extra or private
    attributes) at a fifth of its cost, which mattered at tens of thousands of turns a second.
    ``tests/unit/test_gate.py`` checks it equals a validated Decision."""
    d = object.__new__(Decision)
    object.__setattr__(d, "__dict__", {
        "turn_id": turn_id, "accepted": accepted, "action": action, "balance_nanos": balance_nanos,
        "cost_nanos": cost_nanos, "billed_nanos": billed_nanos, "duplicate": duplicate,
    })
    object.__setattr__(d, "__pydantic_fields_set__", set(_DECISION_FIELDS))
    object.__setattr__(d, "__pydantic_extra__", None)
    object.__setattr__(d, "__pydantic_private__", None)
    return d


#: nano-USD a budget may hold per month: an integer, 0 < n ≤ 2^62 (sums stay far from BIGINT)
BudgetNanos = Annotated[int, Field(strict=True, gt=0, le=2**62)]


class BudgetIn(BaseModel):
    """A monthly spending budget as a caller sets it: on one wallet (``wallet_id``) or on one workflow
    of the app (``workflow``), exactly one of the two.  ``amount_nanos`` is nano-USD per UTC month;
    alerts fire at 50/80/100 %; ``auto_pause`` stops the spending at 100 %.

    Raises ``pydantic.ValidationError`` naming the field for bad input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enterprise_id: Id
    wallet_id: Id | None = None
    workflow: Id | None = None
    amount_nanos: BudgetNanos
    auto_pause: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="after")
    def _one_scope(self) -> "BudgetIn":
        if (self.wallet_id is None) == (self.workflow is None):
            raise ValueError("give exactly one of wallet_id or workflow")
        return self
