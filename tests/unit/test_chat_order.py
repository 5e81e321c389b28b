"""The order a chat's state moves by (worker.ledger.turns.chat_order / outbox_position), on fakeredis:
stream ids sort as numbers, and a pause, resume or credit sits just after the last turn its
wallet's shard decided and before the next one."""

from __future__ import annotations

import time

import fakeredis

from worker.gate.gate import WalletGate
from worker.gate.keys import outbox_key
from worker.ledger.turns import chat_order, outbox_position
from worker.settings import Settings


def test_outbox_ids_sort_as_stream_ids_not_as_text():
    assert chat_order("3:1764590400000-9") == "00000001764590400000-00000000000000000009-000003"
    # as text "…-10" < "…-9"; in the gate's order it comes after
    assert chat_order("3:1764590400000-9") < chat_order("3:1764590400000-10") < chat_order("3:1764590400001-0")
    assert chat_order("0:999-0") < chat_order("0:1000-0")
    # between shards the Redis time orders, the shard breaks a tie
    assert chat_order("7:1000-0") < chat_order("2:1001-0")
    assert chat_order("2:1000-0") < chat_order("7:1000-0")
    assert chat_order("not-an-entry") == "not-an-entry"


def test_a_transition_sits_after_the_turns_decided_before_it_and_before_the_next():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    gate = WalletGate(client, settings=Settings(outbox_shards=4, price_overrides_path=None), kicker=lambda shard: None)
    shard = gate.shard("w1")

    def now_ms() -> int:
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # no stream yet: just below the first id a turn decided from now on can get (Redis's clock,
    # read between the two readings here)
    before = now_ms()
    at = outbox_position(gate, "w1")
    after = now_ms()
    assert (
        chat_order(f"{shard}:{before - 1}-{2**64 - 1}") + "+"
        <= at
        <= chat_order(f"{shard}:{after - 1}-{2**64 - 1}") + "+"
    )
    assert at.endswith(f"-{2**64 - 1:020d}-{shard:06d}+")
    first = client.xadd(outbox_key(shard), {"t": "x"}, id="1764590400000-5")
    at = outbox_position(gate, "w1")
    assert at == chat_order(f"{shard}:{first}") + "+"
    assert chat_order(f"{shard}:{first}") < at
    second = client.xadd(outbox_key(shard), {"t": "x"}, id="1764590400000-6")
    assert at < chat_order(f"{shard}:{second}")
    client.xtrim(outbox_key(shard), minid="9999999999999-0")  # persisted and trimmed: the position stays
    assert outbox_position(gate, "w1") == chat_order(f"{shard}:{second}") + "+"


def test_after_redis_lost_its_data_a_transition_still_follows_the_turns_persisted_before():
    """The stream is gone (FLUSHDB, a restart without AOF): the position comes from Redis's clock,
    so it sorts after every turn decided before the loss (their ids are Redis time too) and before
    every turn decided after it, never back at 0-0 below the chats' stored state."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    gate = WalletGate(client, settings=Settings(outbox_shards=4, price_overrides_path=None), kicker=lambda shard: None)
    shard = gate.shard("w1")
    before = client.xadd(outbox_key(shard), {"t": "x"})  # "*": Redis time
    stored = chat_order(f"{shard}:{before}")  # a chat_session.state_key persisted before the loss
    client.flushdb()
    time.sleep(0.002)  # a restart takes far longer than the millisecond the position stays below
    at = outbox_position(gate, "w1")
    assert stored < at
    after = client.xadd(outbox_key(shard), {"t": "x"})
    assert at < chat_order(f"{shard}:{after}")
