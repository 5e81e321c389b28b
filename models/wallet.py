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
    enterprise_id: str | None = Field(
        default=None,
        foreign_key="enterprise.id",
        index=True,
        max_length=200,
        description="The app the wallet belongs to; null for a platform wallet (an app creator's own, of no app).",
    )
    level: PayerLevel = Field(
        default=PayerLevel.app_usage,
        sa_type=enum_type(PayerLevel, 20),
        description="Who pays: `app_usage` (an app's end user) or `platform` (an app creator, for building apps).",
    )
    mode: BillingMode = Field(
        default=BillingMode.production,
        sa_type=enum_type(BillingMode, 20),
        description="The billing mode its turns are charged in: production, development, trial or track_only.",
    )
    limited: bool = Field(
        default=True,
        description="True: turns are denied when the balance cannot pay. False: never denied; the balance may go negative (spend is tracked).",
    )


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


# WalletPublic: the gate's balance (Redis, live) and the ledger's (PostgreSQL); held_nanos and
# can_continue (worker.chats.lifecycle.can_continue) are None when the wallet is not loaded in the
# gate.  Its ``id`` is the JSON key ``wallet_id`` (and the constructor's keyword).
class WalletPublic(WalletBase):
    """A wallet's balances and state, money in integer nano-USD (1 USD = 1,000,000,000)."""

    id: str = Field(alias="wallet_id", description="The wallet's id.")
    gate_balance_nanos: int | None = Field(
        description="The live balance turns are charged against, nano-USD; null when the wallet is not active for metering yet."
    )
    held_nanos: int | None = Field(
        default=None,
        description="The part of the balance held by open reservations, nano-USD; null when not active yet.",
    )
    can_continue: bool | None = Field(
        default=None,
        description="Would its next turn be accepted now (balance, reservations, mode, budget, trial)? Null when not active yet.",
    )
    ledger_balance_nanos: int = Field(
        description="`credits_nanos` − `debits_nanos`: the ledger's balance, which trails the live balance by seconds."
    )
    credits_nanos: int = Field(description="All credits in the ledger, nano-USD.")
    debits_nanos: int = Field(description="All debits in the ledger (recorded turns), nano-USD.")
    #: owed: turns' cost the wallet could not pay (reservations required, cost above the reservation
    #: plus the free balance), persisted so far
    debt_nanos: int = Field(
        default=0,
        description="Turns' cost the wallet could not pay (reservations required, cost above the reservation and free balance): owed, nano-USD.",
    )
    #: every charged turn needs a live reservation of this wallet (its own setting, else its app's)
    reservations_required: bool = Field(
        default=False,
        description="True: every charged turn of this wallet must settle a reservation, else it is denied.",
    )


class WalletTransactionBase(SQLModel):
    """The fields of a ledger entry that its table and its API shape share: a ``credit`` (top-up,
    grant) or a ``debit`` (the persisted turns of one drain batch, ``turns`` of them) of
    ``amount_nanos`` nano-USD, once per ``idempotency_key``."""

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    kind: TransactionKind = Field(
        sa_type=enum_type(TransactionKind, 10), description="`credit` (top-up, grant) or `debit` (recorded turns)."
    )
    amount_nanos: int = Field(
        sa_column=big(nullable=False), description="The amount, nano-USD (> 0; the `kind` gives its direction)."
    )
    turns: int = Field(default=0, description="For a debit: how many recorded turns it covers; 0 for a credit.")
    idempotency_key: str = Field(
        max_length=300,
        unique=True,
        description="The entry's unique key: a credit's `idempotency_key`, or tollgate's own for a debit.",
    )
    description: str = Field(
        default="", max_length=500, description="Free text given with the credit, or tollgate's note on a debit."
    )
    created_at: datetime = Field(
        sa_column=ts(nullable=False, server_default=func.now()), description="When the entry was written (UTC)."
    )


class WalletTransaction(WalletTransactionBase, table=True):
    """One ledger entry of wallet ``wallet_id``: a credit (top-up, grant) or a debit (the persisted
    turns of one drain batch).

    ``idempotency_key`` is unique: the same credit applied twice is one entry.
    """

    __tablename__ = "wallet_transaction"
    __table_args__ = (Index("ix_wallet_transaction_wallet_created", "wallet_id", "created_at"),)

    wallet_id: str = Field(foreign_key="wallet.id", max_length=200)


# WalletTransactionPublic.model_validate(row): a wallet_transaction row as the API shows it
class WalletTransactionPublic(WalletTransactionBase):
    """One ledger entry of a wallet: a credit or a debit, in nano-USD."""

    id: int = Field(description="The entry's id: increasing; the page cursor.")


class WalletTransactionsPublic(BaseModel):
    """A page of a wallet's ledger entries, newest first."""

    wallet_id: str = PydanticField(description="The wallet.")
    data: list[WalletTransactionPublic] = PydanticField(description="The entries of this page, newest first.")
    count: int = PydanticField(description="The number of entries in `data`.")
    next_cursor: int | None = PydanticField(
        description="Pass as `cursor` for the next page; null: this is the last page."
    )


class CreditCreate(InputModel):
    """A credit to a wallet, applied once per `idempotency_key`."""

    amount_nanos: PositiveNanos = PydanticField(
        description="The amount to add, nano-USD: an integer from 1 to 2^62 (1 USD = 1,000,000,000)."
    )
    idempotency_key: Id = PydanticField(
        description="Your unique key for this credit (e.g. your payment's id), 1..200 characters: the same key credits once."
    )
    description: FreeText = PydanticField(
        "", description="Free text kept with the ledger entry (at most 500 characters)."
    )


class CreditPublic(BaseModel):
    """A credit applied (or replayed), and the wallet's balance after it."""

    wallet_id: str = PydanticField(description="The wallet credited.")
    amount_nanos: int = PydanticField(description="The amount credited, nano-USD.")
    idempotency_key: str = PydanticField(description="The credit's key.")
    balance_nanos: int | None = PydanticField(
        description="The wallet's live balance after the credit, nano-USD; null for an admin key."
    )
    replayed: bool = PydanticField(description="True: this key had already been credited; nothing changed.")


# ReservationCreate: 422 naming amount_nanos for neither or both, 0 or a negative amount; naming
# service_tier for a tier the model has no price for, or a tier without model.
class ReservationCreate(InputModel):
    """Funds to hold before an LLM call: either `amount_nanos`, or `model` with `prompt_tokens` and
    `max_tokens`, priced at the call's worst case (every prompt token at the input price, all
    `max_tokens` at the output price)."""

    amount_nanos: PositiveNanos | None = PydanticField(
        None,
        description="The amount to hold, nano-USD (1..2^62). Give this, or `model` with `prompt_tokens` and `max_tokens`.",
    )
    model: Annotated[str, PydanticField(min_length=1, max_length=200)] | None = PydanticField(
        None, description="Instead of `amount_nanos`: the model to be called; the hold is the call's worst-case cost."
    )
    provider: Annotated[str, PydanticField(min_length=1, max_length=100)] | None = PydanticField(
        None, description="With `model`: its provider (omit to find it from the model)."
    )
    prompt_tokens: Annotated[int, PydanticField(strict=True, ge=0, le=10**9)] = PydanticField(
        0, description="With `model`: the call's input tokens, all priced at the input price."
    )
    max_tokens: Annotated[int, PydanticField(strict=True, ge=0, le=10**9)] | None = PydanticField(
        None, description="With `model` (required then): the call's output limit, priced at the output price."
    )
    service_tier: Annotated[str, PydanticField(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")] | None = (
        PydanticField(
            None,
            description="With `model`: the service tier the call asks for (e.g. `priority`, `flex`), priced at that tier.",
        )
    )
    ttl_s: Annotated[int, PydanticField(strict=True, ge=1, le=86_400)] = PydanticField(
        300, description="Seconds the hold lasts unless settled or released first (1..86,400)."
    )
    reservation_id: Id | None = PydanticField(
        None,
        description="Your id for the reservation (default: one is generated); give it to the turn that settles it. The same id again is the same reservation.",
    )


class ReservationPublic(BaseModel):
    """A reservation: granted or refused, what it holds and the wallet's balance right after (nano-USD)."""

    # WalletGate.reserve returns this; the API sends it as is

    model_config = ConfigDict(frozen=True)

    reservation_id: str = PydanticField(
        description="The reservation's id: pass it as the turn's `reservation_id`, or release it."
    )
    wallet_id: str = PydanticField(description="The wallet.")
    granted: bool = PydanticField(
        description="True: the amount is held. False: refused (not enough available funds, or the wallet is blocked); nothing held."
    )
    amount_nanos: int = PydanticField(
        description="The amount held, nano-USD (0 when refused, or when the wallet's turns are free now)."
    )
    balance_nanos: int = PydanticField(
        description="The wallet's live balance right after, nano-USD; available = `balance_nanos` − `held_nanos`."
    )
    held_nanos: int = PydanticField(description="All the wallet's held amounts right after, nano-USD.")
    duplicate: bool = PydanticField(
        description="True: this `reservation_id` was already held; this is its first answer, nothing changed."
    )


class ReleasePublic(BaseModel):
    """A reservation given back."""

    reservation_id: str = PydanticField(description="The reservation released.")
    wallet_id: str = PydanticField(description="The wallet.")
    released_nanos: int = PydanticField(description="The amount given back to the available balance, nano-USD.")


class ModeUpdate(InputModel):
    """A billing mode to set; on a wallet, null makes it follow its app's default mode again."""

    mode: BillingMode | None = PydanticField(
        description="`production`, `development`, `trial` or `track_only`; on a wallet, null: follow the app's default again."
    )


class ModePublic(BaseModel):
    """A billing mode after a change: an app's default, or one wallet's."""

    mode: BillingMode = PydanticField(description="The mode now in effect.")
    enterprise_id: str | None = PydanticField(None, description="The app, when its default mode was set.")
    wallet_id: str | None = PydanticField(None, description="The wallet, when one wallet's mode was set.")
    wallets_changed: int | None = PydanticField(
        None, description="For an app: how many of its wallets followed the new default."
    )
