"""Group commit in the drain (``outbox_group_size``), against real Redis and PostgreSQL: batches of
several shards persisted in one transaction (one ``xmin`` on their rows, one debit row per wallet
per group), capped by the group size with the shards still served in turn; a group failing for its
own reasons persisted batch by batch, a batch that cannot be staged dead-lettering only its bad
entry, and a transient failure leaving the whole group pending for the next drain, which persists it
once.  Every ledger figure exact each time (``test_drain_parallel._assert_exact``)."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import text

from tests.integration.test_drain_parallel import _assert_exact, _fill, _wallets_on_shards
from worker.gate.keys import deadletter_key, outbox_key
from worker.ledger import drain as drain_module
from worker.ledger.drain import GROUP, OutboxDrain

pytestmark = pytest.mark.integration


def _transactions(db) -> tuple[int, dict[str, int]]:
    """The transactions that wrote ``usage_row`` (distinct ``xmin``), and debit rows per wallet."""
    with db.connect() as conn:
        xids = conn.execute(text("SELECT count(DISTINCT xmin::text) FROM usage_row")).scalar_one()
        debits = dict(
            conn.execute(
                text("SELECT wallet_id, count(*) FROM wallet_transaction WHERE kind = 'debit' GROUP BY wallet_id")
            ).all()
        )
    return xids, debits


def _drain(redis_client, settings, persisters: int = 1, **sizes: int) -> OutboxDrain:
    """A drain of its own consumer; one persister by default, so a group may hold every shard."""
    return OutboxDrain(redis_client, settings=settings.model_copy(update=sizes), consumer="grp", persisters=persisters)


def test_a_group_holds_a_batch_of_each_shard_in_one_transaction_with_one_debit_per_wallet(
    db, redis_client, gate, settings
):
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 240)
    stats = _drain(redis_client, settings, outbox_batch_size=40, outbox_group_size=4000).drain(max_seconds=120)
    # 18 batches of 40 (6 per shard), three to a group: 6 transactions
    assert (stats.read, stats.inserted, stats.duplicates, stats.batches, stats.groups) == (720, 720, 0, 18, 6)
    assert _transactions(db) == (6, {w: 6 for w in wallets})
    _assert_exact(db, gate, turns, billed, wallets)
    assert sum(redis_client.xlen(outbox_key(s)) for s in range(settings.outbox_shards)) == 0


@pytest.mark.parametrize(
    ("group_size", "persisters"),
    [(80, 1), (4000, 2)],
    ids=["capped-by-group-size", "capped-by-shards-over-persisters"],
)
def test_a_group_is_capped_by_its_size_and_by_shards_over_persisters_and_the_shards_still_take_turns(
    db, redis_client, gate, settings, monkeypatch, group_size, persisters
):
    # two batches of 40 to a group: by the group size (80), or because with 2 persisters a group
    # holds at most ceil(4 shards / 2) shards, so that two groups of different shards can be in flight
    assert settings.outbox_shards == 4
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 240)
    drain = _drain(redis_client, settings, persisters, outbox_batch_size=40, outbox_group_size=group_size)
    groups: list[list[int]] = []
    real = drain._drain_group

    def recording(group, stats):
        groups.append([batch.shard for batch in group])
        return real(group, stats)

    monkeypatch.setattr(drain, "_drain_group", recording)
    stats = drain.drain(max_seconds=120)
    # two batches to a group, the shards in turn across groups: a, b | c, a | b, c | ...
    a, b, c = groups[0] + groups[1][:1]
    assert len({a, b, c}) == 3
    assert groups == [[a, b], [c, a], [b, c]] * 3
    assert (stats.read, stats.batches, stats.groups) == (720, 18, 9)
    assert _transactions(db) == (9, {w: 6 for w in wallets})
    _assert_exact(db, gate, turns, billed, wallets)


def test_a_group_failing_for_its_own_reason_is_persisted_batch_by_batch(db, redis_client, gate, settings, monkeypatch):
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 120)
    real = drain_module.persist_turns
    failed: list[int] = []

    def persist(session, rows):
        if len(rows) > 40:  # a group of more than one batch: the group's own failure
            failed.append(len(rows))
            raise ValueError("injected: the group's own failure")
        return real(session, rows)

    monkeypatch.setattr(drain_module, "persist_turns", persist)
    stats = _drain(redis_client, settings, outbox_batch_size=40, outbox_group_size=4000).drain(max_seconds=120)
    assert failed == [120, 120, 120]
    assert (stats.read, stats.inserted, stats.batches, stats.groups, stats.dead_lettered) == (360, 360, 9, 9, 0)
    assert _transactions(db) == (9, {w: 3 for w in wallets})
    _assert_exact(db, gate, turns, billed, wallets)


def test_a_batch_that_cannot_be_staged_sends_its_group_batch_by_batch_and_dead_letters_only_its_bad_entry(
    db, redis_client, gate, settings
):
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 30)
    bad_shard = gate.shard(wallets[1])
    redis_client.xadd(
        outbox_key(bad_shard), {"t": '[99, "from the future"]', "b": "0", "a": "continue", "m": "production"}
    )
    stats = _drain(redis_client, settings, outbox_batch_size=100, outbox_group_size=4000).drain(max_seconds=120)
    assert (stats.read, stats.inserted, stats.dead_lettered, stats.batches) == (91, 90, 1, 3)
    dead = redis_client.xrange(deadletter_key(bad_shard))
    assert len(dead) == 1 and "payload version 99" in dead[0][1]["error"]
    _assert_exact(db, gate, turns, billed, wallets)
    assert sum(redis_client.xlen(outbox_key(s)) for s in range(settings.outbox_shards)) == 0


def test_a_transient_failure_of_a_group_leaves_all_of_it_pending_and_the_next_drain_persists_it_once(
    db, redis_client, gate, settings, monkeypatch
):
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 240)
    real = drain_module.persist_turns
    calls: list[int] = []

    def persist(session, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise redis.ConnectionError("injected: Redis went away mid-group")
        return real(session, rows)

    monkeypatch.setattr(drain_module, "persist_turns", persist)
    drain = _drain(redis_client, settings, outbox_batch_size=40, outbox_group_size=4000)
    with pytest.raises(redis.ConnectionError, match="injected"):
        drain.drain(max_seconds=120)
    with db.connect() as conn:
        persisted = conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one()
    pending = sum(redis_client.xpending(outbox_key(gate.shard(w)), GROUP)["pending"] for w in wallets)
    assert calls[:2] == [120, 120]
    # the first group committed; the failed one (and any read meanwhile) still this consumer's
    assert persisted % 120 == 0 and persisted >= 120 and pending >= 120
    assert persisted + pending <= len(turns)
    monkeypatch.setattr(drain_module, "persist_turns", real)
    stats = _drain(redis_client, settings, outbox_batch_size=40, outbox_group_size=4000).drain(max_seconds=120)
    assert (stats.inserted, stats.duplicates) == (len(turns) - persisted, 0)
    _assert_exact(db, gate, turns, billed, wallets)
