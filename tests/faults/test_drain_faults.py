"""Faults on the persistence path, on our own Redis and PostgreSQL: a Celery worker SIGKILLed
mid-drain, PostgreSQL restarted (crash, ``-m immediate``) mid-drain, and outbox entries delivered
twice and out of order.  After each, every accepted turn is in PostgreSQL exactly once and every
wallet reconciles to the nano."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.conftest import (
    Accepted,
    assert_exactly_once_and_reconciled,
    kick_all,
    make_turns,
    open_wallets,
    persisted_count,
    spread_wallets,
    wait_until,
)

pytestmark = pytest.mark.faults

FAST_RECLAIM = {"TOLLGATE_OUTBOX_BATCH_SIZE": "200", "TOLLGATE_RECLAIM_IDLE_MS": "500"}


def _gate(fe):
    from worker.gate.gate import WalletGate

    return WalletGate(fe.client(), settings=fe.settings, kicker=lambda shard: None)


def _record(gate, accepted: Accepted, turns, batch: int = 500) -> None:
    for i in range(0, len(turns), batch):
        chunk = turns[i : i + batch]
        accepted.add(chunk, gate.record_turns(chunk))


def _loaded(fe, n: int):
    """The outbox of every shard loaded: 2 wallets a shard opened, ``n`` turns recorded.  Returns
    ``(gate, wallets, accepted, app, kick)``; ``kick()`` sends one drain task a shard to ``app``."""
    gate = _gate(fe)
    wallets = spread_wallets(fe.settings.outbox_shards, per_shard=2)
    open_wallets(gate, wallets)
    accepted = Accepted()
    _record(gate, accepted, make_turns(wallets, n))
    app = fe.celery_app()
    return gate, wallets, accepted, app, kick_all(app, fe.settings.outbox_shards)


def test_worker_sigkilled_mid_drain_loses_and_doubles_nothing(fault_env):
    fe = fault_env
    gate, wallets, accepted, app, kick = _loaded(fe, 10_000)
    assert len(accepted.turns) == 10_000

    first = fe.start_worker(concurrency=2, **FAST_RECLAIM)
    kick()
    wait_until(lambda: persisted_count(fe.pg) >= 1_500, 60, "the first drains")
    from worker.devtools.workers import kill_process_group

    kill_process_group(first)  # SIGKILL, main process and pool children at once
    at_kill = persisted_count(fe.pg)
    assert 0 < at_kill < 10_000, "the kill must land mid-drain"

    fe.start_worker(concurrency=2, **FAST_RECLAIM)
    wait_until(lambda: persisted_count(fe.pg) >= 10_000, 90, "every turn persisted after the restart", every=kick)
    time.sleep(0.5)  # a straggling re-delivered batch would show up now as an extra row: there must be none
    assert_exactly_once_and_reconciled(fe, gate, accepted)


def test_postgres_crash_restart_mid_drain_while_the_gate_keeps_accepting(fault_env):
    """``pg_ctl restart -m immediate`` aborts every backend mid-transaction.  The gate (Redis only)
    keeps accepting turns meanwhile; the drain's failed batches stay pending in the outbox, are
    reclaimed after ``reclaim_idle_ms`` and persisted once PostgreSQL is back."""
    fe = fault_env
    gate, wallets, accepted, app, kick = _loaded(fe, 12_000)
    worker = fe.start_worker(concurrency=2, **FAST_RECLAIM)
    kick()
    wait_until(lambda: persisted_count(fe.pg) >= 1_000, 60, "the first drains")

    restart = threading.Thread(target=fe.pg.restart, args=("immediate",))
    restart.start()
    during = make_turns(wallets, 3_000, offset=12_000)
    _record(gate, accepted, during, batch=100)  # the gate does not need PostgreSQL
    restart.join()
    assert len(accepted.turns) == 15_000
    at_restart = persisted_count(fe.pg)
    assert 0 < at_restart < 15_000

    wait_until(lambda: persisted_count(fe.pg) >= 15_000, 120, "every turn persisted after the restart", every=kick)
    time.sleep(0.5)
    assert worker.poll() is None, "the worker survives a database restart"
    log = worker.log_path.read_text()
    assert "terminating connection" in log or "OperationalError" in log or "server closed the connection" in log, (
        "the restart must have hit a drain in flight"
    )
    assert_exactly_once_and_reconciled(fe, gate, accepted)


def test_entries_delivered_twice_and_out_of_order_persist_once(fault_env):
    """Two consumers: A reads the oldest batch and stalls; B reads newer entries and commits first
    (out of order); B's trim must keep A's pending entries; then B reclaims A's batch (idle) and
    persists it; then A wakes up and persists and acknowledges the same batch again (delivered
    twice).  A duplicated Celery drain task on top changes nothing either."""
    from worker.gate.keys import outbox_key
    from worker.ledger.drain import GROUP, DrainStats, OutboxDrain

    fe = fault_env
    gate = _gate(fe)
    wallets = ["solo"]
    open_wallets(gate, wallets)
    accepted = Accepted()
    _record(gate, accepted, make_turns(wallets, 900))
    shard = gate.shard("solo")
    r = fe.client()
    fast = fe.settings.model_copy(update={"outbox_batch_size": 300, "reclaim_idle_ms": 150})

    a = OutboxDrain(r, settings=fast, consumer="A")
    b = OutboxDrain(r, settings=fast, consumer="B")
    batch_a, _ = a.read_batch(shard)  # entries 0..299, pending for A
    batch_b, reclaimed = b.read_batch(shard)  # entries 300..599
    assert (len(batch_a), len(batch_b), reclaimed) == (300, 300, False)
    stats_b = DrainStats()
    b._persist(shard, batch_b, stats_b)  # newer entries committed first
    b.acknowledge(shard, [i for i, _ in batch_b])
    assert stats_b.inserted == 300
    # MINID trim stops at the oldest pending entry (A's): nothing A still needs is trimmed
    assert r.xlen(outbox_key(shard)) == 900
    assert r.xpending(outbox_key(shard), GROUP)["pending"] == 300

    time.sleep(0.2)  # A is now idle longer than reclaim_idle_ms
    stats = b.drain([shard])  # reclaims A's 300 (delivered a second time), then the last 300
    assert (stats.reclaimed, stats.inserted, stats.duplicates) == (300, 600, 0)
    late = DrainStats()
    a._persist(shard, batch_a, late)  # A wakes up: the same 300 entries a second time
    a.acknowledge(shard, [i for i, _ in batch_a])
    assert (late.inserted, late.duplicates, late.refunded) == (0, 300, 0)

    app = fe.celery_app()
    fe.start_worker(concurrency=2)
    results = [app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": shard}) for _ in range(2)]
    wait_until(lambda: r.llen("tollgate.usage") == 0, 30, "the duplicated drain tasks taken")
    time.sleep(0.5)
    assert len(results) == 2
    assert_exactly_once_and_reconciled(fe, gate, accepted)
    with __import__("worker.db", fromlist=["engine_for"]).engine_for(fe.pg.url).connect() as conn:
        from sqlalchemy import text

        started, last, turns = conn.execute(
            text("SELECT min(started_at), max(last_turn_at), sum(turns) FROM chat_session")
        ).one()
    ordered = sorted(accepted.turns.values(), key=lambda t: t.occurred_at)
    assert (started, last, turns) == (ordered[0].occurred_at, ordered[-1].occurred_at, 900)
    r.close()
