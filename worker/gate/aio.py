"""The gate on ``redis.asyncio``, for the HTTP API's event loop: :class:`AsyncWalletGate` records
turns, makes and releases reservations and reads wallet fields without blocking the loop.

It is :class:`worker.gate.gate.GateCore` (keys, pricing, the wallet pre-check, each script's KEYS
and ARGV, the decoding of its replies) with asyncio I/O, so it sends exactly what the blocking
:class:`~worker.gate.gate.WalletGate` sends: a change to a script's arguments is made once, in
``GateCore``.  One per event loop and process gate (:func:`process_async_gate`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Callable, Iterable, Iterator, Sequence, Unpack, cast

import redis
from hiredis import pack_command
from redis import asyncio as aioredis

from models.turn import Decision, TurnIn
from models.wallet import ReservationPublic
from worker.gate.channel import Channel, Lost, loop_channel
from worker.gate.gate import (
    WALLET_CHECK_FIELDS,
    GateCore,
    ReserveOptions,
    TurnReplies,
    WalletGate,
    process_gate,
    wallets_of,
)
from worker.gate.pipeline import NoScriptHold
from worker.gate.scripts import admit_turn_script_source, lua_source, turn_script_source
from worker.metrics import decision_counter
from worker.pricing.prices import PriceSheet, TurnPrice
from worker.settings import redis_client

_LOOP_GATE: list = [None, None, None]  # [event loop, the process gate it was made from, its AsyncWalletGate]


def process_async_gate() -> "AsyncWalletGate":
    """The asyncio gate of the running event loop, made from the process's gate
    (:func:`worker.gate.gate.process_gate`: its settings, price book and drain kicker; the shard
    count already checked).  An asyncio client's connections belong to one loop: a server has one
    loop per process; a test client may run each request on a new loop, whose gate then replaces
    the last one.  After ``process_gate.cache_clear()`` (new settings) the next call makes a new one.

    Must be called on an event loop (RuntimeError otherwise)."""
    loop = asyncio.get_running_loop()
    core = process_gate()
    held_loop, held_core, gate = _LOOP_GATE
    if held_loop is not loop or held_core is not core or gate is None:
        gate = AsyncWalletGate.from_gate(core)
        _LOOP_GATE[:] = [loop, core, gate]
    return gate


def async_client(settings) -> aioredis.Redis | aioredis.RedisCluster:
    """An asyncio client for ``settings.redis_url`` (``decode_responses=True``, as
    :func:`worker.settings.redis_client`): a ``RedisCluster`` when ``settings.redis_cluster``."""
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(settings.redis_url, decode_responses=True)
    return aioredis.Redis.from_url(settings.redis_url, decode_responses=True)


class AsyncWalletGate(GateCore):
    """:class:`~worker.gate.gate.WalletGate`'s request-path methods on ``redis.asyncio``: the same
    scripts, keys, arguments, pre-checks and decisions (:class:`~worker.gate.gate.GateCore`).

    Pricing and packing a batch is Python work done on the loop (10–25 µs a turn, measured under
    load: ``benchmarks/RESULTS.md``); the Redis round trips are awaited.  Drain kicks (``kicker``, a
    Celery send) run in the loop's default thread pool.  It does not check the outbox shard count
    (build it with :meth:`from_gate`, whose gate did).

    Args:
        client: a ``redis.asyncio`` client (``decode_responses=True``); defaults to
            :func:`async_client` of ``settings``.
        settings, price_book, kicker: as :class:`~worker.gate.gate.GateCore`.
    """

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster | None = None,
        *,
        metrics_client: redis.Redis | redis.RedisCluster | None = None,
        **core,
    ) -> None:
        super().__init__(**core)
        self.redis = client or async_client(self.settings)
        #: the blocking client the decision counter flushes through (its timer thread has no loop)
        self.metrics_client = metrics_client or redis_client(self.settings)
        self._record = self.redis.register_script(turn_script_source("record_turn.lua"))
        self._record_many = self.redis.register_script(turn_script_source("record_turns.lua"))
        self._admit_record = self.redis.register_script(admit_turn_script_source())
        self._reserve = self.redis.register_script(lua_source("reserve.lua"))
        self._release = self.redis.register_script(lua_source("release.lua"))

    @classmethod
    def from_gate(cls, gate: WalletGate, client: aioredis.Redis | None = None) -> "AsyncWalletGate":
        """The asyncio twin of ``gate``: its settings, price book and kicker, on ``client`` (default:
        a new asyncio client for ``gate.settings``)."""
        return cls(
            client, metrics_client=gate.redis, settings=gate.settings, price_book=gate.prices, kicker=gate.kicker
        )

    # turns ------------------------------------------------------------------------------------
    async def record_turn(self, turn: TurnIn) -> Decision:
        """:meth:`WalletGate.record_turn`, awaited (one EVALSHA)."""
        return (await self.record_turns([turn]))[0]

    async def record_turns(self, turns: Sequence[TurnIn]) -> list[Decision]:
        """:meth:`WalletGate.record_turns` (without ``reserve_exact``), awaited: every turn priced and
        (a batch) every wallet checked before anything is sent, then one EVALSHA of
        ``record_turn.lua`` for one turn, or ``record_turns.lua`` per :data:`~worker.gate.pipeline.
        TURNS_PER_CALL` turns of a shard, pipelined on one connection (on Redis Cluster: the shards
        at once, each shard's calls in order).

        Returns one :class:`~models.turn.Decision` per turn, in order.  Raises as
        :meth:`WalletGate.record_turns`: PricingError, TurnLimitExceeded, UnknownWallet,
        WrongEnterprise (nothing changed); GateBatchError (part applied)."""
        if not turns:
            return []
        quotes = self._quotes(turns)
        replies = TurnReplies(self, turns)
        if len(turns) == 1:  # no pre-check: the script refuses an unknown wallet itself
            [(name, keys, args)] = self._call_specs(turns, quotes)
            script = getattr(self, name)
            if isinstance(self.redis, aioredis.RedisCluster):
                try:
                    replies.decide(0, await script(keys=keys, args=args))
                except redis.exceptions.ResponseError as exc:
                    replies.decide(0, exc)
            else:  # packed by hiredis and sent on a connection of the pool: redis-py's command path costs more
                command = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                await asend_packed_retrying(
                    self.redis, [(command, 1)], [script], lambda reply: replies.decide(0, reply)
                )
        else:
            ids = wallets_of(turns)
            pipe = self.redis.pipeline(transaction=False)
            for wallet_id in ids:
                pipe.hmget(self.wallet_key(wallet_id), *WALLET_CHECK_FIELDS)
            self._check_rows(turns, quotes, dict(zip(ids, await pipe.execute())))
            if isinstance(self.redis, aioredis.RedisCluster):
                await self._record_per_shard(turns, quotes, replies.decide_group)
            else:
                batches = self._shard_batches(turns)
                groups = iter(batches)
                await asend_packed_retrying(
                    self.redis,
                    self._packed_groups(turns, quotes, batches, self._record_many.sha),
                    [self._record_many],
                    lambda reply: replies.decide_group(next(groups), reply),
                )
        return await self._finish(replies)

    async def _finish(self, replies: TurnReplies) -> list[Decision]:
        """The drains to kick (in the thread pool), the decisions counted for /metrics, then
        :meth:`TurnReplies.result`."""
        if replies.kicks:
            await asyncio.get_running_loop().run_in_executor(None, self._kick, sorted(replies.kicks))
        decision_counter.add(self.metrics_client, replies.decisions)  # /metrics: every process's decisions
        return replies.result()

    def admits_in_one_call(self) -> bool:
        """Can a request's admission run in its turn's script (:meth:`admit_and_record_turn`): a plain
        TCP, RESP2 client that is not Redis Cluster (the admission's keys are outside the wallet's
        hash slot), so the script runs on the one Redis holding both."""
        return type(self.redis) is aioredis.Redis and loop_channel(self.redis) is not None

    def quote(self, turn: TurnIn) -> TurnPrice | PriceSheet:
        """The turn's price (:meth:`~worker.gate.gate.GateCore._quotes`), nothing sent.  Raises
        PricingError or TurnLimitExceeded (with ``index`` 0)."""
        return self._quotes([turn])[0]

    async def admit_and_record_turn(
        self, turn: TurnIn, quote: TurnPrice | PriceSheet, admit_keys: Sequence[str], admit_args: Sequence
    ) -> Decision | list:
        """One turn recorded as :meth:`record_turn` does, after the HTTP API's admission of its request,
        in one script (``admit_record_turn.lua``: one EVALSHA, one round trip).  ``admit_keys``: the
        key's revocation marker then one rate-limit window per limit; ``admit_args``: the strategy
        (``'fixed'`` | ``'moving'``) then per limit its amount and its script's arguments (the layout
        of ``lib_admit.lua``).  Only where :meth:`admits_in_one_call`.

        Returns the turn's :class:`~models.turn.Decision`, or the admission's refusal ``[revoked,
        answer, …]`` (ints: 1 revoked; per limit the window's count or 1|0 taken): nothing of the turn
        ran then.  Raises as :meth:`record_turn` (UnknownWallet, WrongEnterprise, TurnLimitExceeded,
        redis ConnectionError / TimeoutError) for an admitted request."""
        replies = TurnReplies(self, [turn])
        [(_, keys, args)] = self._call_specs([turn], [quote])  # record_turn.lua's KEYS[1..6], ARGV[1..9]
        refusal: list | None = None

        def on_reply(reply: object) -> None:
            nonlocal refusal
            if isinstance(reply, list) and reply and reply[0] in ("admit", b"admit"):  # b'': a client without decoding
                refusal = [int(r) for r in reply[1:]]
            else:
                replies.decide(0, reply)

        command = pack_command(
            ("EVALSHA", self._admit_record.sha, len(keys) + len(admit_keys), *keys, *admit_keys, *args, *admit_args)
        )
        client = cast(aioredis.Redis, self.redis)  # admits_in_one_call: not a cluster
        await asend_packed_retrying(client, [(command, 1)], [self._admit_record], on_reply)
        if refusal is not None:
            return refusal
        return (await self._finish(replies))[0]

    def _kick(self, shards: list[int]) -> None:
        for shard in shards:
            self.kicker(shard)

    async def _record_per_shard(
        self,
        turns: Sequence[TurnIn],
        quotes: Sequence[TurnPrice | PriceSheet],
        decide_group: Callable[[list[int], object], None],
    ) -> None:
        """A batch on Redis Cluster: the shards at once, each shard's ``record_turns.lua`` calls in
        order (the cluster client routes each by its hash tag, follows MOVED/ASK and retries
        TRYAGAIN / CLUSTERDOWN).  Calls ``decide_group(indexes, reply)`` for every call
        (:meth:`worker.gate.gate.TurnReplies.decide_group`)."""
        by_shard: dict[int, list[list[int]]] = {}
        for batch in self._shard_batches(turns):
            by_shard.setdefault(self.shard(turns[batch[0]].wallet_id), []).append(batch)

        async def one_shard(batches: list[list[int]]) -> None:
            for batch in batches:
                keys, args = self._group_call(turns, quotes, batch)
                try:
                    reply = await self._record_many(keys=keys, args=args)
                except redis.exceptions.ResponseError as exc:
                    reply = exc
                decide_group(batch, reply)

        await asyncio.gather(*(one_shard(b) for b in by_shard.values()))

    # reservations and wallet reads ------------------------------------------------------------
    async def reserve(
        self, wallet_id: str, amount_nanos: int | None = None, **options: Unpack[ReserveOptions]
    ) -> ReservationPublic:
        """:meth:`WalletGate.reserve`, awaited: the same keyword arguments (``ttl_s``,
        ``reservation_id``, ``model``, ``provider``, ``prompt_tokens``, ``max_tokens``,
        ``service_tier``), checks, answer and errors (:meth:`~worker.gate.gate.GateCore._reserve_call`)."""
        keys, args = self._reserve_call(wallet_id, amount_nanos, **options)
        try:
            reply = await self._reserve(keys=keys, args=args)
        except redis.exceptions.ResponseError as exc:
            raise self._translate(exc, wallet_id) from exc
        return self._reservation(reply, wallet_id, args[2])

    async def release(self, wallet_id: str, reservation_id: str) -> int:
        """:meth:`WalletGate.release`, awaited: the nanos released (0 if the reservation is already gone)."""
        return int(await self._release(keys=self._reservation_keys(wallet_id, reservation_id), args=[reservation_id]))

    async def reservation_wallet(self, wallet_id: str, reservation_id: str) -> str | None:
        """The wallet a live reservation ``reservation_id`` belongs to, looked up on ``wallet_id``'s
        shard (``None``: no such reservation there)."""
        # decode_responses=True: str replies, never bytes
        return cast(str | None, await self.redis.hget(self.reservation_key(wallet_id, reservation_id), "wallet"))

    async def wallet_fields(self, wallet_id: str, fields: Iterable[str]) -> list[str | None]:
        """The wallet hash's ``fields`` (one HMGET; ``None`` for a field it lacks, every one for a
        wallet not in the gate)."""
        return cast(list[str | None], await self.redis.hmget(self.wallet_key(wallet_id), list(fields)))


async def asend_packed_retrying(
    client: aioredis.Redis,
    commands: Iterable[tuple[bytes, int]],
    scripts: Sequence,
    on_reply: Callable[[object], None],
) -> None:
    """:func:`worker.gate.pipeline.send_packed_retrying` on an asyncio client: ``commands`` (``(packed
    bytes, replies expected)``, taken lazily) written on one connection, each before the previous
    one's replies are read; every reply passed to ``on_reply`` once known final; when every reply is
    NOSCRIPT (the server lost ``scripts``: none ran) they are loaded and the same commands sent once
    more (:class:`~worker.gate.pipeline.NoScriptHold`).  Raises redis ConnectionError / TimeoutError
    (the connection is dropped; the turns are idempotent by turn_id, so the caller may send again)."""
    sent: list[tuple[bytes, int]] = []
    hold = NoScriptHold(on_reply)
    await asend_packed(client, commands, sent, hold)
    if hold.none_ran:
        for script in scripts:
            await client.script_load(script.script)
        await asend_packed(client, sent, None, on_reply)


def _taking(
    source: Iterable[tuple[bytes, int]], taken: list[tuple[bytes, int]], sent: list[tuple[bytes, int]] | None
) -> Iterator[tuple[bytes, int]]:
    """``source``'s commands as they are taken, each also appended to ``taken`` (what a resend on a
    new connection writes again) and to ``sent`` when given (the caller's record)."""
    for command in source:
        taken.append(command)
        if sent is not None:
            sent.append(command)
        yield command


async def asend_packed(
    client: aioredis.Redis, commands: Iterable[tuple[bytes, int]], sent: list | None, on_reply: Callable
) -> None:
    """:func:`worker.gate.pipeline.send_packed` on an asyncio client: ``commands`` are ``(packed
    bytes, replies expected)`` (hiredis ``pack_command``), taken lazily and each written on one
    connection of ``client``'s pool before the previous one's replies are read; each taken is
    appended to ``sent`` (when given) and each reply, or the ``ResponseError`` of a refused command,
    passed to ``on_reply`` in order.

    A plain TCP client sends them on its event loop's one connection
    (:func:`worker.gate.channel.loop_channel`: no pool checkout, writes shared with the loop's other
    requests); others on a connection of its pool.

    A connection that fails before any reply was read (a pooled connection Redis closed: a restart,
    an idle timeout) is dropped and what was written is sent once more on a new one, as redis-py's
    own retry does (the scripts sent here are idempotent: a turn by its turn_id).  Raises redis
    ConnectionError / TimeoutError otherwise (the connection is then dropped)."""
    channel = loop_channel(client)
    if channel is not None:
        await _asend_on_channel(channel, commands, sent, on_reply)
        return
    pool = client.connection_pool
    source = iter(commands)
    taken: list[tuple[bytes, int]] = []  # written so far: sent again on a new connection
    read_any = False

    def deliver(reply) -> None:
        nonlocal read_any
        read_any = True
        on_reply(reply)

    for attempt in (0, 1):
        conn = await pool.get_connection()
        try:
            pending: list[int] = []  # replies expected per command written and not yet read
            for packed, n in itertools.chain(list(taken) if attempt else (), _taking(source, taken, sent)):
                await conn.send_packed_command([packed], check_health=False)
                pending.append(n)
                if len(pending) > 1:
                    await _aread_replies(conn, pending.pop(0), deliver)
            for n in pending:
                await _aread_replies(conn, n, deliver)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            await conn.disconnect()
            if attempt or read_any:
                raise
        except BaseException:
            await conn.disconnect()  # replies may be left unread on it
            raise
        finally:
            await pool.release(conn)


async def _asend_on_channel(
    channel: Channel, commands: Iterable[tuple[bytes, int]], sent: list | None, on_reply: Callable
) -> None:
    """:func:`asend_packed` on the loop's connection: each command queued as it is taken, the
    previous one's replies awaited after the next is queued (Redis runs one while this packs the
    next); sent once more on a new connection when the connection failed before any reply was read."""
    if type(commands) is list and len(commands) == 1:  # one send (admit, a single turn): no queue of them
        packed, n = commands[0]
        if sent is not None:
            sent.append(commands[0])
        for attempt in (0, 1):
            result = await (await channel.submit(packed, n))
            if isinstance(result, Lost):
                if attempt or result.answered:
                    raise result.error
                continue
            for reply in result:
                on_reply(reply)
            return
    taken: list[tuple[bytes, int]] = []
    source = iter(commands)
    read_any = False

    def replies_of(result) -> list:
        nonlocal read_any
        if isinstance(result, Lost):
            if result.answered:
                read_any = True
            raise result.error
        read_any = True
        return result

    for attempt in (0, 1):
        try:
            waiting: deque[asyncio.Future] = deque()
            for packed, n in itertools.chain(list(taken) if attempt else (), _taking(source, taken, sent)):
                waiting.append(await channel.submit(packed, n))
                if len(waiting) > 1:
                    for reply in replies_of(await waiting.popleft()):
                        on_reply(reply)
            while waiting:
                for reply in replies_of(await waiting.popleft()):
                    on_reply(reply)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if attempt or read_any:
                raise


async def _aread_replies(conn, n: int, on_reply: Callable[[object], None]) -> None:
    for _ in range(n):
        try:
            reply = await conn.read_response()
        except redis.exceptions.ResponseError as exc:
            reply = exc
        on_reply(reply)
