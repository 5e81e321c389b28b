"""Reconciliation against real Redis and PostgreSQL: the gate balance equals the ledger minus the
outbox not yet persisted; drift is found to the nano, repaired, and a lost Redis is rebuilt."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.committed import credit_wallet, open_wallet
from tests.integration.test_drain import _fill, _turns
from worker.db import session_scope
from worker.gate.keys import outbox_key
from worker.gate.outbox import parse_entry
from worker.ledger.drain import OutboxDrain
from worker.ledger.reconcile import reconcile
from worker.ledger.turns import persist_turns

pytestmark = pytest.mark.integration


def _wallets(gate, n: int = 5, turns: int = 40) -> dict[str, int]:
    """n wallets with credits and turns; returns billed nanos per wallet."""
    billed = {}
    for w in range(n):
        wallet_id = f"rw{w}"
        open_wallet(gate, wallet_id=wallet_id, enterprise_id="acme", owner_id=f"u{w}")
        credit_wallet(gate, wallet_id=wallet_id, amount_nanos=1_000_000_000 + w, idempotency_key=f"open-{w}")
        decisions = gate.record_turns(_turns(wallet_id, turns, prefix=f"{wallet_id}-t"))
        billed[wallet_id] = sum(d.billed_nanos for d in decisions)
    return billed


def test_no_drift_with_turns_queued_and_persisted_and_running_twice_changes_nothing(db, redis_client, gate, settings):
    billed = _wallets(gate)
    # persist part of the outbox: some turns are in PostgreSQL, the rest still queued in Redis
    drain = OutboxDrain(redis_client, settings=settings.model_copy(update={"outbox_batch_size": 30}), consumer="c")
    shard = gate.shard("rw0")
    entries, _ = drain.read_batch(shard)
    with session_scope() as session:
        assert persist_turns(session, [parse_entry(f, f"{shard}:{i}") for i, f in entries]).inserted == 30
    drain.acknowledge(shard, [i for i, _ in entries])
    assert redis_client.xlen(outbox_key(shard)) > 0
    balances = {w: gate.balance(w) for w in billed}
    first = reconcile(gate)
    assert (first.wallets_checked, first.wallets_drifted, first.drift_nanos_abs, first.wallets_busy) == (5, 0, 0, 0)
    second = reconcile(gate, repair=True)
    assert (second.wallets_drifted, second.wallets_repaired) == (0, 0)
    assert {w: gate.balance(w) for w in billed} == balances
    assert balances == {w: 1_000_000_000 + i - billed[w] for i, w in enumerate(sorted(billed))}


def test_drift_is_reported_to_the_nano_stored_and_repaired(db, redis_client, gate, settings, cli):
    billed = _wallets(gate, n=3)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    redis_client.hincrby(gate.wallet_key("rw1"), "balance", 123)  # Redis ahead of the ledger
    redis_client.hincrby(gate.wallet_key("rw2"), "balance", -7_000)  # Redis behind
    report = reconcile(gate)
    assert report.wallets_drifted == 2 and report.drift_nanos_abs == 7_123
    assert {d["wallet_id"]: d["drift_nanos"] for d in report.drifted} == {"rw1": 123, "rw2": -7_000}
    with db.connect() as conn:
        stored = dict(
            conn.execute(
                text("SELECT wallet_id, drift_nanos FROM wallet_drift WHERE run_id = :r"), {"r": report.run_id}
            ).all()
        )
    assert stored == {"rw1": 123, "rw2": -7_000}

    proc = cli("reconcile", "--repair", "--json")
    assert proc.returncode == 0, proc.stderr
    repaired = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (repaired["wallets_drifted"], repaired["wallets_repaired"]) == (2, 2)
    assert gate.balance("rw1") == 1_000_000_001 - billed["rw1"]
    assert gate.balance("rw2") == 1_000_000_002 - billed["rw2"]
    assert reconcile(gate).wallets_drifted == 0


def test_after_redis_lost_its_data_rebuild_restores_every_balance_to_the_nano(db, redis_client, gate, settings, cli):
    billed = _wallets(gate, n=6)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    with db.connect() as conn:
        conn.execute(text("UPDATE wallet SET blocked_reason = 'budget_exceeded' WHERE id = 'rw3'"))
        conn.commit()
    before = {w: gate.balance(w) for w in billed}
    redis_client.flushdb()  # Redis lost its data (only this test's db: never FLUSHALL a shared server)

    proc = cli("reconcile", "--rebuild", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["wallets_checked"], report["wallets_drifted"]) == (6, 0)
    assert {w: gate.balance(w) for w in billed} == before
    assert redis_client.hget(gate.wallet_key("rw3"), "blocked") == "budget_exceeded"
    # the rebuilt gate works: a retried turn (its dedupe key was lost with Redis) is debited again,
    # then refunded by the drain because PostgreSQL already has it
    again = gate.record_turns(_turns("rw0", 3, prefix="rw0-t"))
    assert all(not d.duplicate for d in again)
    stats = OutboxDrain(redis_client, settings=settings, consumer="c2").drain()
    assert (stats.inserted, stats.refunded) == (0, 3)
    assert gate.balance("rw0") == before["rw0"]
    assert reconcile(gate).wallets_drifted == 0


def test_a_wallet_that_moves_during_the_check_is_busy_not_drifted(db, redis_client, gate, monkeypatch):
    from worker.ledger import reconcile as module

    _wallets(gate, n=1)
    real = module._read_ledger
    calls = {"n": 0}

    def read_ledger_while_a_turn_lands(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # between the two Redis reads of the first attempt
            gate.record_turns(_turns("rw0", 1, prefix="late"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_read_ledger", read_ledger_while_a_turn_lands)
    report = reconcile(gate, repair=True)
    assert calls["n"] == 2  # busy on the first attempt, consistent on the retry
    assert (report.wallets_busy, report.wallets_drifted, report.wallets_repaired) == (0, 0, 0)


def test_ledger_aggregates_that_disagree_with_ledger_entries_are_reported(db, redis_client, gate, settings):
    _wallets(gate, n=2)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    with db.connect() as conn:
        conn.execute(text("UPDATE wallet SET credits_nanos = credits_nanos + 5 WHERE id = 'rw0'"))
        conn.commit()
    report = reconcile(gate)
    assert report.ledger_mismatches == 1
    assert {d["wallet_id"]: d["drift_nanos"] for d in report.drifted} == {"rw0": -5}


def test_an_unpersisted_second_acceptance_is_queued_not_drift(db, redis_client, gate, settings):
    turns, billed = _fill(gate, 20)
    drain = OutboxDrain(redis_client, settings=settings, consumer="c")
    drain.drain()
    for turn_id in ["t-1", *(f"t-1{d}" for d in range(10))]:  # t-1, t-10..t-19: forgotten
        assert gate.forget_turn("acme", "w1", turn_id) == 1
    gate.record_turns(_turns("w1", 20))  # t-1, t-10..t-19 accepted again, not yet drained
    assert redis_client.xlen(outbox_key(gate.shard("w1"))) == 11
    assert reconcile(gate).wallets_drifted == 0
    drain.drain()
    assert reconcile(gate).wallets_drifted == 0


def test_repair_marks_pending_credits_applied_so_a_retry_cannot_double_them(db, redis_client, gate):
    """A credit committed in the ledger whose gate update failed (GatePending): repair brings the
    gate to the ledger figure, which counts the credit; the client's retry with the same key must
    then change nothing."""
    from worker.ledger.accounts import record_credit

    _wallets(gate, n=1, turns=0)
    with session_scope() as session:
        record_credit(session, wallet_id="rw0", amount_nanos=5_000_000_000, idempotency_key="pi-pending")
    before = gate.balance("rw0")
    report = reconcile(gate, repair=True)
    assert (report.wallets_drifted, report.wallets_repaired) == (1, 1)
    assert gate.balance("rw0") == before + 5_000_000_000
    assert (
        credit_wallet(gate, wallet_id="rw0", amount_nanos=5_000_000_000, idempotency_key="pi-pending")
        == before + 5_000_000_000
    )
    assert reconcile(gate).wallets_drifted == 0


def test_a_refunded_second_acceptance_not_yet_acknowledged_is_not_drift(db, redis_client, gate, settings):
    from worker.ledger.drain import DrainStats

    turns, billed = _fill(gate, 5)
    drain = OutboxDrain(redis_client, settings=settings, consumer="c")
    drain.drain()
    assert gate.forget_turn("acme", "w1", "t-1") == 1
    gate.record_turns(_turns("w1", 2))  # t-1 accepted again (t-0 is a duplicate)
    settled = gate.balance("w1")
    shard = gate.shard("w1")
    entries, _ = drain.read_batch(shard)
    stats = DrainStats()
    drain._persist(shard, entries, stats)  # committed and refunded, but not yet acknowledged and trimmed
    assert stats.refunded == 1 and redis_client.xlen(outbox_key(shard)) == 1
    refunded_balance = gate.balance("w1")
    assert refunded_balance > settled
    report = reconcile(gate, repair=True)
    assert (report.wallets_drifted, report.wallets_repaired) == (0, 0)
    assert gate.balance("w1") == refunded_balance


def test_the_outbox_is_read_in_pages(db, redis_client, gate, monkeypatch):
    """A large backlog is read a page at a time; paging finds every queued entry exactly once."""
    from functools import partial

    from worker.ledger import reconcile as module

    billed = _wallets(gate, n=2, turns=7)  # 14 queued entries, nothing drained
    monkeypatch.setattr(module, "_read_redis", partial(module._read_redis, page=3))
    checks = [c for w in sorted(billed) for c in module.check_wallets(gate, [w])]  # one shard per call
    assert {c.wallet_id: c.queued_nanos for c in checks} == billed
    assert all(c.drift_nanos == 0 for c in checks)
