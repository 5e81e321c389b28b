"""The drain under load (issue 16, item 2): shards served in turn, and the long-lived drain consumer
(``DrainLoop``, in the first ``TOLLGATE_DRAIN_LOOPS`` pool processes of a Celery worker with
``TOLLGATE_DRAIN_LOOP=1``; drain tasks stand aside while one runs) persisting every
accepted turn exactly once without a single kick."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from worker.gate.keys import DRAIN_LOOP_KEY, kick_key, outbox_key
from worker.ledger.drain import GROUP, LOOP_KICK_HOLD_MS, DrainLoop, OutboxDrain

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
CREDIT = 10**15


def _wallet_per_shard(gate) -> dict[int, str]:
    """One wallet id on each outbox shard."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < gate.settings.outbox_shards:
        found.setdefault(gate.shard(f"w{i}"), f"w{i}")
        i += 1
    return found


def _record(gate, wallet_id: str, n: int) -> tuple[int, int]:
    """``n`` accepted turns of ``wallet_id`` (opened and credited here).  Returns (turns, billed nanos)."""
    open_wallet(gate, wallet_id=wallet_id, enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id=wallet_id, amount_nanos=CREDIT, idempotency_key=f"open-{wallet_id}")
    turns = [
        TurnIn(
            turn_id=f"{wallet_id}-{i}",
            wallet_id=wallet_id,
            enterprise_id="acme",
            chat_id=f"{wallet_id}-chat-{i % 5}",
            workflow="wf",
            agent=f"agent-{i % 3}",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=1000 + i % 97,
            completion_tokens=50 + i % 13,
            duration_ms=100,
            occurred_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]
    decisions = []
    for i in range(0, n, 500):
        decisions += gate.record_turns(turns[i : i + 500])
    assert all(d.accepted for d in decisions)
    return n, sum(d.billed_nanos for d in decisions)


def _persisted(db) -> tuple[int, int, int]:
    with db.connect() as conn:
        return tuple(
            int(v)
            for v in conn.execute(
                text("SELECT count(*), count(DISTINCT turn_id), coalesce(sum(billed_nanos), 0) FROM usage_event")
            ).one()
        )


def _assert_exactly_once(db, gate, redis_client, wallets: dict[int, str], n: int, billed: int) -> None:
    assert _persisted(db) == (n, n, billed)
    with db.connect() as conn:
        debits = dict(conn.execute(text("SELECT id, debits_nanos FROM wallet")).all())
        ledger = dict(
            conn.execute(
                text("SELECT wallet_id, sum(amount_nanos) FROM wallet_transaction WHERE kind = 'debit' GROUP BY 1")
            ).all()
        )
        chat_turns = conn.execute(text("SELECT sum(turns) FROM chat_session")).scalar_one()
    assert sum(debits.values()) == sum(ledger.values()) == billed
    assert chat_turns == n
    for shard, wallet_id in wallets.items():
        assert debits[wallet_id] == ledger[wallet_id]
        assert gate.balance(wallet_id) == CREDIT - debits[wallet_id]  # Redis agrees with the ledger
        assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 0
        assert redis_client.xlen(outbox_key(shard)) == 0


def test_drain_serves_the_shards_in_turn_not_one_until_empty(db, redis_client, gate, settings, monkeypatch):
    wallets = _wallet_per_shard(gate)
    (big_shard, big), (small_shard, small) = list(wallets.items())[:2]
    n_big, billed_big = _record(gate, big, 1_000)
    n_small, billed_small = _record(gate, small, 100)
    drain = OutboxDrain(redis_client, settings=settings.model_copy(update={"outbox_batch_size": 100}), consumer="rr")
    order: list[int] = []
    read = drain.read_batch

    def recording(shard, **kwargs):
        entries, reclaimed = read(shard, **kwargs)
        if entries:
            order.append(shard)
        return entries, reclaimed

    monkeypatch.setattr(drain, "read_batch", recording)
    stats = drain.drain([big_shard, small_shard])
    assert (stats.read, stats.inserted, stats.batches) == (1_100, 1_100, 11)
    # the small shard's one batch comes second, not after the big shard's ten; the two first
    # batches are persisted in one transaction (a group), the big shard's nine others alone
    assert order[:2] == [big_shard, small_shard]
    assert order.count(big_shard) == 10
    assert stats.groups == 10
    _assert_exactly_once(db, gate, redis_client, {big_shard: big, small_shard: small}, 1_100, billed_big + billed_small)


def test_a_shard_read_empty_is_read_again_at_its_next_turn_not_after_the_drain(
    db, redis_client, gate, settings, monkeypatch
):
    # a shard read empty used to leave the rotation for the rest of the drain: under load the
    # others kept a drain loop's round going (5 s), and turns reaching that shard meanwhile waited
    # for the round to end (the soak's lag spikes of 2-5 s on a slower machine)
    wallets = _wallet_per_shard(gate)
    (busy_shard, busy), (late_shard, late) = list(wallets.items())[:2]
    n_busy, billed_busy = _record(gate, busy, 1_000)
    drain = OutboxDrain(redis_client, settings=settings.model_copy(update={"outbox_batch_size": 100}), consumer="late")
    order: list[int] = []
    late_turns: list[tuple[int, int]] = []
    read = drain.read_batch

    def recording(shard, **kwargs):
        entries, reclaimed = read(shard, **kwargs)
        if entries:
            order.append(shard)
        elif shard == late_shard and not late_turns:  # read empty once: its turns come now
            late_turns.append(_record(gate, late, 100))
        return entries, reclaimed

    monkeypatch.setattr(drain, "read_batch", recording)
    stats = drain.drain([busy_shard, late_shard])
    ((n_late, billed_late),) = late_turns
    assert (stats.read, stats.inserted, stats.batches) == (1_100, 1_100, 11)
    # the late shard's batch is read at its next turn, beside the busy shard's second batch
    assert order[:3] == [busy_shard, busy_shard, late_shard]
    assert order.count(busy_shard) == 10
    assert stats.groups == 10
    _assert_exactly_once(db, gate, redis_client, {busy_shard: busy, late_shard: late}, 1_100, billed_busy + billed_late)


def test_a_shard_read_empty_again_and_again_is_tidied_once_a_drain(db, redis_client, gate, settings, monkeypatch):
    # the first empty read of a shard looks for acknowledged entries left untrimmed (XLEN, then
    # XTRIM); the later ones of the same drain only read: a group of it in flight would make every
    # look trim for nothing
    wallets = _wallet_per_shard(gate)
    (busy_shard, busy), (idle_shard, _idle) = list(wallets.items())[:2]
    n_busy, billed_busy = _record(gate, busy, 1_000)
    drain = OutboxDrain(redis_client, settings=settings.model_copy(update={"outbox_batch_size": 100}), consumer="tidy")
    empty_reads: list[int] = []
    looked: list[str] = []
    read, xlen = drain.read_batch, drain.redis.xlen

    def recording(shard, **kwargs):
        entries, reclaimed = read(shard, **kwargs)
        if not entries:
            empty_reads.append(shard)
        return entries, reclaimed

    def counting(key):
        looked.append(key)
        return xlen(key)

    monkeypatch.setattr(drain, "read_batch", recording)
    monkeypatch.setattr(drain.redis, "xlen", counting)
    stats = drain.drain([busy_shard, idle_shard])
    assert (stats.read, stats.inserted) == (1_000, 1_000)
    assert empty_reads.count(idle_shard) == 10  # beside each of the busy shard's batches, then once more
    assert looked.count(outbox_key(idle_shard)) == 1
    assert looked.count(outbox_key(busy_shard)) == 1
    _assert_exactly_once(db, gate, redis_client, {busy_shard: busy}, 1_000, billed_busy)


def test_drain_loop_persists_every_shard_without_kicks(db, redis_client, gate, settings, kicks):
    wallets = _wallet_per_shard(gate)
    loop = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="loop"), idle_ms=10)
    loop.start()
    try:
        n = billed = 0
        for wallet_id in wallets.values():  # recorded while the loop runs
            count, nanos = _record(gate, wallet_id, 600)
            n, billed = n + count, billed + nanos
        deadline = time.monotonic() + 60
        while _persisted(db)[0] < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
    assert loop.stats.inserted == n
    _assert_exactly_once(db, gate, redis_client, wallets, n, billed)


def test_a_worker_with_the_drain_loop_persists_without_kicks(db, redis_client, gate, settings, celery_worker_factory):
    """No kick is sent (the gate's kicker only records) and no beat runs: only the worker processes'
    drain loops can persist these turns."""
    wallets = _wallet_per_shard(gate)
    n = billed = 0
    for wallet_id in wallets.values():
        count, nanos = _record(gate, wallet_id, 1_000)
        n, billed = n + count, billed + nanos
    celery_worker_factory(concurrency=2, extra_env={"TOLLGATE_DRAIN_LOOP": "1", "TOLLGATE_OUTBOX_BATCH_SIZE": "300"})
    deadline = time.monotonic() + 90
    while _persisted(db)[0] < n and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # a batch persisted twice would show up now as an extra row: there must be none
    _assert_exactly_once(db, gate, redis_client, wallets, n, billed)


def test_the_drain_task_stands_aside_while_its_process_loop_serves(db, redis_client, gate, settings, monkeypatch):
    # a kick (or beat's backstop) in a process whose loop runs reads nothing: a second consumer there
    # would only split the loop's batches; without a live loop, the same task drains everything
    import tasks.usage as usage

    shard, wallet_id = next(iter(_wallet_per_shard(gate).items()))
    n, billed = _record(gate, wallet_id, 300)
    loop = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="loop"), idle_ms=10)
    monkeypatch.setattr(usage, "_loop", loop)
    monkeypatch.setattr(usage, "_drain", OutboxDrain(redis_client, settings=settings, consumer="task"))
    loop._thread = type("Alive", (), {"is_alive": lambda self: True})()  # a running loop's thread, not started here
    assert usage.drain_outbox() == {k: 0 for k in usage.drain_outbox()}
    assert _persisted(db) == (0, 0, 0)  # nothing was read: no entry is pending for the task's consumer
    assert redis_client.xinfo_groups(outbox_key(shard)) == []  # no consumer group read the stream yet
    assert redis_client.xlen(outbox_key(shard)) == n
    loop._stop.set()  # the loop stopped (or died): the task drains as before
    counts = usage.drain_outbox()
    assert (counts["read"], counts["inserted"]) == (n, n)
    assert _persisted(db) == (n, n, billed)


def test_a_drain_loop_holds_the_kick_flags_so_the_turns_it_drains_send_no_kick(redis_client, gate, settings, kicks):
    """A task drain that reads a shard empty re-arms its kick (the next turn sends a drain task); a
    drain loop holds every shard's flag instead, so turns recorded while it runs send no task (one
    the task would discard, after a Celery publish in the recording process), until the hold
    lapses (a loop that died): then kicks come again."""
    import worker.ledger.drain as drain_module

    wallets = _wallet_per_shard(gate)
    for wallet_id in wallets.values():
        gate.load_wallet(wallet_id, mode="production", limited=True, balance_nanos=10**12, enterprise_id="acme")

    def record(tag: str) -> None:
        gate.record_turns(
            [
                TurnIn(
                    turn_id=f"{tag}-{wallet_id}",
                    wallet_id=wallet_id,
                    enterprise_id="acme",
                    chat_id="c1",
                    model="gpt-4o",
                    provider="openai",
                    prompt_tokens=100,
                    completion_tokens=10,
                    occurred_at=T0,
                )
                for wallet_id in wallets.values()
            ]
        )

    def drained() -> None:  # what a drain leaves (these turns are not persisted: not the point here)
        for shard in wallets:
            redis_client.delete(outbox_key(shard))

    task = OutboxDrain(redis_client, settings=settings, consumer="task")
    record("a")
    assert sorted(kicks) == sorted(wallets)  # each shard kicked once
    kicks.clear()
    drained()
    for shard in wallets:
        task._emptied(shard)  # a task drain re-arms the kicks
    record("b")
    assert sorted(kicks) == sorted(wallets)
    kicks.clear()

    drained()
    loop = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="loop"), idle_ms=10)
    loop.hold_kicks()
    for shard in wallets:
        assert (
            drain_module.LOOP_KICK_HOLD_MS - 1_000
            < redis_client.pttl(kick_key(shard))
            <= drain_module.LOOP_KICK_HOLD_MS
        )
        loop.drain._emptied(shard)  # the loop's drain reads it empty: the flag stays
    record("c")
    assert kicks == []

    for shard in wallets:  # the hold lapsed (the loop stopped renewing it)
        redis_client.delete(kick_key(shard))
    record("d")
    assert sorted(kicks) == sorted(wallets)


def test_the_drain_task_stands_aside_while_a_loop_of_another_process_serves(
    db, redis_client, gate, settings, monkeypatch
):
    # the loop runs in another pool process (or another worker): its key in Redis says so, and a
    # kick or beat's backstop in this process reads nothing; once that loop stops, the task drains
    import tasks.usage as usage

    shard, wallet_id = next(iter(_wallet_per_shard(gate).items()))
    n, billed = _record(gate, wallet_id, 200)
    elsewhere = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="elsewhere-loop"), idle_ms=10)
    elsewhere.hold_kicks()  # what a running loop does every few seconds
    assert redis_client.get(DRAIN_LOOP_KEY) == "elsewhere-loop"
    assert 0 < redis_client.pttl(DRAIN_LOOP_KEY) <= LOOP_KICK_HOLD_MS
    monkeypatch.setattr(usage, "_loop", None)
    monkeypatch.setattr(usage, "_drain", OutboxDrain(redis_client, settings=settings, consumer="task"))
    assert usage.drain_outbox() == {k: 0 for k in usage.drain_outbox()}
    assert _persisted(db) == (0, 0, 0) and redis_client.xlen(outbox_key(shard)) == n
    elsewhere.stop()  # it set the key last: it takes it away
    assert redis_client.exists(DRAIN_LOOP_KEY) == 0
    counts = usage.drain_outbox()
    assert (counts["read"], counts["inserted"]) == (n, n)
    assert _persisted(db) == (n, n, billed)


def test_a_loop_does_not_take_away_the_key_another_loop_set_last(redis_client, settings):
    first = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="first-loop"))
    second = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="second-loop"))
    first.hold_kicks()
    second.hold_kicks()
    first.stop()
    assert redis_client.get(DRAIN_LOOP_KEY) == "second-loop"


@pytest.mark.parametrize(
    ("slot", "loops", "backlog_loops", "started"),
    [
        (0, 1, 1, "loop"),
        (1, 1, 1, "backlog"),
        (2, 1, 1, None),
        (1, 1, 0, None),
        (1, 2, 0, "loop"),
        (2, 2, 1, "backlog"),
        (None, 1, 1, "loop"),
    ],
)
def test_the_first_drain_loops_pool_slots_start_a_loop_the_next_a_backlog_loop(
    settings, monkeypatch, slot, loops, backlog_loops, started
):
    import tasks.usage as usage

    class Recorder:
        made: list[tuple[str, int | None]] = []

        def __init__(self, drain, backlog=None):
            Recorder.made.append((drain.consumer, backlog))

        def start(self):
            return None

    monkeypatch.setattr(usage, "_loop", None)
    monkeypatch.setattr(usage, "DrainLoop", Recorder)
    monkeypatch.setattr(usage, "current_process_index", lambda base=0: slot)
    update = {"drain_loop": True, "drain_loops": loops, "drain_backlog_loops": backlog_loops}
    update["drain_backlog_entries"] = 1234
    monkeypatch.setattr(usage, "get_settings", lambda: settings.model_copy(update=update))
    usage.start_drain_loop()
    expected = {None: [], "loop": [None], "backlog": [1234]}[started]
    assert [backlog for _consumer, backlog in Recorder.made] == expected
    assert (usage._loop is not None) is (started is not None)


def _stopped_loop(redis_client, settings, backlog: int, consumer: str) -> DrainLoop:
    """A backlog loop (not started) whose first round is done: it now looks at the length first."""
    loop = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer=consumer), idle_ms=5, backlog=backlog)
    loop._owes_round = False
    return loop


def test_a_backlog_loop_drains_only_while_the_outbox_holds_its_backlog(db, redis_client, gate, settings):
    wallets = _wallet_per_shard(gate)
    first, second = list(wallets.values())[:2]
    n1, billed1 = _record(gate, first, 300)
    loop = _stopped_loop(redis_client, settings, 301, "backlog-loop")
    assert loop.drain.outbox_length() == 300
    assert loop.behind() is False
    loop.start()
    try:
        time.sleep(0.3)  # it looks every 5 ms and finds 300 < 301 entries: nothing read
        assert _persisted(db) == (0, 0, 0)
        assert loop.stats.read == 0
        n2, billed2 = _record(gate, second, 1)  # 301 entries: a backlog
        deadline = time.monotonic() + 30
        while _persisted(db)[0] < n1 + n2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert (loop.stats.read, loop.stats.inserted) == (301, 301)
    _assert_exactly_once(
        db, gate, redis_client, {gate.shard(first): first, gate.shard(second): second}, 301, billed1 + billed2
    )
    assert loop.round_s == 1.0  # a backlog loop's rounds: BACKLOG_ROUND_S


def test_a_backlog_loop_runs_its_first_round_and_the_one_after_a_failure_whatever_the_length(
    db, redis_client, gate, settings, monkeypatch
):
    import psycopg

    wallets = _wallet_per_shard(gate)
    wallet_id = next(iter(wallets.values()))
    n, billed = _record(gate, wallet_id, 40)
    loop = DrainLoop(OutboxDrain(redis_client, settings=settings, consumer="owing-loop"), idle_ms=5, backlog=10**6)
    assert loop.behind() is True  # its first round: a predecessor's pending entries are read first
    # its first round reads the 40 entries and fails on PostgreSQL: they stay pending for this
    # consumer, and 40 is far below its backlog of 1,000,000; the next round must read them anyway
    persist = loop.drain._persist_rows
    calls: list[int] = []

    def failing_once(rows, stats):
        calls.append(len(rows))
        if len(calls) == 1:
            raise psycopg.OperationalError("PostgreSQL is down")
        return persist(rows, stats)

    monkeypatch.setattr(loop.drain, "_persist_rows", failing_once)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while _persisted(db)[0] < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)
    finally:
        loop.stop()
    assert calls == [n, n]
    assert (loop.stats.read, loop.stats.inserted) == (n, n)
    assert loop.behind() is False  # the round ended well: it looks at the length again
    _assert_exactly_once(db, gate, redis_client, {gate.shard(wallet_id): wallet_id}, n, billed)
