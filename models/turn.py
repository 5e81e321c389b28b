"""The turn family: a turn as an orchestrator reports it (``TurnIn``), the gate's ``Decision``, and
its persisted forms (``usage_turn_key``, ``usage_event``, ``dead_letter``)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Boolean, Column, Date, Index, Integer, String, UniqueConstraint, Uuid, func, text
from sqlalchemy.ext.compiler import compiles
from sqlmodel import Field, SQLModel

from models.columns import big, enum_type, ts
from models.enums import BillingMode, DeadLetterStatus, DecisionAction, Meter, PayerLevel
from models.validation import Id, ModelName, ProviderName, TurnId, UtcInWindow

#: a count of tokens (or ms) in one turn: an integer, 0 ≤ n ≤ 10^9 (sums stay far from BIGINT)
Tokens = Annotated[int, PydanticField(strict=True, ge=0, le=10**9)]


# TurnIn: bad input raises ``pydantic.ValidationError`` naming the field; the text checks (control,
# surrogate and format characters refused; lengths in code points) and the ``occurred_at`` window
# are ``models.validation``'s.  Its docstring and field descriptions are what /docs shows.
class TurnIn(BaseModel):
    """One agent turn: an LLM call's tokens (or units of a non-LLM meter), who made it and who pays.

    Token counts are integers from 0 to 10^9. Ids are 1..200 characters (`turn_id` 1..300) without
    control characters. Unknown fields are refused (422 naming them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn_id: TurnId = PydanticField(
        description=(
            "Your unique id for this turn: the idempotency key. The same `turn_id` for the same wallet "
            "and app is recorded and charged once; resending it returns the first decision."
        )
    )
    wallet_id: Id = PydanticField(description="The wallet that pays for the turn.")
    enterprise_id: Id = PydanticField(description="Your app's id; must be the app of your owner key.")
    chat_id: Id = PydanticField(description="The chat (conversation) the turn belongs to; a new id starts a chat.")
    workflow: Id = PydanticField("default", description="The workflow the chat runs, for analytics.")
    agent: Id = PydanticField("assistant", description="The agent that made the call, for per-agent figures.")
    model: ModelName = PydanticField(
        description="The model called, as its provider names it (e.g. `gpt-4o-mini`); priced from a public price list."
    )
    provider: ProviderName | None = PydanticField(
        None, description="The model's provider (e.g. `openai`, `anthropic`); omit to find it from `model`."
    )
    prompt_tokens: Tokens = PydanticField(
        description="Input tokens of the call, including cached and cache-write ones."
    )
    completion_tokens: Tokens = PydanticField(description="Output tokens of the call.")
    cached_prompt_tokens: Tokens = PydanticField(
        0, description="The part of `prompt_tokens` read from the provider's prompt cache (billed at the cached price)."
    )
    #: (genai-prices is the price list; a model without a 1-hour price is billed at its 5-minute one)
    cache_write_tokens: Tokens = PydanticField(
        0,
        description=(
            "The part of `prompt_tokens` written to the provider's prompt cache (Anthropic's "
            "`cache_creation_input_tokens`), billed at the cache-write price."
        ),
    )
    cache_write_1h_tokens: Tokens = PydanticField(
        0,
        description=(
            "The part of `cache_write_tokens` written to the 1-hour cache (Anthropic's "
            "`cache_creation.ephemeral_1h_input_tokens`), billed at the 1-hour cache-write price."
        ),
    )
    service_tier: Annotated[str, PydanticField(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")] | None = (
        PydanticField(
            None,
            description=(
                "The service tier the provider served the call at (OpenAI's `flex`, `priority`, …), billed at "
                "that tier's price; omitted, `default`, `auto` or `standard`: the standard price. A tier "
                "without a known price for the model is refused (422)."
            ),
        )
    )
    duration_ms: Tokens = PydanticField(0, description="The call's response time, milliseconds.")
    occurred_at: UtcInWindow = PydanticField(
        default_factory=lambda: datetime.now(UTC),
        description=(
            "When the call finished: an ISO 8601 time with a UTC offset (default: now). Times far in the "
            "past or future are refused (422)."
        ),
    )
    reservation_id: Id | None = PydanticField(
        None,
        description=(
            "The reservation this turn settles (`POST /v1/wallets/{wallet_id}/reservations`): its hold is "
            "replaced by the turn's real cost."
        ),
    )
    #: a non-LLM meter records ``quantity`` units through the same gate and ledger (``model``
    #: defaults to the meter's name, tokens to 0)
    meter: Literal["llm", "emails", "storage_gb_month", "function_calls"] = PydanticField(
        "llm",
        description=(
            "`llm` for an LLM call (tokens). Otherwise a non-LLM meter recording `quantity` units: "
            "`emails` (emails sent), `storage_gb_month` (MB-months stored), `function_calls` (invocations); "
            "then give 0 tokens."
        ),
    )
    quantity: Annotated[int, PydanticField(strict=True, ge=0, le=10**12)] = PydanticField(
        0, description="Units of a non-LLM `meter` (> 0 then); 0 for an LLM turn."
    )

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
            if (
                self.prompt_tokens
                or self.completion_tokens
                or self.cached_prompt_tokens
                or self.cache_write_tokens
                or self.cache_write_1h_tokens
            ):
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


# TurnBatch: recorded in order with one pipelined round trip
class TurnBatch(BaseModel):
    """Up to 1,000 turns to record in order. Unknown fields are refused (422 naming them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turns: list[TurnIn] = PydanticField(min_length=1, max_length=1000, description="1 to 1,000 turns, in order.")


# Decision: the gate's answer for one turn (accepted: charged or tracked for free, and queued for
# persistence).  The field descriptions are its attribute docs.
class Decision(BaseModel):
    """The decision for one turn: go on (`continue`) or stop the chat (`pause`), and what it cost."""

    turn_id: str = PydanticField(description="The turn decided.")
    accepted: bool = PydanticField(
        description="True: the turn was recorded (and charged, if its mode bills). False: denied, nothing charged."
    )
    action: Literal["continue", "pause"] = PydanticField(
        description="`continue`, or `pause`: stop the chat until its wallet is credited (or its budget allows)."
    )
    balance_nanos: int | None = PydanticField(
        description="The wallet's balance after the turn, nano-USD; null for a wallet that is not limited."
    )
    cost_nanos: int = PydanticField(description="The turn's cost at its model's prices, nano-USD.")
    billed_nanos: int = PydanticField(
        description="What was debited, nano-USD: 0 when denied or free (development, track_only, inside a trial)."
    )
    duplicate: bool = PydanticField(
        False, description="True: this `turn_id` was recorded before; this is its first decision, nothing changed."
    )


_DECISION_FIELDS = frozenset(Decision.model_fields)
#: ``object.__new__`` / ``object.__setattr__`` bound once: looked up per call they were half of
#: :func:`trusted_decision`'s cost
_new_object = object.__new__
_set_attribute = object.__setattr__


def trusted_decision(
    turn_id: str,
    accepted: bool,
    action: str,
    balance_nanos: int | None,
    cost_nanos: int,
    billed_nanos: int,
    duplicate: bool,
) -> Decision:
    """A :class:`Decision` from values the gate's own script produced, without validation: what
    ``Decision.model_construct`` does (the instance dict, fields set, no extra or private
    attributes) at a fifth of its cost, which mattered at tens of thousands of turns a second.
    ``tests/unit/test_gate.py`` checks it equals a validated Decision."""
    d = _new_object(Decision)
    _set_attribute(
        d,
        "__dict__",
        {
            "turn_id": turn_id,
            "accepted": accepted,
            "action": action,
            "balance_nanos": balance_nanos,
            "cost_nanos": cost_nanos,
            "billed_nanos": billed_nanos,
            "duplicate": duplicate,
        },
    )
    _set_attribute(d, "__pydantic_fields_set__", set(_DECISION_FIELDS))
    _set_attribute(d, "__pydantic_extra__", None)
    _set_attribute(d, "__pydantic_private__", None)
    return d


class DecisionsPublic(BaseModel):
    """The decisions of a batch, in the order of its turns."""

    data: list[Decision] = PydanticField(description="One decision per turn, in the order of the turns.")
    count: int = PydanticField(description="The number of decisions.")


def turn_key_digest(enterprise_id: str, wallet_id: str, turn_id: str) -> uuid.UUID:
    """The key of a turn (turn_id in its (enterprise_id, wallet_id) scope) in ``usage_turn_key``: the
    first 16 bytes of SHA-256 of ``<n>:<enterprise_id>:<m>:<wallet_id>:<turn_id>`` (UTF-8; ``n``, ``m``
    the ids' lengths in characters, so no two scopes share an input: the gate's fingerprint form),
    as a UUID.  PostgreSQL computes the same with ``usage_turn_key_of(enterprise_id, wallet_id,
    turn_id)`` (migration 0017; the drain uses it).

    Collision bound: two different turns get the same key with probability ≤ n² / 2^129 for the n
    keys held at once (birthday bound of 128 bits of SHA-256): at 10,000 turns/s for 12 months
    (3.2 × 10^11 keys) about 1.5 × 10^-16.  A collision would make the later turn look already
    persisted (dropped, and its debit refunded by the drain as a second acceptance): never counted
    twice.  SHA-256 is not keyed, but finding a collision costs about 2^64 hashes and only hides one
    of the finder's own turns; matching another app's key is a 2^128 second preimage."""
    return uuid.UUID(bytes=turn_key_bytes(enterprise_id, wallet_id, turn_id))


def turn_key_bytes(enterprise_id: str, wallet_id: str, turn_id: str) -> bytes:
    """:func:`turn_key_digest` as its 16 bytes, no UUID object (what the drain stages, binary)."""
    scoped = f"{len(enterprise_id)}:{enterprise_id}:{len(wallet_id)}:{wallet_id}:{turn_id}"
    return hashlib.sha256(scoped.encode()).digest()[:16]


class UsageTurnKey(SQLModel, table=True):
    """The idempotency index of persisted turns: one row per turn_id in its scope, the
    (enterprise_id, wallet_id) pair, ever (until retention), keyed by :func:`turn_key_digest` of
    the three (16 bytes instead of three text columns).  The gate keys its first answers by the
    same scope, so the same turn_id in another scope is an independent turn, persisted too.

    ``usage_event`` is partitioned by month, and PostgreSQL can only enforce a unique key on a
    partitioned table if it contains the partition key; a turn_id retried with another
    ``occurred_at`` would then be persisted twice.  This small unpartitioned table holds the unique
    key instead: the drain inserts here first (``ON CONFLICT DO NOTHING``) and writes
    ``usage_event`` rows only for the keys it inserted, in the same statement.  ``outbox_id`` is
    the entry that was persisted (a second acceptance of the turn carries another one).

    Retention (``worker.ledger.partitions.apply_retention``) forgets a key once its turn is older
    than the months kept *and* was persisted that long ago (a late turn keeps its key as long as a
    recent one).  Its cutoff is a UTC midnight, so one date decides both: ``retention_date``, the
    later of the turn's UTC date and the UTC date it was persisted (:func:`retention_date_sql`),
    with ``occurred_at`` NULL (migration 0021: 8 bytes fewer, a 64-B row instead of 72 for an
    outbox id of up to 19 characters).  A key persisted before 0021 keeps its
    ``occurred_at`` (the turn's) and its ``retention_date`` is the date it was persisted: retention
    reads both forms (``occurred_at IS NULL OR occurred_at < cutoff``).
    """

    __tablename__ = "usage_turn_key"

    turn_key: uuid.UUID = Field(sa_column=Column(Uuid, primary_key=True))
    #: the turn's time, for keys persisted before migration 0021 only (NULL since)
    occurred_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    retention_date: date = Field(sa_column=Column(Date, nullable=False))
    outbox_id: str = Field(max_length=60)


def retention_date_sql(occurred_at: str) -> str:
    """SQL of a new turn key's ``retention_date`` (:class:`UsageTurnKey`) for a turn that occurred at
    ``occurred_at`` (a ``timestamptz`` expression), persisted now: the later of the two UTC dates."""
    return f"greatest(({occurred_at} AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date)"


class UsageEventBase(SQLModel):
    """The fields of a persisted turn that its table and its API shape share, in the API's order
    (the JSON keys and the CSV columns of ``GET /v1/usage``): where it happened, its token counts
    and response time (ms), the unit prices it was charged at (nano-USD per million tokens), its
    ``cost_nanos`` (what it cost at those prices) and ``billed_nanos`` (what was debited, 0 in
    development mode), and the gate's ``action``.  The family's input is :class:`TurnIn`."""

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, primary_key=True, autoincrement=True),
        description="The row's id: increasing within a month; the page cursor.",
    )
    turn_id: str = Field(max_length=300, description="Your id of the turn.")
    occurred_at: datetime = Field(
        sa_column=ts(nullable=False, primary_key=True), description="When the call finished (UTC)."
    )
    enterprise_id: str = Field(max_length=200, primary_key=True, description="The app.")
    wallet_id: str = Field(max_length=200, description="The wallet that paid.")
    chat_id: str = Field(max_length=200, description="The chat.")
    workflow: str = Field(max_length=200, description="The chat's workflow.")
    agent: str = Field(max_length=200, description="The agent that made the call.")
    model: str = Field(max_length=200, description="The model called (or the non-LLM meter's name).")
    provider: str = Field(max_length=100, description="The model's provider.")
    mode: BillingMode = Field(
        sa_type=enum_type(BillingMode, 20), description="The wallet's billing mode when the turn was recorded."
    )
    prompt_tokens: int = Field(
        sa_column=Column(Integer, nullable=False), description="Input tokens, including cached ones."
    )
    completion_tokens: int = Field(sa_column=Column(Integer, nullable=False), description="Output tokens.")
    cached_prompt_tokens: int = Field(
        sa_column=Column(Integer, nullable=False),
        description="The part of `prompt_tokens` read from the provider's cache.",
    )
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False), description="Response time, milliseconds.")
    input_nanos_per_mtok: int = Field(
        sa_column=big(nullable=False), description="The input price charged, nano-USD per million tokens."
    )
    cached_input_nanos_per_mtok: int = Field(
        sa_column=big(nullable=False), description="The cached-input price charged, nano-USD per million tokens."
    )
    output_nanos_per_mtok: int = Field(
        sa_column=big(nullable=False), description="The output price charged, nano-USD per million tokens."
    )
    cost_nanos: int = Field(sa_column=big(nullable=False), description="The turn's cost at those prices, nano-USD.")
    billed_nanos: int = Field(
        sa_column=big(nullable=False),
        description="What was debited, nano-USD (0 when free: development, track_only, inside a trial).",
    )
    action: DecisionAction = Field(
        sa_type=enum_type(DecisionAction, 10), description="The decision: `continue` or `pause`."
    )


class UsageEvent(UsageEventBase, table=True):
    """One accepted turn, persisted once (its turn_id is in :class:`UsageTurnKey` once), with the
    prices it was charged at.

    Since migration 0019 ``usage_event`` is a view over :class:`UsageRow` (the stored rows: a price
    id instead of the price columns, one-byte codes instead of the closed-set texts, no outbox id;
    since 0021 zeros, the implied platform fee and the implied billing target left out),
    :class:`UsagePrice` and :class:`UsageTurnKey` (``outbox_id``): every column reads as before.
    Rows inserted or deleted through it go to ``usage_row`` (INSTEAD OF triggers; the drain writes
    ``usage_row`` directly).  ``usage_row`` is partitioned by month of ``occurred_at`` (UTC), and a
    month by app (``enterprise_id``) once an app keeps its events in its own schema
    (``worker.ledger.isolation``); ``worker.ledger.partitions`` creates the months ahead and applies
    retention.  The mapper's key is ``(id, occurred_at, enterprise_id)``; ``id`` comes from one
    sequence and is unique.

    ``outbox_id`` (``<shard>:<stream id>``) is the outbox entry it came from: a re-delivery carries
    the same one, a second acceptance of the same turn_id by the gate another.

    Beside :class:`UsageEventBase`: the level-2 split, trial tokens, the non-LLM meter, cache writes,
    service tier, debt and the balance after the turn.
    """

    __tablename__ = "usage_event"
    #: a view: Alembic's comparison with the migrations leaves it out (tests/integration/test_records.py)
    __table_args__ = {"info": {"view": True}}

    outbox_id: str = Field(max_length=60)
    #: payer level ('platform' | 'app_usage') and who receives the charge: 'platform', or the app
    #: (its enterprise_id) for level-2 charges, which are split into creator share + platform fee
    level: PayerLevel = Field(
        default=PayerLevel.app_usage,
        sa_type=enum_type(PayerLevel, 20),
        sa_column_kwargs={"server_default": "app_usage"},
    )
    billing_target: str = Field(default="platform", max_length=200, sa_column_kwargs={"server_default": "platform"})
    #: False for turns never billed (development, track_only, trial turns inside the allowance)
    billable: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    creator_share_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    platform_fee_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: tokens of this turn taken from the wallet's trial allowance
    trial_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    #: an LLM turn, or a non-LLM meter with ``quantity`` units priced at ``unit_price_nanos`` per
    #: ``unit_scale`` units
    meter: Meter = Field(default=Meter.llm, sa_type=enum_type(Meter, 50), sa_column_kwargs={"server_default": "llm"})
    quantity: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: the part of prompt_tokens written to the provider's cache, and the rate it was charged at
    cache_write_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    cache_write_nanos_per_mtok: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: the part of cache_write_tokens written to the 1-hour cache, and the rate it was charged at
    cache_write_1h_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    cache_write_1h_nanos_per_mtok: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: the provider's service tier the turn was priced at (OpenAI's flex, priority, …); None: standard
    service_tier: str | None = Field(default=None, max_length=32)
    #: the part of cost_nanos not debited because the wallet could not pay it (reservations
    #: required, cost above the reservation plus the free balance): owed, on the wallet's debt
    debt_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    balance_after_nanos: int | None = Field(default=None, sa_column=big(nullable=True))


class PgChar(String):
    """PostgreSQL's one-byte ``"char"`` type (a code of ``models.usage_codes``); SQLAlchemy reflects
    it as a ``String``, so it is one, rendered ``"char"`` in DDL."""

    cache_ok = True


@compiles(PgChar, "postgresql")
def _pg_char(_type: PgChar, _compiler: Any, **_kw: Any) -> str:
    return '"char"'


#: a price tuple: what a turn was charged at (``usage_price``'s unique key, in its column order)
PRICE_COLUMNS = (
    "model",
    "provider",
    "service_tier",
    "input_nanos_per_mtok",
    "cached_input_nanos_per_mtok",
    "output_nanos_per_mtok",
    "cache_write_nanos_per_mtok",
    "cache_write_1h_nanos_per_mtok",
)


class UsagePrice(SQLModel, table=True):
    """A price tuple turns were charged at (migration 0019): model, provider, service tier (``''``:
    the standard one) and the five unit prices (nano-USD per million tokens), unique; ``usage_row``
    refers to it by ``id``.  Rows are only added (``worker.ledger.usage_rows``), never changed."""

    __tablename__ = "usage_price"
    __table_args__ = (UniqueConstraint(*PRICE_COLUMNS, name="uq_usage_price"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    model: str = Field(max_length=200)
    provider: str = Field(max_length=100)
    service_tier: str = Field(max_length=32)
    input_nanos_per_mtok: int = Field(sa_column=big(nullable=False))
    cached_input_nanos_per_mtok: int = Field(sa_column=big(nullable=False))
    output_nanos_per_mtok: int = Field(sa_column=big(nullable=False))
    cache_write_nanos_per_mtok: int = Field(sa_column=big(nullable=False))
    cache_write_1h_nanos_per_mtok: int = Field(sa_column=big(nullable=False))


class UsageRow(SQLModel, table=True):
    """A stored turn (migration 0019), what :class:`UsageEvent` shows: its :class:`UsagePrice` by
    ``price_id``, ``mode``, ``action``, ``level`` and ``meter`` as ``"char"`` codes
    (``models.usage_codes.CODES``), since migration 0021 what it implies left out (zeros and the
    implied platform fee as NULL, the implied billing target as ``''``:
    ``models.usage_codes.store_sql``; read them through ``usage_event``, not here); no primary key
    in PostgreSQL (a partitioned table's would hold every partition key: 50 B a row), ``id``
    indexed for the page cursor (the mapper's key)."""

    __tablename__ = "usage_row"
    __table_args__ = (
        # equal keys, stored once per page by B-tree deduplication; a month is a partition, and the
        # BRIN index narrows a range inside one (migration 0017)
        Index("ix_usage_row_id", "id"),
        Index("ix_usage_event_wallet", "wallet_id"),
        Index("ix_usage_event_enterprise_workflow", "enterprise_id", "workflow"),
        Index("ix_usage_event_enterprise_chat", "enterprise_id", "chat_id"),
        Index("ix_usage_event_occurred_brin", "occurred_at", postgresql_using="brin"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    occurred_at: datetime = Field(sa_column=ts(nullable=False))
    cost_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    billed_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    balance_after_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    creator_share_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    platform_fee_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    debt_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    quantity: int | None = Field(default=None, sa_column=big(nullable=True))
    prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    completion_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    cached_prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    duration_ms: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    trial_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    cache_write_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    cache_write_1h_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    price_id: int = Field(sa_column=Column(Integer, nullable=False))
    mode: str = Field(sa_column=Column(PgChar(), nullable=False))
    action: str = Field(sa_column=Column(PgChar(), nullable=False))
    level: str = Field(sa_column=Column(PgChar(), nullable=False))
    meter: str = Field(sa_column=Column(PgChar(), nullable=False))
    billable: bool = Field(sa_column=Column(Boolean, nullable=False))
    turn_id: str = Field(max_length=300)
    wallet_id: str = Field(max_length=200)
    enterprise_id: str = Field(max_length=200)
    chat_id: str = Field(max_length=200)
    workflow: str = Field(max_length=200)
    agent: str = Field(max_length=200)
    billing_target: str | None = Field(default=None, max_length=200)


# UsageEventPublic.model_validate(row): a usage_event row as GET /v1/usage shows it
class UsageEventPublic(UsageEventBase):
    """One recorded turn, with the prices it was charged at (nano-USD per million tokens)."""

    id: int = Field(description="The row's id: increasing within a month; the page cursor.")


class UsageEventsPublic(SQLModel):
    """A page of recorded turns of one month (UTC), oldest first."""

    period: str = Field(description="The month, UTC: `YYYY-MM`.")
    data: list[UsageEventPublic] = Field(description="The turns of this page, oldest first.")
    count: int = Field(description="The number of turns in `data`.")
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null: this is the last page.")


class DeadLetter(SQLModel, table=True):
    """An outbox entry the drain could not persist (``worker.ledger.deadletter``), kept until an operator
    retries or discards it.  ``fields_json`` is the entry's own fields as ASCII JSON (NUL, lone
    surrogates and bytes that were not UTF-8 escaped), so any entry can be stored; ``turn_id`` and
    ``wallet_id`` are the payload's, NULL when PostgreSQL cannot store them.  ``status``: a
    :class:`~models.enums.DeadLetterStatus` (``resolved_at`` once not ``open``)."""

    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_open", "shard", "id", postgresql_where=text("status = 'open'")),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    #: ``<shard>:<outbox stream id>``, as ``usage_event.outbox_id``
    outbox_id: str = Field(max_length=100, unique=True)
    shard: int
    turn_id: str | None = Field(default=None, max_length=1000)
    wallet_id: str | None = Field(default=None, max_length=1000)
    billed_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: the ledger holds its named debt (``tollgate:deadletter:<outbox_id>``)
    charged: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    error: str = Field(default="", max_length=2000)
    error_class: str = Field(default="", max_length=200)
    fields_json: str
    status: DeadLetterStatus = Field(default=DeadLetterStatus.open, sa_type=enum_type(DeadLetterStatus, 20))
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    resolved_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
