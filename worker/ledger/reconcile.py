"""Reconciliation: prove Redis is a cache of PostgreSQL (DESIGN.md invariant 4).

For every wallet::

    gate balance (Redis)  ==  credits − debits (PostgreSQL ledger)  −  queued

where *queued* is the billed nanos of the wallet's outbox entries not yet persisted (an entry is
persisted when ``usage_turn_key`` has its turn (turn_id in its (enterprise_id, wallet_id) scope)
**from that same entry**; an entry for a turn persisted from another entry is a second acceptance the drain will refund, and stays queued until
then).

The two stores cannot be read at one instant, so a wallet is read three times: (1) Redis: each
wallet's balance and accepted_turns, then the shard's outbox (paged);
(2) PostgreSQL: the ledger and which of those entries are persisted; (3) Redis again.  If balance or
accepted_turns moved between (1) and (3), the wallet was busy (a turn or a credit landed); it is
retried, then reported as busy rather than as drift.  Otherwise no turn was accepted and no credit
reached Redis in between, so the figures are consistent and any difference is real drift.

Dead letters (:mod:`worker.ledger.deadletter`): an entry the drain could not persist keeps its charge as a
named ledger debit ``tollgate:deadletter:<outbox id>``, so an entry still in the outbox (between
that commit and the drain's XACK) whose debit the ledger holds is settled, not queued.  The report
counts dead letters and their billed nanos as their own figure (``dead_letters``: count, nanos, per
shard and per wallet), never as 0 drift, and sets the ``tollgate_deadletter_*`` gauges; a run that
finds any logs an error.  No stored value stops a run: an outbox entry that is not a turn, or whose
turn_id PostgreSQL cannot store (NUL, a lone surrogate), is counted as queued and never looked up.

A job, like the drain (an entry-point body the task ``tollgate.reconcile.run`` and ``tollgate
reconcile`` share): it opens its own short transactions, one to record the run, one consistent
snapshot per chunk of wallets and per retry of a busy one (REPEATABLE READ), one to store the
figures; the functions it reads through (``_read_ledger``, ``deadletter.list_dead_letters``,
``gate_profile``) take that session.

Repair sets the gate balance to the expected figure with ``repair_balance.lua``, only if the wallet
still shows what was read in (1).  Rebuild (after Redis lost its data) loads every wallet from
PostgreSQL (mode, limit, block, balance = ledger − what is still queued).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Iterable, NamedTuple

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlmodel import Session, col

from models.enums import TransactionKind
from models.reconcile import ReconciliationRun, WalletDrift
from models.turn import UsageTurnKey, turn_key_digest
from models.wallet import Wallet, WalletTransaction
from worker.billing.payers import gate_profile
from worker.db import session_scope
from worker.gate.gate import WalletGate, process_gate
from worker.gate.keys import REFUND_PREFIX, outbox_key
from worker.gate.outbox import entry_figures
from worker.ledger import deadletter
from worker.settings import get_settings

log = logging.getLogger(__name__)

DRIFT_NANOS = Counter(
    "tollgate_reconciliation_drift_nanos",
    "Absolute drift found between gate (Redis) and ledger (PostgreSQL) balances, nano-USD",
)
DRIFTED_WALLETS = Gauge("tollgate_reconciliation_drifted_wallets", "Wallets with drift in the last run")
REPAIRED_WALLETS = Counter("tollgate_reconciliation_repaired_wallets", "Wallet balances repaired in the gate")
DEAD_LETTERS = Gauge("tollgate_reconciliation_dead_letters", "Dead-lettered outbox entries found by the last run")
DEAD_LETTER_NANOS = Gauge(
    "tollgate_reconciliation_dead_letter_nanos",
    "Billed nanos of the dead-lettered outbox entries found by the last run",
)

CHUNK = 500


@dataclass
class WalletCheck:
    """One wallet's figures, nano-USD.  ``gate_nanos`` is None when Redis does not have the wallet."""

    wallet_id: str
    gate_nanos: int | None
    credits_nanos: int
    debits_nanos: int
    queued_nanos: int
    ledger_entries_nanos: int
    busy: bool = False
    repaired: bool = False
    #: (balance, accepted_turns) as read in the snapshot: repair applies only if they still hold
    seen: tuple[str | None, str] = (None, "")
    #: recent ledger entries (kind, idempotency_key) the expected figure counts (marked applied on repair)
    recent: tuple[tuple[str, str], ...] = ()

    @property
    def expected_nanos(self) -> int:
        """What the gate should hold: credits − debits − queued."""
        return self.credits_nanos - self.debits_nanos - self.queued_nanos

    @property
    def drift_nanos(self) -> int:
        """gate − expected (a missing wallet counts as 0 in the gate)."""
        return (self.gate_nanos or 0) - self.expected_nanos

    @property
    def ledger_consistent(self) -> bool:
        """The wallet row's aggregates equal the sum of its ledger entries."""
        return self.ledger_entries_nanos == self.credits_nanos - self.debits_nanos


@dataclass
class ReconcileReport:
    """A reconciliation run: counts, total absolute drift (nanos) and the drifted or busy wallets."""

    run_id: int | None
    wallets_checked: int = 0
    wallets_busy: int = 0
    wallets_drifted: int = 0
    wallets_repaired: int = 0
    wallets_missing: int = 0
    ledger_mismatches: int = 0
    drift_nanos_abs: int = 0
    drifted: list[dict] = field(default_factory=list)
    #: :func:`worker.ledger.deadletter.summary`: {"count", "nanos", "by_shard", "by_wallet"} (nano-USD)
    dead_letters: dict = field(default_factory=lambda: deadletter.summary(()))

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


class Queued(NamedTuple):
    """One outbox entry: its turn (``(enterprise_id, wallet_id, turn_id)``: the turn_id in its
    scope), its id (``<shard>:<stream id>``), the nanos the gate debited for it and the trial tokens
    it took from the wallet's allowance."""

    turn: tuple[str, str, str]
    outbox_id: str
    billed_nanos: int
    trial_tokens: int


def _queued_entries(raw: list[tuple[str, dict[str, str]]], shard: int) -> dict[str, list[Queued]]:
    """Outbox entries by wallet."""
    by_wallet: dict[str, list[Queued]] = {}
    for entry_id, fields in raw:
        try:
            payload = json.loads(fields["t"])
            turn_id, wallet_id, enterprise_id = payload[1], payload[2], payload[3]
            billed, trial_tokens = entry_figures(fields)  # entries queued before trials carry no trial tokens
            if not all(isinstance(v, str) for v in (turn_id, wallet_id, enterprise_id)):
                raise TypeError("turn_id, wallet_id and enterprise_id must be strings")
        except (KeyError, ValueError, IndexError, TypeError):  # BadEntry is a ValueError
            continue  # not a turn the drain can persist either: it will be dead-lettered, not debited twice
        by_wallet.setdefault(wallet_id, []).append(
            Queued((enterprise_id, wallet_id, turn_id), f"{shard}:{entry_id}", billed, trial_tokens)
        )
    return by_wallet


def _read_redis(gate: WalletGate, shard: int, wallet_ids: list[str], *, page: int = 5000):
    """The wallets' (balance, accepted_turns), then the shard's outbox, read in pages of ``page``
    entries so a large backlog never blocks Redis.  The outbox is read *after* the balances: a turn
    accepted in between shows in the outbox but not in the balance read, and also changes the
    balance the caller reads again afterwards, so the wallet is reported busy, never as drift."""
    pipe = gate.redis.pipeline(transaction=False)
    for wallet_id in wallet_ids:
        pipe.hmget(gate.wallet_key(wallet_id), "balance", "accepted_turns")
    balances = dict(zip(wallet_ids, pipe.execute()))
    entries: list = []
    start = "-"
    while True:
        batch = deadletter.xrange_tolerant(gate.redis, outbox_key(shard), min=start, max="+", count=page)
        entries += batch
        if len(batch) < page:
            break
        start = "(" + batch[-1][0]
    return _queued_entries(entries, shard), balances


def _read_ledger(session: Session, wallet_ids: list[str], queued: dict[str, list[Queued]]):
    # one snapshot for all three reads: a drain committing in between must not be half-seen
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    wallets = {w.id: w for w in session.execute(select(Wallet).where(col(Wallet.id).in_(wallet_ids))).scalars()}
    wt = WalletTransaction
    credits = func.coalesce(func.sum(col(wt.amount_nanos)).filter(col(wt.kind) == TransactionKind.credit), 0)
    debits = func.coalesce(func.sum(col(wt.amount_nanos)).filter(col(wt.kind) == TransactionKind.debit), 0)
    entries = dict(
        session.execute(
            select(col(wt.wallet_id), credits - debits)
            .where(col(wt.wallet_id).in_(wallet_ids))
            .group_by(col(wt.wallet_id))
        ).all()
    )
    recent: dict[str, list[tuple[str, str]]] = {}
    for wallet_id, kind, key in session.execute(
        select(col(wt.wallet_id), col(wt.kind), col(wt.idempotency_key)).where(
            col(wt.wallet_id).in_(wallet_ids),
            col(wt.created_at) > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, get_settings().dedupe_ttl_s),
        )
    ):
        recent.setdefault(wallet_id, []).append((kind, key))
    # a turn PostgreSQL cannot store is never persisted: it stays queued until it is dead-lettered
    turns = [q.turn for w in wallet_ids for q in queued.get(w, ()) if all(map(deadletter.storable, q.turn))]
    persisted: set[tuple[tuple[str, str, str], str]] = set()  # (turn in its scope, outbox id)
    tk = UsageTurnKey
    for i in range(0, len(turns), 5000):
        by_key = {turn_key_digest(*turn): turn for turn in turns[i : i + 5000]}
        rows = session.execute(select(col(tk.turn_key), col(tk.outbox_id)).where(col(tk.turn_key).in_(list(by_key))))
        persisted.update((by_key[key], outbox_id) for key, outbox_id in rows)
    # dead-lettered (its charge is in the ledger) but not yet acknowledged: settled like a persisted one
    entries_by_key = {deadletter.CHARGE + q.outbox_id: q for w in wallet_ids for q in queued.get(w, ())}
    keys = list(entries_by_key)
    for i in range(0, len(keys), 5000):
        charged = session.execute(
            select(col(WalletTransaction.idempotency_key)).where(
                col(WalletTransaction.idempotency_key).in_(keys[i : i + 5000])
            )
        ).scalars()
        persisted.update((entries_by_key[k].turn, entries_by_key[k].outbox_id) for k in charged)
    return wallets, entries, persisted, recent


def check_wallets(gate: WalletGate, wallet_ids: list[str], *, retries: int = 3) -> list[WalletCheck]:
    """Consistent figures for wallets of one shard (see the module docstring); busy ones retried."""
    results: dict[str, WalletCheck] = {}
    pending = list(wallet_ids)
    shard = gate.shard(pending[0]) if pending else 0
    for attempt in range(retries + 1):
        if not pending:
            break
        queued, first = _read_redis(gate, shard, pending)
        with session_scope() as session:
            wallets, entries, persisted, recent = _read_ledger(session, pending, queued)
        refunded = _refunded(gate, queued, persisted)
        _, again = _read_redis(gate, shard, pending)
        busy = []
        for wallet_id in pending:
            wallet = wallets.get(wallet_id)
            if wallet is None:
                continue  # deleted meanwhile, or never in PostgreSQL: nothing to compare with
            balance, accepted = first[wallet_id]
            check = WalletCheck(
                wallet_id=wallet_id,
                gate_nanos=int(balance) if balance is not None else None,
                credits_nanos=wallet.credits_nanos,
                debits_nanos=wallet.debits_nanos,
                queued_nanos=sum(
                    q.billed_nanos
                    for q in queued.get(wallet_id, ())
                    if (q.turn, q.outbox_id) not in persisted and q.outbox_id not in refunded
                ),
                ledger_entries_nanos=int(entries.get(wallet_id, 0)),
                seen=(balance, accepted or ""),
                recent=tuple(recent.get(wallet_id, ())),
            )
            if again[wallet_id] != first[wallet_id]:
                check.busy = True
                busy.append(wallet_id)
            results[wallet_id] = check
        pending = busy
        if pending and attempt < retries:
            time.sleep(0.05 * (attempt + 1))
    return [results[w] for w in wallet_ids if w in results]


def _refunded(
    gate: WalletGate, queued: dict[str, list[Queued]], persisted: set[tuple[tuple[str, str, str], str]]
) -> set[str]:
    """Outbox ids of queued second acceptances whose debit the drain already refunded in the gate
    (after its commit, before its ack and trim): they are settled, not queued."""
    persisted_turns = {t for t, _o in persisted}
    candidates = [
        (w, q.outbox_id)
        for w, entries in queued.items()
        for q in entries
        if q.turn in persisted_turns and (q.turn, q.outbox_id) not in persisted
    ]
    if not candidates:
        return set()
    pipe = gate.redis.pipeline(transaction=False)
    for wallet_id, outbox_id in candidates:
        pipe.exists(gate.applied_keys(wallet_id, [("credit", f"{REFUND_PREFIX}{outbox_id}")])[0])
    return {o for (_w, o), hit in zip(candidates, pipe.execute()) if hit}


def _by_shard(gate: WalletGate, wallet_ids: Iterable[str]) -> dict[int, list[str]]:
    shards: dict[int, list[str]] = {}
    for wallet_id in wallet_ids:
        shards.setdefault(gate.shard(wallet_id), []).append(wallet_id)
    return shards


def reconcile(gate: WalletGate | None = None, *, repair: bool = False, rebuild: bool = False) -> ReconcileReport:
    """Compare every wallet's gate balance with the ledger; optionally repair or rebuild.

    Args:
        gate: the gate to compare (the task and the CLI pass :func:`worker.gate.gate.process_gate`,
            also the default; tests and fault runs pass their own).
        repair: set drifted balances to the expected figure (only wallets that did not move).
        rebuild: first load every wallet Redis lacks from PostgreSQL (after Redis lost its data):
            mode, limit, block and balance = ledger − queued.  Wallets Redis still has are left to
            the comparison (and to ``repair``), never overwritten while turns may be landing.

    Returns: a :class:`ReconcileReport`; the run and each drifted wallet are stored
    (``reconciliation_run``, ``wallet_drift``) and counted in Prometheus metrics.
    """
    gate = gate or process_gate()
    with session_scope() as session:
        run = ReconciliationRun(repair=repair, rebuild=rebuild)  # type: ignore[call-arg]  # started_at: now()
        session.add(run)
        session.flush()
        assert run.id is not None
        run_id = run.id
        all_wallets = list(session.execute(select(col(Wallet.id)).order_by(col(Wallet.id))).scalars())
    report = ReconcileReport(run_id=run_id)
    drifts: list[WalletDrift] = []
    for shard, wallet_ids in sorted(_by_shard(gate, all_wallets).items()):
        for i in range(0, len(wallet_ids), CHUNK):
            chunk = wallet_ids[i : i + CHUNK]
            if rebuild:
                _rebuild(gate, chunk)
            for check in check_wallets(gate, chunk):
                report.wallets_checked += 1
                report.ledger_mismatches += not check.ledger_consistent
                if check.busy:
                    report.wallets_busy += 1
                    continue
                if check.gate_nanos is None:
                    report.wallets_missing += 1
                if check.drift_nanos == 0 and check.gate_nanos is not None:
                    continue
                if repair and check.gate_nanos is not None:
                    balance, accepted = check.seen
                    assert balance is not None  # the gate had the wallet when it was read
                    check.repaired = gate.repair_balance(
                        check.wallet_id,
                        expected_nanos=check.expected_nanos,
                        seen_balance=balance,
                        seen_accepted=accepted,
                        ledger_keys=check.recent,
                    )
                    report.wallets_repaired += check.repaired
                report.wallets_drifted += 1
                report.drift_nanos_abs += abs(check.drift_nanos)
                report.drifted.append(
                    {
                        "wallet_id": check.wallet_id,
                        "gate_nanos": check.gate_nanos,
                        "expected_nanos": check.expected_nanos,
                        "drift_nanos": check.drift_nanos,
                        "queued_nanos": check.queued_nanos,
                        "repaired": check.repaired,
                    }
                )
                drifts.append(
                    WalletDrift(
                        run_id=run_id,
                        wallet_id=check.wallet_id,
                        gate_nanos=check.gate_nanos,
                        expected_nanos=check.expected_nanos,
                        drift_nanos=check.drift_nanos,
                        repaired=check.repaired,
                    )
                )
    with session_scope() as session:  # the run's figures and its dead letters, in one transaction
        report.dead_letters = deadletter.summary(deadletter.list_dead_letters(session))
        stored = session.get(ReconciliationRun, run_id)
        assert stored is not None
        stored.finished_at = datetime.now(UTC)
        stored.wallets_checked = report.wallets_checked
        stored.wallets_busy = report.wallets_busy
        stored.wallets_drifted = report.wallets_drifted
        stored.drift_nanos_abs = report.drift_nanos_abs
        session.add_all(drifts)
    DRIFT_NANOS.inc(report.drift_nanos_abs)
    DRIFTED_WALLETS.set(report.wallets_drifted)
    REPAIRED_WALLETS.inc(report.wallets_repaired)
    DEAD_LETTERS.set(report.dead_letters["count"])
    DEAD_LETTER_NANOS.set(report.dead_letters["nanos"])
    if report.dead_letters["count"]:
        log.error(
            "reconciliation run %s: %d dead-lettered turn(s) hold %d nanos of charges (tollgate deadletter list)",
            run_id,
            report.dead_letters["count"],
            report.dead_letters["nanos"],
        )
    if report.wallets_drifted:
        log.warning(
            "reconciliation run %s: %d wallet(s) drifted by %d nanos in all (%d repaired)",
            run_id,
            report.wallets_drifted,
            report.drift_nanos_abs,
            report.wallets_repaired,
        )
    return report


def _rebuild(gate: WalletGate, wallet_ids: list[str]) -> None:
    """Load the wallets Redis lacks from PostgreSQL: balance = ledger − what is still queued, trial
    tokens left = allowance − used (ledger) − what the queued turns took."""
    shard = gate.shard(wallet_ids[0])
    queued, _ = _read_redis(gate, shard, [])
    with session_scope() as session:  # one snapshot: the ledger, and the profiles of the wallets Redis lacks
        wallets, _entries, persisted, recent = _read_ledger(session, wallet_ids, queued)
        pipe = gate.redis.pipeline(transaction=False)
        for wallet_id in wallet_ids:
            pipe.exists(gate.wallet_key(wallet_id))
        present = dict(zip(wallet_ids, pipe.execute()))
        profiles = {w: gate_profile(session, wallets[w]) for w in wallet_ids if w in wallets and not present[w]}
    for wallet_id, profile in profiles.items():
        wallet = wallets[wallet_id]
        unpersisted = [q for q in queued.get(wallet_id, ()) if (q.turn, q.outbox_id) not in persisted]
        profile["trial_left"] -= sum(q.trial_tokens for q in unpersisted)
        gate.load_wallet(
            wallet_id,
            balance_nanos=wallet.credits_nanos - wallet.debits_nanos - sum(q.billed_nanos for q in unpersisted),
            **profile,
        )
        # the balance counts these entries: a pending retry of one must not apply it again
        gate.mark_applied(wallet_id, recent.get(wallet_id, ()))
