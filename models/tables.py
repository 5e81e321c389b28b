"""PostgreSQL tables (SQLModel).  The schema is created only by the Alembic migrations in
``models/migrations``; every money column is an integer of nano-USD (``BIGINT``), every token count
an integer.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, ForeignKey, Index, Integer, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


class BillingMode(StrEnum):
    """How a wallet pays for turns (set per app, overridable per wallet):

    - ``production``: every turn is debited;
    - ``development``: turns are recorded, marked non-billable, never debited nor blocked;
    - ``trial``: turns are free while the wallet's trial token allowance lasts (``trial_tokens_used``),
      then billed as in production or paused (the app's ``trial_then``);
    - ``track_only``: self-hosted apps: turns are recorded for analytics, never debited nor blocked;
      the app pays a flat monthly fee instead (``enterprise.flat_fee_nanos``).
    """

    production = "production"
    development = "development"
    trial = "trial"
    track_only = "track_only"


class TrialThen(StrEnum):
    """What a trial wallet does once its token allowance is used up."""

    bill = "bill"
    pause = "pause"


class ConnectionState(StrEnum):
    """A chat's connection as the orchestrator sees it: ``connected`` (turns flow), ``paused``
    (stopped, waiting for funds or a budget), ``resumable`` (paused, and the wallet can pay again),
    ``ended`` (finalized)."""

    connected = "connected"
    paused = "paused"
    resumable = "resumable"
    ended = "ended"


class PayerLevel(StrEnum):
    """Who pays: ``platform`` (the app creator, for building apps) or ``app_usage`` (an app's end user)."""

    platform = "platform"
    app_usage = "app_usage"


class TransactionKind(StrEnum):
    """Direction of a ledger entry."""

    credit = "credit"
    debit = "debit"


class ChatStatus(StrEnum):
    """Lifecycle of a chat session."""

    active = "active"
    paused = "paused"
    completed = "completed"


#: an app's default limit on the cost of one turn, nano-USD ($50); worker/gate/lua/lib_turn.lua's
#: DEFAULT_MAX_TURN_NANOS is the same figure for wallets loaded without one
DEFAULT_MAX_TURN_COST_NANOS = 50_000_000_000


def _ts(**kw) -> Column:
    return Column(DateTime(timezone=True), **kw)


def _big(**kw) -> Column:
    return Column(BigInteger, **kw)


class Enterprise(SQLModel, table=True):
    """An app on the platform (``enterprise_id``)."""

    __tablename__ = "enterprise"

    id: str = Field(primary_key=True, max_length=200)
    name: str = Field(max_length=200)
    default_mode: str = Field(default=BillingMode.production, max_length=20)
    #: the app creator's share of each level-2 charge, basis points (7000 = 70 %); the platform keeps the rest
    creator_share_bps: int = Field(default=7000, sa_column=Column(Integer, nullable=False, server_default=text("7000")))
    #: trial mode: tokens (prompt + completion) each wallet may use for free
    trial_token_allowance: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: trial mode: what happens after the allowance: 'bill' (as production) or 'pause'
    trial_then: str = Field(default=TrialThen.pause, max_length=10, sa_column_kwargs={"server_default": "pause"})
    #: the most one turn may cost, nano-USD (default $50): a costlier turn is refused by the gate
    #: (422 naming cost_nanos, nothing charged); copied into each wallet's gate hash (max_turn_nanos)
    max_turn_cost_nanos: int = Field(default=DEFAULT_MAX_TURN_COST_NANOS,
                                     sa_column=_big(nullable=False, server_default=text(str(DEFAULT_MAX_TURN_COST_NANOS))))
    #: track_only mode: flat monthly fee, nano-USD, debited from ``fee_wallet_id`` at each UTC month start
    flat_fee_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    fee_wallet_id: str | None = Field(default=None, max_length=200)
    #: the app creator (``mozaiks_user_id``): only this app's turns may charge that creator's
    #: platform-level wallet through the API
    creator_id: str | None = Field(default=None, max_length=200, index=True)
    #: Stripe Connect account (acct_…) that receives the creator's share of end-user payments
    stripe_account_id: str | None = Field(default=None, max_length=100)
    #: where tollgate POSTs this app's events (alerts, resumes), signed with ``webhook_secret``
    callback_url: str | None = Field(default=None, max_length=500)
    webhook_secret: str | None = Field(default=None, max_length=200)
    #: the PostgreSQL schema holding this app's usage events (``worker.ledger.isolation``); None: shared tables
    usage_schema: str | None = Field(default=None, max_length=63, unique=True)
    #: every charged turn of this app's wallets needs a live reservation of its own wallet (a wallet
    #: may override it); else it is denied
    reservations_required: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class Wallet(SQLModel, table=True):
    """A payer's balance.  ``credits_nanos − debits_nanos`` is the balance the ledger holds; the
    gate's Redis copy may be ahead of it by the outbox not yet persisted.

    ``limited=False`` wallets are never denied (balance may go negative: it tracks spend only).
    """

    __tablename__ = "wallet"

    id: str = Field(primary_key=True, max_length=200)
    enterprise_id: str | None = Field(default=None, foreign_key="enterprise.id", index=True, max_length=200)
    owner_id: str = Field(max_length=200)
    level: str = Field(default=PayerLevel.app_usage, max_length=20)
    mode: str = Field(default=BillingMode.production, max_length=20)
    currency: str = Field(default="USD", max_length=3)
    limited: bool = True
    credits_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    debits_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: subscription allowance granted at each UTC month start (unused allowance expires), nano-USD
    monthly_allowance_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: why the gate refuses this wallet's turns regardless of balance (e.g. 'budget_exceeded'), or None
    blocked_reason: str | None = Field(default=None, max_length=200)
    #: True when ``mode`` was set on this wallet; False when it follows its app's ``default_mode``
    mode_override: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    #: trial mode: tokens used from the trial allowance (persisted turns)
    trial_tokens_used: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: reservations required for this wallet's charged turns: True / False, or None to follow its app
    reservations_required: bool | None = Field(default=None)
    #: nanos of turns' cost this wallet could not pay (reservations required, cost above the
    #: reservation plus the free balance): the sum of its usage events' ``debt_nanos``
    debt_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    stripe_customer_id: str | None = Field(default=None, max_length=100, index=True)
    stripe_subscription_id: str | None = Field(default=None, max_length=100)
    #: Stripe subscription status as last reported ('active', 'past_due', 'canceled', …), or None
    subscription_status: str | None = Field(default=None, max_length=30)
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class WalletTransaction(SQLModel, table=True):
    """One ledger entry: a credit (top-up, grant) or a debit (the persisted turns of one drain batch).

    ``idempotency_key`` is unique: the same credit applied twice is one entry.
    """

    __tablename__ = "wallet_transaction"
    __table_args__ = (Index("ix_wallet_transaction_wallet_created", "wallet_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    wallet_id: str = Field(foreign_key="wallet.id", max_length=200)
    kind: str = Field(max_length=10)
    amount_nanos: int = Field(sa_column=_big(nullable=False))
    turns: int = 0
    idempotency_key: str = Field(max_length=300, unique=True)
    description: str = Field(default="", max_length=500)
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class ChatSession(SQLModel, table=True):
    """A billing session over one chat: its status and running token and cost totals."""

    __tablename__ = "chat_session"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "chat_id", name="uq_chat_session_enterprise_chat"),
        Index("ix_chat_session_wallet", "wallet_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enterprise_id: str = Field(max_length=200)
    chat_id: str = Field(max_length=200)
    wallet_id: str = Field(foreign_key="wallet.id", max_length=200)
    workflow: str = Field(max_length=200)
    status: str = Field(default=ChatStatus.active, max_length=20)
    pause_reason: str | None = Field(default=None, max_length=200)
    connection_state: str = Field(default=ConnectionState.connected, max_length=20,
                                  sa_column_kwargs={"server_default": "connected"})
    #: the chat is paused and its wallet can pay again: the orchestrator may resume it
    can_resume: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    paused_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    started_at: datetime = Field(sa_column=_ts(nullable=False))
    last_turn_at: datetime = Field(sa_column=_ts(nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    #: where in the gate's decision order the chat's state was last decided (``worker.ledger.turns.chat_order``):
    #: the deciding turn's outbox entry, or the outbox position of a pause, resume or credit; ''
    #: nothing decided yet.  Only a later position changes the state.
    state_key: str = Field(default="", max_length=100, sa_column_kwargs={"server_default": ""})
    turns: int = 0
    prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cost_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    billed_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))


class ChatAgentUsage(SQLModel, table=True):
    """Per-agent usage within one chat session (agents are discovered from the turns)."""

    __tablename__ = "chat_agent_usage"

    chat_session_id: int = Field(sa_column=Column(BigInteger, ForeignKey("chat_session.id"), primary_key=True))
    agent: str = Field(primary_key=True, max_length=200)
    turns: int = 0
    prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    duration_ms: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cost_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))


class UsageTurnKey(SQLModel, table=True):
    """The idempotency index of persisted turns: one row per turn_id in its scope, the
    (enterprise_id, wallet_id) pair, ever (until retention).  The gate keys its first answers by the
    same scope, so the same turn_id in another scope is an independent turn, persisted too.

    ``usage_event`` is partitioned by month, and PostgreSQL can only enforce a unique key on a
    partitioned table if it contains the partition key; a turn_id retried with another
    ``occurred_at`` would then be persisted twice.  This small unpartitioned table holds the unique
    turn_id instead: the drain inserts here first (``ON CONFLICT DO NOTHING``) and writes
    ``usage_event`` rows only for the keys it inserted, in the same statement.
    """

    __tablename__ = "usage_turn_key"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    wallet_id: str = Field(primary_key=True, max_length=200)
    turn_id: str = Field(primary_key=True, max_length=300)
    outbox_id: str = Field(max_length=60)
    occurred_at: datetime = Field(sa_column=_ts(nullable=False))
    recorded_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class UsageEvent(SQLModel, table=True):
    """One accepted turn, persisted once (its turn_id is in :class:`UsageTurnKey` once), with the
    prices it was charged at.  Partitioned by month of ``occurred_at`` (UTC), and a month by app
    (``enterprise_id``) once an app keeps its events in its own schema (``worker.ledger.isolation``), so
    its primary key is ``(id, occurred_at, enterprise_id)``; ``worker.ledger.partitions`` creates the months
    ahead and applies retention.

    ``outbox_id`` (``<shard>:<stream id>``) is the outbox entry it came from: a re-delivery carries
    the same one, a second acceptance of the same turn_id by the gate another.

    ``cost_nanos`` is what the turn cost at those prices; ``billed_nanos`` what was debited
    (0 in development mode).  Unit prices are nano-USD per million tokens.
    """

    __tablename__ = "usage_event"
    __table_args__ = (
        Index("ix_usage_event_wallet_occurred", "wallet_id", "occurred_at"),
        Index("ix_usage_event_enterprise_workflow_occurred", "enterprise_id", "workflow", "occurred_at"),
        Index("ix_usage_event_enterprise_chat", "enterprise_id", "chat_id"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    turn_id: str = Field(max_length=300, index=True)
    outbox_id: str = Field(max_length=60)
    wallet_id: str = Field(max_length=200)
    enterprise_id: str = Field(max_length=200, primary_key=True)
    chat_id: str = Field(max_length=200)
    workflow: str = Field(max_length=200)
    agent: str = Field(max_length=200)
    model: str = Field(max_length=200)
    provider: str = Field(max_length=100)
    mode: str = Field(max_length=20)
    #: payer level ('platform' | 'app_usage') and who receives the charge: 'platform', or the app
    #: (its enterprise_id) for level-2 charges, which are split into creator share + platform fee
    level: str = Field(default=PayerLevel.app_usage, max_length=20, sa_column_kwargs={"server_default": "app_usage"})
    billing_target: str = Field(default="platform", max_length=200, sa_column_kwargs={"server_default": "platform"})
    #: False for turns never billed (development, track_only, trial turns inside the allowance)
    billable: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    creator_share_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    platform_fee_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: tokens of this turn taken from the wallet's trial allowance
    trial_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: 'llm' for an LLM turn; else a non-LLM meter ('emails', 'storage_gb_month', 'function_calls')
    #: with ``quantity`` units priced at ``unit_price_nanos`` per ``unit_scale`` units
    meter: str = Field(default="llm", max_length=50, sa_column_kwargs={"server_default": "llm"})
    quantity: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: the part of prompt_tokens written to the provider's cache, and the rate it was charged at
    cache_write_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cache_write_nanos_per_mtok: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: the part of cache_write_tokens written to the 1-hour cache, and the rate it was charged at
    cache_write_1h_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cache_write_1h_nanos_per_mtok: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: the provider's service tier the turn was priced at (OpenAI's flex, priority, …); None: standard
    service_tier: str | None = Field(default=None, max_length=32)
    prompt_tokens: int = Field(sa_column=_big(nullable=False))
    completion_tokens: int = Field(sa_column=_big(nullable=False))
    cached_prompt_tokens: int = Field(sa_column=_big(nullable=False))
    duration_ms: int = Field(sa_column=_big(nullable=False))
    input_nanos_per_mtok: int = Field(sa_column=_big(nullable=False))
    cached_input_nanos_per_mtok: int = Field(sa_column=_big(nullable=False))
    output_nanos_per_mtok: int = Field(sa_column=_big(nullable=False))
    cost_nanos: int = Field(sa_column=_big(nullable=False))
    billed_nanos: int = Field(sa_column=_big(nullable=False))
    #: the part of cost_nanos not debited because the wallet could not pay it (reservations
    #: required, cost above the reservation plus the free balance): owed, on the wallet's debt
    debt_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    balance_after_nanos: int | None = Field(default=None, sa_column=_big(nullable=True))
    action: str = Field(max_length=10)
    occurred_at: datetime = Field(sa_column=_ts(nullable=False, primary_key=True))
    recorded_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class RollupDirty(SQLModel, table=True):
    """A (enterprise, workflow, month) whose rollup is out of date: the drain marks it in the same
    transaction as the usage events (``ON CONFLICT DO UPDATE``, so the row lock orders it against a
    refresh that is deleting it); the rollup job refreshes and deletes it."""

    __tablename__ = "rollup_dirty"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    touched_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class BudgetDirty(SQLModel, table=True):
    """A budget scope × month whose spend changed: rollup_dirty's mechanism for budgets.  The drain
    marks each (wallet, enterprise, workflow, month) of the turns it inserts, in the same transaction
    (``ON CONFLICT DO UPDATE``); ``worker.billing.budgets.check_budgets`` takes the marks (``FOR UPDATE SKIP
    LOCKED``) and evaluates the budgets of those scopes in those months, so a turn persisted after its
    month ended still reaches its month's alerts."""

    __tablename__ = "budget_dirty"

    wallet_id: str = Field(primary_key=True, max_length=200)
    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    touched_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class WorkflowRollup(SQLModel, table=True):
    """The pre-computed summary of one enterprise × workflow × calendar month (UTC): the seed's
    ``mon_{enterprise_id}_{workflow_name}`` document (JSONB, money in nanos) plus typed totals."""

    __tablename__ = "workflow_rollup"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)
    document: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    total_sessions: int = 0
    total_turns: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    cost_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    refreshed_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class Budget(SQLModel, table=True):
    """A monthly spending budget on one wallet (``wallet_id``) or one workflow of an app
    (``workflow``), in nano-USD, with alerts at 50/80/100 % and an optional auto-pause at 100 %."""

    __tablename__ = "budget"
    __table_args__ = (
        CheckConstraint("(wallet_id IS NULL) <> (workflow IS NULL)", name="ck_budget_one_scope"),
        CheckConstraint("amount_nanos > 0", name="ck_budget_positive"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enterprise_id: str = Field(foreign_key="enterprise.id", index=True, max_length=200)
    wallet_id: str | None = Field(default=None, foreign_key="wallet.id", max_length=200)
    workflow: str | None = Field(default=None, max_length=200)
    amount_nanos: int = Field(sa_column=_big(nullable=False))
    auto_pause: bool = False
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class BudgetAlert(SQLModel, table=True):
    """One alert: a budget crossed a threshold (50, 80 or 100 %) in a period; unique per
    (budget, period, threshold), so it is sent once however often or concurrently the job runs."""

    __tablename__ = "budget_alert"
    __table_args__ = (UniqueConstraint("budget_id", "period", "threshold_pct", name="uq_budget_alert_once"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    budget_id: int = Field(sa_column=Column(BigInteger, ForeignKey("budget.id"), nullable=False))
    period: str = Field(max_length=7)
    threshold_pct: int
    spent_nanos: int = Field(sa_column=_big(nullable=False))
    amount_nanos: int = Field(sa_column=_big(nullable=False))
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    #: when the alert was published and its webhook queued; None: not yet (the next check sends it)
    notified_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ReconciliationRun(SQLModel, table=True):
    """One comparison of every wallet's gate balance (Redis) with the ledger (PostgreSQL)."""

    __tablename__ = "reconciliation_run"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    started_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    wallets_checked: int = 0
    wallets_busy: int = 0
    wallets_drifted: int = 0
    drift_nanos_abs: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    repair: bool = False
    rebuild: bool = False


class WalletDrift(SQLModel, table=True):
    """A wallet whose gate balance differed from ``ledger − queued`` in a reconciliation run."""

    __tablename__ = "wallet_drift"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    run_id: int = Field(sa_column=Column(BigInteger, ForeignKey("reconciliation_run.id"), nullable=False, index=True))
    wallet_id: str = Field(max_length=200)
    gate_nanos: int | None = Field(default=None, sa_column=_big(nullable=True))
    expected_nanos: int = Field(sa_column=_big(nullable=False))
    drift_nanos: int = Field(sa_column=_big(nullable=False))
    repaired: bool = False


class ApiRole(StrEnum):
    """What an API key may see: ``owner`` one app's billing, ``end_user`` one wallet and its chats,
    ``admin`` aggregates across apps (no end user's detail)."""

    owner = "owner"
    end_user = "end_user"
    admin = "admin"


class ApiKey(SQLModel, table=True):
    """An API key, stored as the SHA-256 of the secret (the key is shown once, at creation).

    ``enterprise_id`` scopes ``owner`` and ``end_user`` keys; ``wallet_id`` scopes ``end_user`` keys.
    """

    __tablename__ = "api_key"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    prefix: str = Field(max_length=20, unique=True)
    key_sha256: str = Field(max_length=64)
    role: str = Field(max_length=20)
    enterprise_id: str | None = Field(default=None, foreign_key="enterprise.id", max_length=200)
    wallet_id: str | None = Field(default=None, foreign_key="wallet.id", max_length=200)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class AuditLog(SQLModel, table=True):
    """Who did what to money or access: every credit, mode change and key change."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_enterprise_created", "enterprise_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    actor: str = Field(max_length=200)  # 'key:<prefix>', 'cli', 'stripe', 'system'
    action: str = Field(max_length=50)  # 'credit', 'mode_change', 'key_create', 'key_revoke'
    enterprise_id: str | None = Field(default=None, max_length=200)
    wallet_id: str | None = Field(default=None, max_length=200)
    detail: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class PausedChat(SQLModel, table=True):
    """A chat stopped for lack of funds (or by a budget): why, when, and what is needed to resume.

    At most one open record (``resumed_at IS NULL``) per chat (partial unique index).  A credit that
    makes the wallet able to pay again marks every open record of that wallet resumed, once
    (``UPDATE … WHERE resumed_at IS NULL RETURNING``), and tells the orchestrator.
    """

    __tablename__ = "paused_chat"
    __table_args__ = (
        Index("uq_paused_chat_open", "enterprise_id", "chat_id", unique=True,
              postgresql_where=text("resumed_at IS NULL")),
        Index("ix_paused_chat_wallet_open", "wallet_id", postgresql_where=text("resumed_at IS NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enterprise_id: str = Field(max_length=200)
    chat_id: str = Field(max_length=200)
    wallet_id: str = Field(max_length=200)
    reason: str = Field(max_length=200)  # 'wallet_exhausted', 'trial_exhausted', 'budget_exceeded', …
    #: nano-USD the wallet needs on top of its balance and holds before the chat can go on
    needed_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    paused_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    resumed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    #: what resumed it: the credit's idempotency key, 'mode_change', …
    resumed_by: str | None = Field(default=None, max_length=300)


class StripeEvent(SQLModel, table=True):
    """A Stripe webhook event, stored once by its id when it arrives, processed by a task."""

    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)  # evt_…
    type: str = Field(max_length=100)
    payload: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    received_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    processed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    #: what processing did ('credited', 'ignored', 'error: …'), for operators
    outcome: str | None = Field(default=None, max_length=500)


class TokenPackage(SQLModel, table=True):
    """Something a payer can buy through Stripe: a one-off top-up (``monthly=False``) or a
    subscription granting ``credit_nanos`` as its monthly allowance (``monthly=True``).
    ``price_cents`` is what Stripe charges (USD cents), ``credit_nanos`` what the wallet receives."""

    __tablename__ = "token_package"
    #: a Stripe price is one package: invoice.paid finds the package by it
    __table_args__ = (Index("uq_token_package_stripe_price", "stripe_price_id", unique=True,
                            postgresql_where=text("stripe_price_id IS NOT NULL")),)

    id: str = Field(primary_key=True, max_length=100)
    name: str = Field(max_length=200)
    price_cents: int = Field(sa_column=_big(nullable=False))
    credit_nanos: int = Field(sa_column=_big(nullable=False))
    monthly: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    stripe_price_id: str | None = Field(default=None, max_length=100)
    active: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))


class DeadLetter(SQLModel, table=True):
    """An outbox entry the drain could not persist (``worker.ledger.deadletter``), kept until an operator
    retries or discards it.  ``fields_json`` is the entry's own fields as ASCII JSON (NUL, lone
    surrogates and bytes that were not UTF-8 escaped), so any entry can be stored; ``turn_id`` and
    ``wallet_id`` are the payload's, NULL when PostgreSQL cannot store them.  ``status``: 'open',
    'retried' or 'discarded' (then ``resolved_at``)."""

    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_open", "shard", "id", postgresql_where=text("status = 'open'")),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    #: ``<shard>:<outbox stream id>``, as ``usage_event.outbox_id``
    outbox_id: str = Field(max_length=100, unique=True)
    shard: int
    turn_id: str | None = Field(default=None, max_length=1000)
    wallet_id: str | None = Field(default=None, max_length=1000)
    billed_nanos: int = Field(default=0, sa_column=_big(nullable=False, server_default=text("0")))
    #: the ledger holds its named debt (``tollgate:deadletter:<outbox_id>``)
    charged: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    error: str = Field(default="", max_length=2000)
    error_class: str = Field(default="", max_length=200)
    fields_json: str
    status: str = Field(default="open", max_length=20)
    created_at: datetime = Field(sa_column=_ts(nullable=False, server_default=func.now()))
    resolved_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
