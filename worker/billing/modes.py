"""Billing modes per app, overridable per wallet, and the app's billing configuration.

A mode decides how the gate treats a turn *when it is recorded* (see ``record_turn.lua``):
``production`` debits, ``development`` records non-billable turns, ``trial`` is free up to a token
allowance per wallet and then bills or pauses, ``track_only`` records for analytics and never blocks
(the app pays :func:`charge_flat_fees` monthly instead).  Every decided turn keeps the mode it was
decided under (in its outbox entry and ``usage_event.mode``) and its turn_id's first answer, so
changing a mode never loses or re-bills a turn: a retried turn gets its first answer back.

Changes are written to PostgreSQL first (with an audit-log row), then to the gate; a crash between
the two is repaired by running the change again (idempotent) or by a gate rebuild, which loads
PostgreSQL's values.  The functions that change a setting take the caller's ``session`` and never
commit: the gate is updated by an :func:`worker.db.after_commit` hook, once the caller commits.  That
hook reads each wallet's committed value again in its own short transaction, under the wallet's
advisory lock (:func:`_push`): two changes committed in one order must reach Redis in that order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Callable

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.enums import BillingMode, TransactionKind, TrialThen
from models.wallet import Enterprise, Wallet, WalletTransaction
from worker.billing.payers import reservations_required as requires_reservations
from worker.db import after_commit, after_commit_in_transaction
from worker.errors import InputError
from worker.gate.gate import UnknownWallet, WalletGate
from worker.gate.keys import FLAT_FEE_PREFIX
from worker.ledger.audit import audit
from worker.periods import current_period, period_bounds
from worker.validation import InvalidInput, check_text

log = logging.getLogger(__name__)

#: ``resume(gate, wallet_id, cause=...)``: resume the wallet's paused chats a change lets go on
#: (the entry points pass :func:`worker.chats.lifecycle.resume_paused_chats`)
ResumeChats = Callable[..., object]

#: ledger key prefix of the flat monthly fee of a track_only app (``<prefix><enterprise>:<YYYY-MM>``)


class ModeError(InputError, ValueError):
    """A mode or app setting is invalid (names the field), or its app or wallet is unknown."""


def _ids(**ids: str | None) -> None:
    """The ids given (None: not given) as ``models.validation`` accepts them; else ModeError naming one."""
    for name, value in ids.items():
        if value is not None:
            try:
                check_text(value, name)
            except InvalidInput as exc:
                raise ModeError(str(exc), field=exc.field) from None


def _mode(mode: str) -> str:
    if mode not in BillingMode.__members__:
        raise ModeError(f"mode: {mode!r} is not one of {', '.join(BillingMode.__members__)}", field="mode")
    return mode


def _locked_app(session: Session, enterprise_id: str) -> Enterprise:
    """The app's row, locked (``FOR UPDATE``) until the caller's transaction ends; ModeError naming
    ``enterprise_id`` if there is none."""
    app = session.get(Enterprise, enterprise_id, with_for_update=True)
    if app is None:
        raise ModeError(f"enterprise_id: unknown app {enterprise_id!r}", field="enterprise_id")
    return app


def _locked_wallet(session: Session, wallet_id: str) -> Wallet:
    """The wallet's row, locked (``FOR UPDATE``) until the caller's transaction ends; ModeError
    naming ``wallet_id`` if there is none."""
    wallet = session.get(Wallet, wallet_id, with_for_update=True)
    if wallet is None:
        raise ModeError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    return wallet


def _push(session: Session, gate: WalletGate, wallet_ids: list[str], resume: ResumeChats | None) -> None:
    """Once the caller's transaction (``session``) has committed: mirror each wallet's mode in the
    gate, then resume chats the new mode lets go on (``resume``).  A follow-up transaction per
    wallet (:func:`worker.db.after_commit_in_transaction`), on purpose (not the caller's, which has
    committed by then):

    Two changes of one wallet at once commit in some order but could reach Redis in the other;
    so each wallet's mode is read again from PostgreSQL and written to Redis under a transaction
    advisory lock of that wallet: whatever order they run in, the last write is the committed mode."""
    _mirror_each(session, wallet_ids, partial(_push_mode, gate=gate, resume=resume))


def _mirror_each(session: Session, wallet_ids: list[str], mirror: Callable[..., None]) -> None:
    """Once ``session``'s transaction has committed, for each wallet a follow-up transaction that
    takes the wallet's settings lock (a transaction advisory lock, the same for every setting the
    gate mirrors) and runs ``mirror(follow_up_session, wallet_id=…)`` (see :func:`_push`)."""
    for wallet_id in wallet_ids:
        after_commit_in_transaction(session, partial(_locked, mirror, wallet_id=wallet_id))


def _locked(mirror: Callable[..., None], follow_up: Session, *, wallet_id: str) -> None:
    follow_up.execute(select(func.pg_advisory_xact_lock(func.hashtext("tollgate:mode:" + wallet_id))))
    mirror(follow_up, wallet_id=wallet_id)


def _resume_after_mode_change(resume: ResumeChats, gate: WalletGate, wallet_id: str) -> None:
    resume(gate, wallet_id, cause="mode_change")


def _push_mode(session: Session, gate: WalletGate, wallet_id: str, resume: ResumeChats | None) -> None:
    """In a follow-up transaction (``session``) holding the wallet's advisory lock (see :func:`_push`):
    write the wallet's committed mode to the gate, then, once this transaction ends, ``resume`` its
    chats.  A wallet gone from PostgreSQL or the gate is skipped, its chats too."""
    mode = session.execute(select(col(Wallet.mode)).where(col(Wallet.id) == wallet_id)).scalar_one_or_none()
    if mode is None:
        return
    try:
        gate.set_mode(wallet_id, mode)
    except UnknownWallet:  # a rebuild loads PostgreSQL's mode
        return
    if resume is not None:
        after_commit(session, partial(_resume_after_mode_change, resume, gate, wallet_id))


def set_app_mode(
    session: Session,
    gate: WalletGate,
    enterprise_id: str,
    mode: str,
    *,
    actor: str = "cli",
    resume: ResumeChats | None = None,
) -> list[str]:
    """Set an app's default mode; every wallet of the app that does not override its mode follows.
    ``resume(gate, wallet_id, cause="mode_change")`` runs for each changed wallet once the gate has
    its mode (the entry points pass :func:`worker.chats.lifecycle.resume_paused_chats`).  The gate
    follows once the caller commits ``session``.

    Returns the wallet ids whose mode changed.  Raises ModeError naming ``mode`` or ``enterprise_id``.
    """
    _mode(mode)
    _ids(enterprise_id=enterprise_id)
    app = _locked_app(session, enterprise_id)
    before = app.default_mode
    app.default_mode = BillingMode(mode)
    changed = sorted(
        session.execute(
            update(Wallet)
            .where(
                col(Wallet.enterprise_id) == enterprise_id,
                col(Wallet.mode_override).is_(False),
                col(Wallet.mode) != mode,
            )
            .values(mode=mode)
            .returning(col(Wallet.id))
        ).scalars()
    )
    detail: dict[str, Any] = {"from": before, "to": mode, "wallets": len(changed)}
    audit(
        session,
        actor=actor,
        action="mode_change",
        enterprise_id=enterprise_id,
        scope="app",
        **detail,
    )
    _push(session, gate, changed, resume)
    return changed


def set_wallet_mode(
    session: Session,
    gate: WalletGate,
    wallet_id: str,
    mode: str | None,
    *,
    actor: str = "cli",
    resume: ResumeChats | None = None,
) -> str:
    """Override one wallet's mode (``mode``), or make it follow its app's default again (None);
    then, once the caller commits ``session``, the gate and ``resume`` as :func:`set_app_mode` does.

    Returns the wallet's mode after.  Raises ModeError naming ``mode`` or ``wallet_id``.
    """
    if mode is not None:
        _mode(mode)
    _ids(wallet_id=wallet_id)
    wallet = _locked_wallet(session, wallet_id)
    before = wallet.mode
    if mode is None:
        app = session.get(Enterprise, wallet.enterprise_id) if wallet.enterprise_id else None
        wallet.mode = app.default_mode if app is not None else gate.settings.default_mode
        wallet.mode_override = False
    else:
        wallet.mode, wallet.mode_override = BillingMode(mode), True
    after = wallet.mode
    audit(
        session,
        actor=actor,
        action="mode_change",
        enterprise_id=wallet.enterprise_id,
        wallet_id=wallet_id,
        scope="wallet",
        **{"from": before, "to": after, "override": mode is not None},
    )
    _push(session, gate, [wallet_id], resume)
    return after


def _push_reservations(session: Session, gate: WalletGate, wallet_ids: list[str]) -> None:
    """Once the caller's transaction (``session``) has committed: mirror whether each wallet
    requires reservations in the gate (hash field ``require_hold``), read again from PostgreSQL
    under the wallet's advisory lock in a follow-up transaction, as :func:`_push` does for modes.
    A wallet not in the gate is skipped (a rebuild loads the setting)."""
    _mirror_each(session, wallet_ids, partial(_push_reservation, gate=gate))


def _push_reservation(session: Session, gate: WalletGate, wallet_id: str) -> None:
    wallet = session.get(Wallet, wallet_id)
    if wallet is None:
        return
    app = session.get(Enterprise, wallet.enterprise_id) if wallet.enterprise_id else None
    key = gate.wallet_key(wallet_id)
    if gate.redis.hexists(key, "mode"):  # never make a stray hash look like a wallet
        gate.redis.hset(key, "require_hold", "1" if requires_reservations(wallet, app) else "0")


def set_wallet_reservations(
    session: Session, gate: WalletGate, wallet_id: str, required: bool | None, *, actor: str = "cli"
) -> bool:
    """Make reservations mandatory (True) or optional (False) for one wallet's charged turns, or
    make it follow its app's setting again (None).  With reservations required, a turn without a
    live reservation of its own wallet is denied, and a cost above its reservation plus the free
    balance is recorded as debt.  The gate follows once the caller commits ``session``.  Returns the
    wallet's effective setting.  Raises ModeError naming ``wallet_id`` or ``reservations_required``."""
    if required is not None and not isinstance(required, bool):
        raise ModeError(
            f"reservations_required: {required!r} is not true, false or null", field="reservations_required"
        )
    wallet = _locked_wallet(session, wallet_id)
    wallet.reservations_required = required
    app = session.get(Enterprise, wallet.enterprise_id) if wallet.enterprise_id else None
    effective = requires_reservations(wallet, app)
    audit(
        session,
        actor=actor,
        action="reservations_required",
        enterprise_id=wallet.enterprise_id,
        wallet_id=wallet_id,
        scope="wallet",
        to=required,
        effective=effective,
    )
    _push_reservations(session, gate, [wallet_id])
    return effective


def configure_app(
    session: Session,
    gate: WalletGate,
    enterprise_id: str,
    *,
    actor: str = "cli",
    creator_share_bps: int | None = None,
    trial_token_allowance: int | None = None,
    trial_then: str | None = None,
    flat_fee_nanos: int | None = None,
    fee_wallet_id: str | None = None,
    creator_id: str | None = None,
    max_turn_cost_nanos: int | None = None,
    reservations_required: bool | None = None,
) -> Enterprise:
    """Change an app's billing settings (only those given): the creator's revenue share (basis points,
    0..10000), the trial allowance per wallet (tokens ≥ 0; wallets' tokens left move by the change),
    what trial wallets do after it (``bill``/``pause``), and the flat monthly fee of track_only mode
    (nano-USD ≥ 0) with the wallet it is debited from, and the app's creator (``mozaiks_user_id``,
    whose platform-level wallet this app's API keys may charge), the most one turn may cost
    (``max_turn_cost_nanos``, nano-USD 0..2^62; the gate refuses a costlier turn), and whether its
    wallets' charged turns need a live reservation (``reservations_required``; a wallet may override
    it).  Turns already
    decided keep their split.

    The gate's copies (each loaded wallet's share, trial rule, turn limit, reservations rule) follow
    once the caller commits ``session``.  Returns the app row.  Raises ModeError naming the field.
    """
    if creator_share_bps is not None and (
        not isinstance(creator_share_bps, int) or not 0 <= creator_share_bps <= 10_000
    ):
        raise ModeError(
            f"creator_share_bps: {creator_share_bps!r} is not an integer in 0..10000", field="creator_share_bps"
        )
    if trial_token_allowance is not None and (
        not isinstance(trial_token_allowance, int) or not 0 <= trial_token_allowance <= 10**15
    ):
        raise ModeError(
            f"trial_token_allowance: {trial_token_allowance!r} is not an integer in 0..10^15",
            field="trial_token_allowance",
        )
    if trial_then is not None and trial_then not in TrialThen.__members__:
        raise ModeError(f"trial_then: {trial_then!r} is not 'bill' or 'pause'", field="trial_then")
    _ids(enterprise_id=enterprise_id, creator_id=creator_id, fee_wallet_id=fee_wallet_id)
    if max_turn_cost_nanos is not None and (
        not isinstance(max_turn_cost_nanos, int)
        or isinstance(max_turn_cost_nanos, bool)
        or not 0 <= max_turn_cost_nanos <= 2**62
    ):
        raise ModeError(
            f"max_turn_cost_nanos: {max_turn_cost_nanos!r} is not an integer of nano-USD in 0..2^62",
            field="max_turn_cost_nanos",
        )
    if flat_fee_nanos is not None and (not isinstance(flat_fee_nanos, int) or not 0 <= flat_fee_nanos <= 2**62):
        raise ModeError(
            f"flat_fee_nanos: {flat_fee_nanos!r} is not an integer of nano-USD in 0..2^62", field="flat_fee_nanos"
        )
    if reservations_required is not None and not isinstance(reservations_required, bool):
        raise ModeError(
            f"reservations_required: {reservations_required!r} is not true or false", field="reservations_required"
        )
    app = _locked_app(session, enterprise_id)
    if fee_wallet_id is not None and session.get(Wallet, fee_wallet_id) is None:
        raise ModeError(f"fee_wallet_id: unknown wallet {fee_wallet_id!r}", field="fee_wallet_id")
    delta = 0 if trial_token_allowance is None else trial_token_allowance - app.trial_token_allowance
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "creator_share_bps": creator_share_bps,
            "trial_token_allowance": trial_token_allowance,
            "trial_then": trial_then,
            "flat_fee_nanos": flat_fee_nanos,
            "fee_wallet_id": fee_wallet_id,
            "creator_id": creator_id,
            "max_turn_cost_nanos": max_turn_cost_nanos,
            "reservations_required": reservations_required,
        }.items()
        if v is not None
    }
    for name, value in changes.items():
        setattr(app, name, value)
    wallet_ids = list(
        session.execute(select(col(Wallet.id)).where(col(Wallet.enterprise_id) == enterprise_id)).scalars()
    )
    audit(session, actor=actor, action="app_config", enterprise_id=enterprise_id, **changes)
    share, then, max_turn = app.creator_share_bps, app.trial_then, app.max_turn_cost_nanos
    after_commit(session, lambda: _push_app_config(gate, wallet_ids, share, then, max_turn, delta))
    if reservations_required is not None:  # then each loaded wallet's require_hold (others: a rebuild)
        _push_reservations(session, gate, wallet_ids)
    return app


def _push_app_config(gate: WalletGate, wallet_ids: list[str], share: int, then: str, max_turn: int, delta: int) -> None:
    """After an app's configuration committed: its loaded wallets' copies in the gate (a rebuild
    loads the others)."""
    check = gate.redis.pipeline(transaction=False)
    for wallet_id in wallet_ids:
        check.hexists(gate.wallet_key(wallet_id), "mode")
    loaded = [w for w, present in zip(wallet_ids, check.execute()) if present]  # a rebuild loads the rest
    pipe = gate.redis.pipeline(transaction=False)
    for wallet_id in loaded:
        key = gate.wallet_key(wallet_id)
        pipe.hset(key, mapping={"share_bps": share, "trial_then": then, "max_turn_nanos": max_turn})
        if delta:
            pipe.hincrby(key, "trial_left", delta)
    pipe.execute()


@dataclass(slots=True)
class FeeReport:
    """One :func:`charge_flat_fees` run: the period and the (enterprise, wallet, nanos) charged."""

    period: str
    charged: list[tuple[str, str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain form (nanos)."""
        return {
            "period": self.period,
            "charged": [list(c) for c in self.charged],
            "charged_nanos": sum(c[2] for c in self.charged),
        }


def charge_flat_fees(
    session: Session, gate: WalletGate, *, now: datetime | None = None, period: str | None = None
) -> FeeReport:
    """Debit the flat monthly fee of every track_only app (``flat_fee_nanos`` > 0 with a
    ``fee_wallet_id``) for ``period`` (default: the current UTC month), once per app and period
    (ledger key ``tollgate:flat-fee:<enterprise>:<period>``); the gate mirrors each new entry after
    its commit with the same key.  Run by the monthly reset job; idempotent.  Writes in the caller's
    ``session`` (the job's one transaction: all of a run's fees commit together or not at all);
    the gate mirrors them once it commits.

    Raises: ModeError naming ``period`` (malformed).
    """
    period = period or current_period(now or datetime.now(UTC))
    try:
        period_bounds(period)
    except ValueError as exc:
        raise ModeError(str(exc), field="period") from None
    report = FeeReport(period)
    apps = session.execute(
        select(col(Enterprise.id), col(Enterprise.fee_wallet_id), col(Enterprise.flat_fee_nanos))
        .where(
            col(Enterprise.default_mode) == BillingMode.track_only,
            col(Enterprise.flat_fee_nanos) > 0,
            col(Enterprise.fee_wallet_id).is_not(None),
        )
        .order_by(col(Enterprise.id))
    ).all()
    for enterprise_id, wallet_id, fee in apps:
        key = f"{FLAT_FEE_PREFIX}{enterprise_id}:{period}"
        inserted = session.execute(
            insert(WalletTransaction)
            .values(
                wallet_id=wallet_id,
                kind=TransactionKind.debit,
                amount_nanos=fee,
                idempotency_key=key,
                description=f"track_only flat fee of {enterprise_id} for {period}",
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(col(WalletTransaction.id))
        ).first()
        if inserted is None:
            continue
        session.execute(
            update(Wallet).where(col(Wallet.id) == wallet_id).values(debits_nanos=col(Wallet.debits_nanos) + fee)
        )
        after_commit(session, partial(_mirror_fee, gate, wallet_id, fee, key))
        report.charged.append((enterprise_id, wallet_id, fee))
    return report


def _mirror_fee(gate: WalletGate, wallet_id: str, fee: int, key: str) -> None:
    try:
        gate.adjust(wallet_id, -fee, key)
    except UnknownWallet:
        log.info("wallet %s is not in the gate; a rebuild loads its ledger balance", wallet_id)
