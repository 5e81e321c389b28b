"""The services that write PostgreSQL and then the gate, each run as one committed unit of work, for
tests whose code under test needs committed rows (other connections, the drain, Celery, the API).

Each helper opens one ``session_scope``, calls the service with it and commits; the gate step the
service sent with ``after_commit`` runs on that commit.  Same keyword arguments, defaults, results
and errors as before the services took a session (``credit_wallet`` is not wired to the chats'
lifecycle here: ``on_credited`` defaults to None; ``worker.credit_wallet`` is the wired one).
Tests that can run inside the rolled-back ``session`` fixture call the services with it instead.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from models.wallet import Wallet
from worker.db import session_scope
from worker.gate.gate import WalletGate
from worker.ledger import accounts


def open_wallet(gate: WalletGate, **kwargs: Any) -> Wallet:
    """:func:`worker.ledger.accounts.open_wallet` in its own committed transaction; returns the row."""
    with session_scope() as session:
        return accounts.open_wallet(session, gate, **kwargs)


def credit_wallet(gate: WalletGate, **kwargs: Any) -> int:
    """:func:`worker.ledger.accounts.credit_wallet` in its own committed transaction; returns the gate
    balance after the credit, nano-USD (raises what the service and its commit raise)."""
    with session_scope() as session:
        pending = accounts.credit_wallet(session, gate, **kwargs)
    assert pending.balance_nanos is not None
    return pending.balance_nanos


def open_wallet_in(session: Session, gate: WalletGate, **kwargs: Any) -> Wallet:
    """:func:`worker.ledger.accounts.open_wallet` in the test's ``session`` fixture, then its
    ``commit()`` (a savepoint released: the gate loads the wallet; nothing reaches other connections)."""
    wallet = accounts.open_wallet(session, gate, **kwargs)
    session.commit()
    return wallet


def credit_wallet_in(session: Session, gate: WalletGate, **kwargs: Any) -> int:
    """:func:`worker.ledger.accounts.credit_wallet` in the test's ``session`` fixture, committed as
    :func:`worker.db.session_scope` would (rolled back to the savepoint when it raises); returns the
    gate balance after the credit, nano-USD."""
    try:
        pending = accounts.credit_wallet(session, gate, **kwargs)
    except BaseException:
        session.rollback()
        raise
    session.commit()
    assert pending.balance_nanos is not None
    return pending.balance_nanos
