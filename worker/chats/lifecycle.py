"""The billing session of one chat: the seed's token-manager lifecycle in the field's terms.

=========================  ======================================================================
seed (token manager)       tollgate
=========================  ======================================================================
initialize budget          :func:`start_session`: the chat's session row, the wallet's state
can continue               :func:`can_continue`: would the gate accept the chat's next turn?
track usage                ``WalletGate.record_turn`` (the gate; persistence is the drain's)
handle no tokens           :func:`pause_chat`: a paused-chat record, the chat paused, ``chat.paused``
finalize session           :func:`finalize_session`: the chat ended, its rollups refreshed, its
                           summary and comparison with the workflow's averages
=========================  ======================================================================

Resuming: a credit (top-up, grant, Stripe payment) calls :func:`resume_paused_chats` for the
credited wallet (:func:`worker.chats.wiring.after_credit`, the hook every entry point passes to
``worker.ledger.accounts.credit_wallet``, does, before it announces ``wallet.credited``).  If
the gate would now accept the wallet's turns, every open paused-chat record of the wallet is closed,
once (``UPDATE … WHERE resumed_at IS NULL RETURNING``: a second call, e.g. the same Stripe webhook
delivered twice, finds none), its chat becomes ``resumable`` (``can_resume``), and the app is told
per chat: a ``chat.resumable`` event on Redis pub/sub (``tollgate:events:<enterprise_id>``) and, if
the app has a callback URL, a signed webhook delivered by the retrying Celery task
``tollgate.webhooks.deliver``.

Exactly one event per transition: a paused-chat record is opened by one ``INSERT … ON CONFLICT DO
NOTHING RETURNING`` (``chat.paused``) and closed by one ``UPDATE … WHERE resumed_at IS NULL
RETURNING`` (``chat.resumable``), and only the call whose statement returned the row announces it,
after its transaction commits: a credit, the beat sweep, the orchestrator's :func:`resume_chat`
(HTTP ``POST /v1/chats/{id}/resume``) or a newer accepted turn in the drain, whichever comes first.

Order: a chat's state moves only forward in the gate's decision order (``worker.ledger.turns.chat_order``:
a turn's outbox entry; a pause, resume or credit at the outbox position of the moment it happens,
``worker.ledger.turns.transition_position``), kept in ``chat_session.state_key``.  A turn persisted late
that is not after the chat's last transition adds its totals and changes neither the state nor the
paused-chat records; a pause reported late (``pause_chat(position=…)``: the API's pause task of a
denied turn) that is not after it changes nothing either.

Events (data; money in nano-USD):
  ``chat.paused``     chat_id, wallet_id, reason, needed_nanos
  ``chat.resumable``  chat_id, wallet_id, balance_nanos, cause
  ``wallet.credited`` wallet_id, amount_nanos, balance_nanos, idempotency_key
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Sequence, cast

from sqlalchemy import case, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.chat import ChatSession, PausedChat
from models.enums import ChatStatus, ConnectionState
from models.validation import MAX_LABEL
from models.wallet import Enterprise, Wallet
from worker.chats.rollups import UnknownChat, chat_performance, end_chat
from worker.db import after_commit, table_of
from worker.errors import Conflict, NotFound
from worker.events import Event, SendTask, emit
from worker.gate.aio import AsyncWalletGate
from worker.gate.gate import UnknownWallet, WalletGate
from worker.ledger.turns import transition_position
from worker.validation import InvalidInput, check_text

log = logging.getLogger(__name__)


class NotAWalletOfTheApp(NotFound, LookupError):
    """The wallet named for a chat is not one of its app's; ``field`` is ``wallet_id``.  HTTP 404."""

    title = "Unknown wallet"


class WalletCannotPay(Conflict, PermissionError):
    """A paused chat cannot resume: its wallet cannot pay yet (the message says how many nanos are
    needed); ``field`` is ``wallet_id``.  HTTP 409; nothing changed."""

    title = "Wallet cannot pay yet"


#: a paused chat's reasons that funds can lift (a budget's auto-pause is lifted by worker.billing.budgets)
FUNDS_REASONS = ("wallet_exhausted", "trial_exhausted", "payment_failed")


@dataclass(frozen=True, slots=True)
class WalletState:
    """A wallet as the gate sees it now: balance and holds (nano-USD; available = balance − held),
    mode, blocked reason, trial tokens left, and whether its next turn would be accepted."""

    wallet_id: str
    balance_nanos: int
    held_nanos: int
    mode: str
    blocked: str | None
    limited: bool
    trial_left: int
    trial_then: str
    can_continue: bool

    @property
    def available_nanos(self) -> int:
        """Balance minus active holds, nano-USD."""
        return self.balance_nanos - self.held_nanos

    @property
    def needed_nanos(self) -> int:
        """Nanos to credit before a turn is accepted (0 if one would be, or if funds cannot help)."""
        if self.can_continue or self.blocked or (self.mode == "trial" and self.trial_then == "pause"):
            return 0
        return max(0, 1 - self.available_nanos)


#: the wallet-hash fields a :class:`WalletState` is read from (one HMGET)
WALLET_STATE_FIELDS = ("balance", "held", "mode", "blocked", "limited", "trial_left", "trial_then")


def wallet_state(gate: WalletGate, wallet_id: str) -> WalletState:
    """Read a wallet's gate state (one HMGET) and decide, by the rules of ``record_turn.lua``,
    whether its next turn would be accepted (:func:`state_of`).  Raises
    :class:`~worker.gate.gate.UnknownWallet`; :class:`~worker.errors.InvalidInput` naming
    ``wallet_id`` (not an id)."""
    check_text(wallet_id, "wallet_id")
    values = cast(list[str | None], gate.redis.hmget(gate.wallet_key(wallet_id), WALLET_STATE_FIELDS))
    return state_of(wallet_id, values)  # decode_responses: str replies


async def wallet_state_async(gate: AsyncWalletGate, wallet_id: str) -> WalletState:
    """:func:`wallet_state` on the asyncio gate (the API's event loop): the same HMGET, awaited."""
    check_text(wallet_id, "wallet_id")
    return state_of(wallet_id, await gate.wallet_fields(wallet_id, WALLET_STATE_FIELDS))


def state_of(wallet_id: str, values: Sequence[str | None]) -> WalletState:
    """A wallet's :data:`WALLET_STATE_FIELDS` as read from the gate, decided by the rules of
    ``record_turn.lua``.  Raises :class:`~worker.gate.gate.UnknownWallet` (no ``mode``: not in the gate)."""
    balance, held, mode, blocked, limited, trial_left, trial_then = values
    if mode is None:
        raise UnknownWallet(wallet_id)
    balance_n, held_n, left = int(balance or 0), int(held or 0), int(trial_left or 0)
    is_limited = limited != "0"
    debit = mode == "production" or (mode == "trial" and left <= 0 and trial_then == "bill")
    if debit:
        ok = not blocked and (not is_limited or balance_n - held_n > 0)
    elif mode == "trial":
        ok = not blocked and left > 0
    else:  # development, track_only: never blocked
        ok = True
    return WalletState(wallet_id, balance_n, held_n, mode, blocked, is_limited, left, trial_then or "pause", ok)


def can_continue(gate: WalletGate, wallet_id: str) -> bool:
    """Would the gate accept this wallet's next turn (the seed's ``can_continue``)?  A hint for the
    orchestrator before an LLM call: the gate decides atomically when the turn is recorded (or
    reserve first to be sure).  Raises :class:`~worker.gate.gate.UnknownWallet`."""
    return wallet_state(gate, wallet_id).can_continue


def start_session(
    session: Session,
    gate: WalletGate,
    *,
    enterprise_id: str,
    chat_id: str,
    wallet_id: str,
    workflow: str = "default",
    started_at: datetime | None = None,
) -> WalletState:
    """Initialize a chat's billing session: create its ``chat_session`` row (status active,
    connected) if it has none, and return the wallet's state (can the chat start?).  Writes in
    ``session``; the caller commits.

    Raises: InvalidInput naming the field (``enterprise_id``, ``chat_id``, ``wallet_id``, ``workflow``:
    not an id, see :mod:`models.validation`); UnknownWallet (not in the gate); LookupError naming
    ``wallet_id`` when the wallet is not in PostgreSQL or belongs to another app (nothing is written).
    """
    _check_ids(enterprise_id=enterprise_id, chat_id=chat_id, wallet_id=wallet_id, workflow=workflow)
    state = wallet_state(gate, wallet_id)
    started_at = (started_at or datetime.now(UTC)).astimezone(UTC)
    wallet = session.get(Wallet, wallet_id)
    if wallet is None or (wallet.enterprise_id is not None and wallet.enterprise_id != enterprise_id):
        raise NotAWalletOfTheApp(
            f"wallet_id: {wallet_id!r} is not a wallet of enterprise {enterprise_id!r}", field="wallet_id"
        )
    session.execute(
        insert(ChatSession)
        .values(
            enterprise_id=enterprise_id,
            chat_id=chat_id,
            wallet_id=wallet_id,
            workflow=workflow,
            status=ChatStatus.active.value,
            connection_state=ConnectionState.connected.value,
            started_at=started_at,
            last_turn_at=started_at,
        )
        .on_conflict_do_nothing(constraint="uq_chat_session_enterprise_chat")
    )
    return state


#: the form of :func:`~worker.ledger.turns.transition_position` (and of ``outbox_position``, which lacks the count)
_POSITION = re.compile(r"\d{20}-\d{20}-\d{6}\+(\d{20})?")


def _check_ids(**ids: str) -> None:
    """Refuse, before anything changes, an id that is not one (:func:`worker.validation.check_text`):
    raises InvalidInput naming its keyword."""
    for name, value in ids.items():
        check_text(value, name)


def _check_position(position: object) -> str:
    """``position`` if it has the form of :func:`~worker.ledger.turns.transition_position`; else InvalidInput."""
    if not isinstance(position, str) or not _POSITION.fullmatch(position):
        raise InvalidInput(
            "position",
            f"{str(position)[:80]!r} is not a position in the gate's order (worker.ledger.turns.transition_position)",
        )
    return position


def lock_chats(session: Session, chats: list[tuple[str, str]]) -> None:
    """Lock the ``chat_session`` rows of ``chats`` ``(enterprise_id, chat_id)`` in (enterprise, chat)
    order: the order the drain locks them in, so taking chat rows before ``paused_chat`` rows here
    as there can never deadlock against a drain batch."""
    if chats:
        cs = table_of(ChatSession)
        session.execute(
            select(cs.c.id)
            .where(tuple_(cs.c.enterprise_id, cs.c.chat_id).in_(sorted(set(chats))))
            .order_by(cs.c.enterprise_id, cs.c.chat_id)
            .with_for_update()
        )


def _hooked(session: Session, enterprise_ids: set[str]) -> set[str]:
    """The apps among ``enterprise_ids`` with a callback URL and secret (they get webhooks)."""
    if not enterprise_ids:
        return set()
    rows = session.execute(
        select(col(Enterprise.id)).where(
            col(Enterprise.id).in_(enterprise_ids),
            col(Enterprise.callback_url).is_not(None),
            col(Enterprise.webhook_secret).is_not(None),
        )
    ).scalars()
    return set(rows)


def announce(gate: WalletGate, events: list[Event], hooked: set[str], send_task: SendTask | None = None) -> None:
    """Publish events (after commit) and enqueue webhooks for the apps in ``hooked``."""
    for event in events:
        emit(gate.redis, event, webhook=event.enterprise_id in hooked, send_task=send_task)


def _announce_after_commit(
    session: Session, gate: WalletGate, events: list[Event], send_task: SendTask | None = None
) -> None:
    """:func:`announce` ``events`` once ``session``'s transaction commits (dropped on rollback)."""
    if events:
        hooked = _hooked(session, {e.enterprise_id for e in events})
        after_commit(session, lambda: announce(gate, events, hooked, send_task))


def paused_event(enterprise_id: str, chat_id: str, wallet_id: str, reason: str, needed_nanos: int) -> Event:
    """A ``chat.paused`` event (``needed_nanos``: what the wallet lacks, nano-USD)."""
    return Event.new(
        "chat.paused",
        enterprise_id,
        {"chat_id": chat_id, "wallet_id": wallet_id, "reason": reason, "needed_nanos": needed_nanos},
    )


def resumable_event(enterprise_id: str, chat_id: str, wallet_id: str, balance_nanos: int | None, cause: str) -> Event:
    """A ``chat.resumable`` event (``balance_nanos`` the wallet's balance then, nano-USD; ``cause`` what
    closed the pause: a credit's idempotency key, 'sweep', 'mode_change', 'resume', 'turn')."""
    return Event.new(
        "chat.resumable",
        enterprise_id,
        {"chat_id": chat_id, "wallet_id": wallet_id, "balance_nanos": balance_nanos, "cause": cause},
    )


def announce_chat_changes(
    session: Session,
    gate: WalletGate,
    paused: Sequence[Any],
    resumed: Sequence[Any],
    send_task: SendTask | None = None,
) -> None:
    """Inside a drain batch's transaction (``session``, before its commit): once it commits,
    ``chat.paused`` per record it opened (:class:`~worker.ledger.turns.PausedNotice`) and
    ``chat.resumable`` (cause 'turn') per record a newer turn closed
    (:class:`~worker.ledger.turns.ResumedNotice`), pub/sub and webhooks.  The announcement runs
    after the commit; its errors are logged, not raised (the chats' records are committed, and the
    orchestrator had the gate's answer)."""
    events = [paused_event(p.enterprise_id, p.chat_id, p.wallet_id, p.reason, p.needed_nanos) for p in paused]
    events += [resumable_event(r.enterprise_id, r.chat_id, r.wallet_id, r.balance_nanos, "turn") for r in resumed]
    if events:
        hooked = _hooked(session, {e.enterprise_id for e in events})
        after_commit(session, lambda: _announce_logged(gate, events, hooked, send_task))


def _announce_logged(gate: WalletGate, events: list[Event], hooked: set[str], send_task: SendTask | None) -> None:
    try:
        announce(gate, events, hooked, send_task)
    except Exception:
        log.error("could not announce %d chat change(s)", len(events), exc_info=True)


def _forward(cs, position: str) -> dict[str, Any]:
    """SET values that move a chat's state position to ``position`` (:func:`~worker.ledger.turns.transition_position`
    of a pause, resume or credit) unless its last transition is there or later already."""
    return {"state_key": case((cs.c.state_key >= position, cs.c.state_key), else_=position)}


def pause_chat(
    session: Session,
    gate: WalletGate,
    *,
    enterprise_id: str,
    chat_id: str,
    wallet_id: str,
    reason: str = "wallet_exhausted",
    needed_nanos: int | None = None,
    send_task: SendTask | None = None,
    position: str | None = None,
) -> bool:
    """Handle exhaustion (the seed's ``handle_no_tokens``): open a paused-chat record (at most one
    open per chat), mark the chat paused (``connection_state`` paused, ``can_resume`` False), move
    its state to the position of the pause (so the pausing turn and older ones, persisted later,
    change nothing), and announce ``chat.paused`` after the caller commits ``session`` (this never
    commits).  ``needed_nanos`` (nano-USD, ≥ 0) defaults to what the wallet lacks now.

    ``position``: where the pause happened in the gate's order, when it is reported late
    (:func:`~worker.ledger.turns.transition_position` taken when the gate denied the turn; the API's
    ``tollgate.billing.pause_chat`` task carries it).  A pause not after the chat's last transition
    (a resume, a credit's resume, a newer turn came first) is stale: nothing changes and no
    ``chat.paused``.  None: the pause happens now.

    Returns True if this call paused the chat, False if it was paused already or the pause is
    stale (nothing changes).
    Raises: InvalidInput (a ValueError) naming the field, before anything changes: ``enterprise_id``,
    ``chat_id``, ``wallet_id`` (not an id), ``reason`` (not a label of 1..200 characters),
    ``needed_nanos`` (not an int ≥ 0), ``position`` (not a position); UnknownWallet.
    """
    _check_ids(enterprise_id=enterprise_id, chat_id=chat_id, wallet_id=wallet_id)
    check_text(reason, "reason", kind="label", max_length=MAX_LABEL)
    if needed_nanos is not None and (type(needed_nanos) is not int or needed_nanos < 0):
        raise InvalidInput("needed_nanos", f"must be an integer ≥ 0 (nano-USD), got {needed_nanos!r}")
    if position is not None:
        _check_position(position)
    if needed_nanos is None:
        needed_nanos = wallet_state(gate, wallet_id).needed_nanos
    now = datetime.now(UTC)
    if position is None:
        position = transition_position(gate, wallet_id)
    pc, cs = table_of(PausedChat), table_of(ChatSession)
    # the chat's row first, as the drain does (created if this is its first word), then its lock
    session.execute(
        insert(cs)
        .values(
            enterprise_id=enterprise_id,
            chat_id=chat_id,
            wallet_id=wallet_id,
            workflow="default",
            status=ChatStatus.active.value,
            connection_state=ConnectionState.connected.value,
            started_at=now,
            last_turn_at=now,
        )
        .on_conflict_do_nothing(constraint="uq_chat_session_enterprise_chat")
    )
    lock_chats(session, [(enterprise_id, chat_id)])
    state_key = session.execute(
        select(cs.c.state_key).where(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == chat_id)
    ).scalar_one()
    if state_key >= position:  # stale: the chat moved on after this pause was decided
        return False
    opened = session.execute(
        insert(pc)
        .values(
            enterprise_id=enterprise_id,
            chat_id=chat_id,
            wallet_id=wallet_id,
            reason=reason,
            needed_nanos=needed_nanos,
            paused_at=now,
        )
        .on_conflict_do_nothing(index_elements=["enterprise_id", "chat_id"], index_where=text("resumed_at IS NULL"))
        .returning(pc.c.id)
    ).first()
    if opened is None:
        return False
    session.execute(
        update(cs)
        .where(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == chat_id, cs.c.status != ChatStatus.completed.value)
        .values(
            status=ChatStatus.paused.value,
            pause_reason=reason,
            paused_at=now,
            connection_state=ConnectionState.paused.value,
            can_resume=False,
            **_forward(cs, position),
        )
    )
    _announce_after_commit(
        session, gate, [paused_event(enterprise_id, chat_id, wallet_id, reason, needed_nanos)], send_task
    )
    return True


def resume_paused_chats(
    session: Session,
    gate: WalletGate,
    wallet_id: str,
    *,
    cause: str,
    send_task: SendTask | None = None,
) -> list[tuple[str, str]]:
    """Make the wallet's paused chats resumable if the gate would now accept its turns: close every
    open paused-chat record of the wallet whose reason funds can lift (:data:`FUNDS_REASONS`), once,
    mark the chats ``resumable``, and announce ``chat.resumable`` per chat once the caller commits
    ``session`` (this never commits; :func:`worker.chats.wiring.resume_wallet_chats` is the same in
    a transaction of its own, for the hooks that run after an entry point's commit).

    ``cause`` is recorded as ``resumed_by`` (a credit's idempotency key, 'mode_change', …).
    Returns the ``(enterprise_id, chat_id)`` made resumable by this call (none if the wallet still
    cannot pay, or another resumer closed the records first: then that one announced them).
    Raises UnknownWallet; InvalidInput naming ``wallet_id`` or ``cause`` (not an id).
    """
    _check_ids(wallet_id=wallet_id)
    check_text(cause, "cause", max_length=1000)  # stored as its first 300 characters
    state = wallet_state(gate, wallet_id)
    if not state.can_continue:
        return []
    position = transition_position(gate, wallet_id)
    pc, cs = table_of(PausedChat), table_of(ChatSession)
    lock_chats(
        session,
        [
            tuple(r)
            for r in session.execute(
                select(pc.c.enterprise_id, pc.c.chat_id).where(
                    pc.c.wallet_id == wallet_id, pc.c.resumed_at.is_(None), pc.c.reason.in_(FUNDS_REASONS)
                )
            )
        ],
    )
    closed = session.execute(
        update(pc)
        .where(pc.c.wallet_id == wallet_id, pc.c.resumed_at.is_(None), pc.c.reason.in_(FUNDS_REASONS))
        .values(resumed_at=func.now(), resumed_by=cause[:300])
        .returning(pc.c.enterprise_id, pc.c.chat_id)
    ).all()
    chats: list[tuple[str, str]] = sorted((e, c) for e, c in closed)
    if not chats:
        return []
    session.execute(
        update(cs)
        .where(tuple_(cs.c.enterprise_id, cs.c.chat_id).in_(chats), cs.c.status == ChatStatus.paused.value)
        .values(can_resume=True, connection_state=ConnectionState.resumable.value, **_forward(cs, position))
    )
    _announce_after_commit(
        session, gate, [resumable_event(e, c, wallet_id, state.balance_nanos, cause) for e, c in chats], send_task
    )
    return chats


def resume_chat(session: Session, gate: WalletGate, *, enterprise_id: str, chat_id: str) -> WalletState:
    """The orchestrator resumes a paused chat: if its wallet can pay, close its open paused record
    and mark it active and connected (its state moves to the outbox position of now).  If this call closed the
    record (no credit or sweep did first), it announces ``chat.resumable`` (cause 'resume') after
    the caller commits ``session`` (this never commits).  Returns the wallet's state.

    Raises: InvalidInput naming ``enterprise_id`` or ``chat_id`` (not an id); LookupError naming
    ``chat_id`` (no such chat); PermissionError when the wallet still cannot pay (nothing changes:
    ``needed_nanos`` says how much is missing).
    """
    _check_ids(enterprise_id=enterprise_id, chat_id=chat_id)
    chat = session.execute(
        select(ChatSession).where(col(ChatSession.enterprise_id) == enterprise_id, col(ChatSession.chat_id) == chat_id)
    ).scalar_one_or_none()
    if chat is None:
        raise UnknownChat(f"chat_id: unknown chat {chat_id!r} of enterprise {enterprise_id!r}", field="chat_id")
    wallet_id = chat.wallet_id
    state = wallet_state(gate, wallet_id)
    if not state.can_continue:
        raise WalletCannotPay(
            f"wallet {wallet_id!r} cannot pay yet: {state.needed_nanos} nanos needed", field="wallet_id"
        )
    position = transition_position(gate, wallet_id)
    pc, cs = table_of(PausedChat), table_of(ChatSession)
    lock_chats(session, [(enterprise_id, chat_id)])
    closed = (
        session.execute(
            update(pc)
            .where(pc.c.enterprise_id == enterprise_id, pc.c.chat_id == chat_id, pc.c.resumed_at.is_(None))
            .values(resumed_at=func.now(), resumed_by="resume")
            .returning(pc.c.wallet_id)
        )
        .scalars()
        .all()
    )
    session.execute(
        update(cs)
        .where(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == chat_id, cs.c.status == ChatStatus.paused.value)
        .values(
            status=ChatStatus.active.value,
            pause_reason=None,
            can_resume=False,
            connection_state=ConnectionState.connected.value,
        )
    )
    # the resume is a transition even of a chat not paused here yet: a pause decided before it
    # and reported after it (the API's queued pause task) is stale then
    session.execute(
        update(cs)
        .where(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == chat_id, cs.c.status != ChatStatus.completed.value)
        .values(**_forward(cs, position))
    )
    _announce_after_commit(
        session, gate, [resumable_event(enterprise_id, chat_id, w, state.balance_nanos, "resume") for w in closed]
    )
    return state


def finalize_session(
    session: Session, enterprise_id: str, chat_id: str, *, ended_at: datetime | None = None
) -> dict[str, Any]:
    """Finalize a chat (the seed's ``finalize_session``): mark it completed (ended, no longer
    resumable), refresh its workflow rollups, and return its summary compared with the workflow's
    averages (:func:`worker.chats.rollups.chat_performance`: turns, tokens, cost in nanos, per
    agent), all in ``session`` (the caller commits).

    Raises: InvalidInput naming ``enterprise_id`` or ``chat_id`` (not an id); LookupError naming the
    chat when none of its turns has been persisted yet.
    """
    _check_ids(enterprise_id=enterprise_id, chat_id=chat_id)
    end_chat(session, enterprise_id=enterprise_id, chat_id=chat_id, ended_at=ended_at)
    return chat_performance(session, enterprise_id, chat_id)


def paused_wallets(session: Session, *, limit: int = 1000) -> list[str]:
    """Up to ``limit`` wallets (ids, in order) with open paused-chat records that funds can lift
    (:data:`FUNDS_REASONS`): what the beat job ``tollgate.billing.resume_paused`` tries to resume,
    one wallet per transaction (:func:`resume_paused_chats` with cause ``sweep``).  Reads only."""
    return list(
        session.execute(
            select(col(PausedChat.wallet_id))
            .where(col(PausedChat.resumed_at).is_(None), col(PausedChat.reason).in_(FUNDS_REASONS))
            .distinct()
            .order_by(col(PausedChat.wallet_id))
            .limit(limit)
        ).scalars()
    )
