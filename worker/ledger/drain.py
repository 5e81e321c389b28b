"""The outbox drain: read accepted turns from the Redis outbox streams with a consumer group, persist
them to PostgreSQL in one transaction per group of batches, then acknowledge.

Order per group (DESIGN.md, the hot path)::

    this consumer's own pending entries (XREADGROUP 0: a failed drain's, or its slot's predecessor's),
    else XAUTOCLAIM (a dead consumer's entries idle > reclaim_idle_ms), else XREADGROUP '>', up to N
    a shard, one batch of each shard in turn until the group holds outbox_group_size entries
    → persist_turns (COPY into a staging table; INSERT … ON CONFLICT (enterprise_id, wallet_id,
      turn_id) DO NOTHING; aggregates for inserted rows) → COMMIT
    → refund second acceptances in the gate → XACK → XTRIM MINID (only what the group acknowledged)

A drain serves its shards in turn, one batch each, persists consecutive batches of different shards
in one transaction (group commit: PostgreSQL's cost per row falls with the rows per transaction),
and reads the next group while earlier ones are persisted (:meth:`OutboxDrain.drain`);
:class:`DrainLoop` runs it for good on a thread, in the first ``settings.drain_loops`` pool
processes of a Celery worker (``settings.drain_loop``).

A crash before COMMIT leaves the entries pending: the same consumer re-reads them first at its next
drain (a Celery pool slot keeps its consumer name across restarts, :func:`consumer_name`), and any
other consumer reclaims them after ``reclaim_idle_ms``.  A crash after
COMMIT and before XACK re-delivers them: the unique ``turn_id`` drops the duplicates (same outbox
entry id).  A turn_id the gate accepted twice (its dedupe key expired, or Redis lost it) arrives as a
*different* outbox entry: its debit is refunded in the gate, so Redis keeps agreeing with the ledger.
A group that fails for any reason other than PostgreSQL or Redis being unreachable
(:func:`worker.transient.is_transient`) is rolled back and persisted batch by batch, and a batch
that fails so entry by entry, each in its own transaction; an entry that still fails, whatever the
exception, is dead-lettered (a ``dead_letter`` row with its error and its charge named in the ledger, one transaction; a copy in
``tollgate:{sN}:deadletter``; :mod:`worker.ledger.deadletter`), so it never blocks the turns behind it.  A transient failure
dead-letters nothing: the group stays pending and is read again.  The outbox is never trimmed by
length.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, cast

import redis
from celery.utils.log import current_process_index  # type: ignore[attr-defined]  # not in celery-types
from hiredis import pack_command
from sqlmodel import Session

from worker.db import session_scope
from worker.gate.gate import WalletGate, process_gate
from worker.gate.keys import DRAIN_LOOP_KEY, REFUND_PREFIX, kick_key, outbox_key
from worker.gate.outbox import parse_entry
from worker.gate.pipeline import send_packed
from worker.ledger import deadletter
from worker.ledger.staging import stage_entries
from worker.ledger.turns import PersistResult, StagedRows, drain_window, persist_turns
from worker.metrics import record_dead_letter, record_drain_batch
from worker.settings import Settings, get_settings, redis_client
from worker.transient import is_transient

GROUP = "tollgate-drain"

#: groups a drain persists at once, of different shards, each on its own connection (see
#: :meth:`OutboxDrain.drain`): PostgreSQL inserts one group while the next is read and parsed
PERSISTERS = 2

#: after an XAUTOCLAIM that claimed nothing, a drain sends the next one for that stream after this
#: fraction of ``reclaim_idle_ms``, at most :data:`CLAIM_INTERVAL_MAX_S` seconds later
CLAIM_INTERVAL_FRACTION = 0.25
CLAIM_INTERVAL_MAX_S = 1.0

#: DrainStats are added to by a drain's persisting threads
_STATS_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def consumer_name() -> str:
    """This process's consumer name in the outbox group.

    In a Celery pool process: ``<host>-slot<n>``, ``n`` its pool slot (0 … concurrency − 1), the
    same after a restart, so a worker restarted after a crash (SIGKILL, OOM) re-reads the entries
    its predecessor in that slot had read and not acknowledged at its first drain
    (:meth:`OutboxDrain.drain_shard` reads its own pending entries first) instead of waiting
    ``reclaim_idle_ms`` for another consumer to claim them.  Two worker instances on one host share
    the slot names: one may then also persist entries the other is persisting; the unique turn key
    (``usage_turn_key``) drops the second copy and the ledger counts only inserted rows, so that is
    harmless (it costs a duplicate insert attempt, no money).  Elsewhere (CLI, replay, tests):
    ``<host>-<pid>``.
    """
    slot = current_process_index(base=0)
    if slot is not None:
        return f"{socket.gethostname()}-slot{slot}"
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class DrainStats:
    """What a drain did: entries read, rows inserted, re-deliveries dropped, second acceptances
    refunded in the gate, entries dead-lettered, batches (one shard's entries read at once),
    entries reclaimed from dead consumers, and groups (batches persisted in one transaction,
    :meth:`OutboxDrain.drain`)."""

    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    refunded: int = 0
    dead_lettered: int = 0
    batches: int = 0
    reclaimed: int = 0
    groups: int = 0

    def add(self, result: PersistResult) -> None:
        """Count one persisted batch."""
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        self.refunded += len(result.conflicts)

    def as_dict(self) -> dict[str, int]:
        """Counts as a plain dict (Celery result)."""
        return dict(self.__dict__)


#: ``announce(session, gate, paused, resumed)``: what a drain does with the chats a batch paused /
#: resumed, called inside the batch's transaction; it sends its announcements with ``after_commit``
Announce = Callable[[Session, WalletGate, Sequence[Any], Sequence[Any]], None]


@dataclass(frozen=True)
class ShardBatch:
    """Entries read from one shard at once: ``(stream id, fields)`` pairs in stream order, whether
    they were reclaimed from a dead consumer, and their staged rows (None when one cannot be
    parsed or holds a value no gate writes: the batch then goes one entry at a time)."""

    shard: int
    entries: list[tuple[str, dict[str, str]]]
    reclaimed: bool
    rows: StagedRows | None

    @property
    def ids(self) -> frozenset[str]:
        """The stream ids of the entries."""
        return frozenset(entry_id for entry_id, _ in self.entries)


class OutboxDrain:
    """Drains outbox shards into PostgreSQL.

    Args:
        client: redis-py client with ``decode_responses=True`` (defaults to ``settings.redis_url``).
        settings: defaults to :func:`worker.settings.get_settings`.
        consumer: consumer name in the group (defaults to :func:`consumer_name`).
        announce: ``announce(session, gate, paused, resumed)``, called inside each batch's
            transaction that paused or resumed chats (:class:`~worker.ledger.turns.PausedNotice` /
            :class:`~worker.ledger.turns.ResumedNotice` lists), in a savepoint: its errors are
            logged and undo nothing of the batch; it announces after the batch commits (``after_commit``).  The entry
            points (the Celery task, the CLI, replay) pass
            :func:`worker.chats.lifecycle.announce_chat_changes`; None announces nothing.
        gate: the gate refunds of second acceptances go through.  Default: the process's
            (:func:`worker.gate.gate.process_gate`) when the drain is on the process's Redis
            (no ``client``); a drain given its own ``client`` (tests, fault runs, benchmarks) gets a
            gate on that client and settings, created on first use, unless ``gate`` is given.
        persisters: groups persisted at once, holding different shards, each on its own connection
            (default :data:`PERSISTERS`; 1: one group at a time).  Raises ValueError below 1.

    ``rearm_kicks`` (attribute, default True): a shard read empty deletes its kick flag, so the
    next accepted turn sends a drain task at once (:meth:`_emptied`).  A :class:`DrainLoop` turns
    it off: it drains continuously and holds the flags itself.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        settings: Settings | None = None,
        consumer: str | None = None,
        announce: Announce | None = None,
        gate: WalletGate | None = None,
        persisters: int = PERSISTERS,
    ) -> None:
        if persisters < 1:
            raise ValueError(f"persisters must be >= 1, not {persisters}")
        self.persisters = persisters
        self.rearm_kicks = True
        self.settings = settings or get_settings()
        self.announce = announce
        self.redis = client or redis_client(self.settings)
        self.consumer = consumer or consumer_name()
        self._groups: set[str] = set()
        self._own_redis = client is None and settings is None
        self._gate: WalletGate | None = gate
        self._pool: ThreadPoolExecutor | None = None
        #: per stream, the monotonic time before which XAUTOCLAIM is not sent again (:meth:`read_batch`)
        self._claim_after: dict[str, float] = {}

    @property
    def gate(self) -> WalletGate:
        """The gate, for refunds of second acceptances (see ``gate`` above)."""
        if self._gate is None:
            self._gate = (
                process_gate()
                if self._own_redis
                else WalletGate(self.redis, settings=self.settings, kicker=lambda shard: None)
            )
        return self._gate

    def ensure_group(self, stream: str) -> None:
        """Create the consumer group (and the stream) if missing."""
        if stream in self._groups:
            return
        try:
            self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    def read_batch(
        self, shard: int, *, in_flight: frozenset[str] = frozenset()
    ) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        """Up to ``outbox_batch_size`` entries of one shard: a dead consumer's first, then new ones.

        Returns ``(entries, reclaimed)``.  A dead consumer's entries are looked for by XAUTOCLAIM
        (:meth:`_autoclaim`: not at every read).  Entries trimmed away while pending (never, by our
        trim rule) are skipped by XAUTOCLAIM.  ``in_flight``: ids of this consumer's batch being persisted
        while this one is read (:meth:`drain` reads ahead); left out even when idle long enough to be
        claimed, so no batch is persisted twice by its own drain.
        """
        stream = outbox_key(shard)
        self.ensure_group(stream)
        count = self.settings.outbox_batch_size
        if time.monotonic() >= self._claim_after.get(stream, 0.0):
            claimed, reclaimed = self._autoclaim(stream, count, in_flight)
            if reclaimed:
                return claimed, True
        try:
            # RESP2 with decode_responses=True: [[stream, [(id, {field: value}), ...]]]
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count),
            )
        except UnicodeDecodeError:  # delivered to us before decoding failed: read them back tolerantly
            return _without(
                deadletter.read_own_pending(self.redis, stream, GROUP, self.consumer, count), in_flight
            ), False
        if not reply:
            return [], False
        return reply[0][1], False

    def _autoclaim(
        self, stream: str, count: int, in_flight: frozenset[str]
    ) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        """XAUTOCLAIM of a dead consumer's entries (idle > ``reclaim_idle_ms``) of ``stream``, less
        ``in_flight``: ``(entries, True)`` when it claimed some, else ``([], False)``.  XAUTOCLAIM
        walks the group's pending entries from the start at every call (about 1 ms of Redis CPU per
        thousand pending under load: benchmarks/RESULTS.md), so after a call that claimed nothing it
        is not sent again for :data:`CLAIM_INTERVAL_FRACTION` of ``reclaim_idle_ms`` (at most
        :data:`CLAIM_INTERVAL_MAX_S`): an entry is then claimed at most that much later than its idle
        time allows.  Raises what XAUTOCLAIM raises, but NOGROUP (the group is made again)."""
        try:
            _next, claimed, _deleted = self.redis.xautoclaim(
                stream, GROUP, self.consumer, self.settings.reclaim_idle_ms, start_id="0-0", count=count
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # the stream was deleted and re-created (Redis lost its data): make the group again
            self._groups.discard(stream)
            self.ensure_group(stream)
            return [], False
        except UnicodeDecodeError:  # another writer's bytes that are not UTF-8: now ours, pending
            return _without(
                deadletter.read_own_pending(self.redis, stream, GROUP, self.consumer, count), in_flight
            ), True
        claimed = _without(claimed, in_flight)
        if claimed:
            return claimed, True
        pause = min(CLAIM_INTERVAL_MAX_S, self.settings.reclaim_idle_ms / 1000 * CLAIM_INTERVAL_FRACTION)
        self._claim_after[stream] = time.monotonic() + pause
        return [], False

    def read_pending(self, shard: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``outbox_batch_size`` entries this consumer read before and has not acknowledged
        (``XREADGROUP … 0``, oldest first): a drain of this consumer that failed (PostgreSQL or Redis
        down, the process killed and restarted in the same slot, see :func:`consumer_name`).
        Entries deleted from the stream while pending (never, by our trim rule) carry nothing to
        persist: they are acknowledged and left out."""
        stream = outbox_key(shard)
        self.ensure_group(stream)
        count = self.settings.outbox_batch_size
        try:
            # RESP2 with decode_responses=True: [[stream, [(id, {field: value}), ...]]]
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                self.redis.xreadgroup(GROUP, self.consumer, {stream: "0"}, count=count),
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(stream)  # the stream was re-created (Redis lost its data): nothing pending
            self.ensure_group(stream)
            return []
        except UnicodeDecodeError:  # another writer's bytes that are not UTF-8: read them tolerantly
            return deadletter.read_own_pending(self.redis, stream, GROUP, self.consumer, count)
        entries = reply[0][1] if reply else []
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            self.redis.xack(stream, GROUP, *gone)
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def acknowledge(self, shard: int, ids: Iterable[str]) -> None:
        """XACK ``ids`` (:meth:`_xack`), then trim the stream below the oldest entry the group still needs."""
        stream = outbox_key(shard)
        ids = list(ids)
        if ids:
            self._xack(stream, ids)
        self.trim(shard)

    def _xack(self, stream: str, ids: list[str]) -> int:
        """``XACK stream GROUP *ids``; returns the number of entries it acknowledged.

        The command is packed by hiredis in one C call and sent below redis-py's command packer
        (:func:`worker.gate.pipeline.send_packed`, as the gate's pre-check): redis-py encodes each
        argument in Python, about 0.4 µs of CPU an id, and the drain acknowledges every entry it
        persists.  After a connection error or timeout it is sent again through redis-py's
        ``xack`` and its retries (XACK is idempotent: acknowledging an entry twice changes nothing);
        on Redis Cluster only that way.  Raises what XACK raises (``ResponseError`` such as
        NOGROUP, the connection errors of the second attempt)."""
        if not isinstance(self.redis, redis.RedisCluster):
            command: tuple[Any, ...] = ("XACK", stream, GROUP, *ids)
            replies: list[object] = []
            try:  # hiredis' stub types a one-element tuple
                send_packed(self.redis, [(pack_command(command), 1)], None, replies.append)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                replies = []
            if replies:
                if isinstance(replies[0], Exception):
                    raise replies[0]
                return int(cast(int, replies[0]))
        return int(self.redis.xack(stream, GROUP, *ids))

    def outbox_length(self) -> int:
        """Entries in every outbox stream (XLEN of each shard, one pipelined round trip): read or
        not, not yet acknowledged (the drain trims what it acknowledged, :meth:`trim`).  Raises
        redis errors."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.settings.outbox_shards):
            pipe.xlen(outbox_key(shard))
        return sum(int(n) for n in pipe.execute())

    def trim(self, shard: int) -> None:
        """XTRIM MINID to the oldest unacknowledged or undelivered entry of the group.

        The group's last-delivered id is read *before* the pending summary (one pipelined round
        trip, in that order), so an entry delivered in between is either above that id or shows as
        pending: nothing unpersisted is trimmed.
        """
        stream = outbox_key(shard)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, GROUP)
        groups, pending = pipe.execute()
        last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
        if last is None or last == "0-0":
            return
        floor = pending["min"] if pending["pending"] else _next_id(last)
        self.redis.xtrim(stream, minid=floor, approximate=False)

    def drain_shard(self, shard: int, *, max_seconds: float = 30.0, stats: DrainStats | None = None) -> DrainStats:
        """Persist batches of one shard until it is empty or ``max_seconds`` have passed
        (:meth:`drain` of that shard alone)."""
        return self.drain([shard], max_seconds=max_seconds, stats=stats)

    def drain(
        self, shards: Iterable[int] | None = None, *, max_seconds: float = 30.0, stats: DrainStats | None = None
    ) -> DrainStats:
        """Drain the given shards (default: all) until each is empty or ``max_seconds`` have passed.

        First, on every shard (not only the given ones: a drain kicked for one shard must not leave
        this consumer's entries of another waiting), the entries this consumer read before and did
        not acknowledge (:meth:`read_pending`): a failed drain's batch is given back at once, not
        after ``reclaim_idle_ms``.  Then the shards take turns, one batch each (round robin), so a
        long backlog on one shard does not hold the others back; a shard read empty keeps its turn,
        so what reaches it while the others are served waits one turn, not the rest of the drain
        (up to ``max_seconds``: a drain loop's round), and the drain ends once every shard was read
        empty, one after the other.  Consecutive batches of different
        shards form a *group*, persisted in one transaction (group commit): one batch of each shard
        in turn until the group holds ``outbox_group_size`` entries, or ``ceil(outbox_shards /
        persisters)`` shards (so that ``persisters`` groups of different shards can be in flight at
        once), or every shard was read once.
        PostgreSQL's cost per row falls with the rows per transaction (its per-statement and commit
        work is paid once per group, and a wallet gets one debit row per group), and under load the
        groups fill with whatever accumulated while the previous one was persisted.  The next group
        is read from Redis and parsed while earlier ones are persisted, on up to ``persisters``
        helper threads, each group in its own transaction on its own connection.  At most one
        group holding a shard is in flight, so a shard's batches commit one at a time, in the order
        read; groups holding different shards lock shared rows (chats, agents, dirty marks) in one
        fixed order, as concurrent drains of several processes do.  Each batch is acknowledged only
        after its group's commit.  A group that fails for its own reasons is rolled back and its
        batches persisted one by one (:meth:`_drain_batch`: each batch, then its entries one at a
        time, dead-lettering what still fails).  A failure that is not the batch's own
        (:func:`worker.transient.is_transient`) is raised once every group in flight has finished:
        the failed group, and any other that failed or was read meanwhile, stay pending for this
        consumer, read first by its next drain.  Returns the counts (added to ``stats``)."""
        stats = stats or DrainStats()
        deadline = time.monotonic() + max_seconds
        # the shards in turn: a shard read empty keeps its turn (its next turns come while the others
        # are served), and the drain ends once every shard was read empty, one after the other
        rotation = list(shards if shards is not None else range(self.settings.outbox_shards))
        empty_reads = 0  # consecutive reads that found a shard empty
        tidied: set[int] = set()  # the shards read empty once (:meth:`_emptied`'s ``tidy``)
        for shard in range(self.settings.outbox_shards):
            while time.monotonic() < deadline:
                entries = self.read_pending(shard)
                if not entries:
                    break
                self._drain_batch(shard, entries, None, stats, True)

        # at most this many shards to a group, so that ``persisters`` groups of different shards
        # can be in flight at once (one persisted while the next is read and sent)
        shards_per_group = -(-self.settings.outbox_shards // self.persisters)
        # the groups being persisted, oldest first: (future, the entry ids of each of its shards)
        flights: list[tuple[Future[None], dict[int, frozenset[str]]]] = []

        def next_group() -> list[ShardBatch]:
            """One batch of each shard in turn until the group holds ``outbox_group_size`` entries
            or each was read once; a shard read empty is passed over this time and read again at
            its next turn.  Empty when every shard was read empty in a row or the deadline passed."""
            nonlocal empty_reads
            group: list[ShardBatch] = []
            size = 0
            for _ in range(len(rotation)):
                if (
                    empty_reads >= len(rotation)
                    or time.monotonic() >= deadline
                    or size >= self.settings.outbox_group_size
                    or len(group) >= shards_per_group
                ):
                    break
                shard = rotation.pop(0)
                rotation.append(shard)  # its turn again after the others, read empty or not
                in_flight = frozenset().union(*(ids.get(shard, frozenset()) for _f, ids in flights))
                entries, reclaimed = self.read_batch(shard, in_flight=in_flight)
                if not entries:
                    empty_reads += 1
                    self._emptied(shard, tidy=shard not in tidied)
                    tidied.add(shard)
                    continue
                empty_reads = 0
                group.append(ShardBatch(shard, entries, reclaimed, self._parse(shard, entries)))
                size += len(entries)
            return group

        def settle(done: Callable[[], bool]) -> None:
            """Wait for the oldest group in flight until ``done()``; a failure is raised once every
            group in flight has finished (the others' entries stay pending too if they failed)."""
            while flights and not done():
                future = flights.pop(0)[0]
                try:
                    future.result()
                except BaseException:
                    wait([f for f, _ids in flights])
                    flights.clear()
                    raise

        try:
            group = next_group()
            while group:
                shards_read = {batch.shard for batch in group}
                # no shard in two groups in flight (a shard's batches commit in the order read), at
                # most ``persisters`` groups in all; a finished group's failure is raised before
                # another is sent
                settle(lambda: all(shards_read.isdisjoint(ids) for _f, ids in flights))
                settle(lambda: len(flights) < self.persisters)
                settle(lambda: not any(f.done() and f.exception() is not None for f, _ids in flights))
                future = self._executor().submit(self._drain_group, group, stats)
                flights.append((future, {batch.shard: batch.ids for batch in group}))
                group = next_group()
        finally:
            settle(lambda: False)
        return stats

    def _emptied(self, shard: int, *, tidy: bool = True) -> None:
        """A shard read empty: let the next accepted turn kick a new drain at once (unless
        ``rearm_kicks`` is off: a drain loop reads the shard again anyway).  With ``tidy`` (the
        first time a drain reads the shard empty), entries left in the stream were acknowledged by
        a drain stopped before its trim (Redis gone between XACK and XTRIM): trim them now rather
        than when the next turn is drained.  Only once a drain: while a group of the shard is in
        flight its entries are in the stream too, and each look would cost three more round trips
        (XLEN, the pending summary, XTRIM) for entries the group's acknowledgement trims anyway."""
        if self.rearm_kicks:
            self.redis.delete(kick_key(shard))
        if tidy and self.redis.xlen(outbox_key(shard)):
            self.trim(shard)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.persisters, thread_name_prefix="tollgate-drain")
        return self._pool

    @staticmethod
    def _parse(shard: int, entries: list[tuple[str, dict[str, str]]]) -> StagedRows | None:
        """The staged rows of ``entries`` (:func:`worker.ledger.staging.stage_entries`); None when one
        cannot be parsed or holds a value no gate writes (the batch then goes one by one)."""
        try:
            return StagedRows(stage_entries(shard, entries, drain_window()))
        except Exception:
            return None

    def _drain_group(self, group: list[ShardBatch], stats: DrainStats) -> None:
        """Persist a group of batches (of different shards) in one transaction, then acknowledge
        each batch.  A group of one batch, or holding a batch that could not be staged, goes batch
        by batch (:meth:`_drain_batch`); so does a group that fails for its own reasons (rolled
        back first).  A transient failure is raised and acknowledges nothing."""
        if len(group) > 1 and all(batch.rows is not None for batch in group):
            rows = StagedRows([values for batch in group for values in cast(StagedRows, batch.rows).staged])
            try:
                self._persist_rows(rows, stats)
            except Exception as exc:
                if is_transient(exc):
                    raise  # PostgreSQL or Redis unreachable: the group stays pending, nothing is dead-lettered
                log.warning(
                    "outbox shards %s: a group of %d failed (%r); persisting batch by batch",
                    sorted(batch.shard for batch in group),
                    len(rows),
                    exc,
                )
            else:
                for batch in group:
                    self.acknowledge(batch.shard, (entry_id for entry_id, _ in batch.entries))
                    self._count_batch(batch.entries, batch.reclaimed, stats)
                return
        for batch in group:
            self._drain_batch(batch.shard, batch.entries, batch.rows, stats, batch.reclaimed)

    def _drain_batch(
        self,
        shard: int,
        entries: list[tuple[str, dict[str, str]]],
        rows: StagedRows | None,
        stats: DrainStats,
        reclaimed: bool,
    ) -> None:
        """Persist one batch (one by one, dead-lettering, if it fails for its own reasons), then
        acknowledge it.  A transient failure is raised and acknowledges nothing."""
        try:
            self._persist(shard, entries, stats, rows)
        except Exception as exc:
            if is_transient(exc):
                raise  # PostgreSQL or Redis unreachable: the batch stays pending, nothing is dead-lettered
            log.warning("outbox shard %s: a batch of %d failed (%r); persisting one by one", shard, len(entries), exc)
            self._persist_one_by_one(shard, entries, stats)
        self.acknowledge(shard, (entry_id for entry_id, _ in entries))
        self._count_batch(entries, reclaimed, stats)

    @staticmethod
    def _count_batch(entries: list[tuple[str, dict[str, str]]], reclaimed: bool, stats: DrainStats) -> None:
        """Count one acknowledged batch in ``stats``."""
        with _STATS_LOCK:
            stats.read += len(entries)
            stats.batches += 1
            if reclaimed:
                stats.reclaimed += len(entries)

    def _persist(
        self,
        shard: int,
        entries: list[tuple[str, dict[str, str]]],
        stats: DrainStats,
        rows: StagedRows | None = None,
    ) -> None:
        """Persist one shard's batch (``rows``: its staged rows, staged here when None) in one transaction."""
        if rows is None:
            rows = StagedRows(stage_entries(shard, entries, drain_window()))
        self._persist_rows(rows, stats)

    def _persist_rows(self, rows: StagedRows, stats: DrainStats) -> None:
        """Persist staged rows (one batch's or a group's) in one transaction, announce the chats it
        paused or resumed, refund second acceptances in the gate after the commit, and count it.
        Raises what PostgreSQL or Redis raise (nothing is committed then)."""
        with session_scope() as session:
            result = persist_turns(session, rows)
            if result.paused or result.resumed:
                self._announce_paused(session, result)
        for conflict in result.conflicts:  # committed: now give the second debit back in the gate
            log.warning(
                "turn %s was accepted twice by the gate (outbox %s): refunding %s nanos to %s",
                conflict.turn_id,
                conflict.outbox_id,
                conflict.billed_nanos,
                conflict.wallet_id,
            )
            if conflict.billed_nanos:
                self.gate.credit(conflict.wallet_id, conflict.billed_nanos, f"{REFUND_PREFIX}{conflict.outbox_id}")
        with _STATS_LOCK:
            stats.add(result)
            stats.groups += 1
        record_drain_batch(self.redis, size=len(rows), inserted=result.inserted, duplicates=result.duplicates)

    def _persist_one_by_one(self, shard: int, entries: list[tuple[str, dict[str, str]]], stats: DrainStats) -> None:
        """Each entry in its own transaction; one that fails for any non-transient reason is
        dead-lettered.  An entry dead-lettered before (re-delivered after a crash) is left as it
        is: its row and charge were written in one transaction."""
        with session_scope() as session:
            done = deadletter.dead_lettered(session, shard, [entry_id for entry_id, _ in entries])
        for entry in entries:
            if entry[0] in done:
                continue
            try:
                self._persist(shard, [entry], stats)
            except Exception as one:
                if is_transient(one):
                    raise
                self._dead_letter(shard, entry, one, stats)

    def retry_dead_letter(self, outbox_id: str) -> PersistResult:
        """Re-drive one dead letter (``<shard>:<outbox stream id>``) through the persistence path,
        after an operator fixed its cause: its usage event, ledger debit and chat totals in one
        transaction that also cancels its named debt and marks it 'retried'
        (:func:`worker.ledger.deadletter.settle_after_retry`).  Exactly once: the persisted turn and the mark
        commit together, so a second retry (or one racing this) finds no open dead letter.  A turn_id
        persisted from another entry (a second acceptance) is discarded instead: its charge refunded.

        Returns the :class:`PersistResult`.  Raises DeadLetterNotFound; whatever persisting raises
        (the dead letter is then kept, unchanged).
        """
        with session_scope() as session:
            dl = deadletter.find(session, outbox_id)  # locked until this transaction ends
            result = persist_turns(session, [parse_entry(dl.fields, dl.outbox_id)])
            if result.conflicts:
                deadletter.refund_in_ledger(session, dl)
            else:
                deadletter.settle_after_retry(session, dl)
            if result.paused or result.resumed:
                self._announce_paused(session, result)
        if result.conflicts:
            deadletter.refund_in_gate(self.gate, dl)
        deadletter.drop_copy(self.redis, dl)
        return result

    def _announce_paused(self, session: Session, result: PersistResult) -> None:
        """Hand the chats the batch paused and resumed to ``self.announce`` (the entry point's
        wiring: ``chat.paused`` / ``chat.resumable`` after the commit, pub/sub and webhook), inside
        the batch's transaction and a savepoint of it; nothing without one."""
        if self.announce is None:
            return
        try:
            with session.begin_nested():
                self.announce(session, self.gate, result.paused, result.resumed)
        except Exception:  # the pause is committed; the orchestrator also had the 'pause' answer
            log.error("could not announce %d paused chat(s)", len(result.paused), exc_info=True)

    def _dead_letter(self, shard: int, entry: tuple[str, dict[str, str]], exc: Exception, stats: DrainStats) -> None:
        entry_id, fields = entry
        log.error("outbox shard %s entry %s cannot be persisted, dead-lettered: %r", shard, entry_id, exc)
        try:
            with session_scope() as session:  # the row and its named debt in one transaction, then the copy
                new = deadletter.record(session, self.redis, shard, entry_id, fields, exc)
        except Exception as failure:
            if is_transient(failure):
                raise
            log.error(
                "dead letter %s:%s could not be stored in PostgreSQL (%r); Redis holds it", shard, entry_id, failure
            )
            deadletter.keep_copy(self.redis, shard, entry_id, fields, exc)
            new = True
        if new:
            with _STATS_LOCK:
                stats.dead_lettered += 1
            record_dead_letter(self.redis, billed_nanos=deadletter.identity(fields)[2])


def _without(entries: list[tuple[str, dict[str, str]]], ids: frozenset[str]) -> list[tuple[str, dict[str, str]]]:
    return [entry for entry in entries if entry[0] not in ids] if ids else entries


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


#: the longest wait (seconds) of :class:`DrainLoop` between failed rounds
LOOP_MAX_BACKOFF_S = 1.0

#: how long a drain loop's hold on the shards' kick flags lasts (ms), longer than a round (5 s); renewed every
#: third of it.  A loop that died is covered meanwhile by beat's backstop task (every second)
LOOP_KICK_HOLD_MS = 10_000

#: a backlog loop's longest round (seconds): it looks at the outbox's length again after it, and
#: leaves the shards to the first loop once the backlog is gone
BACKLOG_ROUND_S = 1.0


class DrainLoop:
    """A long-lived drain consumer: :meth:`OutboxDrain.drain` of every shard again and again on a
    thread, instead of a task per kick.

    Each round re-reads the consumer's own pending entries, then serves the shards in turn, one
    batch each, until all are empty (batches fill with whatever accumulated while the previous group
    was persisted, up to ``outbox_batch_size``, and consecutive batches are persisted together, up to
    ``outbox_group_size``); then it waits ``drain_idle_ms`` and goes again.  A
    round that fails (PostgreSQL or Redis down) is logged and retried after a back-off of 0.1 s
    doubling to :data:`LOOP_MAX_BACKOFF_S` (1 s: one connection attempt a second while a server is
    down, so the loop is at most a second late once it answers again: issue 16's recovery target is
    5 s); its entries stay pending for this consumer and are read first by the next round.  Started
    in the first ``settings.drain_loops`` pool processes of a Celery worker when
    ``settings.drain_loop`` is on (``tasks.usage``); give it a consumer name of its own (``<consumer_name()>-loop``), so a task
    drain in the same process never re-reads the batch this loop has in flight.

    While it runs, the loop holds every shard's kick flag (``SET … PX`` :data:`LOOP_KICK_HOLD_MS`,
    renewed every third of that) and its drain does not delete a flag when it reads a shard empty
    (``rearm_kicks`` off): the gate then sends no drain task for the turns it records, which the
    task would only discard (it stands aside while a loop serves) after costing the recording
    process a Celery publish each (about 0.25-0.75 ms of CPU).  It holds
    :data:`~worker.gate.keys.DRAIN_LOOP_KEY` the same way, so the drain task stands aside in every
    process while a loop serves (:func:`drain_loop_serves`).  A loop that stops or dies lets the
    flags expire, and kicks come again.

    A *backlog* loop (``backlog`` set: the pool slots after the first ``settings.drain_loops``,
    ``settings.drain_backlog_loops`` of them) drains only while the outbox streams hold at least
    ``backlog`` entries in all (:meth:`OutboxDrain.outbox_length`), in rounds of at most
    :data:`BACKLOG_ROUND_S`, and otherwise looks again after ``idle_ms``: a second consumer when
    the first falls behind (an outage, a stall, a burst), none when one keeps up.  It always runs
    its first round and the round after a failed one, whatever the length: entries its consumer
    read and did not acknowledge (its slot's predecessor's, a failed round's) are read first by a
    round, and must not wait for the next backlog.

    Args:
        drain: the :class:`OutboxDrain` it runs (its consumer, settings, gate and announce).
        idle_ms: wait after a round that found nothing (default ``settings.drain_idle_ms``).
        round_s: longest round (seconds) before the pending entries are looked at again
            (a backlog loop's: at most :data:`BACKLOG_ROUND_S`).
        backlog: None for a loop that always drains; else the outbox length (entries, every
            shard) from which this loop drains (``settings.drain_backlog_entries``).
    """

    def __init__(
        self, drain: OutboxDrain, *, idle_ms: int | None = None, round_s: float = 5.0, backlog: int | None = None
    ) -> None:
        self.drain = drain
        drain.rearm_kicks = False  # the loop holds the kick flags (class doc)
        self._held_until = 0.0  # monotonic time before which the kick flags need no renewal
        self.idle_s = (idle_ms if idle_ms is not None else drain.settings.drain_idle_ms) / 1000
        self.backlog = backlog
        self.round_s = round_s if backlog is None else min(round_s, BACKLOG_ROUND_S)
        self.stats = DrainStats()
        self._owes_round = True  # a round before the next look at the length (class doc)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def behind(self) -> bool:
        """Whether this loop drains its next round: always for a loop without ``backlog``, and for
        one owing a round (its first, or the one after a failure); else whether the outbox holds at
        least ``backlog`` entries.  Raises redis errors."""
        if self.backlog is None or self._owes_round:
            return True
        return self.drain.outbox_length() >= self.backlog

    def run(self) -> None:
        """Drain until :meth:`stop` (the thread's body; callable in the foreground too)."""
        backoff = 0.1
        while not self._stop.is_set():
            read_before = self.stats.read
            try:
                self.hold_kicks()
                if not self.behind():
                    self._stop.wait(self.idle_s)
                    continue
                self._owes_round = True  # until this round ends well
                self.drain.drain(max_seconds=self.round_s, stats=self.stats)
                self._owes_round = False
            except Exception:
                log.warning(
                    "drain loop %s: a round failed; again in %.1f s", self.drain.consumer, backoff, exc_info=True
                )
                self._stop.wait(backoff)
                backoff = min(LOOP_MAX_BACKOFF_S, backoff * 2)
                continue
            backoff = 0.1
            if self.stats.read == read_before:
                self._stop.wait(self.idle_s)

    def hold_kicks(self) -> None:
        """Set every shard's kick flag and :data:`~worker.gate.keys.DRAIN_LOOP_KEY` (a loop runs:
        :func:`drain_loop_serves`) for :data:`LOOP_KICK_HOLD_MS` (one pipelined round trip), unless
        the last hold has more than two thirds of it left.  Raises redis errors."""
        now = time.monotonic()
        if now < self._held_until:
            return
        pipe = self.drain.redis.pipeline(transaction=False)
        for shard in range(self.drain.settings.outbox_shards):
            pipe.set(kick_key(shard), "1", px=LOOP_KICK_HOLD_MS)
        pipe.set(DRAIN_LOOP_KEY, self.drain.consumer, px=LOOP_KICK_HOLD_MS)
        pipe.execute()
        self._held_until = now + LOOP_KICK_HOLD_MS / 3000

    def start(self) -> threading.Thread:
        """Run :meth:`run` on a daemon thread (``tollgate-drain-loop``); returns it.

        First moves every object the process holds out of the cyclic collector's sight
        (``gc.freeze()``): what the imports and the worker made before the loop (about 140,000
        objects in a Celery worker process) lives as long as the process, and each batch keeps
        thousands of containers (its entries, staged rows, replies) alive across collections, which
        promotes them to the oldest generation: a full collection then ran about every five
        batches, walking the whole heap, about 5 µs of CPU per drained row (benchmarks/RESULTS.md).
        After the freeze a full collection walks only what the batches left behind."""
        gc.freeze()
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="tollgate-drain-loop", daemon=True)
        self._thread.start()
        return self._thread

    def alive(self) -> bool:
        """Whether the loop's thread is running (started and not stopped)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the loop to stop after its current batch and wait up to ``timeout`` seconds for it;
        then, if it stopped, take :data:`~worker.gate.keys.DRAIN_LOOP_KEY` away when this loop set it
        last (drain tasks serve again at once rather than when the key lapses; another loop renews
        it within a third of :data:`LOOP_KICK_HOLD_MS`).  Redis errors then are logged, not raised."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return
        try:
            if self.drain.redis.get(DRAIN_LOOP_KEY) == self.drain.consumer:
                self.drain.redis.delete(DRAIN_LOOP_KEY)
        except redis.RedisError:
            log.warning("drain loop %s: could not clear %s", self.drain.consumer, DRAIN_LOOP_KEY, exc_info=True)


def drain_loop_serves(client: redis.Redis) -> bool:
    """Whether a drain loop runs on this Redis, in any process (:data:`~worker.gate.keys.DRAIN_LOOP_KEY`,
    held by :meth:`DrainLoop.hold_kicks`; it lapses :data:`LOOP_KICK_HOLD_MS` after the last loop
    stopped or died).  Every loop serves every shard.  Raises redis errors."""
    return bool(client.exists(DRAIN_LOOP_KEY))
