"""The outbox drain against real Redis, PostgreSQL and Celery workers: killed workers, repeated
deliveries and parallel drains persist every accepted turn exactly once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from worker.gate.keys import outbox_key
from worker.ledger.drain import GROUP, OutboxDrain

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _turns(wallet_id: str, n: int, *, prefix: str = "t", chats: int = 3, agents: int = 2) -> list[TurnIn]:
    return [
        TurnIn(
            turn_id=f"{prefix}-{i}",
            wallet_id=wallet_id,
            enterprise_id="acme",
            chat_id=f"chat-{i % chats}",
            workflow="wf",
            agent=f"agent-{i % agents}",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=1000 + i % 97,
            completion_tokens=50 + i % 13,
            cached_prompt_tokens=(i % 5) * 100,
            duration_ms=200 + i % 7,
            occurred_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


def _fill(gate, n: int, wallet_id: str = "w1", credit_nanos: int = 10**15) -> tuple[list, int]:
    open_wallet(gate, wallet_id=wallet_id, enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id=wallet_id, amount_nanos=credit_nanos, idempotency_key=f"open-{wallet_id}")
    decisions = []
    turns = _turns(wallet_id, n)
    for i in range(0, n, 1000):
        decisions += gate.record_turns(turns[i : i + 1000])
    assert all(d.accepted for d in decisions)
    return turns, sum(d.billed_nanos for d in decisions)


def _persisted(db) -> tuple[int, int, int]:
    with db.connect() as conn:
        return tuple(
            int(v)
            for v in conn.execute(
                text("SELECT count(*), count(DISTINCT turn_id), coalesce(sum(billed_nanos), 0) FROM usage_event")
            ).one()
        )


def _assert_exactly_once(db, gate, turns, billed, wallet_id="w1", credit_nanos=10**15) -> None:
    count, distinct, billed_db = _persisted(db)
    assert count == distinct == len(turns)
    assert billed_db == billed
    with db.connect() as conn:
        debits, credits = conn.execute(
            text("SELECT debits_nanos, credits_nanos FROM wallet WHERE id = :w"), {"w": wallet_id}
        ).one()
        ledger_debits = conn.execute(
            text("SELECT sum(amount_nanos) FROM wallet_transaction WHERE wallet_id = :w AND kind = 'debit'"),
            {"w": wallet_id},
        ).scalar_one()
        chat_turns = conn.execute(text("SELECT sum(turns) FROM chat_session")).scalar_one()
        agent_turns = conn.execute(text("SELECT sum(turns) FROM chat_agent_usage")).scalar_one()
        prompt_sum = conn.execute(text("SELECT sum(prompt_tokens) FROM chat_agent_usage")).scalar_one()
    assert debits == ledger_debits == billed
    assert credits == credit_nanos
    assert gate.balance(wallet_id) == credits - debits  # Redis agrees with the ledger once drained
    assert chat_turns == agent_turns == len(turns)
    assert prompt_sum == sum(t.prompt_tokens for t in turns)


def _wait(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_sigkilled_mid_drain_then_restarted_persists_every_turn_once(
    db, redis_client, gate, settings, celery_worker_factory
):
    from worker.celery_app import app

    n = 12_000
    turns, billed = _fill(gate, n)
    shard = gate.shard("w1")
    env = {"TOLLGATE_OUTBOX_BATCH_SIZE": "150", "TOLLGATE_RECLAIM_IDLE_MS": "500"}

    first = celery_worker_factory(concurrency=2, extra_env=env)
    app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": shard})
    app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": shard})
    _wait(lambda: _persisted(db)[0] >= 1500, what="the drain to start")
    first.kill()
    done_at_kill = _persisted(db)[0]
    assert 0 < done_at_kill < n, "the kill must land mid-drain"

    second = celery_worker_factory(concurrency=2, extra_env=env)
    app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": shard})
    _wait(lambda: _persisted(db)[0] >= n, what="all turns persisted after restart")
    second.stop()

    _assert_exactly_once(db, gate, turns, billed)
    assert redis_client.xlen(outbox_key(shard)) == 0  # trimmed only once everything was acknowledged
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 0


def test_xautoclaim_is_not_sent_at_every_read_yet_a_dead_consumers_entries_are_claimed_within_a_quarter_idle_time(
    db, redis_client, gate, settings, monkeypatch
):
    turns, billed = _fill(gate, 300)
    shard = gate.shard("w1")
    fast = settings.model_copy(update={"reclaim_idle_ms": 400, "outbox_batch_size": 100})
    dead = OutboxDrain(redis_client, settings=fast, consumer="dead")
    dead_ids = [entry_id for entry_id, _ in dead.read_batch(shard)[0]]  # read, never acknowledged
    assert len(dead_ids) == 100
    claims: list[list[str]] = []
    xautoclaim = redis_client.xautoclaim

    def recording(*args, **kwargs):
        reply = xautoclaim(*args, **kwargs)
        claims.append([entry_id for entry_id, _ in reply[1]])
        return reply

    monkeypatch.setattr(redis_client, "xautoclaim", recording)
    survivor = OutboxDrain(redis_client, settings=fast, consumer="survivor")
    # nothing idle long enough yet: one XAUTOCLAIM claiming nothing, then none for a quarter of
    # reclaim_idle_ms (100 ms); the new entries are read meanwhile
    first, first_reclaimed = survivor.read_batch(shard)
    second, second_reclaimed = survivor.read_batch(shard)
    assert (len(first), first_reclaimed, len(second), second_reclaimed, claims) == (100, False, 100, False, [[]])
    time.sleep(0.45)  # the dead consumer's entries are idle past reclaim_idle_ms
    claimed, reclaimed = survivor.read_batch(shard)
    assert ([entry_id for entry_id, _ in claimed], reclaimed) == (dead_ids, True)
    assert claims == [[], dead_ids]
    # the survivor's drain persists what it holds (its two batches and the claimed one) once
    stats = OutboxDrain(redis_client, settings=fast, consumer="survivor").drain([shard])
    assert (stats.read, stats.inserted, stats.duplicates) == (300, 300, 0)
    _assert_exactly_once(db, gate, turns, billed)


def test_redelivery_after_commit_before_ack_is_dropped_by_the_unique_turn_id(db, redis_client, gate, settings):
    turns, billed = _fill(gate, 1_000)
    shard = gate.shard("w1")
    fast = settings.model_copy(update={"reclaim_idle_ms": 100, "outbox_batch_size": 400})

    crashed = OutboxDrain(redis_client, settings=fast, consumer="crashed")
    entries, reclaimed = crashed.read_batch(shard)
    assert (len(entries), reclaimed) == (400, False)
    from worker.db import session_scope
    from worker.gate.outbox import parse_entry
    from worker.ledger.turns import persist_turns

    with session_scope() as session:  # committed ...
        result = persist_turns(session, [parse_entry(f, f"{shard}:{i}") for i, f in entries])
    assert (result.inserted, result.duplicates) == (400, 0)
    # ... and the process dies before XACK: the entries stay pending for "crashed"
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 400

    time.sleep(0.15)
    survivor = OutboxDrain(redis_client, settings=fast, consumer="survivor")
    stats = survivor.drain([shard])
    assert stats.reclaimed == 400
    assert (stats.read, stats.inserted, stats.duplicates) == (1_000, 600, 400)
    _assert_exactly_once(db, gate, turns, billed)
    assert redis_client.xlen(outbox_key(shard)) == 0


def test_entries_acknowledged_by_a_drain_stopped_before_its_trim_are_trimmed_by_the_next(
    db, redis_client, gate, settings, monkeypatch
):
    """Redis goes away between a drain's XACK and its XTRIM (seen in the fault suite): the entries
    are persisted and acknowledged but stay in the stream.  The next drain, finding nothing to
    read, trims them, and persists nothing twice."""
    import redis as redis_lib

    turns, billed = _fill(gate, 500)
    shard = gate.shard("w1")
    stopped = OutboxDrain(redis_client, settings=settings, consumer="stopped")

    def redis_gone(shard):
        raise redis_lib.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(stopped, "trim", redis_gone)
    with pytest.raises(redis_lib.ConnectionError):
        stopped.drain([shard])
    assert redis_client.xlen(outbox_key(shard)) == 500  # persisted and acknowledged, still there
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 0
    stats = OutboxDrain(redis_client, settings=settings, consumer="next").drain([shard])
    assert (stats.read, stats.inserted) == (0, 0)
    assert redis_client.xlen(outbox_key(shard)) == 0
    _assert_exactly_once(db, gate, turns, billed)


def test_same_entries_delivered_twice_in_one_batch_and_out_of_order_persist_once(db, redis_client, gate):
    from worker.db import session_scope
    from worker.gate.outbox import parse_entry
    from worker.ledger.turns import persist_turns

    turns, billed = _fill(gate, 300)
    shard = gate.shard("w1")
    entries = redis_client.xrange(outbox_key(shard))
    rows = [parse_entry(f, f"{shard}:{i}") for i, f in entries]
    with session_scope() as session:
        first = persist_turns(session, list(reversed(rows[100:])))
    with session_scope() as session:
        second = persist_turns(session, rows + rows[:50])
    assert (first.inserted, second.inserted, second.duplicates) == (200, 100, 250)
    assert _persisted(db) == (300, 300, billed)


def test_parallel_workers_drain_one_outbox_without_double_persistence(db, redis_client, gate, celery_worker_factory):
    from worker.celery_app import app

    turns, billed = _fill(gate, 8_000)
    env = {"TOLLGATE_OUTBOX_BATCH_SIZE": "250"}
    celery_worker_factory(concurrency=2, extra_env=env)
    celery_worker_factory(concurrency=2, extra_env=env)
    for _ in range(6):
        app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": gate.shard("w1")})
    _wait(lambda: _persisted(db)[0] >= len(turns), what="parallel drain")
    time.sleep(0.5)  # any straggling batch would show up as an extra row: there must be none
    _assert_exactly_once(db, gate, turns, billed)


def test_record_turn_celery_task_uses_the_gate_and_is_persisted(db, redis_client, gate, celery_worker_factory):
    from worker.celery_app import app

    open_wallet(gate, wallet_id="w9", enterprise_id="acme", owner_id="u9")
    credit_wallet(gate, wallet_id="w9", amount_nanos=1_000_000_000, idempotency_key="open-w9")
    celery_worker_factory()
    turn = {
        "turn_id": "celery-1",
        "wallet_id": "w9",
        "enterprise_id": "acme",
        "chat_id": "c1",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "occurred_at": "2026-11-01T12:00:00Z",
    }
    decision = app.send_task("tollgate.usage.record_turn", args=[turn]).get(timeout=30)
    # gpt-4o: 1000 × $2.50/MTok + 100 × $10/MTok = 2,500,000 + 1,000,000 nanos
    assert decision == {
        "turn_id": "celery-1",
        "accepted": True,
        "action": "continue",
        "balance_nanos": 996_500_000,
        "cost_nanos": 3_500_000,
        "billed_nanos": 3_500_000,
        "duplicate": False,
    }
    again = app.send_task("tollgate.usage.record_turn", args=[turn]).get(timeout=30)
    assert again == {**decision, "duplicate": True}
    _wait(lambda: _persisted(db)[0] == 1, what="the task's turn persisted")
    assert _persisted(db) == (1, 1, 3_500_000)

    bad = app.send_task("tollgate.usage.record_turn", args=[{**turn, "turn_id": "celery-2", "prompt_tokens": -1}])
    with pytest.raises(Exception, match="prompt_tokens"):
        bad.get(timeout=30)
    assert gate.balance("w9") == 996_500_000


def test_a_turn_id_the_gate_accepted_twice_is_persisted_once_and_its_second_debit_refunded(
    db, redis_client, gate, settings
):
    """The gate forgets a turn_id after its dedupe TTL (or when Redis loses its data): the same
    turn then arrives as a second outbox entry.  PostgreSQL keeps the first; the drain gives the
    second debit back in the gate, so Redis and the ledger still agree to the nano."""
    turns, billed = _fill(gate, 50)
    drain = OutboxDrain(redis_client, settings=settings, consumer="c1")
    drain.drain()
    balance_before = gate.balance("w1")
    for turn_id in ["t-1", *(f"t-1{d}" for d in range(10))]:  # t-1, t-10..t-19: forgotten
        assert gate.forget_turn("acme", "w1", turn_id) == 1
    again = gate.record_turns(_turns("w1", 50))
    assert sum(not d.duplicate for d in again) == 11
    second_billed = sum(d.billed_nanos for d in again if not d.duplicate)
    assert gate.balance("w1") == balance_before - second_billed
    stats = drain.drain()
    assert (stats.inserted, stats.refunded, stats.duplicates) == (0, 11, 0)
    assert gate.balance("w1") == balance_before
    _assert_exactly_once(db, gate, turns, billed)
    drain.drain()  # nothing left, nothing refunded twice
    assert gate.balance("w1") == balance_before


def test_an_entry_that_cannot_be_written_is_dead_lettered_and_the_rest_persist(db, redis_client, gate, settings):
    from worker.gate.keys import deadletter_key

    turns, billed = _fill(gate, 20)
    shard = gate.shard("w1")
    redis_client.xadd(outbox_key(shard), {"t": '[99, "from the future"]', "b": "0", "a": "continue", "m": "production"})
    gate.record_turns(_turns("w1", 5, prefix="after"))
    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (26, 25, 1)
    dead = redis_client.xrange(deadletter_key(shard))
    assert len(dead) == 1 and "payload version 99" in dead[0][1]["error"]
    assert redis_client.xlen(outbox_key(shard)) == 0
    assert _persisted(db)[0] == 25
