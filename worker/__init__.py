"""tollgate's public Python API: ``from worker import WalletGate, TurnIn, open_wallet, credit_wallet, ...``.

The names below are what the README's examples and :mod:`worker.client` use; everything else in
``worker/`` is internal and may move.  They are loaded on first use (PEP 562 ``__getattr__``), so
``import worker`` (and an HTTP-only :mod:`worker.client`) stays cheap and no package import cycle
runs through this facade.

- the gate: ``WalletGate`` (records turns in Redis), ``process_gate()`` (this process's one gate), its errors ``UnknownWallet``, ``WrongEnterprise``,
  ``GateBatchError``, ``GateConfigError``; the records ``TurnIn`` (a turn) and ``Decision`` (its answer)
- accounts: ``ensure_enterprise``, ``open_wallet``, ``credit_wallet`` (nano-USD), ``ledger_balance``,
  ``wallet_usage``; errors ``LedgerError``, ``GatePending``
- the drain: ``OutboxDrain`` (persist the outbox to PostgreSQL in this process)
- pricing: ``PricingError``, ``TurnLimitExceeded``, ``NANOS_PER_USD``, ``nanos_to_usd``, ``usd_to_nanos``
- chats: ``start_session``, ``can_continue``, ``pause_chat``, ``resume_chat``, ``wallet_state``,
  ``end_chat``, ``workflow_averages``, ``chat_performance``
- payers and events: ``wallet_id_for``, ``events_channel`` (the pub/sub channel of an app's events)
- configuration and transactions: ``Settings``, ``get_settings``, ``session_scope``

``open_wallet``, ``credit_wallet``, ``start_session``, ``pause_chat`` and ``resume_chat`` are thin
wrappers defined here: each opens one ``session_scope`` (its own transaction), calls the service of
the same name (which takes a session and never commits) and commits; the gate steps and events run
after that commit.  Code that owns a transaction already calls the services with its session.
- errors (``worker.errors``): ``TollgateError``, the base of every error above (``field``,
  ``http_status``, ``title``, ``exit_code``), its families ``InputError``, ``NotFound``, ``Conflict``,
  ``Forbidden``, ``Unavailable``, and ``InvalidInput``; ``check_text`` (an id or label refused with
  ``InvalidInput`` naming the field)
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "TurnIn": ("models.turn", "TurnIn"),
    "Decision": ("models.turn", "Decision"),
    "WalletGate": ("worker.gate.gate", "WalletGate"),
    "process_gate": ("worker.gate.gate", "process_gate"),
    "UnknownWallet": ("worker.gate.gate", "UnknownWallet"),
    "WrongEnterprise": ("worker.gate.gate", "WrongEnterprise"),
    "GateBatchError": ("worker.gate.gate", "GateBatchError"),
    "GateConfigError": ("worker.gate.gate", "GateConfigError"),
    "ensure_enterprise": ("worker.ledger.accounts", "ensure_enterprise"),
    "ledger_balance": ("worker.ledger.accounts", "ledger_balance"),
    "LedgerError": ("worker.ledger.accounts", "LedgerError"),
    "GatePending": ("worker.ledger.accounts", "GatePending"),
    "wallet_usage": ("worker.ledger.turns", "wallet_usage"),
    "OutboxDrain": ("worker.chats.wiring", "AnnouncingDrain"),
    "PricingError": ("worker.pricing.prices", "PricingError"),
    "TurnLimitExceeded": ("worker.pricing.prices", "TurnLimitExceeded"),
    "NANOS_PER_USD": ("worker.pricing.prices", "NANOS_PER_USD"),
    "nanos_to_usd": ("worker.pricing.prices", "nanos_to_usd"),
    "usd_to_nanos": ("worker.pricing.prices", "usd_to_nanos"),
    "can_continue": ("worker.chats.lifecycle", "can_continue"),
    "wallet_state": ("worker.chats.lifecycle", "wallet_state"),
    "end_chat": ("worker.chats.rollups", "end_chat"),
    "workflow_averages": ("worker.chats.rollups", "workflow_averages"),
    "chat_performance": ("worker.chats.rollups", "chat_performance"),
    "wallet_id_for": ("worker.billing.payers", "wallet_id_for"),
    "events_channel": ("worker.events", "channel"),
    "Settings": ("worker.settings", "Settings"),
    "get_settings": ("worker.settings", "get_settings"),
    "session_scope": ("worker.db", "session_scope"),
    "TollgateError": ("worker.errors", "TollgateError"),
    "InputError": ("worker.errors", "InputError"),
    "NotFound": ("worker.errors", "NotFound"),
    "Conflict": ("worker.errors", "Conflict"),
    "Forbidden": ("worker.errors", "Forbidden"),
    "Unavailable": ("worker.errors", "Unavailable"),
    "InvalidInput": ("worker.errors", "InvalidInput"),
    "check_text": ("worker.validation", "check_text"),
}

#: the public names defined here: thin wrappers that open one ``session_scope`` (the caller's unit
#: of work) and call the service, which takes the session and never commits
_WRAPPERS = ("open_wallet", "credit_wallet", "start_session", "pause_chat", "resume_chat")

__all__ = sorted([*_EXPORTS, *_WRAPPERS])


# The wrappers import their services inside the function: this facade loads nothing on
# ``import worker`` (PEP 562, see the module docstring), and no package import cycle runs through it.


def open_wallet(gate: Any, **kwargs: Any) -> Any:
    """Open a wallet (:func:`worker.ledger.accounts.open_wallet`) in its own transaction: a thin
    wrapper that opens one ``session_scope``, calls the service with it and commits; the gate loads
    the wallet after the commit.  Keyword arguments: ``wallet_id``, ``enterprise_id``, ``owner_id``,
    ``level``, ``mode``, ``limited`` as the service takes them.  Returns the wallet row
    (``models.wallet.Wallet``); raises what the service raises (``InvalidInput`` naming the field)."""
    from worker.db import session_scope  # lazy facade: see above
    from worker.ledger import accounts  # lazy facade: see above

    with session_scope() as session:
        return accounts.open_wallet(session, gate, **kwargs)


def credit_wallet(gate: Any, **kwargs: Any) -> int:
    """Credit a wallet once per idempotency key (:func:`worker.ledger.accounts.credit_wallet`) in
    its own transaction, wired to the chats' lifecycle: a thin wrapper that opens one
    ``session_scope``, calls the service with ``on_credited=``:func:`worker.chats.wiring.after_credit`
    (resume the wallet's paused chats, then announce ``wallet.credited``) unless given another, and
    commits; the gate takes the credit after the commit.  Keyword arguments: ``wallet_id``,
    ``amount_nanos`` (nano-USD), ``idempotency_key`` (not starting with ``tollgate:`` or ``stripe:`` unless
    ``system_key=True``), ``description``, ``actor``, ``on_credited``.
    Returns the gate balance after the credit, nano-USD.  Raises LedgerError, UnknownWallet
    (nothing changes) or GatePending (the ledger has it, the gate not yet: retry with the same key)."""
    from worker.chats.wiring import after_credit  # lazy facade: see above
    from worker.db import session_scope  # lazy facade: see above
    from worker.ledger import accounts  # lazy facade: see above

    kwargs.setdefault("on_credited", after_credit)
    with session_scope() as session:
        pending = accounts.credit_wallet(session, gate, **kwargs)
    assert pending.balance_nanos is not None  # set by the commit, or GatePending was raised
    return pending.balance_nanos


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use.  Raises AttributeError
    for any other name."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'worker' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def start_session(gate: Any, **kwargs: Any) -> Any:
    """Initialize a chat's billing session (:func:`worker.chats.lifecycle.start_session`) in its
    own transaction: a thin wrapper that opens one ``session_scope``, calls the service with it and
    commits.  Keyword arguments: ``enterprise_id``, ``chat_id``, ``wallet_id``, ``workflow``,
    ``started_at``.  Returns the wallet's ``WalletState``; raises what the service raises."""
    from worker.chats import lifecycle  # lazy facade: see above
    from worker.db import session_scope  # lazy facade: see above

    with session_scope() as session:
        return lifecycle.start_session(session, gate, **kwargs)


def pause_chat(gate: Any, **kwargs: Any) -> bool:
    """Pause a chat (:func:`worker.chats.lifecycle.pause_chat`) in its own transaction: a thin
    wrapper that opens one ``session_scope``, calls the service with it and commits; ``chat.paused``
    is announced after the commit.  Keyword arguments: ``enterprise_id``, ``chat_id``,
    ``wallet_id``, ``reason``, ``needed_nanos`` (nano-USD), ``send_task``, ``position``.  Returns
    True if this call paused the chat; raises what the service raises."""
    from worker.chats import lifecycle  # lazy facade: see above
    from worker.db import session_scope  # lazy facade: see above

    with session_scope() as session:
        return lifecycle.pause_chat(session, gate, **kwargs)


def resume_chat(gate: Any, **kwargs: Any) -> Any:
    """Resume a paused chat (:func:`worker.chats.lifecycle.resume_chat`) in its own transaction: a
    thin wrapper that opens one ``session_scope``, calls the service with it and commits;
    ``chat.resumable`` is announced after the commit.  Keyword arguments: ``enterprise_id``,
    ``chat_id``.  Returns the wallet's ``WalletState``; raises what the service raises
    (``WalletCannotPay`` while the wallet cannot pay: nothing changes)."""
    from worker.chats import lifecycle  # lazy facade: see above
    from worker.db import session_scope  # lazy facade: see above

    with session_scope() as session:
        return lifecycle.resume_chat(session, gate, **kwargs)
