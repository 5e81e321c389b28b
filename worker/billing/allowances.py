"""Monthly allowances: a subscription's included spend, granted at each UTC period boundary and
expiring unused at the end of its period, as ledger entries keyed by (wallet, period).

Entries (``wallet_transaction``, unique ``idempotency_key``; tollgate's own ``tollgate:`` keys):

- grant: ``tollgate:allowance:<wallet_id>:<period>``, a credit of ``wallet.monthly_allowance_nanos``
  as it is when the grant is made;
- expiry: ``tollgate:allowance-expiry:<wallet_id>:<period>``, a debit of the grant's unused part,
  written once the period is over (plus ``settings.allowance_expiry_grace_s``, so the turns of its
  last seconds are persisted first).  It is written even when the amount is 0: the expiry is made
  once and never taken again (a later top-up is never taken by a late expiry); late turns of its
  period can only give part of it back (a restore, below).

- restore: ``tollgate:allowance-restore:<wallet_id>:<period>:<restored total>``, a credit giving back
  the part of an expiry that turns of its period persisted after it (late data) show it should not
  have taken.

The expiry rule (allowance is spent before purchased credit).  Every figure uses the period a
record belongs to (a turn's ``occurred_at``, a grant's period), never when it arrived: a grant made
late for its period (a backfill, a reset that ran late) covers the whole period's spend, and a turn
persisted after its period's expiry gives back what the expiry took too much:

    unused(P)   = max(0, grant(P) − Σ usage_event.billed_nanos of the wallet with occurred_at in P)
    expiry(P)   = min(unused(P), max(0, ledger balance just before the expiry − what later grants have left))
    restore(P)  = max(0, expiry(P) − restored so far(P) − unused(P) now)     (each reset, once expired)

so the allowance expired never exceeds what its period left unused (never bought credit, never
another period's grant) and never pushes the balance below zero (allowance spent after the
boundary but before the expiry — e.g. during the grace — is not clawed back as debt).

Schedule (``tollgate.billing.monthly_reset``, hourly; safe at any frequency): for each wallet, in one
short transaction that locks the wallet row, first expire every earlier grant that is due and not yet
expired (oldest first), then grant the current period if ``monthly_allowance_nanos > 0`` and it has
no grant yet.  Hence:

- running twice, or concurrently: the unique keys make the second run write nothing;
- late (hours or days into the period): the same entries as on time; the grant is made then;
- after downtime (e.g. the job missed September and October, runs in November): the last grant
  (August) expires, September and October get **no** entry (nothing was granted, so nothing
  expires; missed periods are not granted retroactively), November is granted.  Each period has at
  most one grant and at most one expiry.  An operator may backfill a missed period on purpose with
  ``tollgate allowance reset --period 2026-09``; the next run then expires it like any other.

Grants older than :data:`LOOKBACK_PERIODS` months that never expired are left alone (only possible
after a year of downtime).  A wallet whose allowance is set to 0 gets no further grant; its last one
still expires.  Each entry goes to PostgreSQL first (entry + ``wallet.credits_nanos`` /
``debits_nanos``), then, after commit, to the gate with the same key (``WalletGate.credit`` for a
grant, ``WalletGate.adjust`` with a negative delta for an expiry).  Only entries the run inserted go
to the gate: a crash between commit and Redis leaves the gate off by that entry until reconciliation
repairs it (re-sending old entries could double-apply them after a Redis rebuild forgot their keys).

Trial counters (``trial_tokens_used``) do not exist yet (a later issue adds trial mode); their
monthly reset belongs with them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.enums import TransactionKind
from models.turn import UsageEvent
from models.wallet import Wallet, WalletTransaction
from worker.billing.modes import ResumeChats
from worker.errors import InputError
from worker.gate.gate import UnknownWallet, WalletGate
from worker.gate.keys import ALLOWANCE_EXPIRY_PREFIX, ALLOWANCE_PREFIX, ALLOWANCE_RESTORE_PREFIX
from worker.ledger.audit import audit
from worker.periods import period_bounds, previous_period

log = logging.getLogger(__name__)

EXPIRY_PREFIX = ALLOWANCE_EXPIRY_PREFIX
RESTORE_PREFIX = ALLOWANCE_RESTORE_PREFIX
#: how many months back a reset looks for grants still to expire
LOOKBACK_PERIODS = 12
#: $1M a month: years of grants stay far below BIGINT's 2^63 in credits_nanos
MAX_ALLOWANCE_NANOS = 10**15


class AllowanceError(InputError, ValueError):
    """An allowance request is invalid; the message starts with the field it names."""


def allowance_key(wallet_id: str, period: str) -> str:
    """Idempotency key of the grant of ``period``: ``tollgate:allowance:<wallet_id>:<period>``."""
    return f"{ALLOWANCE_PREFIX}{wallet_id}:{period}"


def expiry_key(wallet_id: str, period: str) -> str:
    """Idempotency key of the expiry of ``period``'s grant: ``tollgate:allowance-expiry:<wallet_id>:<period>``."""
    return f"{EXPIRY_PREFIX}{wallet_id}:{period}"


def restore_key(wallet_id: str, period: str, restored_total: int) -> str:
    """Idempotency key of a restore of ``period``'s expiry that brings the period's restored total to
    ``restored_total`` nano-USD: ``tollgate:allowance-restore:<wallet_id>:<period>:<restored_total>``."""
    return f"{RESTORE_PREFIX}{wallet_id}:{period}:{restored_total}"


def lookback(period: str, n: int = LOOKBACK_PERIODS) -> list[str]:
    """The ``n`` periods before ``period``, newest first."""
    out, p = [], period
    for _ in range(n):
        p = previous_period(p)
        out.append(p)
    return out


def set_allowance(session: Session, wallet_id: str, amount_nanos: int) -> Wallet:
    """Set a wallet's monthly allowance, nano-USD (0 stops future grants; the current grant stands
    and expires at its period's end).  The next reset grants the current period if it has no grant
    yet; a changed amount applies from the next grant.  The caller commits.
    Raises: AllowanceError naming ``amount_nanos`` (not an integer in 0..2^62) or ``wallet_id`` (unknown).
    """
    if (
        not isinstance(amount_nanos, int)
        or isinstance(amount_nanos, bool)
        or not 0 <= amount_nanos <= MAX_ALLOWANCE_NANOS
    ):
        raise AllowanceError(
            f"amount_nanos: must be an integer of nano-USD in 0..2^62, got {amount_nanos!r}", field="amount_nanos"
        )
    wallet = session.get(Wallet, wallet_id)
    if wallet is None:
        raise AllowanceError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    wallet.monthly_allowance_nanos = amount_nanos
    session.flush()
    return wallet


@dataclass(frozen=True, slots=True)
class Entry:
    """A ledger entry a reset wrote: a grant (``kind='credit'``) or an expiry (``'debit'``) of
    ``period``; ``amount_nanos`` ≥ 0 (an expiry may be 0); ``unused_nanos`` is the unused allowance an
    expiry was computed from (for a grant: 0)."""

    wallet_id: str
    kind: str
    period: str
    key: str
    amount_nanos: int
    unused_nanos: int = 0


def _entries(session: Session, keys: list[str]) -> dict[str, int]:
    rows = session.execute(
        select(col(WalletTransaction.idempotency_key), col(WalletTransaction.amount_nanos)).where(
            col(WalletTransaction.idempotency_key).in_(keys)
        )
    ).all()
    return {k: int(a) for k, a in rows}


def _insert_entry(session: Session, entry: Entry, description: str, at: datetime | None = None) -> bool:
    """One ledger entry and its aggregate, once per key, dated ``at`` (default: the database's now);
    True if this call inserted it."""
    values = dict(
        wallet_id=entry.wallet_id,
        kind=entry.kind,
        amount_nanos=entry.amount_nanos,
        idempotency_key=entry.key,
        description=description,
    )
    if at is not None:
        values["created_at"] = at
    inserted = session.execute(
        insert(WalletTransaction)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(WalletTransaction.id))
    ).first()
    if inserted is None:
        return False
    if entry.kind == TransactionKind.credit:  # every credit is audited, the monthly grant too
        wallet = session.get(Wallet, entry.wallet_id)
        audit(
            session,
            actor="system",
            action="credit",
            enterprise_id=wallet.enterprise_id if wallet else None,
            wallet_id=entry.wallet_id,
            amount_nanos=entry.amount_nanos,
            idempotency_key=entry.key,
        )
    if entry.amount_nanos:
        name = "credits_nanos" if entry.kind == TransactionKind.credit else "debits_nanos"
        column = col(Wallet.credits_nanos) if entry.kind == TransactionKind.credit else col(Wallet.debits_nanos)
        session.execute(
            update(Wallet).where(col(Wallet.id) == entry.wallet_id).values({name: column + entry.amount_nanos})
        )
    return True


def _restored(session: Session, wallet_id: str, period: str) -> int:
    """Nano-USD given back so far by restores of ``period``'s expiry."""
    return int(
        session.execute(
            select(func.coalesce(func.sum(col(WalletTransaction.amount_nanos)), 0)).where(
                col(WalletTransaction.wallet_id) == wallet_id,  # the wallet's index; a LIKE alone scans the table
                col(WalletTransaction.idempotency_key).startswith(
                    f"{RESTORE_PREFIX}{wallet_id}:{period}:", autoescape=True
                ),
            )
        ).scalar_one()
    )


def billed_in_period(session: Session, wallet_id: str, period: str) -> int:
    """``Σ usage_event.billed_nanos`` of a wallet with ``occurred_at`` in ``period``, nano-USD: the
    period's spend, whenever its turns arrived."""
    start, end = period_bounds(period)
    ue = UsageEvent
    return int(
        session.execute(
            select(func.coalesce(func.sum(col(ue.billed_nanos)), 0)).where(
                col(ue.wallet_id) == wallet_id, col(ue.occurred_at) >= start, col(ue.occurred_at) < end
            )
        ).scalar_one()
    )


def reset_wallet(
    session: Session,
    wallet_id: str,
    *,
    period: str,
    now: datetime,
    grace_s: int,
) -> list[Entry]:
    """Bring one wallet's allowance entries up to ``period`` (see the module doc): expire the due
    grants of the :data:`LOOKBACK_PERIODS` months before it (those whose period ended at least
    ``grace_s`` seconds before ``now``), oldest first, then grant ``period`` if the wallet has an
    allowance and no grant for it.  Locks the wallet row.  The caller commits, then applies the
    returned entries to the gate (:func:`apply_to_gate`).

    Returns the entries this call inserted (none when another run already wrote them).
    Raises: AllowanceError naming ``wallet_id`` (unknown); ValueError for a malformed period.
    """
    wallet = session.execute(select(Wallet).where(col(Wallet.id) == wallet_id).with_for_update()).scalar_one_or_none()
    if wallet is None:
        raise AllowanceError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    earlier = lookback(period)
    keys = [allowance_key(wallet_id, period)]
    for p in earlier:
        keys += [allowance_key(wallet_id, p), expiry_key(wallet_id, p)]
    existing = _entries(session, keys)
    written: list[Entry] = []

    for p in reversed(earlier):  # oldest first
        grant = existing.get(allowance_key(wallet_id, p))
        if grant is None:
            continue
        if expiry_key(wallet_id, p) in existing:
            # turns of p persisted after its expiry (late data) may show it took too much: give it back
            taken = existing[expiry_key(wallet_id, p)]
            if taken:
                restored = _restored(session, wallet_id, p)
                unused = max(0, grant - billed_in_period(session, wallet_id, p))
                excess = taken - restored - unused
                if excess > 0:
                    entry = Entry(
                        wallet_id,
                        TransactionKind.credit.value,
                        p,
                        restore_key(wallet_id, p, restored + excess),
                        excess,
                        unused,
                    )
                    if _insert_entry(
                        session,
                        entry,
                        f"expiry of the allowance of {p} restored by {excess} nanos (turns of {p} persisted after it)",
                    ):
                        written.append(entry)
            continue
        if now < period_bounds(p)[1] + timedelta(seconds=grace_s):
            continue  # its last turns may still be in the outbox
        # the grant covers its whole period's spend, whenever it was made (a late grant included)
        unused = max(0, grant - billed_in_period(session, wallet_id, p))
        session.refresh(wallet)
        # the cap leaves alone any later month's grant already credited (beat grants the new month
        # at 00:00 and expires the old one after the grace period)
        later = 0
        for key, granted in existing.items():
            later_period = key.rsplit(":", 1)[1]
            if key.startswith(allowance_key(wallet_id, "")) and later_period > p:
                spent = billed_in_period(session, wallet_id, later_period)
                later += max(0, granted - spent)  # what is left of that later grant
        amount = min(unused, max(0, wallet.credits_nanos - wallet.debits_nanos - later))
        entry = Entry(wallet_id, TransactionKind.debit.value, p, expiry_key(wallet_id, p), amount, unused)
        if _insert_entry(session, entry, f"unused allowance of {p} expired ({amount} of {unused} nanos unused)"):
            written.append(entry)

    allowance = wallet.monthly_allowance_nanos
    if allowance > 0 and allowance_key(wallet_id, period) not in existing:
        entry = Entry(wallet_id, TransactionKind.credit.value, period, allowance_key(wallet_id, period), allowance)
        if _insert_entry(session, entry, f"monthly allowance for {period}", at=now):
            written.append(entry)
    return written


def apply_to_gate(gate: WalletGate, entries: list[Entry], resume: ResumeChats | None = None) -> int:
    """Mirror ledger entries in the gate with their keys (a grant through ``credit``, an expiry through
    ``adjust`` with ``−amount``; zero amounts are skipped).  The gate dedupes by key, so applying
    twice changes nothing.  Wallets missing from the gate are skipped (a rebuild loads the ledger
    balance).  Returns the number of entries applied.  Raises Redis errors.
    """
    applied = 0
    for e in entries:
        if not e.amount_nanos:
            continue
        try:
            if e.kind == TransactionKind.credit:
                gate.credit(e.wallet_id, e.amount_nanos, e.key)
                _resume(gate, e.wallet_id, e.key, resume)
            else:
                gate.adjust(e.wallet_id, -e.amount_nanos, e.key)
        except UnknownWallet:
            log.info("wallet %s is not in the gate; a rebuild loads its ledger balance", e.wallet_id)
            continue
        applied += 1
    return applied


def _resume(gate: WalletGate, wallet_id: str, key: str, resume: ResumeChats | None) -> None:
    """A grant may let the wallet's paused chats go on (the beat job catches a failure here)."""
    if resume is None:
        return
    try:
        resume(gate, wallet_id, cause=key)
    except Exception:
        log.error("grant %s: could not resume the paused chats of %s", key, wallet_id, exc_info=True)


@dataclass(slots=True)
class ResetReport:
    """One :func:`run_monthly_reset`: the period granted, wallets looked at, entries written (grants,
    expiries, restores of expiries that late turns showed too large), and the wallets whose reset
    failed (logged; the next run tries them again)."""

    period: str
    wallets_checked: int = 0
    granted: list[Entry] = field(default_factory=list)
    expired: list[Entry] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    restored: list[Entry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (amounts in nano-USD)."""
        return {
            "period": self.period,
            "wallets_checked": self.wallets_checked,
            "granted": [asdict(e) for e in self.granted],
            "expired": [asdict(e) for e in self.expired],
            "failed": list(self.failed),
            "granted_nanos": sum(e.amount_nanos for e in self.granted),
            "expired_nanos": sum(e.amount_nanos for e in self.expired),
            "restored": [asdict(e) for e in self.restored],
            "restored_nanos": sum(e.amount_nanos for e in self.restored),
        }


_CANDIDATES = text(
    "SELECT id FROM wallet WHERE monthly_allowance_nanos > 0 "
    "UNION "
    "SELECT w.id FROM wallet w CROSS JOIN unnest(CAST(:periods AS text[])) AS p(period) "
    "JOIN wallet_transaction g ON g.idempotency_key = :grant || w.id || ':' || p.period "
    "WHERE NOT EXISTS (SELECT 1 FROM wallet_transaction e "
    "                  WHERE e.idempotency_key = :expiry || w.id || ':' || p.period) "
    "UNION "  # an expiry that took something: a late turn of its period may call for a restore
    "SELECT w.id FROM wallet w CROSS JOIN unnest(CAST(:periods AS text[])) AS p(period) "
    "JOIN wallet_transaction e ON e.idempotency_key = :expiry || w.id || ':' || p.period "
    "WHERE e.amount_nanos > 0 "
    "ORDER BY 1"
)


def wallets_to_reset(session: Session, period: str) -> list[str]:
    """Wallets with an allowance, or with a grant in the lookback window not yet expired or whose
    expiry took something (index probes on the unique key: wallets × :data:`LOOKBACK_PERIODS`)."""
    return list(
        session.execute(
            _CANDIDATES, {"periods": lookback(period), "grant": ALLOWANCE_PREFIX, "expiry": EXPIRY_PREFIX}
        ).scalars()
    )
