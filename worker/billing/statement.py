"""Balances and the ledger of the wallets in a ``/billing`` view (issue 18 item 1), from
``wallet`` and ``wallet_transaction`` (PostgreSQL only; the route adds the gate's reserved amount).

- :func:`wallet_statements`: per wallet in scope, its ledger balance now (``credits_nanos −
  debits_nanos``), mode, state, and for one period (UTC month) the opening balance (entries before
  the period), credits and debits in it, and the closing balance (opening + credits − debits);
- :func:`ledger_page`: the period's ledger entries of the wallets in scope, newest first, paged;
- :func:`transaction_source`: where an entry came from, read from its idempotency key.

The opening balance is read as the balance now minus the entries from the period's start on (the
wallet's ``credits_nanos``/``debits_nanos`` are the sums of its entries: every writer of
``wallet_transaction`` updates them in the same transaction, and reconciliation checks it), so a
page reads the entries of its period and after, never the whole ledger history (issue 18: the
page stays fast at 1,000,000 usage events; ``ix_wallet_transaction_wallet_created`` serves it).

Money in integer nano-USD.  Reads only; never writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col

from models.chat import ChatSession
from models.enums import ChatStatus, TransactionKind
from models.wallet import Wallet, WalletTransaction
from worker.billing.report import largest_remainder, round_cents, validate_period
from worker.errors import InvalidInput
from worker.gate.keys import (
    ALLOWANCE_EXPIRY_PREFIX,
    ALLOWANCE_PREFIX,
    ALLOWANCE_RESTORE_PREFIX,
    DEADLETTER_CHARGE_PREFIX,
    DEADLETTER_REFUND_PREFIX,
    DEADLETTER_SETTLED_PREFIX,
    FLAT_FEE_PREFIX,
    REFUND_PREFIX,
    STRIPE_KEY_PREFIX,
    USAGE_PREFIX,
)

#: wallets listed at most in one view (largest ledger balance first)
MAX_WALLETS = 200
#: wallet modes that debit the wallet (an exhausted wallet of another mode stops nothing)
DEBITING_MODES = ("production", "trial")


def is_exhausted(*, limited: bool, mode: str, balance_nanos: int) -> bool:
    """Whether a wallet has run dry: it may not overdraw (``limited``), its ``mode`` debits it
    (:data:`DEBITING_MODES`) and its ledger balance is ≤ 0 nano-USD.  The gate then pauses every
    chat whose next turn it is asked to bill."""
    return limited and str(mode) in DEBITING_MODES and balance_nanos <= 0


#: ledger entries per page
LEDGER_PAGE_SIZE = 50

#: display labels of :func:`transaction_source` values
SOURCE_LABELS = {
    "stripe": "Stripe",
    "allowance": "Allowance",
    "allowance_expiry": "Allowance expired",
    "operator": "Operator",
    "usage": "Usage",
    "flat_fee": "Flat fee",
    "refund": "Refund",
    "dead_letter": "Dead-letter adjustment",
}


#: idempotency-key prefix → source, the first match wins (longer prefixes before their stems)
_SOURCES = (
    (STRIPE_KEY_PREFIX, "stripe"),
    (ALLOWANCE_EXPIRY_PREFIX, "allowance_expiry"),
    (ALLOWANCE_RESTORE_PREFIX, "allowance"),
    (ALLOWANCE_PREFIX, "allowance"),
    (USAGE_PREFIX, "usage"),
    (FLAT_FEE_PREFIX, "flat_fee"),
    (REFUND_PREFIX, "refund"),
    (DEADLETTER_REFUND_PREFIX, "dead_letter"),
    (DEADLETTER_SETTLED_PREFIX, "dead_letter"),
    (DEADLETTER_CHARGE_PREFIX, "dead_letter"),
)


def transaction_source(kind: str, idempotency_key: str) -> str:
    """Where a ledger entry came from, by its idempotency key (``worker.gate.keys``):
    ``stripe`` (``stripe:…``, a Checkout payment or a paid invoice), ``allowance`` (the monthly
    allowance granted or restored), ``allowance_expiry`` (unused allowance expired), ``usage`` (a
    drain batch's turns), ``flat_fee`` (a track-only app's monthly fee), ``refund`` (a turn the gate
    accepted twice), ``dead_letter`` (a dead-lettered turn charged, settled or refunded), else
    ``operator``: a credit (or debit) an owner or admin key, or the CLI, applied with a key of its
    own.  ``kind`` is ``credit`` or ``debit``; it does not change the source."""
    key = idempotency_key or ""
    for prefix, source in _SOURCES:
        if key.startswith(prefix):
            return source
    return "operator"


@dataclass(frozen=True, slots=True)
class WalletStatement:
    """One wallet in view.  ``balance_nanos`` is its ledger balance now (credits − debits, all
    time); ``state`` is, first that applies: ``blocked`` (``wallet.blocked_reason`` set: the gate
    refuses its turns), ``exhausted`` (:func:`is_exhausted`: out of funds, whether or not a chat has
    been paused yet), ``paused`` (one of its chats is paused, e.g. by a budget) or ``active``.  For the period:
    ``opening_nanos`` (entries before it), ``credits_nanos``/``debits_nanos`` (entries in it, both
    ≥ 0 for normal entries) and ``closing_nanos`` = opening + credits − debits.  ``credits_by_source``
    splits the period's credits by :func:`transaction_source`."""

    wallet_id: str
    mode: str
    level: str
    limited: bool
    state: str
    blocked_reason: str | None
    paused_chats: int
    balance_nanos: int
    opening_nanos: int
    credits_nanos: int
    debits_nanos: int
    credits_by_source: dict[str, int]

    @property
    def closing_nanos(self) -> int:
        """Opening + credits − debits of the period, nano-USD."""
        return self.opening_nanos + self.credits_nanos - self.debits_nanos

    def displayed(self) -> dict[str, int]:
        """Opening, credits, debits and closing in cents as displayed: the closing balance is its own
        rounding (half away from zero) and ``opening + credits − debits == closing`` in cents
        (:func:`worker.billing.report.largest_remainder` over opening, credits and −debits)."""
        opening, credits, minus_debits = largest_remainder(
            [self.opening_nanos, self.credits_nanos, -self.debits_nanos], round_cents(self.closing_nanos)
        )
        return {
            "opening": opening,
            "credits": credits,
            "debits": -minus_debits,
            "closing": round_cents(self.closing_nanos),
        }


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A ``wallet_transaction`` row: ``amount_nanos`` > 0 for either ``kind``; ``source`` from
    :func:`transaction_source`."""

    id: int
    wallet_id: str
    kind: str
    amount_nanos: int
    turns: int
    source: str
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerPage:
    """One page (1-based ``page``) of ``total`` entries, :data:`LEDGER_PAGE_SIZE` a page."""

    entries: list[LedgerEntry]
    page: int
    pages: int
    total: int


def _wallets(session: Session, enterprise_id: str, wallet_id: str | None) -> list[Wallet]:
    stmt = select(Wallet).where(col(Wallet.enterprise_id) == enterprise_id)
    if wallet_id is not None:
        stmt = stmt.where(col(Wallet.id) == wallet_id)
    stmt = stmt.order_by((col(Wallet.credits_nanos) - col(Wallet.debits_nanos)).desc(), col(Wallet.id))
    return list(session.execute(stmt.limit(MAX_WALLETS)).scalars())


def wallet_statements(
    session: Session, *, enterprise_id: str, period: str, wallet_id: str | None = None
) -> list[WalletStatement]:
    """The wallets of ``enterprise_id`` (only ``wallet_id`` if given: an end user's view), at most
    :data:`MAX_WALLETS`, largest balance first, each with its period figures (see
    :class:`WalletStatement`).  Raises ReportError naming ``period``."""
    start, end = validate_period(period)
    wallets = _wallets(session, enterprise_id, wallet_id)
    if not wallets:
        return []
    ids = [w.id for w in wallets]
    wt = WalletTransaction
    signed = func.sum(
        case((col(wt.kind) == TransactionKind.credit.value, col(wt.amount_nanos)), else_=-col(wt.amount_nanos))
    )
    # opening = balance now − entries since the period's start: reads the period and what followed
    # it, never the whole history (the wallet's counters are the sum of all its entries)
    since_start = dict(
        session.execute(
            select(col(wt.wallet_id), signed)
            .where(col(wt.wallet_id).in_(ids), col(wt.created_at) >= start)
            .group_by(col(wt.wallet_id))
        ).all()
    )
    opening = {w.id: int(w.credits_nanos) - int(w.debits_nanos) - int(since_start.get(w.id) or 0) for w in wallets}
    moves: dict[str, dict[tuple[str, str], int]] = {}
    for wid, kind, key, amount in session.execute(
        select(col(wt.wallet_id), col(wt.kind), col(wt.idempotency_key), col(wt.amount_nanos)).where(
            col(wt.wallet_id).in_(ids), col(wt.created_at) >= start, col(wt.created_at) < end
        )
    ):
        k = (str(kind), transaction_source(str(kind), key))
        moves.setdefault(wid, {})
        moves[wid][k] = moves[wid].get(k, 0) + int(amount)
    paused = dict(
        session.execute(
            select(col(ChatSession.wallet_id), func.count())
            .where(col(ChatSession.wallet_id).in_(ids), col(ChatSession.status) == ChatStatus.paused.value)
            .group_by(col(ChatSession.wallet_id))
        ).all()
    )
    out = []
    for w in wallets:
        m = moves.get(w.id, {})
        by_source: dict[str, int] = {}
        for (kind, source), amount in m.items():
            if kind == TransactionKind.credit.value:
                by_source[source] = by_source.get(source, 0) + amount
        n_paused = int(paused.get(w.id, 0))
        balance = int(w.credits_nanos) - int(w.debits_nanos)
        if w.blocked_reason:
            state = "blocked"
        elif is_exhausted(limited=bool(w.limited), mode=str(w.mode), balance_nanos=balance):
            state = "exhausted"
        else:
            state = "paused" if n_paused else "active"
        out.append(
            WalletStatement(
                wallet_id=w.id,
                mode=str(w.mode),
                level=str(w.level),
                limited=bool(w.limited),
                state=state,
                blocked_reason=w.blocked_reason,
                paused_chats=n_paused,
                balance_nanos=balance,
                opening_nanos=int(opening.get(w.id) or 0),
                credits_nanos=sum(by_source.values()),
                debits_nanos=sum(a for (kind, _), a in m.items() if kind == TransactionKind.debit.value),
                credits_by_source=dict(sorted(by_source.items())),
            )
        )
    return out


def _source_sql(key: ColumnElement[str] | Mapped[str]) -> ColumnElement[str]:
    """:func:`transaction_source` as a SQL ``CASE`` over an idempotency-key column (same prefixes, same order)."""
    return case(*((key.startswith(prefix, autoescape=True), source) for prefix, source in _SOURCES), else_="operator")


def wallet_totals(
    session: Session, *, enterprise_id: str, period: str, wallet_id: str | None = None
) -> tuple[int, WalletStatement]:
    """``(count, total)``: how many wallets ``enterprise_id`` has (only ``wallet_id`` if given) and
    their sums, over every wallet (no :data:`MAX_WALLETS` cap), as one :class:`WalletStatement`
    with id ``"all wallets"`` (balance, opening, credits by source, debits, paused chats; no mode
    or state).  Aggregates in PostgreSQL.  Raises ReportError naming ``period``."""
    start, end = validate_period(period)
    in_scope = select(col(Wallet.id)).where(col(Wallet.enterprise_id) == enterprise_id)
    if wallet_id is not None:
        in_scope = in_scope.where(col(Wallet.id) == wallet_id)
    count, balance = session.execute(
        select(func.count(), func.coalesce(func.sum(col(Wallet.credits_nanos) - col(Wallet.debits_nanos)), 0)).where(
            col(Wallet.id).in_(in_scope)
        )
    ).one()
    wt = WalletTransaction
    signed = case((col(wt.kind) == TransactionKind.credit.value, col(wt.amount_nanos)), else_=-col(wt.amount_nanos))
    since_start = session.execute(
        select(func.coalesce(func.sum(signed), 0)).where(col(wt.wallet_id).in_(in_scope), col(wt.created_at) >= start)
    ).scalar_one()
    opening = int(balance) - int(since_start)  # as wallet_statements: never the whole history
    source = _source_sql(col(wt.idempotency_key))
    credits: dict[str, int] = {}
    debits = 0
    for kind, src, amount in session.execute(
        select(col(wt.kind), source, func.sum(col(wt.amount_nanos)))
        .where(col(wt.wallet_id).in_(in_scope), col(wt.created_at) >= start, col(wt.created_at) < end)
        .group_by(col(wt.kind), source)
    ):
        if str(kind) == TransactionKind.credit.value:
            credits[str(src)] = credits.get(str(src), 0) + int(amount)
        else:
            debits += int(amount)
    paused = session.execute(
        select(func.count()).where(
            col(ChatSession.wallet_id).in_(in_scope), col(ChatSession.status) == ChatStatus.paused.value
        )
    ).scalar_one()
    return int(count), WalletStatement(
        wallet_id="all wallets",
        mode="",
        level="",
        limited=True,
        state="",
        blocked_reason=None,
        paused_chats=int(paused),
        balance_nanos=int(balance),
        opening_nanos=int(opening),
        credits_nanos=sum(credits.values()),
        debits_nanos=debits,
        credits_by_source=dict(sorted(credits.items())),
    )


def ledger_page(
    session: Session, *, enterprise_id: str, period: str, wallet_id: str | None = None, page: int = 1
) -> LedgerPage:
    """Page ``page`` (1-based) of the period's ledger entries of the wallets of ``enterprise_id``
    (only ``wallet_id``'s if given), newest first (``created_at``, then ``id``).  A page past the
    last is empty.  Raises ReportError naming ``period``; InvalidInput naming ``ledger_page`` when
    ``page`` is not an integer ≥ 1."""
    start, end = validate_period(period)
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InvalidInput("ledger_page", f"{page!r} is not a page number (1, 2, …)")
    wt, w = WalletTransaction, Wallet
    where = [
        col(w.enterprise_id) == enterprise_id,
        col(wt.created_at) >= start,
        col(wt.created_at) < end,
    ]
    if wallet_id is not None:
        where.append(col(wt.wallet_id) == wallet_id)
    total = int(
        session.execute(
            select(func.count()).select_from(wt).join(w, col(wt.wallet_id) == col(w.id)).where(*where)
        ).scalar_one()
    )
    rows = session.execute(
        select(
            col(wt.id),
            col(wt.wallet_id),
            col(wt.kind),
            col(wt.amount_nanos),
            col(wt.turns),
            col(wt.idempotency_key),
            col(wt.description),
            col(wt.created_at),
        )
        .join(w, col(wt.wallet_id) == col(w.id))
        .where(*where)
        .order_by(col(wt.created_at).desc(), col(wt.id).desc())
        .offset((page - 1) * LEDGER_PAGE_SIZE)
        .limit(LEDGER_PAGE_SIZE)
    ).all()
    entries = [
        LedgerEntry(int(i), wid, str(kind), int(amount), int(turns), transaction_source(str(kind), key), desc, at)
        for i, wid, kind, amount, turns, key, desc, at in rows
    ]
    return LedgerPage(entries, page, max(1, -(-total // LEDGER_PAGE_SIZE)), total)


__all__ = [
    "LEDGER_PAGE_SIZE",
    "LedgerEntry",
    "LedgerPage",
    "MAX_WALLETS",
    "SOURCE_LABELS",
    "WalletStatement",
    "ledger_page",
    "transaction_source",
    "wallet_statements",
    "wallet_totals",
]
