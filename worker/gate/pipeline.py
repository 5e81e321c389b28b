"""Batched sends to Redis below redis-py's ``Pipeline``: commands packed by hiredis, written ahead
of their replies on one connection, with NOSCRIPT recovery; and the grouping of a batch of turns
into ``record_turns.lua`` calls."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import redis
from hiredis import pack_command

#: turns of one shard decided by one run of ``record_turns.lua`` (one EVALSHA): fewer script runs
#: and replies; small enough that one call keeps Redis busy well under a millisecond
TURNS_PER_CALL = 64


#: commands written ahead of the replies read: Redis runs one chunk's scripts while this process
#: packs and sends the next (Redis buffers replies in memory, so writing ahead cannot deadlock)
PIPELINE_CHUNK = 128


def pipeline_evalsha(
    client: redis.Redis, calls: Sequence[tuple[redis.commands.core.Script, list[str], Sequence[Any]]]
) -> list:
    """EVALSHA every call, pipelined on one connection of one server; returns one reply or
    ``ResponseError`` per call, in order.  If the server lost the scripts (restart, SCRIPT FLUSH)
    every call fails with NOSCRIPT before running, so loading them and sending the batch again is
    safe.  Raises redis ConnectionError/TimeoutError (the connection is dropped; the batch's turns
    are idempotent by turn_id, so the caller may send them again)."""
    scripts = list({id(c[0]): c[0] for c in calls}.values())
    if len(scripts) > 1:
        # one script's NOSCRIPT must not let another's calls run alone (a reserve_exact batch would
        # record turns whose holds were never made): load what this server lacks first
        for script, exists in zip(scripts, client.script_exists(*(sc.sha for sc in scripts))):
            if not exists:
                client.script_load(script.script)
    chunks = [
        (
            b"".join(pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)) for script, keys, args in chunk),
            len(chunk),
        )
        for chunk in (calls[i : i + PIPELINE_CHUNK] for i in range(0, len(calls), PIPELINE_CHUNK))
    ]
    return send_packed_retrying(client, chunks, scripts)


class NoScriptHold:
    """The replies of a batch sent to a server that may have lost its scripts, passed on in order
    by ``deliver``: leading NOSCRIPT replies wait until a later reply shows the scripts were there;
    when every reply is NOSCRIPT (:attr:`none_ran`: the server lost them, so no command ran) they
    are never delivered and the caller loads the scripts and sends the same commands once more.
    Shared by the blocking and the asyncio sends (:func:`send_packed_retrying`,
    :func:`worker.gate.aio.asend_packed_retrying`)."""

    def __init__(self, deliver: Callable[[object], None]) -> None:
        self.deliver = deliver
        self.held: list = []  # the NOSCRIPT replies read while no other reply has come yet
        self.passing = False

    def __call__(self, reply) -> None:
        if not self.passing:
            if isinstance(reply, redis.exceptions.NoScriptError):
                self.held.append(reply)
                return
            self.passing = True
            for r in self.held:
                self.deliver(r)
        self.deliver(reply)

    @property
    def none_ran(self) -> bool:
        """Every reply so far was NOSCRIPT (and there was at least one)."""
        return not self.passing and bool(self.held)


def send_packed_retrying(
    client: redis.Redis,
    commands: Iterable[tuple[bytes, int]],
    scripts: Sequence[redis.commands.core.Script],
    on_reply: Callable[[object], None] | None = None,
) -> list:
    """:func:`send_packed`; when every reply is NOSCRIPT (the server lost ``scripts``, so none
    ran), load them and send the same commands once more.  Returns the final replies in order, or,
    with ``on_reply``, passes each to it as soon as it is known final (leading NOSCRIPT replies
    wait until a later reply shows the scripts were there, :class:`NoScriptHold`) and returns an
    empty list."""
    out: list = []
    deliver = on_reply or out.append
    sent: list[tuple[bytes, int]] = []
    hold = NoScriptHold(deliver)
    send_packed(client, commands, sent, hold)
    if hold.none_ran:  # every reply NOSCRIPT: nothing ran
        for script in scripts:
            client.script_load(script.script)
        send_packed(client, sent, None, deliver)
    return out


def send_packed(
    client: redis.Redis, commands: Iterable[tuple[bytes, int]], sent: list | None, on_reply: Callable[[object], None]
) -> None:
    """The pipeline itself, below redis-py's ``Pipeline`` (whose pure-Python command packer cost
    more than the scripts): ``commands`` are ``(packed bytes, replies expected)``, taken lazily and
    each written before the previous one's replies are read, so Redis runs one while this process
    builds and packs the next.  Redis buffers replies in memory, so writing ahead cannot deadlock.
    Each command taken is appended to ``sent`` (when given); each reply, or the ``ResponseError``
    of a refused command, is passed to ``on_reply`` in order.  Raises redis ConnectionError /
    TimeoutError (the connection is then dropped)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        pending: list[int] = []  # replies expected per command written and not yet read
        for packed, n in commands:
            if sent is not None:
                sent.append((packed, n))
            conn.send_packed_command([packed], check_health=False)
            pending.append(n)
            if len(pending) > 1:
                _read_replies(conn, pending.pop(0), on_reply)
        for n in pending:
            _read_replies(conn, n, on_reply)
    except BaseException:
        conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(conn)


def _read_replies(conn, n: int, on_reply: Callable[[object], None]) -> None:
    for _ in range(n):
        try:
            reply = conn.read_response()
        except redis.exceptions.ResponseError as exc:
            reply = exc
        on_reply(reply)


#: replies of a node that did not run a command (redis-py parses the error code away: a MOVED
#: reply is a MovedError whose text is "<slot> <host>:<port>"); MovedError is an AskError
NOT_RUN_ON_CLUSTER = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def ramp(group: list[int]) -> list[list[int]]:
    """``group`` cut, in order, into pieces of 8, 16, 32, … (the last piece takes the rest)."""
    pieces, start, size = [], 0, 8
    while start < len(group):
        end = start + size if start + 2 * size <= len(group) else len(group)
        pieces.append(group[start:end])
        start, size = end, size * 2
    return pieces
