"""worker.gate.channel on real Redis: the event loop's one connection that ``asend_packed`` (the
API's admit and the gate's EVALSHA) writes on.  Replies reach the request that sent the commands
however many share the connection; a cancelled request's replies are read and dropped; a command
waiting past ``socket_timeout`` fails with TimeoutError and the next one gets a new connection; a
connection Redis closed is replaced and its unanswered commands are sent once; clients the channel
does not speak for keep redis-py's pool."""

from __future__ import annotations

import asyncio

import pytest
import redis
from hiredis import pack_command
from redis import asyncio as aioredis

from tests.unit.test_gate import COST_DEFAULT as COST
from tests.unit.test_gate import turn
from worker.gate.aio import AsyncWalletGate, asend_packed
from worker.gate.channel import Channel, loop_channel
from worker.gate.gate import WalletGate
from worker.gate.keys import outbox_key

pytestmark = pytest.mark.integration

NAME = "tollgate-test-channel"
_made = iter(range(10**6))


def client_of(redis_client, **kwargs) -> aioredis.Redis:
    """An asyncio client of the test database, named ``<NAME>-<n>`` (new for each client: its
    connections, pooled or not, are found by that name in CLIENT LIST)."""
    where = redis_client.connection_pool.connection_kwargs
    name = f"{NAME}-{next(_made)}"
    return aioredis.Redis(
        host=where["host"], port=where["port"], db=where["db"], decode_responses=True, client_name=name, **kwargs
    )


async def send(client: aioredis.Redis, *commands: tuple) -> list:
    """Each command packed and sent by ``asend_packed``; their replies in order."""
    replies: list = []
    await asend_packed(client, [(pack_command(c), 1) for c in commands], None, replies.append)
    return replies


def connections(redis_client, client: aioredis.Redis) -> list[dict]:
    """The Redis connections of ``client`` (pooled or the channel's: all carry its name)."""
    name = client.connection_pool.connection_kwargs["client_name"]
    return [c for c in redis_client.client_list() if c["name"] == name]


def test_many_requests_share_one_connection_and_get_their_own_replies(redis_client):
    """400 requests at once on one loop, each an INCRBY of its own key by its own amount and a GET
    of it, answered in its own order; one connection (named, on the client's database) carries all
    of them, none from the pool."""

    async def run():
        client = client_of(redis_client)
        try:
            answers = await asyncio.gather(
                *(send(client, ("INCRBY", f"k{i}", i), ("GET", f"k{i}"), ("INCRBY", f"k{i}", 1)) for i in range(400))
            )
            return answers, connections(redis_client, client)
        finally:
            await client.aclose()

    answers, conns = asyncio.run(run())
    assert answers == [[i, str(i), i + 1] for i in range(400)]
    assert len(conns) == 1 and conns[0]["db"] == str(redis_client.connection_pool.connection_kwargs["db"])
    assert redis_client.get("k399") == "400"


def test_a_refused_command_is_its_reply_and_the_others_still_answer(redis_client):
    """An error reply is redis-py's ResponseError (NOSCRIPT as NoScriptError) in its place."""

    async def run():
        client = client_of(redis_client)
        try:
            return await send(client, ("SET", "a", "1"), ("EVALSHA", "0" * 40, 0), ("HGET", "a", "f"), ("GET", "a"))
        finally:
            await client.aclose()

    ok, noscript, wrongtype, value = asyncio.run(run())
    assert ok == "OK" and value == "1"
    assert isinstance(noscript, redis.exceptions.NoScriptError)
    assert type(wrongtype) is redis.exceptions.ResponseError and "WRONGTYPE" in str(wrongtype)


def test_a_cancelled_request_does_not_take_the_next_ones_replies(redis_client):
    """A request cancelled while its BLPOP waits: its reply is read and dropped when it comes, and
    the requests after it get their own."""

    async def run():
        client = client_of(redis_client)
        try:
            blocked = asyncio.ensure_future(send(client, ("BLPOP", "nothing", 0.3)))
            await asyncio.sleep(0.05)
            blocked.cancel()
            after = await send(client, ("SET", "b", "2"), ("GET", "b"))
            return blocked.cancelled(), after, len(connections(redis_client, client))
        finally:
            await client.aclose()

    cancelled, after, conns = asyncio.run(run())
    assert cancelled and after == ["OK", "2"] and conns == 1


def test_a_command_waiting_past_socket_timeout_fails_and_the_next_gets_a_new_connection(redis_client):
    async def run():
        client = client_of(redis_client, socket_timeout=0.2)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await send(client, ("BLPOP", "nothing", 1))
            return await send(client, ("PING",))
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ["PONG"]  # the reply itself (redis-py's ping() maps it to True)


def test_a_closed_connection_is_replaced_and_each_turn_recorded_once(redis_client, settings, kicks):
    """Redis closed the loop's connection while idle and while commands were on it: the single
    turns are sent once more on a new connection, each recorded once."""
    blocking = WalletGate(redis_client, settings=settings, kicker=kicks.append)
    blocking.load_wallet("w1", mode="production", limited=True, balance_nanos=10**12, enterprise_id="ent1")

    def kill(client: aioredis.Redis) -> int:
        ours = connections(redis_client, client)
        for c in ours:
            redis_client.client_kill_filter(_id=c["id"])
        return len(ours)

    async def run():
        client = client_of(redis_client)
        gate = AsyncWalletGate.from_gate(blocking, client)
        try:
            first = await gate.record_turn(turn("t0", "w1"))
            assert kill(client) == 1
            again = await asyncio.gather(*(gate.record_turn(turn(f"t{i}", "w1")) for i in range(1, 21)))
            return [first, *again]
        finally:
            await client.aclose()

    decisions = asyncio.run(run())
    assert all(d.accepted and not d.duplicate for d in decisions)
    assert redis_client.xlen(outbox_key(blocking.shard("w1"))) == 21
    assert int(redis_client.hget(blocking.wallet_key("w1"), "balance")) == 10**12 - 21 * COST


def test_clients_it_does_not_speak_for_keep_the_pool(redis_client):
    """RESP3 asked for, a unix socket, Redis Cluster: no channel (their pool or their own path)."""

    async def run():
        where = redis_client.connection_pool.connection_kwargs
        plain = client_of(redis_client)
        resp3 = aioredis.Redis(host=where["host"], port=where["port"], db=where["db"], protocol=3)
        unix = aioredis.Redis(unix_socket_path="/nonexistent.sock")
        try:
            found = isinstance(loop_channel(plain), Channel), loop_channel(resp3), loop_channel(unix)
            replies = await send(resp3, ("SET", "c", "3"), ("GET", "c"))
            return found, replies
        finally:
            for c in (plain, resp3, unix):
                await c.aclose()

    (plain, resp3, unix), replies = asyncio.run(run())
    assert plain and resp3 is None and unix is None
    assert replies == [b"OK", b"3"]  # sent on a connection of resp3's pool


def test_no_redis_at_the_address_is_a_connection_error_each_time():
    """Nothing listens on the port: redis ConnectionError (as from the pool), for every request."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing will listen on it

    async def run():
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            for _ in range(2):
                with pytest.raises(redis.exceptions.ConnectionError):
                    await send(client, ("PING",))
        finally:
            await client.aclose()

    asyncio.run(run())
