"""What needs attention on the ``/billing`` page (issue 18 item 3): the paused chats of the wallets
in view with why they are paused and what would resume them, and an alert feed (budget thresholds
crossed, exhausted or blocked wallets, dead letters, reconciliation drift).

Sources (PostgreSQL only; reads, never writes):

- paused chats: ``chat_session`` rows with ``status = 'paused'`` of the wallets in view, with the
  chat's open ``paused_chat`` record (``resumed_at IS NULL``) when it has one: its ``reason`` and
  ``needed_nanos`` (what the wallet lacked when the chat paused).  A chat paused by a workflow
  budget has no record (``worker.billing.budgets`` pauses the session only): its reason is the
  session's ``pause_reason``.  A paused chat whose record a credit closed is ``resumable``
  (``can_resume``): the orchestrator resumes it.
- budget alerts: ``budget_alert`` rows of the period, of the budgets in view (as the budgets card:
  an end user its wallet's budget, an owner every budget of its app, an admin the workflow budgets);
- exhausted wallets: limited wallets in view whose ledger balance (``credits − debits``) is ≤ 0,
  and wallets the gate refuses (``wallet.blocked_reason``: ``budget_exceeded``, ``payment_failed``…);
- dead letters: open ``dead_letter`` rows whose wallet is in view (``dead_letter.wallet_id`` →
  ``wallet.enterprise_id``);
- reconciliation drift: the last finished ``reconciliation_run`` and the app's wallets in its
  ``wallet_drift`` rows.

Who sees what (:func:`attention`): ``detail`` (owner, end user) lists chats, wallets and dead letters
of the wallets in view (an end user: its own wallet only); an admin (``detail`` False) gets counts
and sums only (:class:`AttentionCounts`), plus the drift, which only an admin sees.

Money in integer nano-USD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    String,
    and_,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlmodel import Session, col

from models.budget import Budget, BudgetAlert
from models.chat import ChatSession, PausedChat
from models.enums import ChatStatus, DeadLetterStatus
from models.reconcile import ReconciliationRun, WalletDrift
from models.turn import DeadLetter, UsageEvent
from models.wallet import Wallet
from worker.billing.report import CENT_NANOS, format_cents, validate_period
from worker.billing.statement import DEBITING_MODES, is_exhausted

#: paused chats listed at most (most recently paused first); the count says how many there are
MAX_PAUSED = 50
#: dead letters listed at most (newest first)
MAX_DEAD_LETTERS = 20
#: exhausted or blocked wallets listed at most (lowest balance first)
MAX_WALLETS = 50

#: display labels of pause reasons (others are shown as recorded, ``_`` as spaces)
REASON_LABELS = {
    "wallet_exhausted": "Wallet exhausted",
    "trial_exhausted": "Trial used up",
    "payment_failed": "Payment failed",
    "budget_exceeded": "Budget exceeded",
    "paused_by_orchestrator": "Paused by the orchestrator",
    "cost_threshold": "Cost threshold",
    "unknown": "No reason recorded",
}
#: display labels of ``wallet.blocked_reason`` values
BLOCK_LABELS = {
    "budget_exceeded": "its budget is exceeded (auto-pause)",
    "payment_failed": "a subscription payment failed",
}


def reason_label(reason: str) -> str:
    """The display label of a pause reason (``wallet_exhausted`` → ``"Wallet exhausted"``; an
    unknown one with its underscores as spaces, first letter upper-case)."""
    if reason in REASON_LABELS:
        return REASON_LABELS[reason]
    text = reason.replace("_", " ").strip() or "Paused"
    return text[0].upper() + text[1:]


def ceil_cents(nanos: int) -> int:
    """Integer nano-USD → integer cents rounded up (a top-up of that many cents covers ``nanos``:
    ``1`` → 1, ``10_000_000`` → 1, ``10_000_001`` → 2); 0 for ``nanos`` ≤ 0."""
    nanos = int(nanos)
    return -(-nanos // CENT_NANOS) if nanos > 0 else 0


@dataclass(frozen=True, slots=True)
class Remedy:
    """What would resume a paused chat: ``kind`` is ``top_up`` (credit at least ``amount_nanos``,
    shown as ``text``), ``raise_budget`` (the workflow budget ``target``: now ``amount_nanos``,
    spent ``spent_nanos`` this month), ``pay`` (settle the failed subscription payment),
    ``production`` (a trial wallet that pauses after its trial: change its mode), ``resume`` (the
    orchestrator resumes it: ``POST /v1/chats/{chat_id}/resume``), or ``resumable`` (funds are
    back; the orchestrator may resume it now)."""

    kind: str
    text: str
    amount_nanos: int = 0
    spent_nanos: int = 0
    target: str = ""


@dataclass(frozen=True, slots=True)
class PausedChatRow:
    """A paused chat of a wallet in view: why (``reason``, from its open paused-chat record, else
    the session's ``pause_reason``; ``unknown`` when neither says), since when, what its wallet
    lacked at the pause (``needed_nanos``, nano-USD, 0 when funds do not help) and its
    :class:`Remedy`."""

    chat_id: str
    wallet_id: str
    workflow: str
    reason: str
    needed_nanos: int
    paused_at: datetime | None
    resumable: bool
    remedy: Remedy

    @property
    def label(self) -> str:
        """:func:`reason_label` of ``reason``."""
        return reason_label(self.reason)


@dataclass(frozen=True, slots=True)
class Alert:
    """One item of the alert feed.  ``kind``: ``budget`` (a threshold crossed: ``threshold_pct``,
    ``spent_nanos`` of ``amount_nanos``), ``wallet`` (exhausted: ``amount_nanos`` is its balance ≤ 0;
    or blocked: ``reason``), ``dead_letter`` (``amount_nanos`` billed, ``reason`` the error class),
    ``drift``; ``severity`` ``danger`` | ``warn`` | ``info``; ``at`` when it happened (None: a state
    now); ``subject`` the budget's scope and target, the wallet, the outbox id."""

    kind: str
    severity: str
    title: str
    subject: str
    at: datetime | None
    amount_nanos: int = 0
    spent_nanos: int = 0
    threshold_pct: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DriftSummary:
    """The last finished reconciliation run (admin only): when, wallets checked and drifted, the
    absolute drift (nano-USD), and of the app's wallets: how many drifted and their absolute drift."""

    run_id: int
    finished_at: datetime
    wallets_checked: int
    wallets_drifted: int
    drift_nanos_abs: int
    app_wallets_drifted: int
    app_drift_nanos_abs: int


@dataclass(frozen=True, slots=True)
class AttentionCounts:
    """Counts and sums over the wallets in view, for every viewer (the admin sees only these):
    ``paused_chats`` (total), ``paused_by_reason`` (reason → count), ``exhausted_wallets`` (limited,
    balance ≤ 0), ``blocked_wallets`` (reason → count), ``dead_letters`` and ``dead_letter_nanos``
    (open ones, billed nano-USD), ``budget_alerts`` (in the period)."""

    paused_chats: int
    paused_by_reason: dict[str, int]
    exhausted_wallets: int
    blocked_wallets: dict[str, int]
    dead_letters: int
    dead_letter_nanos: int
    budget_alerts: int


@dataclass(frozen=True, slots=True)
class Attention:
    """The attention section of one view: ``counts`` for everyone; ``paused`` (at most
    :data:`MAX_PAUSED`) and ``alerts`` (budget alerts of the period, newest first; wallets now; dead
    letters, at most :data:`MAX_DEAD_LETTERS`, newest first) with end-user detail; ``drift`` for the
    admin only (None otherwise, or before any finished run)."""

    counts: AttentionCounts
    paused: list[PausedChatRow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    drift: DriftSummary | None = None
    detail: bool = True

    @property
    def empty(self) -> bool:
        """Nothing to show: no paused chat, alert, exhausted or blocked wallet, dead letter or drift."""
        c = self.counts
        return not (
            c.paused_chats
            or c.exhausted_wallets
            or c.blocked_wallets
            or c.dead_letters
            or c.budget_alerts
            or (self.drift is not None and self.drift.app_wallets_drifted)
        )


def _money_up(nanos: int) -> str:
    return format_cents(ceil_cents(nanos))


def remedy_for(
    reason: str, needed_nanos: int, resumable: bool, budget: tuple[str, int, int] | None, chat_id: str
) -> Remedy:
    """What would resume a chat paused for ``reason``: a top-up of at least ``needed_nanos``
    (rounded up to the cent) for the funds reasons, raising the workflow budget ``budget``
    (``(workflow, amount_nanos, spent_nanos)``) for ``budget_exceeded``, else the orchestrator's
    resume.  ``resumable``: funds are back already."""
    if resumable:
        return Remedy("resumable", "Funds are back: the orchestrator may resume it now")
    if reason == "budget_exceeded":
        if budget is not None:
            workflow, amount, spent = budget
            return Remedy(
                "raise_budget",
                f"Raise the {workflow} budget above {_money_up(spent)} (now {format_cents(ceil_cents(amount))}), "
                "or wait for next month",
                amount_nanos=amount,
                spent_nanos=spent,
                target=workflow,
            )
        return Remedy("raise_budget", "Raise the workflow's budget, or wait for next month")
    if reason == "payment_failed":
        return Remedy("pay", "Pay the failed subscription invoice (the wallet resumes when Stripe reports it paid)")
    if reason in ("wallet_exhausted", "trial_exhausted"):
        if needed_nanos > 0:
            return Remedy("top_up", f"Top up at least {_money_up(needed_nanos)}", amount_nanos=needed_nanos)
        if reason == "trial_exhausted":
            return Remedy("production", "The trial is used up: switch the wallet to production mode")
        return Remedy("top_up", "Top up the wallet")
    return Remedy("resume", f"Resume by the orchestrator (POST /v1/chats/{chat_id}/resume)")


def _in_view(enterprise_id: str, wallet_id: str | None):
    stmt = select(col(Wallet.id)).where(col(Wallet.enterprise_id) == enterprise_id)
    if wallet_id is not None:
        stmt = stmt.where(col(Wallet.id) == wallet_id)
    return stmt


def _budgets(session: Session, enterprise_id: str, wallet_id: str | None, detail: bool, end: datetime) -> list[Budget]:
    """The budgets in view, as the page's budgets card shows them."""
    stmt = select(Budget).where(col(Budget.enterprise_id) == enterprise_id, col(Budget.created_at) < end)
    if wallet_id is not None:
        stmt = stmt.where(col(Budget.wallet_id) == wallet_id)
    elif not detail:
        stmt = stmt.where(col(Budget.workflow).is_not(None))
    return list(session.execute(stmt.order_by(col(Budget.id))).scalars())


def attention(
    session: Session,
    *,
    enterprise_id: str,
    period: str,
    wallet_id: str | None = None,
    detail: bool = True,
    now_period: str | None = None,
) -> Attention:
    """The attention section of ``enterprise_id``'s page for ``period`` (UTC month ``YYYY-MM``):
    paused chats and the alert feed of the wallets in view (only ``wallet_id``'s for an end user),
    with end-user detail when ``detail`` (owner, end user), else counts only plus the
    reconciliation drift (admin).  Paused chats, wallets and dead letters are as they are now;
    budget alerts are ``period``'s.  ``now_period``: the current month (default: the period);
    a budget's spend this month (for "raise the budget") is read for it.

    Raises ReportError naming ``period``."""
    start, end = validate_period(period)
    in_view = _in_view(enterprise_id, wallet_id)
    cs, pc = ChatSession, PausedChat

    # paused chats ------------------------------------------------------------------------------
    paused_where = and_(
        col(cs.enterprise_id) == enterprise_id,
        col(cs.status) == ChatStatus.paused.value,
        col(cs.wallet_id).in_(in_view),
    )
    joined = and_(
        col(pc.enterprise_id) == col(cs.enterprise_id),
        col(pc.chat_id) == col(cs.chat_id),
        col(pc.resumed_at).is_(None),
    )
    reason = func.coalesce(col(pc.reason), col(cs.pause_reason), "unknown")
    by_reason, rows = _paused(session, paused_where, joined, reason, listed=MAX_PAUSED if detail else 0)

    # wallets -----------------------------------------------------------------------------------
    w = Wallet
    balance = col(w.credits_nanos) - col(w.debits_nanos)
    wallet_scope = [col(w.enterprise_id) == enterprise_id] + ([col(w.id) == wallet_id] if wallet_id else [])
    #: a wallet that debits (production, or a trial that bills after it) and may not overdraw
    spends = col(w.limited).is_(True) & col(w.mode).in_(DEBITING_MODES)
    exhausted_where = and_(*wallet_scope, spends, balance <= 0)
    exhausted = int(session.execute(select(func.count()).where(exhausted_where)).scalar_one())
    blocked = {
        str(r): int(n)
        for r, n in session.execute(
            select(col(w.blocked_reason), func.count())
            .where(*wallet_scope, col(w.blocked_reason).is_not(None))
            .group_by(col(w.blocked_reason))
        )
    }

    # dead letters ------------------------------------------------------------------------------
    dl = DeadLetter
    dead_where = and_(col(dl.status) == DeadLetterStatus.open.value, col(dl.wallet_id).in_(in_view))
    dead_count, dead_nanos = session.execute(
        select(func.count(), func.coalesce(func.sum(col(dl.billed_nanos)), 0)).where(dead_where)
    ).one()

    # budget alerts -----------------------------------------------------------------------------
    budgets = _budgets(session, enterprise_id, wallet_id, detail, end)
    by_id = {int(b.id): b for b in budgets if b.id is not None}
    alert_rows = (
        session.execute(
            select(
                col(BudgetAlert.budget_id),
                col(BudgetAlert.threshold_pct),
                col(BudgetAlert.spent_nanos),
                col(BudgetAlert.amount_nanos),
                col(BudgetAlert.created_at),
            )
            .where(col(BudgetAlert.budget_id).in_(list(by_id)), col(BudgetAlert.period) == period)
            .order_by(col(BudgetAlert.created_at).desc(), col(BudgetAlert.threshold_pct).desc())
        ).all()
        if by_id
        else []
    )

    counts = AttentionCounts(
        paused_chats=sum(by_reason.values()),
        paused_by_reason=dict(sorted(by_reason.items())),
        exhausted_wallets=exhausted,
        blocked_wallets=dict(sorted(blocked.items())),
        dead_letters=int(dead_count),
        dead_letter_nanos=int(dead_nanos),
        budget_alerts=len(alert_rows),
    )

    alerts: list[Alert] = []
    for budget_id, pct, spent, amount, created in alert_rows:
        b = by_id[int(budget_id)]
        scope = f"wallet {b.wallet_id}" if b.wallet_id else f"workflow {b.workflow}"
        alerts.append(
            Alert(
                kind="budget",
                severity="danger" if pct >= 100 else "warn" if pct >= 80 else "info",
                title=f"Budget {int(pct)} % reached",
                subject=scope,
                at=created,
                amount_nanos=int(amount),
                spent_nanos=int(spent),
                threshold_pct=int(pct),
            )
        )

    if not detail:  # the admin: aggregates only, and the reconciliation drift
        return Attention(counts=counts, alerts=alerts, drift=_drift(session, enterprise_id), detail=False)

    wallet_alerts: list[Alert] = []
    for wid, bal, limited, mode, why in session.execute(
        select(col(w.id), balance, col(w.limited), col(w.mode), col(w.blocked_reason))
        .where(*wallet_scope, (col(w.blocked_reason).is_not(None)) | (spends & (balance <= 0)))
        .order_by(balance, col(w.id))
        .limit(MAX_WALLETS)
    ):
        if why:
            wallet_alerts.append(
                Alert(
                    kind="wallet",
                    severity="danger",
                    title="Wallet blocked",
                    subject=str(wid),
                    at=None,
                    amount_nanos=int(bal),
                    reason=str(why),
                )
            )
        if is_exhausted(limited=bool(limited), mode=str(mode), balance_nanos=int(bal)):
            wallet_alerts.append(
                Alert(
                    kind="wallet",
                    severity="danger",
                    title="Wallet exhausted",
                    subject=str(wid),
                    at=None,
                    amount_nanos=int(bal),
                    reason="exhausted",
                )
            )
    dead_alerts = [
        Alert(
            kind="dead_letter",
            severity="warn",
            title="Dead letter",
            subject=str(outbox_id),
            at=created,
            amount_nanos=int(billed),
            reason=str(error_class or "error"),
        )
        for outbox_id, billed, error_class, created in session.execute(
            select(col(dl.outbox_id), col(dl.billed_nanos), col(dl.error_class), col(dl.created_at))
            .where(dead_where)
            .order_by(col(dl.created_at).desc(), col(dl.id).desc())
            .limit(MAX_DEAD_LETTERS)
        )
    ]

    # spend this month only of the workflows whose budget paused a listed chat (usually none)
    over = sorted({str(wf) for _c, _w, wf, why, *_ in rows if why == "budget_exceeded"})
    workflow_budgets = _workflow_budgets(session, enterprise_id, now_period or period, over) if over else {}
    paused = [
        PausedChatRow(
            chat_id=str(chat),
            wallet_id=str(wid),
            workflow=str(workflow),
            reason=str(why),
            needed_nanos=int(needed),
            paused_at=at,
            resumable=bool(can_resume),
            remedy=remedy_for(str(why), int(needed), bool(can_resume), workflow_budgets.get(str(workflow)), str(chat)),
        )
        for chat, wid, workflow, why, needed, at, can_resume in rows
    ]
    return Attention(counts=counts, paused=paused, alerts=wallet_alerts + alerts + dead_alerts, detail=True)


def _paused(
    session: Session,
    where: ColumnElement[bool],
    joined: ColumnElement[bool],
    reason: ColumnElement[str],
    *,
    listed: int,
) -> tuple[dict[str, int], list[tuple]]:
    """The paused chats ``where`` selects (``chat_session`` left-joined to its open paused-chat
    record on ``joined``): the count per ``reason`` and the ``listed`` most recently paused
    ``(chat_id, wallet_id, workflow, reason, needed_nanos, paused_at, can_resume)``, newest first,
    in one statement: the app's sessions are read once (a CTE used twice is materialized)."""
    cs, pc = ChatSession, PausedChat
    at = func.coalesce(col(pc.paused_at), col(cs.paused_at))
    paused = (
        select(
            col(cs.chat_id).label("chat_id"),
            col(cs.wallet_id).label("wallet_id"),
            col(cs.workflow).label("workflow"),
            reason.label("reason"),
            func.coalesce(col(pc.needed_nanos), 0).label("needed"),
            at.label("at"),
            col(cs.can_resume).label("can_resume"),
        )
        .select_from(cs)
        .outerjoin(pc, joined)
        .where(where)
        .cte("paused")
    )
    p = paused.c
    counts = select(literal(0).label("part"), p.reason, func.count().label("n"), *_NULLS).group_by(p.reason)
    if not listed:
        return {str(r): int(n) for _part, r, n, *_ in session.execute(counts)}, []
    top = select(paused).order_by(p.at.desc().nulls_last(), p.chat_id).limit(listed).subquery()
    t = top.c
    rows = select(
        literal(1), t.reason, literal(0, BigInteger), t.chat_id, t.wallet_id, t.workflow, t.needed, t.at, t.can_resume
    )
    by_reason: dict[str, int] = {}
    out: list[tuple] = []
    for part, r, n, chat, wid, workflow, needed, at_, can_resume in session.execute(union_all(counts, rows)):
        if part == 0:
            by_reason[str(r)] = int(n)
        else:
            out.append((chat, wid, workflow, r, needed, at_, can_resume))
    far_past = datetime.min.replace(tzinfo=UTC)
    out.sort(key=lambda row: row[0])
    out.sort(key=lambda row: row[5] or far_past, reverse=True)  # newest first, unknown times last
    return by_reason, out


#: the listing's columns as typed NULLs in the count rows of :func:`_paused`'s UNION
_NULLS = (
    cast(null(), String).label("chat_id"),
    cast(null(), String).label("wallet_id"),
    cast(null(), String).label("workflow"),
    cast(null(), BigInteger).label("needed"),
    cast(null(), DateTime(timezone=True)).label("at"),
    cast(null(), Boolean).label("can_resume"),
)


def _workflow_budgets(
    session: Session, enterprise_id: str, period: str, workflows: list[str]
) -> dict[str, tuple[str, int, int]]:
    """workflow → (workflow, amount_nanos, spent_nanos in ``period``) of the app's budgets on
    ``workflows``: spend is ``usage_event.cost_nanos`` of the workflow (as ``worker.billing.budgets``),
    read through ``ix_usage_event_enterprise_workflow_occurred``."""
    start, end = validate_period(period)
    budgets = {
        str(wf): int(amount)
        for wf, amount in session.execute(
            select(col(Budget.workflow), col(Budget.amount_nanos)).where(
                col(Budget.enterprise_id) == enterprise_id, col(Budget.workflow).in_(workflows)
            )
        )
    }
    if not budgets:
        return {}
    ue = UsageEvent
    spent = {
        str(wf): int(s)
        for wf, s in session.execute(
            select(col(ue.workflow), func.sum(col(ue.cost_nanos)))
            .where(
                col(ue.enterprise_id) == enterprise_id,
                col(ue.workflow).in_(list(budgets)),
                col(ue.occurred_at) >= start,
                col(ue.occurred_at) < end,
            )
            .group_by(col(ue.workflow))
        )
    }
    return {wf: (wf, amount, spent.get(wf, 0)) for wf, amount in budgets.items()}


def _drift(session: Session, enterprise_id: str) -> DriftSummary | None:
    """The last finished reconciliation run and the app's drifted wallets in it (None: no run yet)."""
    run = session.execute(
        select(ReconciliationRun)
        .where(col(ReconciliationRun.finished_at).is_not(None))
        .order_by(col(ReconciliationRun.finished_at).desc(), col(ReconciliationRun.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    if run is None or run.id is None or run.finished_at is None:
        return None
    n, total = session.execute(
        select(func.count(), func.coalesce(func.sum(func.abs(col(WalletDrift.drift_nanos))), 0)).where(
            col(WalletDrift.run_id) == run.id,
            col(WalletDrift.wallet_id).in_(select(col(Wallet.id)).where(col(Wallet.enterprise_id) == enterprise_id)),
        )
    ).one()
    return DriftSummary(
        run_id=int(run.id),
        finished_at=run.finished_at,
        wallets_checked=int(run.wallets_checked),
        wallets_drifted=int(run.wallets_drifted),
        drift_nanos_abs=int(run.drift_nanos_abs),
        app_wallets_drifted=int(n),
        app_drift_nanos_abs=int(total),
    )


__all__ = [
    "Alert",
    "Attention",
    "AttentionCounts",
    "BLOCK_LABELS",
    "DriftSummary",
    "MAX_DEAD_LETTERS",
    "MAX_PAUSED",
    "PausedChatRow",
    "REASON_LABELS",
    "Remedy",
    "attention",
    "ceil_cents",
    "reason_label",
    "remedy_for",
]
