"""The ledger's hooks wired to a chat's lifecycle: a credit resumes the wallet's paused chats and
then announces ``wallet.credited``; the drain announces ``chat.paused`` / ``chat.resumable``.

The ledger does not know chats (it sits below them): it takes these as callables
(:func:`worker.ledger.accounts.credit_wallet`'s ``on_credited``, :class:`~worker.ledger.drain.OutboxDrain`'s
``announce``), and the entry points (tasks, routes, CLI commands, replay, the public API) pass them.

The hooks that run after an entry point's commit (:func:`after_credit`, :func:`resume_wallet_chats`)
are units of work of their own: the caller's transaction has ended by then, so each opens one
``session_scope`` for what follows (closing paused-chat records) and announces after that commit."""

from __future__ import annotations

import logging
from typing import Any

from worker import events  # the module, not its names: tests patch events.emit
from worker.chats.lifecycle import announce_chat_changes, resume_paused_chats
from worker.db import session_scope
from worker.events import SendTask
from worker.gate.gate import WalletGate
from worker.ledger.accounts import Credited
from worker.ledger.drain import Announce, OutboxDrain

log = logging.getLogger(__name__)


def after_credit(gate: WalletGate, credited: Credited) -> None:
    """Resume the wallet's paused chats, then tell the app (``wallet.credited``, once per new
    credit): in that order, so a client that resumes its chat on ``wallet.credited`` finds it
    resumable already, and ``chat.resumable`` is sent once by whichever resumer closed the record.
    The money is in: a failure here is logged, and the beat job ``tollgate.billing.resume_paused``
    resumes what this missed.  Raises nothing."""
    wallet_id, key = credited.wallet_id, credited.idempotency_key
    try:
        resume_wallet_chats(gate, wallet_id, cause=key)
    except Exception:
        log.error("credit %s to %s: could not resume paused chats; the beat job will", key, wallet_id, exc_info=True)
    try:
        if credited.new and credited.enterprise_id:
            events.emit(
                gate.redis,
                events.Event.new(
                    "wallet.credited",
                    credited.enterprise_id,
                    {
                        "wallet_id": wallet_id,
                        "amount_nanos": credited.amount_nanos,
                        "balance_nanos": credited.balance_nanos,
                        "idempotency_key": key,
                    },
                ),
                webhook=False,
            )
    except Exception:
        log.error("credit %s to %s: could not announce wallet.credited", key, wallet_id, exc_info=True)


def resume_wallet_chats(
    gate: WalletGate, wallet_id: str, *, cause: str, send_task: SendTask | None = None
) -> list[tuple[str, str]]:
    """:func:`worker.chats.lifecycle.resume_paused_chats` in a transaction of its own (one
    ``session_scope``; ``chat.resumable`` after its commit): the ``resume`` hook the entry points
    pass to the services that change what a wallet may do (modes, allowances, credits), which call
    it after their caller's commit.  Same arguments, result and errors as the service."""
    with session_scope() as session:
        return resume_paused_chats(session, gate, wallet_id, cause=cause, send_task=send_task)


class AnnouncingDrain(OutboxDrain):
    """:class:`~worker.ledger.drain.OutboxDrain` announcing ``chat.paused`` / ``chat.resumable``
    (:func:`worker.chats.lifecycle.announce_chat_changes`) unless given another ``announce``: the
    public ``worker.OutboxDrain``.  Same arguments as OutboxDrain."""

    def __init__(self, *args: Any, announce: Announce | None = announce_chat_changes, **kwargs: Any) -> None:
        super().__init__(*args, announce=announce, **kwargs)
