"""The wallet family: apps (``enterprise``), wallets, their ledger entries (``wallet_transaction``),
and the API shapes of credits, reservations and modes.  Money is integer nano-USD."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Column, Index, Integer, func, text
from sqlmodel import Field, SQLModel

from models.columns import big, enum_type, ts
from models.enums import BillingMode, PayerLevel, TransactionKind, TrialThen
from models.validation import FreeText, Id, InputModel, PositiveNanos

#: an app's default limit on the cost of one turn, nano-USD ($50); worker/gate/lua/lib_turn.lua's
#: DEFAULT_MAX_TURN_NANOS is the same figure for wallets loaded without one
DEFAULT_MAX_TURN_COST_NANOS = 50_000_000_000


class Enterprise(SQLModel, table=True):
    """An app on the platform (``enterprise_id``)."""

    __tablename__ = "enterprise"

    id: str = Field(primary_key=True, max_length=200)
    name: str = Field(max_length=200)
    default_mode: BillingMode = Field(default=BillingMode.production, sa_type=enum_type(BillingMode, 20))
    #: the app creator's share of each level-2 charge, basis points (7000 = 70 %); the platform keeps the rest
    creator_share_bps: int = Field(default=7000, sa_column=Column(Integer, nullable=False, server_default=text("7000")))
    #: trial mode: tokens (prompt + completion) each wallet may use for free
    trial_token_allowance: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: trial mode: what happens after the allowance: 'bill' (as production) or 'pause'
    trial_then: TrialThen = Field(
        default=TrialThen.pause, sa_type=enum_type(TrialThen, 10), sa_column_kwargs={"server_default": "pause"}
    )
    #: the most one turn may cost, nano-USD (default $50): a costlier turn is refused by the gate
    #: (422 naming cost_nanos, nothing charged); copied into each wallet's gate hash (max_turn_nanos)
    max_turn_cost_nanos: int = Field(
        default=DEFAULT_MAX_TURN_COST_NANOS,
        sa_column=big(nullable=False, server_default=text(str(DEFAULT_MAX_TURN_COST_NANOS))),
    )
    #: track_only mode: flat monthly fee, nano-USD, debited from ``fee_wallet_id`` at each UTC month start
    flat_fee_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
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
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class WalletBase(SQLModel):
    """The fields of a wallet that its table and its API shape share, in the API's order: its id,
    its app (``enterprise_id``; None for a platform-level wallet of no app), payer ``level``,
    billing ``mode`` and whether it is ``limited`` (``False``: never denied, the balance may go
    negative: it tracks spend only)."""

    id: str = Field(primary_key=True, max_length=200)
    enterprise_id: str | None = Field(default=None, foreign_key="enterprise.id", index=True, max_length=200)
    level: PayerLevel = Field(default=PayerLevel.app_usage, sa_type=enum_type(PayerLevel, 20))
    mode: BillingMode = Field(default=BillingMode.production, sa_type=enum_type(BillingMode, 20))
    limited: bool = True


class Wallet(WalletBase, table=True):
    """A payer's balance.  ``credits_nanos − debits_nanos`` is the balance the ledger holds; the
    gate's Redis copy may be ahead of it by the outbox not yet persisted.
    """

    __tablename__ = "wallet"

    owner_id: str = Field(max_length=200)
    currency: str = Field(default="USD", max_length=3)
    credits_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    debits_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: subscription allowance granted at each UTC month start (unused allowance expires), nano-USD
    monthly_allowance_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: why the gate refuses this wallet's turns regardless of balance (e.g. 'budget_exceeded'), or None
    blocked_reason: str | None = Field(default=None, max_length=200)
    #: True when ``mode`` was set on this wallet; False when it follows its app's ``default_mode``
    mode_override: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    #: trial mode: tokens used from the trial allowance (persisted turns)
    trial_tokens_used: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    #: reservations required for this wallet's charged turns: True / False, or None to follow its app
    reservations_required: bool | None = Field(default=None)
    #: nanos of turns' cost this wallet could not pay (reservations required, cost above the
    #: reservation plus the free balance): the sum of its usage events' ``debt_nanos``
    debt_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    stripe_customer_id: str | None = Field(default=None, max_length=100, index=True)
    stripe_subscription_id: str | None = Field(default=None, max_length=100)
    #: Stripe subscription status as last reported ('active', 'past_due', 'canceled', …), or None
    subscription_status: str | None = Field(default=None, max_length=30)
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class WalletPublic(WalletBase):
    """A wallet's balances in nano-USD: the gate's (Redis, live) and the ledger's (PostgreSQL);
    ``held_nanos`` (its live reservations) and ``can_continue`` (would the gate accept its next
    turn: balance − reservations, mode, block, trial; ``worker.chats.lifecycle.can_continue``) are
    None when the wallet is not loaded in the gate.  Its ``id`` is the JSON key ``wallet_id`` (and
    the constructor's keyword)."""

    id: str = Field(alias="wallet_id")
    gate_balance_nanos: int | None
    held_nanos: int | None = None
    can_continue: bool | None = None
    ledger_balance_nanos: int
    credits_nanos: int
    debits_nanos: int
    #: owed: turns' cost the wallet could not pay (reservations required, cost above the reservation
    #: plus the free balance), persisted so far
    debt_nanos: int = 0
    #: every charged turn needs a live reservation of this wallet (its own setting, else its app's)
    reservations_required: bool = False


class WalletTransactionBase(SQLModel):
    """The fields of a ledger entry that its table and its API shape share: a ``credit`` (top-up,
    grant) or a ``debit`` (the persisted turns of one drain batch, ``turns`` of them) of
    ``amount_nanos`` nano-USD, once per ``idempotency_key``."""

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    kind: TransactionKind = Field(sa_type=enum_type(TransactionKind, 10))
    amount_nanos: int = Field(sa_column=big(nullable=False))
    turns: int = 0
    idempotency_key: str = Field(max_length=300, unique=True)
    description: str = Field(default="", max_length=500)
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class WalletTransaction(WalletTransactionBase, table=True):
    """One ledger entry of wallet ``wallet_id``: a credit (top-up, grant) or a debit (the persisted
    turns of one drain batch).

    ``idempotency_key`` is unique: the same credit applied twice is one entry.
    """

    __tablename__ = "wallet_transaction"
    __table_args__ = (Index("ix_wallet_transaction_wallet_created", "wallet_id", "created_at"),)

    wallet_id: str = Field(foreign_key="wallet.id", max_length=200)


class WalletTransactionPublic(WalletTransactionBase):
    """One ledger entry of a wallet (``wallet_transaction``) as the API shows it:
    ``WalletTransactionPublic.model_validate(row)``."""

    id: int


class WalletTransactionsPublic(BaseModel):
    """A page of ledger entries, newest first; pass ``next_cursor`` as ``cursor`` for the next page
    (``None``: last page)."""

    wallet_id: str
    data: list[WalletTransactionPublic]
    count: int
    next_cursor: int | None


class CreditCreate(InputModel):
    """A credit to a wallet: ``amount_nanos`` (> 0, nano-USD) once per ``idempotency_key``
    (1..200 characters, e.g. a payment id; the same key again credits nothing more)."""

    amount_nanos: PositiveNanos
    idempotency_key: Id
    description: FreeText = ""


class CreditPublic(BaseModel):
    """A credit applied: the wallet's gate balance after it, nano-USD (None for an admin key: an
    admin sees aggregates, never one end user's balance); ``replayed`` when the key had already been
    used (nothing changed)."""

    wallet_id: str
    amount_nanos: int
    idempotency_key: str
    balance_nanos: int | None
    replayed: bool


class ReservationCreate(InputModel):
    """A reservation to place on a wallet before an LLM call, for ``ttl_s`` seconds (1..86,400): either
    ``amount_nanos`` (the estimate, nano-USD, 1..2^62), or ``model`` (+ ``provider``),
    ``prompt_tokens`` and ``max_tokens``, which the gate prices at the worst case (every prompt
    token at the input price, ``max_tokens`` at the output price).  The same ``reservation_id``
    twice is one reservation.  422 naming ``amount_nanos`` for neither or both, 0 or a negative amount.
    ``service_tier`` (with ``model``): the provider tier the call asks for (OpenAI's ``priority``,
    ``flex``, …), priced as a turn of that tier; 422 naming ``service_tier`` for a tier the model has
    no price for, or a tier without ``model``."""

    amount_nanos: PositiveNanos | None = None
    model: Annotated[str, PydanticField(min_length=1, max_length=200)] | None = None
    provider: Annotated[str, PydanticField(min_length=1, max_length=100)] | None = None
    prompt_tokens: Annotated[int, PydanticField(strict=True, ge=0, le=10**9)] = 0
    max_tokens: Annotated[int, PydanticField(strict=True, ge=0, le=10**9)] | None = None
    service_tier: Annotated[str, PydanticField(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")] | None = None
    ttl_s: Annotated[int, PydanticField(strict=True, ge=1, le=86_400)] = 300
    reservation_id: Id | None = None


class ReservationPublic(BaseModel):
    """A reservation of a wallet's funds, as the gate answers it (``WalletGate.reserve`` returns this; the
    API sends it as is): ``granted`` or refused; ``amount_nanos`` held; the wallet's
    ``balance_nanos`` and total ``held_nanos`` right after (available = balance − held), nano-USD;
    ``duplicate`` when the ``reservation_id`` was held before (the first answer, nothing changed)."""

    model_config = ConfigDict(frozen=True)

    reservation_id: str
    wallet_id: str
    granted: bool
    amount_nanos: int
    balance_nanos: int
    held_nanos: int
    duplicate: bool


class ReleasePublic(BaseModel):
    """A reservation given back: ``released_nanos`` (0 when it was already settled, released or expired)."""

    reservation_id: str
    wallet_id: str
    released_nanos: int


class ModeUpdate(InputModel):
    """A billing mode: production, development, trial or track_only.  On a wallet, ``null`` makes it
    follow its app's default mode again."""

    mode: BillingMode | None


class ModePublic(BaseModel):
    """A mode after a change: the app's default (``wallets_changed`` followed it) or one wallet's."""

    mode: BillingMode
    enterprise_id: str | None = None
    wallet_id: str | None = None
    wallets_changed: int | None = None
