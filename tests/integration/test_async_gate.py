"""worker.gate.aio.AsyncWalletGate on real Redis: the same decisions, balances and outbox entries as
the blocking WalletGate for the same turns, the same refusals (nothing changed), reservations, and
NOSCRIPT recovery; and one asyncio gate per event loop and process gate."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from redis import asyncio as aioredis

from models.turn import TurnIn
from tests.unit.test_gate import COST_DEFAULT as COST
from tests.unit.test_gate import turn
from worker.errors import InvalidInput
from worker.gate.aio import AsyncWalletGate, process_async_gate
from worker.gate.gate import GateBatchError, UnknownWallet, WalletGate, WrongEnterprise, process_gate
from worker.gate.keys import outbox_key
from worker.pricing.prices import PricingError, TurnLimitExceeded

pytestmark = pytest.mark.integration


@asynccontextmanager
async def twin(blocking: WalletGate, url: str | None = None):
    """The asyncio twin of ``blocking`` on its own asyncio client (of ``url``, default the
    settings' server), closed on exit."""
    gate = AsyncWalletGate.from_gate(
        blocking, None if url is None else aioredis.Redis.from_url(url, decode_responses=True)
    )
    try:
        yield gate
    finally:
        await gate.redis.aclose()


def load(gate: WalletGate) -> None:
    """Wallets of every kind the mix below touches: plenty, nearly empty, trial, development."""
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=10**12, enterprise_id="ent1")
    gate.load_wallet("w2", mode="production", limited=True, balance_nanos=5 * COST, enterprise_id="ent1")
    gate.load_wallet("w3", mode="trial", limited=True, balance_nanos=0, enterprise_id="ent1", trial_left=3_000)
    gate.load_wallet("w4", mode="development", limited=False, balance_nanos=0, enterprise_id="ent1")


def mix() -> list[TurnIn]:
    """300 turns over four wallets: w2 runs dry (denials), w3's trial runs out, every 7th turn is
    sent twice (a duplicate), one cached-prompt and completion mix per turn."""
    turns = []
    for i in range(300):
        t = turn(f"t{i}", f"w{1 + i % 4}", prompt_tokens=1000 + i, completion_tokens=100 + i % 9)
        turns.append(t)
        if i % 7 == 0:
            turns.append(t)
    return turns


def state(client) -> dict:
    """Every wallet hash and every outbox entry's fields (stream ids are times, so left out)."""
    out = {key: client.hgetall(key) for key in sorted(client.keys("*:wallet:*"))}
    for key in sorted(client.keys("*:outbox")):
        out[key] = [fields for _id, fields in client.xrange(key)]
    return out


def test_batch_and_single_match_the_blocking_gate(redis_client, settings, kicks):
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    load(blocking)
    turns = mix()
    expected = blocking.record_turns(turns[:200]) + [blocking.record_turn(t) for t in turns[200:]]
    expected_state = state(redis_client)
    assert any(not d.accepted for d in expected) and any(d.duplicate for d in expected)

    redis_client.flushdb()
    load(blocking)
    async_kicks: list[int] = []

    async def run():
        async with twin(WalletGate(redis_client, settings=settings, kicker=async_kicks.append)) as gate:
            return await gate.record_turns(turns[:200]) + [await gate.record_turn(t) for t in turns[200:]]

    assert asyncio.run(run()) == expected
    assert state(redis_client) == expected_state
    assert sorted(set(async_kicks)) == sorted(set(kicks))
    # exact money: w1 paid every accepted turn of its own, once
    w1 = [d for t, d in zip(turns, expected) if t.wallet_id == "w1" and d.accepted and not d.duplicate]
    assert int(redis_client.hget(blocking.wallet_key("w1"), "balance")) == 10**12 - sum(d.cost_nanos for d in w1)


def test_refusals_change_nothing(redis_client, settings, kicks):
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    load(blocking)
    blocking.load_wallet("w5", mode="production", limited=True, balance_nanos=10**12, max_turn_cost_nanos=COST)
    before = state(redis_client)

    async def refused(turns):
        async with twin(blocking) as gate:
            with pytest.raises(Exception) as info:
                await gate.record_turns(turns)
            return info.value

    assert isinstance(asyncio.run(refused([turn("a"), turn("b", "nope")])), UnknownWallet)
    assert isinstance(asyncio.run(refused([turn("a"), turn("b", "w2", enterprise_id="ent2")])), WrongEnterprise)
    assert isinstance(asyncio.run(refused([turn("a"), turn("b", model="no-such-model-xyz")])), PricingError)
    limit = asyncio.run(refused([turn("a", "w5"), turn("b", "w5", prompt_tokens=2000)]))
    assert isinstance(limit, TurnLimitExceeded) and limit.index == 1 and limit.field == "cost_nanos"
    assert isinstance(asyncio.run(refused([turn("a", "nope")])), UnknownWallet)  # one turn: the script refuses
    assert state(redis_client) == before


def test_reservations_settle_and_release(redis_client, settings, kicks):
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    load(blocking)

    async def run():
        async with twin(blocking) as gate:
            hold = await gate.reserve("w2", 2 * COST, reservation_id="r1", ttl_s=60)
            assert (hold.granted, hold.amount_nanos, hold.held_nanos) == (True, 2 * COST, 2 * COST)
            assert await gate.reservation_wallet("w2", "r1") == "w2"
            refused = await gate.reserve("w2", 4 * COST)  # 5 × COST − 2 × COST held: not enough
            assert not refused.granted
            [d] = await gate.record_turns([turn("t1", "w2", reservation_id="r1")])
            assert (d.accepted, d.cost_nanos, d.balance_nanos) == (True, COST, 4 * COST)
            assert await gate.reservation_wallet("w2", "r1") is None  # settled
            other = await gate.reserve("w2", model="gpt-4o", provider="openai", prompt_tokens=1000, max_tokens=100)
            assert other.amount_nanos == 1000 * 2_500 + 100 * 10_000
            assert await gate.release("w2", other.reservation_id) == other.amount_nanos
            assert await gate.release("w2", other.reservation_id) == 0
            with pytest.raises(InvalidInput) as bad:
                await gate.reserve("w2")
            assert bad.value.field == "amount_nanos"
            with pytest.raises(UnknownWallet):
                await gate.reserve("nope", 1)
            return await gate.wallet_fields("w2", ("balance", "held"))

    assert asyncio.run(run()) == [str(4 * COST), "0"]


def test_scripts_lost_batch_sent_again(own_redis_server, own_redis_client, settings, kicks):
    """SCRIPT FLUSH (a Redis restart): every call of the batch fails NOSCRIPT before running, so the
    scripts are loaded and the batch sent once more; each turn is recorded exactly once."""
    blocking = WalletGate(own_redis_client, settings=settings, kicker=kicks.append)
    load(blocking)
    turns = [turn(f"t{i}", "w1") for i in range(150)]

    async def run():
        async with twin(blocking, own_redis_server.url) as gate:
            own_redis_client.script_flush()
            batch = await gate.record_turns(turns)
            own_redis_client.script_flush()
            single = await gate.record_turn(turn("t-last", "w1"))
            return batch, single

    batch, single = asyncio.run(run())
    assert all(d.accepted and not d.duplicate for d in [*batch, single])
    assert own_redis_client.xlen(outbox_key(blocking.shard("w1"))) == 151
    assert int(own_redis_client.hget(blocking.wallet_key("w1"), "balance")) == 10**12 - 151 * COST


def test_part_applied_batch_says_which(redis_client, settings, kicks):
    """A wallet removed between the pre-check and the scripts: its turns fail, the others are
    applied, and GateBatchError's decisions say which."""
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    load(blocking)
    turns = [turn("a", "w1"), turn("b", "w4"), turn("c", "w1")]

    async def run():
        async with twin(blocking) as gate:
            check = gate._check_rows

            def check_then_drop(*args):
                check(*args)
                redis_client.delete(blocking.wallet_key("w4"))

            gate._check_rows = check_then_drop
            with pytest.raises(GateBatchError) as info:
                await gate.record_turns(turns)
            return info.value

    error = asyncio.run(run())
    assert [d is not None and d.accepted for d in error.decisions] == [True, False, True]
    assert isinstance(error.error, UnknownWallet)


def test_one_async_gate_per_loop_and_process_gate(redis_client):
    process_gate.cache_clear()
    try:

        async def twice():
            return process_async_gate(), process_async_gate()

        a, b = asyncio.run(twice())
        assert a is b and a.prices is process_gate().prices and a.settings is process_gate().settings
        c, _ = asyncio.run(twice())
        assert c is not a  # a new loop: a new client
        process_gate.cache_clear()
        d, _ = asyncio.run(twice())
        assert d.prices is process_gate().prices
        with pytest.raises(RuntimeError):
            process_async_gate()  # no running loop
    finally:
        process_gate.cache_clear()


def test_a_connection_redis_closed_is_replaced_and_nothing_counted_twice(redis_client, settings, kicks):
    """Redis closed the asyncio gate's pooled connection (a restart, an idle timeout): the next
    single turn and the next batch are written again on a new connection, each turn recorded once."""
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    load(blocking)
    where = redis_client.connection_pool.connection_kwargs
    name = "tollgate-test-stale-async"

    def kill_ours() -> int:
        ours = [c["id"] for c in redis_client.client_list() if c["name"] == name]
        for client_id in ours:
            redis_client.client_kill_filter(_id=client_id)
        return len(ours)

    async def run():
        client = aioredis.Redis(
            host=where["host"], port=where["port"], db=where["db"], decode_responses=True, client_name=name
        )
        gate = AsyncWalletGate.from_gate(blocking, client)
        try:
            first = await gate.record_turn(turn("t0", "w1"))
            assert kill_ours() == 1
            single = await gate.record_turn(turn("t1", "w1"))
            assert kill_ours() == 1
            batch = await gate.record_turns([turn(f"b{i}", "w1") for i in range(100)])
            return [first, single, *batch]
        finally:
            await client.aclose()

    decisions = asyncio.run(run())
    assert all(d.accepted and not d.duplicate for d in decisions)
    assert redis_client.xlen(outbox_key(blocking.shard("w1"))) == 102
    assert int(redis_client.hget(blocking.wallet_key("w1"), "balance")) == 10**12 - 102 * COST
