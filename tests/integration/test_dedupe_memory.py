"""Bounded Redis memory per remembered and per queued turn (issue 16, item 4), on real Redis.

The gate remembers turn_ids by fingerprint in bucketed, listpack-encoded hashes
(``worker.gate.dedupe``, ``lib_seen.lua``) and queues turns as two-field outbox entries
(``worker.gate.outbox``).  These tests hold the layout to its promises: every retry inside the
window gets its first answer, the hashes stay small whatever the count, a turn_id is remembered for
one to two bucket widths, and what an older gate left in Redis (per-turn dedupe keys inside their
TTL, outbox entries of the old layout) is still understood after the upgrade.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.conftest import seed_wallet
from worker.gate.gate import WalletGate
from worker.gate.keys import outbox_key, shard_tag
from worker.ledger.drain import OutboxDrain
from worker.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration
COST = 3_500_000  # gpt-4o at OpenAI: 1,000 prompt × 2,500 + 100 completion × 10,000 nanos
CREDIT = 10**12


def _turn(turn_id: str, wallet_id: str = "w1", enterprise_id: str = "acme") -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id=enterprise_id,
        chat_id="chat-1",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000,
        completion_tokens=100,
        occurred_at=datetime(2026, 11, 2, 9, tzinfo=UTC),
    )


def _sub_hashes(redis_client, gate: WalletGate) -> list[str]:
    """Every sub-hash key (``<tag>:seen:<W>:<b>:<a>``) of every shard."""
    return [
        k
        for s in range(gate.settings.outbox_shards)
        for k in redis_client.scan_iter(f"{shard_tag(s)}:seen:*:*:*", count=1000)
    ]


def test_thousands_of_turn_ids_stay_in_small_listpack_hashes_and_each_retry_gets_its_first_answer(
    db, redis_client, gate
):
    """3,000 turns of 8 wallets: the buckets split as they fill (linear hashing), every sub-hash
    stays listpack-encoded under 128 fingerprints, the counts add up, and every retry (batched and
    one by one) gets exactly its first answer with nothing debited or queued again."""
    wallets = [f"w{i}" for i in range(8)]
    for w in wallets:
        seed_wallet(gate, w, "acme", w, CREDIT)
    turns = [_turn(f"t-{i}", wallets[i % 8]) for i in range(3000)]
    first = []
    for i in range(0, len(turns), 500):
        first += gate.record_turns(turns[i : i + 500])
    assert all(d.accepted and not d.duplicate for d in first)
    balances = {w: gate.balance(w) for w in wallets}
    queued = sum(redis_client.xlen(outbox_key(s)) for s in range(gate.settings.outbox_shards))
    assert queued == 3000

    subs = _sub_hashes(redis_client, gate)
    metas = {k.rsplit(":", 1)[0] for k in subs}
    assert sum(int(redis_client.hget(m, "c")) for m in metas) == 3000
    assert sum(int(redis_client.hget(m, "n")) for m in metas) == len(subs) > 8  # split well past one per shard
    assert sum(redis_client.hlen(k) - 1 for k in subs) == 3000  # less each sub-hash's sentinel
    assert {redis_client.object("encoding", k) for k in subs} == {"listpack"}
    assert max(redis_client.hlen(k) for k in subs) <= 128

    again = []
    for i in range(0, len(turns), 500):
        again += gate.record_turns(turns[i : i + 500])
    assert again == [d.model_copy(update={"duplicate": True}) for d in first]
    assert [gate.record_turn(t) for t in turns[::97]] == [d.model_copy(update={"duplicate": True}) for d in first[::97]]
    assert {w: gate.balance(w) for w in wallets} == balances
    assert sum(redis_client.xlen(outbox_key(s)) for s in range(gate.settings.outbox_shards)) == 3000
    assert gate.remembered_answer("acme", "w3", "t-11") == first[11].model_copy(update={"duplicate": True})
    assert gate.remembered_answer("acme", "w4", "t-11") is None  # another scope: not this turn
    stats = OutboxDrain(redis_client, consumer="c").drain()
    assert (stats.inserted, stats.refunded) == (3000, 0)
    assert reconcile(gate).wallets_drifted == 0


def test_a_turn_id_is_remembered_for_one_to_two_bucket_widths(redis_client, settings):
    """Buckets of W seconds; a lookup reads the current and the previous one: a turn recorded in
    bucket b is remembered through bucket b + 1 and forgotten in bucket b + 2 (W = 2 s here; the
    setting itself refuses less than 24 h)."""
    short = settings.model_copy(update={"dedupe_ttl_s": 2})
    gate = WalletGate(redis_client, settings=short, kicker=lambda s: None)
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=CREDIT, enterprise_id="acme")

    def bucket() -> int:
        (seconds, micros) = redis_client.time()
        return int((seconds + micros / 1e6) // 2)

    while (redis_client.time()[1] / 1e6 + redis_client.time()[0]) % 2 > 0.5:  # early in a bucket
        time.sleep(0.05)
    b = bucket()
    first = gate.record_turn(_turn("t-1"))
    assert not first.duplicate
    while bucket() == b:
        time.sleep(0.05)
    assert bucket() == b + 1
    assert gate.record_turn(_turn("t-1")) == first.model_copy(update={"duplicate": True})  # previous bucket
    while bucket() == b + 1:
        time.sleep(0.05)
    later = gate.record_turn(_turn("t-1"))  # bucket b + 2: forgotten, decided anew
    assert (later.duplicate, later.accepted, later.billed_nanos) == (False, True, COST)
    assert gate.balance("w1") == CREDIT - 2 * COST
    # bucket b's keys expire at (b + 2) × W + 60: after its last reader, never before
    tag = shard_tag(gate.shard("w1"))
    assert redis_client.expiretime(f"{tag}:seen:2:{b}") == (b + 2) * 2 + 60


def _old_payload(turn_id: str) -> str:
    """The outbox payload an older gate wrote for ``_turn(turn_id)`` (version 4)."""
    return json.dumps(
        [4, turn_id, "w1", "acme", "chat-1", "default", "assistant", "gpt-4o", "openai", 1000, 100, 0, 0]
        + [2_500_000_000, 1_250_000_000, 10_000_000_000, COST, 1_793_610_000_000_000]
        + ["llm", 0, 0, 2_500_000_000, 0, 2_500_000_000, None]
    )


def test_what_an_older_gate_left_in_redis_is_understood_after_the_upgrade(db, redis_client, gate, settings):
    """Before the upgrade an older gate accepted "old-1" (its answer in a per-turn string key with
    a TTL) and queued "old-2" (an outbox entry of the old layout, nine fields).  A gate of the new
    layout still reads the old keys: a retry of "old-1" gets its first answer and is not debited
    again, "old-2" is persisted as before, and the ledger agrees with the gate to the nano."""
    seed_wallet(gate, "w1", "acme", "w1", CREDIT)
    wallet = gate.wallet_key("w1")
    # what the older gate's record_turn.lua did for old-1 and old-2 (both still queued)
    after_1 = redis_client.hincrby(wallet, "balance", -COST)
    old_key = gate.turn_key("acme", "w1", "old-1")
    redis_client.set(old_key, f"accepted|{after_1}|continue|{COST}|{COST}", ex=settings.dedupe_ttl_s - 600)
    redis_client.xadd(
        outbox_key(gate.shard("w1")),
        {
            "t": _old_payload("old-1"),
            "b": str(COST),
            "a": "continue",
            "m": "production",
            "bal": str(after_1),
            "lv": "app_usage",
            "sb": "0",
            "tt": "0",
            "bl": "1",
        },
    )
    after_2 = redis_client.hincrby(wallet, "balance", -COST)
    redis_client.hincrby(wallet, "accepted_turns", 2)
    redis_client.xadd(
        outbox_key(gate.shard("w1")),
        {
            "t": _old_payload("old-2"),
            "b": str(COST),
            "a": "continue",
            "m": "production",
            "bal": str(after_2),
            "lv": "app_usage",
            "sb": "0",
            "tt": "0",
            "bl": "1",
        },
    )

    upgraded = WalletGate(redis_client, settings=settings, kicker=lambda s: None)
    retry = upgraded.record_turn(_turn("old-1"))
    assert (retry.duplicate, retry.accepted, retry.balance_nanos, retry.billed_nanos, retry.cost_nanos) == (
        True,
        True,
        after_1,
        COST,
        COST,
    )
    assert upgraded.remembered_answer("acme", "w1", "old-1") == retry
    new = upgraded.record_turn(_turn("new-1"))
    assert (new.duplicate, new.balance_nanos) == (False, after_2 - COST)
    assert upgraded.record_turn(_turn("new-1")) == new.model_copy(update={"duplicate": True})
    assert upgraded.balance("w1") == CREDIT - 3 * COST

    stats = OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    assert (stats.inserted, stats.refunded, stats.duplicates) == (3, 0, 0)
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT turn_id, billed_nanos, cost_nanos, balance_after_nanos, action, mode, level, "
                "input_nanos_per_mtok, output_nanos_per_mtok FROM usage_event ORDER BY turn_id"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("new-1", COST, COST, after_2 - COST, "continue", "production", "app_usage", 2_500_000_000, 10_000_000_000),
        ("old-1", COST, COST, after_1, "continue", "production", "app_usage", 2_500_000_000, 10_000_000_000),
        ("old-2", COST, COST, after_2, "continue", "production", "app_usage", 2_500_000_000, 10_000_000_000),
    ]
    report = reconcile(upgraded)
    assert (report.wallets_drifted, report.drift_nanos_abs) == (0, 0)
    # a forgotten old answer is gone from both layouts
    assert upgraded.forget_turn("acme", "w1", "old-1") == 1 and redis_client.exists(old_key) == 0


def test_an_older_gate_still_running_beside_a_new_one_is_not_double_charged(redis_client, gate, settings):
    """During a rolling upgrade an older gate decides "t-1" after the new gates started (its answer
    in a per-turn key); a retry reaching a new gate gets that answer, however long the older gate
    ran on."""
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=CREDIT, enterprise_id="acme")
    gate.record_turn(_turn("t-0"))  # the new layout in use: the current bucket exists
    after = redis_client.hincrby(gate.wallet_key("w1"), "balance", -COST)  # the older gate's debit of t-1
    redis_client.set(gate.turn_key("acme", "w1", "t-1"), f"accepted|{after}|pause|{COST}|{COST}", ex=3600)
    d = gate.record_turn(_turn("t-1"))
    assert (d.duplicate, d.accepted, d.action, d.balance_nanos, d.billed_nanos) == (True, True, "pause", after, COST)
    assert gate.balance("w1") == CREDIT - 2 * COST
    assert redis_client.xlen(outbox_key(gate.shard("w1"))) == 1  # t-0 only: nothing queued for the retry
