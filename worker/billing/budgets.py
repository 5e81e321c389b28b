"""Budgets: a monthly spending limit on one wallet or on one workflow of an app, with alerts at 50 %,
80 % and 100 % of the period (UTC month) and an optional auto-pause at 100 %.

Spend in a period, from the persisted usage events (``occurred_at`` in the period):

- wallet budget: ``sum(usage_event.billed_nanos)`` of the wallet (what was debited; development-mode
  turns cost the wallet nothing and count nothing);
- workflow budget: ``sum(usage_event.cost_nanos)`` of the app's workflow, whoever paid.

Alerts are rows of ``budget_alert``, unique per (budget, period, threshold): :func:`check_budgets`
inserts the thresholds crossed with ``ON CONFLICT DO NOTHING RETURNING`` and announces only the rows
it inserted, after its transaction commits (Redis pub/sub on ``tollgate:events:<enterprise>``, a
signed webhook if the app configured one; see :mod:`worker.events`).  So an alert fires once per
threshold per period however often, late or concurrently the job runs.  A late first run that finds
spend already at 100 % sends the 50, 80 and 100 % alerts together.

Late data: a turn counts in the month it occurred in, whenever it is persisted.  The drain marks each
(wallet, enterprise, workflow, month) it inserts turns for in ``budget_dirty``, in the same
transaction (rollup_dirty's mechanism); each run takes the marks and checks the budgets of the marked
scopes in every marked month besides the current one (alerts only: auto-pause is about now), so
October turns persisted in November raise October's alerts, once, and nothing for November.

Auto-pause is state, re-derived on every run, not a one-off action:

- a wallet budget at ≥ 100 % sets ``wallet.blocked_reason = 'budget_exceeded'`` (only where no other
  reason is set) and, after commit, the gate's ``blocked`` flag: the gate then denies the wallet's
  production turns.  When the budget is no longer exceeded (next period, a larger amount, auto-pause
  off) the same job clears both, again only where the reason is ``budget_exceeded``;
- a workflow budget at ≥ 100 % pauses the workflow's active chat sessions (status ``paused``,
  ``pause_reason 'budget_exceeded'``) and emits ``budget.chats_paused``.  The gate cannot see
  workflows (its wallet hash knows nothing of them), so the orchestrator must stop those chats on the
  event; a chat that records turns anyway is marked active again by the drain and re-paused by the
  next run.  The pause (and the release) moves the chat's state forward in the gate's order
  (``worker.ledger.turns.transition_position``), so a turn the gate decided before the pause and the drain
  persisted after it does not make the chat active, and the pause is announced once.  When the
  budget is no longer exceeded the chats are resumed (``budget.chats_resumed``).

Enforcement lags by the job's interval (60 s) plus the outbox's (< 1 s): turns accepted in between
are billed, so spend can exceed a budget by what the wallet or workflow spends in that time.

Event types: ``budget.threshold_crossed``, ``budget.wallet_paused``, ``budget.wallet_resumed``,
``budget.chats_paused``, ``budget.chats_resumed`` (payloads in :func:`check_budgets`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, case, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.budget import Budget, BudgetAlert, BudgetCreate
from models.chat import ChatSession
from models.enums import ChatStatus
from models.turn import UsageEvent
from models.wallet import Enterprise, Wallet
from worker.db import after_commit, after_commit_in_transaction, table_of
from worker.errors import InputError
from worker.events import Event, SendTask, enqueue_delivery, publish
from worker.gate.gate import UnknownWallet, WalletGate, process_gate
from worker.ledger.turns import transition_position
from worker.periods import current_period, period_bounds, previous_period

log = logging.getLogger(__name__)

#: alert thresholds, percent of the budget's amount
THRESHOLDS = (50, 80, 100)
#: ``wallet.blocked_reason`` and ``chat_session.pause_reason`` set by auto-pause
BUDGET_EXCEEDED = "budget_exceeded"
#: in the first hour of a month the month before is checked again for alerts (its last turns may be
#: persisted after its last check); late turns of any month also reach it through ``budget_dirty``
#: marks (:func:`take_budget_marks`); auto-pause only ever looks at the current month
LATE_ALERT_WINDOW = timedelta(hours=1)
#: an alert still unsent this long after its commit is sent again by the next check (its own run
#: normally sends it within milliseconds of the commit)
UNSENT_AFTER = timedelta(seconds=60)
#: ``pg_advisory_xact_lock`` key serialising check_budgets runs ('tollbudg')
_CHECK_LOCK = 0x746F6C6C62756467


class BudgetError(InputError, ValueError):
    """A budget request is invalid; the message starts with the field it names."""


# budgets ----------------------------------------------------------------------------------------
def set_budget(
    session: Session,
    *,
    enterprise_id: str,
    amount_nanos: int,
    wallet_id: str | None = None,
    workflow: str | None = None,
    auto_pause: bool = False,
) -> Budget:
    """Create the budget of one scope (a wallet, or a workflow of the app), or update its amount and
    auto-pause if the scope has one already (one budget per scope; concurrent calls are serialised
    by an advisory lock on the scope).  ``amount_nanos`` is nano-USD per UTC month.

    Alerts already sent this period stay sent; the new amount applies from the next
    :func:`check_budgets` (which also lifts an auto-pause the new amount no longer justifies).
    Returns the budget row (flushed: it has its id).  The caller commits.
    Raises: BudgetError naming the field: ``amount_nanos`` (not an integer in 1..2^62),
    ``wallet_id``/``workflow`` (neither or both; unknown wallet; wallet of another app),
    ``enterprise_id`` (unknown app), ``auto_pause`` (not a bool).
    """
    try:
        spec = BudgetCreate(
            enterprise_id=enterprise_id,
            wallet_id=wallet_id,
            workflow=workflow,
            amount_nanos=amount_nanos,
            auto_pause=auto_pause,
        )
    except ValidationError as exc:
        raise BudgetError(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'wallet_id, workflow'}: {e['msg']}" for e in exc.errors()),
            field=".".join(map(str, exc.errors()[0]["loc"])) or "wallet_id",
        ) from None
    if session.get(Enterprise, spec.enterprise_id) is None:
        raise BudgetError(f"enterprise_id: unknown enterprise {spec.enterprise_id!r}", field="enterprise_id")
    if spec.wallet_id is not None:
        wallet = session.get(Wallet, spec.wallet_id)
        if wallet is None:
            raise BudgetError(f"wallet_id: unknown wallet {spec.wallet_id!r}", field="wallet_id")
        if wallet.enterprise_id != spec.enterprise_id:
            raise BudgetError(
                f"wallet_id: wallet {spec.wallet_id!r} belongs to {wallet.enterprise_id!r}, not {spec.enterprise_id!r}",
                field="wallet_id",
            )
        scope = col(Budget.wallet_id) == spec.wallet_id
        lock_name = f"budget:{spec.enterprise_id}:wallet:{spec.wallet_id}"
    else:
        scope = col(Budget.workflow) == spec.workflow
        lock_name = f"budget:{spec.enterprise_id}:workflow:{spec.workflow}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(lock_name, 0))))
    budget = session.execute(
        select(Budget).where(col(Budget.enterprise_id) == spec.enterprise_id, scope).order_by(col(Budget.id)).limit(1)
    ).scalar_one_or_none()
    if budget is None:
        budget = Budget(  # type: ignore[call-arg]  # created_at: the database's now() (server_default)
            enterprise_id=spec.enterprise_id,
            wallet_id=spec.wallet_id,
            workflow=spec.workflow,
            amount_nanos=spec.amount_nanos,
            auto_pause=spec.auto_pause,
        )
        session.add(budget)
    else:
        budget.amount_nanos = spec.amount_nanos
        budget.auto_pause = spec.auto_pause
    session.flush()
    return budget


def _id(budget: Budget) -> int:
    """A stored budget's id (set once its row is flushed)."""
    assert budget.id is not None
    return budget.id


def list_budgets(session: Session, enterprise_id: str | None = None) -> list[Budget]:
    """Budgets of one app (default: all), by id."""
    stmt = select(Budget).order_by(col(Budget.id))
    if enterprise_id is not None:
        stmt = stmt.where(col(Budget.enterprise_id) == enterprise_id)
    return list(session.execute(stmt).scalars())


def spend_by_budget(session: Session, period: str) -> dict[int, int]:
    """Spend of every budget in ``period`` ('YYYY-MM', UTC), nano-USD: ``{budget_id: spent_nanos}``.

    Wallet budgets sum ``billed_nanos`` of the wallet's usage events, workflow budgets ``cost_nanos``
    of the app's workflow (both over ``occurred_at`` in ``[start, end)``; indexed).
    Raises ValueError for a malformed period.
    """
    start, end = period_bounds(period)
    ue = UsageEvent
    in_period = and_(col(ue.occurred_at) >= start, col(ue.occurred_at) < end)
    wallet_rows = session.execute(
        select(col(Budget.id), func.coalesce(func.sum(col(ue.billed_nanos)), 0))
        .select_from(Budget)
        .outerjoin(ue, and_(col(ue.wallet_id) == col(Budget.wallet_id), in_period))
        .where(col(Budget.wallet_id).is_not(None))
        .group_by(col(Budget.id))
    ).all()
    workflow_rows = session.execute(
        select(col(Budget.id), func.coalesce(func.sum(col(ue.cost_nanos)), 0))
        .select_from(Budget)
        .outerjoin(
            ue,
            and_(
                col(ue.enterprise_id) == col(Budget.enterprise_id), col(ue.workflow) == col(Budget.workflow), in_period
            ),
        )
        .where(col(Budget.workflow).is_not(None))
        .group_by(col(Budget.id))
    ).all()
    return {int(b): int(s) for b, s in (*wallet_rows, *workflow_rows)}


def crossed(spent_nanos: int, amount_nanos: int) -> list[int]:
    """Thresholds (percent) that ``spent_nanos`` has reached, in exact integers:
    ``t`` is crossed iff ``spent × 100 ≥ amount × t`` (49.99…% crosses nothing, 50 % crosses 50)."""
    return [t for t in THRESHOLDS if spent_nanos * 100 >= amount_nanos * t]


# the job ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget's standing in the checked period (money in nano-USD)."""

    budget_id: int
    enterprise_id: str
    wallet_id: str | None
    workflow: str | None
    amount_nanos: int
    spent_nanos: int
    auto_pause: bool
    exceeded: bool


def _status(budget: Budget, spend: dict[int, int]) -> BudgetStatus:
    """``budget``'s standing given ``spend`` (budget id -> spent nano-USD in the period, from
    :func:`spend_by_budget`; a budget missing from it has spent 0)."""
    spent = spend.get(_id(budget), 0)
    return BudgetStatus(
        _id(budget),
        budget.enterprise_id,
        budget.wallet_id,
        budget.workflow,
        budget.amount_nanos,
        spent,
        budget.auto_pause,
        spent >= budget.amount_nanos,
    )


@dataclass(frozen=True, slots=True)
class AlertSent:
    """An alert this run inserted (and announces after commit)."""

    alert_id: int
    budget_id: int
    period: str
    threshold_pct: int
    spent_nanos: int
    amount_nanos: int
    event_id: str


@dataclass(slots=True)
class BudgetCheck:
    """What one :func:`check_budgets` run found and changed.  ``events`` are emitted after commit."""

    period: str
    budgets: list[BudgetStatus] = field(default_factory=list)
    alerts: list[AlertSent] = field(default_factory=list)
    paused_wallets: list[str] = field(default_factory=list)
    resumed_wallets: list[str] = field(default_factory=list)
    paused_chats: list[tuple[str, str]] = field(default_factory=list)  # (enterprise_id, chat_id)
    resumed_chats: list[tuple[str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: alerts of earlier runs that were committed but never sent, sent again by this one
    resent_alerts: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (events by id and type)."""
        return {
            "period": self.period,
            "budgets": [asdict(b) for b in self.budgets],
            "alerts": [asdict(a) for a in self.alerts],
            "paused_wallets": list(self.paused_wallets),
            "resumed_wallets": list(self.resumed_wallets),
            "paused_chats": [list(c) for c in self.paused_chats],
            "resumed_chats": [list(c) for c in self.resumed_chats],
            "events": [{"id": e.id, "type": e.type, "enterprise_id": e.enterprise_id} for e in self.events],
            "resent_alerts": list(self.resent_alerts),
        }


def check_budgets(
    session: Session,
    now: datetime | None = None,
    *,
    gate: WalletGate | None = None,
    send_task: SendTask | None = None,
) -> BudgetCheck:
    """Check every budget in the period of ``now`` (default: the current UTC time): insert the alerts
    of thresholds newly crossed, apply and lift auto-pauses; insert the alerts of other months whose
    spend changed since the last run (``budget_dirty`` marks, :func:`take_budget_marks`: late turns),
    for the budgets of the marked scopes; and register the side effects to run
    after the caller commits (:func:`worker.db.after_commit`; nothing happens on rollback):

    1. the gate's ``blocked`` flag of each wallet with a budget is brought in line with
       ``wallet.blocked_reason`` where either says ``budget_exceeded`` (this also repairs a gate
       that missed an earlier run's change: a crash between commit and Redis);
    2. each event is published on ``tollgate:events:<enterprise_id>`` and, if the app has a
       ``callback_url`` and ``webhook_secret``, sent as the task ``tollgate.webhooks.deliver``.

    Runs are serialised by a transaction-level advisory lock (a second concurrent run waits, then
    finds the alerts committed); the unique ``(budget_id, period, threshold_pct)`` makes each alert
    once-only even without it.

    Event payloads (``data``; money in nano-USD):
      ``budget.threshold_crossed`` (id ``evt_budget_alert_<alert id>``): alert_id, budget_id, scope
      ('wallet'|'workflow'), wallet_id, workflow, period, threshold_pct, spent_nanos, amount_nanos,
      auto_pause · ``budget.wallet_paused`` / ``budget.wallet_resumed``: wallet_id, reason, period ·
      ``budget.chats_paused`` / ``budget.chats_resumed``: workflow, chat_ids, reason, period.

    ``gate`` defaults to the process's (:func:`~worker.gate.gate.process_gate`); its Redis client also publishes.  ``send_task``
    defaults to the Celery app's.  Returns a :class:`BudgetCheck`.
    Raises: ValueError for a naive ``now``; database errors (nothing is emitted then).
    """
    period = current_period(now)
    gate = gate or process_gate()
    result = BudgetCheck(period=period)
    session.execute(select(func.pg_advisory_xact_lock(_CHECK_LOCK)))

    budgets = list_budgets(session)
    spend = spend_by_budget(session, period)
    by_id = {_id(b): b for b in budgets}
    result.budgets.extend(_status(b, spend) for b in budgets)

    # 1. alerts: only rows this transaction inserts are announced.  Every other month whose spend the
    # drain changed (turns persisted after their month ended: late data) is checked too, alerts only,
    # for the budgets of the scopes it touched.  In the first hour of a month the month before is
    # checked as well (alerts only; what rows written before budget_dirty existed need).
    _unsent_alerts(session, result, by_id)
    _announce(session, result, period, result.budgets, by_id)
    for late_period, touched in sorted(take_budget_marks(session).items()):
        if late_period == period:
            continue  # the current month was checked above, whole
        late = spend_by_budget(session, late_period)
        wallets, workflows = {w for w, _e, _f in touched}, {(e, f) for _w, e, f in touched}
        _announce(
            session,
            result,
            late_period,
            [_status(b, late) for b in budgets if _touches(b, wallets, workflows)],
            by_id,
        )
    start, _ = period_bounds(period)
    if (now or datetime.now(UTC)) - start < LATE_ALERT_WINDOW:
        before = previous_period(period)
        late = spend_by_budget(session, before)
        _announce(
            session,
            result,
            before,
            [_status(b, late) for b in budgets],
            by_id,
        )
    return _pause_and_resume(session, result, gate, send_task, period)


def take_budget_marks(session: Session) -> dict[str, set[tuple[str, str, str]]]:
    """Delete every ``budget_dirty`` mark no drain is writing right now and return them by period:
    ``{'YYYY-MM': {(wallet_id, enterprise_id, workflow), …}}``.

    rollup_dirty's mechanism (:func:`worker.chats.rollups.take_dirty`): the drain marks in the transaction
    that inserts the turns, with ``ON CONFLICT DO UPDATE`` (a row lock); this takes marks with
    ``FOR UPDATE SKIP LOCKED``, so a mark whose turns are not committed yet stays for the next run,
    and a mark taken here comes back if this transaction rolls back.  Spend read after this statement
    (READ COMMITTED) includes every turn of the marks it took.  Does not commit.
    """
    taken = session.execute(
        text(
            "WITH taken AS MATERIALIZED ("
            "  SELECT wallet_id, enterprise_id, workflow, period FROM budget_dirty FOR UPDATE SKIP LOCKED"
            ") DELETE FROM budget_dirty d USING taken t"
            " WHERE d.wallet_id = t.wallet_id AND d.enterprise_id = t.enterprise_id AND d.workflow = t.workflow"
            " AND d.period = t.period"
            " RETURNING d.wallet_id, d.enterprise_id, d.workflow, d.period"
        )
    ).all()
    marks: dict[str, set[tuple[str, str, str]]] = {}
    for wallet_id, enterprise_id, workflow, period in taken:
        marks.setdefault(period, set()).add((wallet_id, enterprise_id, workflow))
    return marks


def _touches(budget: Budget, wallets: set[str], workflows: set[tuple[str, str]]) -> bool:
    """Whether a budget's scope is a marked wallet or a marked (enterprise_id, workflow)."""
    if budget.wallet_id is not None:
        return budget.wallet_id in wallets
    return (budget.enterprise_id, budget.workflow) in workflows


def _announce(session: Session, result: "BudgetCheck", period: str, statuses: list, by_id: dict) -> None:
    """Insert the alerts of ``statuses`` crossed in ``period``; announce only the rows inserted now."""
    rows = [
        {
            "budget_id": s.budget_id,
            "period": period,
            "threshold_pct": t,
            "spent_nanos": s.spent_nanos,
            "amount_nanos": s.amount_nanos,
        }
        for s in statuses
        for t in crossed(s.spent_nanos, s.amount_nanos)
    ]
    if rows:
        inserted = session.execute(
            insert(BudgetAlert)
            .values(rows)
            .on_conflict_do_nothing(constraint="uq_budget_alert_once")
            .returning(
                col(BudgetAlert.id),
                col(BudgetAlert.budget_id),
                col(BudgetAlert.threshold_pct),
                col(BudgetAlert.spent_nanos),
                col(BudgetAlert.amount_nanos),
            )
        ).all()
        for alert_id, budget_id, pct, spent, amount in sorted(inserted, key=lambda r: (r[1], r[2])):
            event = _alert_event(by_id[budget_id], alert_id, period, pct, spent, amount)
            result.alerts.append(AlertSent(alert_id, budget_id, period, pct, spent, amount, event.id))
            result.events.append(event)


def _alert_event(b, alert_id: int, period: str, pct: int, spent: int, amount: int) -> Event:
    """The ``budget.threshold_crossed`` event of one alert; its id is the alert's, so a resend is
    the same event to a receiver that deduplicates."""
    return Event.new(
        "budget.threshold_crossed",
        b.enterprise_id,
        {
            "alert_id": alert_id,
            "budget_id": b.id,
            "scope": "wallet" if b.wallet_id else "workflow",
            "wallet_id": b.wallet_id,
            "workflow": b.workflow,
            "period": period,
            "threshold_pct": pct,
            "spent_nanos": spent,
            "amount_nanos": amount,
            "auto_pause": b.auto_pause,
        },
        event_id=f"evt_budget_alert_{alert_id}",
    )


def _unsent_alerts(session: Session, result: "BudgetCheck", by_id: dict) -> None:
    """Alerts committed by an earlier run but never sent (the process died between its commit and
    the announcement): sent again now, with their own event ids."""
    ba = BudgetAlert
    rows = session.execute(
        select(
            col(ba.id),
            col(ba.budget_id),
            col(ba.period),
            col(ba.threshold_pct),
            col(ba.spent_nanos),
            col(ba.amount_nanos),
        )
        .where(col(ba.notified_at).is_(None), col(ba.created_at) < func.now() - UNSENT_AFTER)
        .order_by(col(ba.id))
        .limit(1000)
    ).all()
    for alert_id, budget_id, period, pct, spent, amount in rows:
        if budget_id in by_id:
            event = _alert_event(by_id[budget_id], alert_id, period, pct, spent, amount)
            result.resent_alerts.append(alert_id)
            result.events.append(event)


def _pause_and_resume(session: Session, result: "BudgetCheck", gate: WalletGate, send_task, period: str):
    """Steps 2 and 3 of :func:`check_budgets` for the current ``period``, then the side effects."""
    # 2. wallets: blocked while an auto-pause budget is exceeded, lifted otherwise
    block = sorted({s.wallet_id for s in result.budgets if s.wallet_id and s.auto_pause and s.exceeded})
    if block:
        paused = session.execute(
            update(Wallet)
            .where(col(Wallet.id).in_(block), col(Wallet.blocked_reason).is_(None))
            .values(blocked_reason=BUDGET_EXCEEDED)
            .returning(col(Wallet.id), col(Wallet.enterprise_id))
        ).all()
        for wallet_id, enterprise_id in sorted(paused):  # a wallet budget's wallet always has an app
            result.paused_wallets.append(wallet_id)
            result.events.append(
                Event.new(
                    "budget.wallet_paused",
                    enterprise_id,
                    {"wallet_id": wallet_id, "reason": BUDGET_EXCEEDED, "period": period},
                )
            )
    resumed = session.execute(
        update(Wallet)
        .where(col(Wallet.blocked_reason) == BUDGET_EXCEEDED, col(Wallet.id).not_in(block))
        .values(blocked_reason=None)
        .returning(col(Wallet.id), col(Wallet.enterprise_id))
    ).all()
    for wallet_id, enterprise_id in sorted(resumed):
        result.resumed_wallets.append(wallet_id)
        if enterprise_id is not None:  # a wallet with a budget always has an app; one without has no channel
            result.events.append(
                Event.new(
                    "budget.wallet_resumed",
                    enterprise_id,
                    {"wallet_id": wallet_id, "reason": BUDGET_EXCEEDED, "period": period},
                )
            )

    # 3. workflows: the gate cannot see them, so their chat sessions are paused and the app told
    ct = ChatSession
    scope = tuple_(col(ct.enterprise_id), col(ct.workflow))
    halt = sorted({(s.enterprise_id, s.workflow) for s in result.budgets if s.workflow and s.auto_pause and s.exceeded})
    if halt:
        chats = _move_chats(
            session,
            gate,
            and_(scope.in_(halt), col(ct.status) == ChatStatus.active.value),
            status=ChatStatus.paused.value,
            pause_reason=BUDGET_EXCEEDED,
        )
        result.paused_chats += sorted((e, c) for e, _w, c in chats)
        result.events += _chat_events("budget.chats_paused", chats, period)
    release = sorted({(s.enterprise_id, s.workflow) for s in result.budgets if s.workflow} - set(halt))
    if release:
        chats = _move_chats(
            session,
            gate,
            and_(
                scope.in_(release), col(ct.status) == ChatStatus.paused.value, col(ct.pause_reason) == BUDGET_EXCEEDED
            ),
            status=ChatStatus.active.value,
            pause_reason=None,
        )
        result.resumed_chats += sorted((e, c) for e, _w, c in chats)
        result.events += _chat_events("budget.chats_resumed", chats, period)

    # 4. after commit: the gate first (deny before anyone is told), then the events
    watched = sorted({s.wallet_id for s in result.budgets if s.wallet_id} | set(result.resumed_wallets))
    ledger_reasons: dict[str, str | None] = dict(
        session.execute(select(col(Wallet.id), col(Wallet.blocked_reason)).where(col(Wallet.id).in_(watched))).all()
    )
    hooked = set(
        session.execute(
            select(col(Enterprise.id)).where(
                col(Enterprise.id).in_(sorted({e.enterprise_id for e in result.events})),
                col(Enterprise.callback_url).is_not(None),
                col(Enterprise.webhook_secret).is_not(None),
            )
        ).scalars()
    )
    events = list(result.events)

    def announce(marked: Session) -> None:  # a follow-up transaction: the alerts it sent are marked in it
        sent = []
        for event in events:
            try:
                publish(gate.redis, event)
                if event.enterprise_id in hooked:
                    enqueue_delivery(event, send_task)
            except Exception:  # the alert stays unsent; the next check sends it again
                log.error("could not announce %s (%s) of %s", event.id, event.type, event.enterprise_id, exc_info=True)
                continue
            if event.type == "budget.threshold_crossed":
                sent.append(event.data["alert_id"])
        if sent:
            marked.execute(update(BudgetAlert).where(col(BudgetAlert.id).in_(sent)).values(notified_at=func.now()))

    after_commit(session, partial(_sync_gate_blocks, gate, ledger_reasons))
    after_commit_in_transaction(session, announce)
    return result


def _sync_gate_blocks(gate: WalletGate, ledger_reasons: dict[str, str | None]) -> None:
    sync_gate_blocks(gate, ledger_reasons)


def _move_chats(session: Session, gate: WalletGate, where, **values) -> list[tuple[str, str, str]]:
    """Set ``values`` on the chat sessions matching ``where`` and move their state forward to the
    position of now in the gate's order (``worker.ledger.turns.transition_position`` of each chat's
    wallet; never back), as every other pause and resume does: a turn the gate decided before this
    pause or release, persisted after it, adds its totals but does not flip the chat back (so the
    next check does not pause it, and announce it, a second time).  Rows are locked in (enterprise,
    chat) order first, as the drain locks them.  Returns ``(enterprise_id, workflow, chat_id)`` of
    the chats changed."""
    ct = table_of(ChatSession)
    targets = session.execute(
        select(ct.c.enterprise_id, ct.c.chat_id, ct.c.wallet_id)
        .where(where)
        .order_by(ct.c.enterprise_id, ct.c.chat_id)
        .with_for_update()
    ).all()
    by_position: dict[str, list[tuple[str, str]]] = {}
    positions: dict[int, str] = {}  # one position per shard: chats of one shard share it
    for enterprise_id, chat_id, wallet_id in targets:
        shard = gate.shard(wallet_id)
        if shard not in positions:
            positions[shard] = transition_position(gate, wallet_id)
        by_position.setdefault(positions[shard], []).append((enterprise_id, chat_id))
    changed: list[tuple[str, str, str]] = []
    for position, chats in sorted(by_position.items()):
        changed += session.execute(
            update(ct)
            .where(tuple_(ct.c.enterprise_id, ct.c.chat_id).in_(chats), where)
            .values(**values, state_key=case((ct.c.state_key >= position, ct.c.state_key), else_=position))
            .returning(ct.c.enterprise_id, ct.c.workflow, ct.c.chat_id)
        ).all()
    return changed


def _chat_events(kind: str, chats, period: str) -> list[Event]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for enterprise_id, workflow, chat_id in chats:
        grouped.setdefault((enterprise_id, workflow), []).append(chat_id)
    return [
        Event.new(
            kind,
            enterprise_id,
            {"workflow": workflow, "chat_ids": sorted(ids), "reason": BUDGET_EXCEEDED, "period": period},
        )
        for (enterprise_id, workflow), ids in sorted(grouped.items())
    ]


def sync_gate_blocks(gate: WalletGate, ledger_reasons: dict[str, str | None]) -> list[str]:
    """Make the gate's ``blocked`` flag of each wallet equal its ``wallet.blocked_reason``
    (``ledger_reasons``: ``{wallet_id: reason or None}``, read from PostgreSQL) wherever either is
    ``budget_exceeded``; other reasons are not this module's to change.  Wallets missing from the gate
    are skipped (a rebuild loads ``blocked_reason`` with the wallet).  Returns the wallets changed.
    """
    changed = []
    gate_reasons = gate.blocked_reasons(ledger_reasons)
    for wallet_id, reason in sorted(ledger_reasons.items()):
        current = gate_reasons.get(wallet_id)
        if current == reason or BUDGET_EXCEEDED not in (current, reason):
            continue
        try:
            gate.set_blocked(wallet_id, reason)
        except UnknownWallet:
            log.info("wallet %s is not in the gate; its block is loaded with it on rebuild", wallet_id)
            continue
        changed.append(wallet_id)
    return changed
