"""Top-up from the ``/billing`` page (issue 18 item 4): the token packages offered as buttons, and
what the page says when the payer comes back from Stripe Checkout.

The purchase itself is :func:`worker.billing.stripe.create_checkout_session` (the Checkout code the
API's ``POST /v1/checkout`` uses); the credit lands when Stripe's webhook reports the payment
(``checkout.session.completed``: the ledger credit keyed ``stripe:<checkout session id>``).  So on
return the page looks that key up (:func:`checkout_result`): credited (the amount and the wallet's
balance), or not yet (the webhook has not landed: the page says so and shows the balance as it is).

Money in integer nano-USD (packages: ``price_cents`` charged in USD cents, ``credit_nanos``
credited).  Reads only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session, col

from models.enums import TransactionKind
from models.stripe import TokenPackage
from models.wallet import Wallet, WalletTransaction
from worker.billing.stripe import KEY_PREFIX

#: a Checkout session id as Stripe makes them (``cs_test_…``, ``cs_live_…``)
CHECKOUT_SESSION_ID = re.compile(r"^cs_[A-Za-z0-9_]{1,250}\Z")


@dataclass(frozen=True, slots=True)
class Offer:
    """A one-off token package offered on the page: its id, name, price (USD cents) and the credit
    it buys (nano-USD)."""

    package_id: str
    name: str
    price_cents: int
    credit_nanos: int


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    """A Checkout session the payer came back from: ``credited`` once its webhook landed (then
    ``amount_nanos`` credited to ``wallet_id`` at ``credited_at``, and ``balance_nanos`` the wallet's
    ledger balance now), else still pending (amounts 0, wallet unknown)."""

    session_id: str
    credited: bool
    wallet_id: str | None = None
    amount_nanos: int = 0
    balance_nanos: int = 0
    credited_at: datetime | None = None


def offers(session: Session) -> list[Offer]:
    """The active one-off packages (``monthly`` False), cheapest first (then by id).  Monthly
    packages are subscriptions, not top-ups: they are not offered here."""
    rows = session.execute(
        select(TokenPackage)
        .where(col(TokenPackage.active).is_(True), col(TokenPackage.monthly).is_(False))
        .order_by(col(TokenPackage.price_cents), col(TokenPackage.id))
    ).scalars()
    return [Offer(p.id, p.name, int(p.price_cents), int(p.credit_nanos)) for p in rows]


def valid_session_id(value: str | None) -> str | None:
    """``value`` if it looks like a Checkout session id (``cs_…``, at most 253 characters), else None."""
    return value if isinstance(value, str) and CHECKOUT_SESSION_ID.match(value) else None


def checkout_result(
    session: Session, *, session_id: str, enterprise_id: str, wallet_id: str | None = None
) -> CheckoutResult:
    """Whether Checkout session ``session_id`` has credited a wallet in view (of ``enterprise_id``;
    only ``wallet_id`` if given): the ledger credit keyed ``stripe:<session_id>``.  A credit to a
    wallet out of view reads as pending (nothing about it is told).  Raises nothing for an unknown
    id: pending."""
    row = session.execute(
        select(
            col(WalletTransaction.wallet_id),
            col(WalletTransaction.amount_nanos),
            col(WalletTransaction.created_at),
            col(Wallet.credits_nanos) - col(Wallet.debits_nanos),
        )
        .join(Wallet, col(Wallet.id) == col(WalletTransaction.wallet_id))
        .where(
            col(WalletTransaction.idempotency_key) == KEY_PREFIX + session_id,
            col(WalletTransaction.kind) == TransactionKind.credit.value,
            col(Wallet.enterprise_id) == enterprise_id,
            *([col(Wallet.id) == wallet_id] if wallet_id is not None else []),
        )
    ).first()
    if row is None:
        return CheckoutResult(session_id, credited=False)
    wid, amount, at, balance = row
    return CheckoutResult(session_id, True, str(wid), int(amount), int(balance), at)


__all__ = ["CheckoutResult", "Offer", "checkout_result", "offers", "valid_session_id"]
