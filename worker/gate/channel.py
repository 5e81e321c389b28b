"""One Redis connection per event loop, shared by every request on it: the API's request path
without redis-py's asyncio pool.

Each ``POST /v1/turns`` makes two round trips (``api_stub.deps.admit``, then the gate's EVALSHA).
Through redis-py's pool each cost a connection checkout and release, ``asyncio.timeout`` scopes and
its observability hooks, more CPU than the bytes (``benchmarks/RESULTS.md``, HTTP).  A
:class:`Channel` is one TCP connection of a client, owned by one event loop: a request's packed
commands are appended to the connection's output, written once per loop turn with every other
request's (one ``send`` for all the commands queued in that turn), and Redis' replies, which come
in the order the commands were written, are parsed by hiredis as they arrive and handed to each
request's future in that order (no reader task, no lock).  It sends exactly the commands the pool
would have; only the transport changes.

Errors are redis-py's: a refused command's reply is the ``ResponseError`` (``NoScriptError``, …)
redis-py's own parser builds; a connection that fails or closes fails every request waiting on it
with ``ConnectionError`` (or ``TimeoutError`` when the oldest command has waited ``socket_timeout``
seconds, redis-py's default 5 s), and the next request opens a new connection.

Only plain TCP clients with RESP2 and a static password (or none) get a channel
(:func:`loop_channel`); others (TLS, a unix socket, RESP3, a credential provider, Redis Cluster)
keep the pool.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from collections import deque
from typing import Any

import hiredis
import redis
from hiredis import pack_command
from redis import asyncio as aioredis
from redis._parsers import BaseParser  # redis-py's own error-reply mapping (NoScriptError, …)

_INCOMPLETE = object()


class Lost:
    """The result of a request whose connection failed: ``error`` to raise, ``answered`` whether any
    of its replies had been read (so whether its commands may have run)."""

    __slots__ = ("error", "answered")

    def __init__(self, error: Exception, answered: bool) -> None:
        self.error, self.answered = error, answered


class _Waiting:
    """One request on the connection: its future, the replies it expects, those read so far."""

    __slots__ = ("future", "n", "replies", "sent_at")

    def __init__(self, future: asyncio.Future, n: int, sent_at: float) -> None:
        self.future, self.n, self.sent_at = future, n, sent_at
        self.replies: list[Any] = []


class _Link(asyncio.Protocol):
    """The protocol of one connection: writes coalesced per loop turn, replies matched in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: hiredis.Reader, timeout: float | None) -> None:
        self.loop = loop
        self.reader = reader
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[_Waiting] = deque()
        self.out: list[bytes] = []
        self.error: Exception | None = None  # set once the connection is lost
        self._watch: asyncio.TimerHandle | None = None

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(redis.exceptions.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is _INCOMPLETE:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(redis.exceptions.ConnectionError("Redis sent a reply no command was waiting for"))
                return
            head = waiting[0]
            head.replies.append(reply)
            if len(head.replies) == head.n:
                waiting.popleft()
                if not head.future.done():  # a cancelled request's replies are read and dropped
                    head.future.set_result(head.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))

    # requests ----------------------------------------------------------------------------------
    def submit(self, packed: bytes, n: int) -> asyncio.Future:
        """Queue ``packed`` (``n`` replies expected); the future's result is the list of replies, or a
        :class:`Lost`."""
        future = self.loop.create_future()
        if self.error is not None:
            future.set_result(Lost(self.error, False))
            return future
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(packed)
        self.waiting.append(_Waiting(future, n, time.monotonic()))
        if self._watch is None and self.timeout:
            self._watch = self.loop.call_later(self.timeout, self._check_timeout)
        return future

    def _flush(self) -> None:
        if self.out and self.error is None and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out = []

    def _check_timeout(self) -> None:
        self._watch = None
        if not self.waiting or self.error is not None or not self.timeout:
            return
        late = self.waiting[0].sent_at + self.timeout - time.monotonic()
        if late <= 0:
            self.fail(redis.exceptions.TimeoutError("Timeout reading from Redis"))
        else:
            self._watch = self.loop.call_later(late, self._check_timeout)

    def fail(self, error: Exception) -> None:
        """Close the connection; every request still waiting gets :class:`Lost` (``error``)."""
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.waiting:
            entry = self.waiting.popleft()
            if not entry.future.done():
                entry.future.set_result(Lost(self.error, bool(entry.replies)))


class Channel:
    """The event loop's connection of one redis-py asyncio client (its host, port, db, username,
    password, client name, ``decode_responses`` and ``socket_timeout``), opened on first use and again
    after it fails.  :meth:`submit` queues commands; see the module's docstring."""

    def __init__(self, client: aioredis.Redis, conn: aioredis.Connection) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.db = conn.host, conn.port, int(conn.db or 0)
        self.username, self.password, self.client_name = conn.username, conn.password, conn.client_name
        self.timeout = conn.socket_timeout
        self.connect_timeout = conn.socket_connect_timeout
        encoder = conn.encoder
        self.decode = (encoder.encoding, encoder.encoding_errors) if encoder.decode_responses else None
        self.link: _Link | None = None
        self._opening = asyncio.Lock()

    def _reader(self) -> hiredis.Reader:
        kwargs: dict[str, Any] = {
            "protocolError": hiredis.ProtocolError,
            "replyError": BaseParser.parse_error,
            "notEnoughData": _INCOMPLETE,
        }
        if self.decode:
            kwargs["encoding"], kwargs["errors"] = self.decode
        return hiredis.Reader(**kwargs)

    async def submit(self, packed: bytes, n: int) -> asyncio.Future:
        """Queue ``packed`` (hiredis-packed commands, ``n`` replies expected) on the live connection,
        opening one first if there is none.  Returns the future of its replies (a list, a refused
        command's reply its ``ResponseError``) or :class:`Lost`.  Raises redis ConnectionError /
        TimeoutError when no connection can be opened."""
        link = self.link
        if link is None or link.error is not None:
            link = await self._open()
        return link.submit(packed, n)

    async def _open(self) -> _Link:
        async with self._opening:  # one opening at a time; requests arriving meanwhile use it
            link = self.link
            if link is None or link.error is not None:
                self.link = link = await self._connect()
            return link

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, link = await self.loop.create_connection(
                    lambda: _Link(self.loop, self._reader(), self.timeout), self.host, self.port
                )
            sock = transport.get_extra_info("socket")
            if sock is not None:  # as redis-py's connections: no Nagle delay, keep-alive probes
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except (OSError, asyncio.TimeoutError) as exc:
            raise redis.exceptions.ConnectionError(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc}"
            ) from exc
        hello: list[tuple[Any, ...]] = []
        if self.password is not None:
            hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        if self.client_name:
            hello.append(("CLIENT", "SETNAME", self.client_name))
        if hello:
            replies = await link.submit(b"".join(pack_command(c) for c in hello), len(hello))
            problem = (
                replies.error
                if isinstance(replies, Lost)
                else next((r for r in replies if isinstance(r, Exception)), None)
            )
            if problem is not None:
                link.fail(redis.exceptions.ConnectionError("Redis refused the connection's setup"))
                raise problem
        return link


_CHANNELS: "weakref.WeakKeyDictionary[aioredis.Redis, Channel]" = weakref.WeakKeyDictionary()


def loop_channel(client: Any) -> Channel | None:
    """The :class:`Channel` of ``client`` on the running event loop (made on first use; a new one if
    the client is used on another loop), or None when the client is not a plain TCP, RESP2 client
    with a static password (TLS, unix socket, RESP3, credential provider, Redis Cluster, or not a
    redis-py asyncio client): its pool is then used."""
    channel = _CHANNELS.get(client)
    if channel is not None and channel.loop is asyncio.get_running_loop():
        return channel
    if type(client) is not aioredis.Redis:
        return None
    pool = client.connection_pool
    if pool.connection_class is not aioredis.Connection:
        return None
    # RESP2 here: the replies of the commands sent this way (EXISTS, EVALSHA of scripts that never
    # call redis.setresp) parse the same in RESP2 and RESP3; a client that asked for RESP3 keeps its pool
    if pool.connection_kwargs.get("protocol") not in (None, 2, "2"):
        return None
    conn = pool.connection_class(**pool.connection_kwargs)  # never connected: its settings only
    if conn.credential_provider is not None or conn.redis_connect_func is not None:
        return None
    channel = Channel(client, conn)
    _CHANNELS[client] = channel
    return channel
