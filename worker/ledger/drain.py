"""The outbox drain: read accepted turns from the Redis outbox streams with a consumer group, persist
them to PostgreSQL in one transaction per batch, then acknowledge.

Order per batch (DESIGN.md, the hot path)::

    XAUTOCLAIM (a dead consumer's entries idle > reclaim_idle_ms) or XREADGROUP '>' up to N entries
    → persist_turns (INSERT … ON CONFLICT (enterprise_id, wallet_id, turn_id) DO NOTHING, aggregates
      for inserted rows) → COMMIT
    → refund second acceptances in the gate → XACK → XTRIM MINID (only what the group acknowledged)

A crash before COMMIT leaves the entries pending: they are reclaimed and persisted.  A crash after
COMMIT and before XACK re-delivers them: the unique ``turn_id`` drops the duplicates (same outbox
entry id).  A turn_id the gate accepted twice (its dedupe key expired, or Redis lost it) arrives as a
*different* outbox entry: its debit is refunded in the gate, so Redis keeps agreeing with the ledger.
A batch that fails for any reason other than PostgreSQL or Redis being unreachable
(:func:`worker.transient.is_transient`) is rolled back and persisted entry by entry, each in its
own transaction; an entry that still fails, whatever the exception, is dead-lettered (a
``dead_letter`` row with its error and its charge named in the ledger, one transaction; a copy in
``tollgate:{sN}:deadletter``; :mod:`worker.ledger.deadletter`), so it never blocks the turns behind it.  A transient failure
dead-letters nothing: the batch stays pending and is read again.  The outbox is never trimmed by
length.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, cast

import redis
from sqlmodel import Session

from worker.db import session_scope
from worker.gate.gate import WalletGate, process_gate
from worker.gate.keys import REFUND_PREFIX, kick_key, outbox_key
from worker.gate.outbox import parse_entry
from worker.ledger import deadletter
from worker.ledger.turns import PersistResult, persist_turns
from worker.metrics import record_dead_letter, record_drain_batch
from worker.settings import Settings, get_settings, redis_client
from worker.transient import is_transient

GROUP = "tollgate-drain"
log = logging.getLogger(__name__)


def consumer_name() -> str:
    """This process's consumer name in the outbox group: ``<host>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class DrainStats:
    """What a drain did: entries read, rows inserted, re-deliveries dropped, second acceptances
    refunded in the gate, entries dead-lettered, batches, entries reclaimed from dead consumers."""

    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    refunded: int = 0
    dead_lettered: int = 0
    batches: int = 0
    reclaimed: int = 0

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
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        settings: Settings | None = None,
        consumer: str | None = None,
        announce: Announce | None = None,
        gate: WalletGate | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.announce = announce
        self.redis = client or redis_client(self.settings)
        self.consumer = consumer or consumer_name()
        self._groups: set[str] = set()
        self._own_redis = client is None and settings is None
        self._gate: WalletGate | None = gate

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

    def read_batch(self, shard: int) -> tuple[list[tuple[str, dict[str, str]]], bool]:
        """Up to ``outbox_batch_size`` entries of one shard: a dead consumer's first, then new ones.

        Returns ``(entries, reclaimed)``.  Entries trimmed away while pending (never, by our trim
        rule) are skipped by XAUTOCLAIM.
        """
        stream = outbox_key(shard)
        self.ensure_group(stream)
        count = self.settings.outbox_batch_size
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
            return self.read_batch(shard)
        except UnicodeDecodeError:  # another writer's bytes that are not UTF-8: now ours, pending
            return deadletter.read_own_pending(self.redis, stream, GROUP, self.consumer, count), True
        if claimed:
            return claimed, True
        try:
            # RESP2 with decode_responses=True: [[stream, [(id, {field: value}), ...]]]
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count),
            )
        except UnicodeDecodeError:  # delivered to us before decoding failed: read them back tolerantly
            return deadletter.read_own_pending(self.redis, stream, GROUP, self.consumer, count), False
        if not reply:
            return [], False
        return reply[0][1], False

    def acknowledge(self, shard: int, ids: Iterable[str]) -> None:
        """XACK ``ids``, then trim the stream below the oldest entry the group still needs."""
        stream = outbox_key(shard)
        ids = list(ids)
        if ids:
            self.redis.xack(stream, GROUP, *ids)
        self.trim(shard)

    def trim(self, shard: int) -> None:
        """XTRIM MINID to the oldest unacknowledged or undelivered entry of the group.

        The group's last-delivered id is read *before* the pending summary, so an entry delivered in
        between is either above that id or shows as pending: nothing unpersisted is trimmed.
        """
        stream = outbox_key(shard)
        groups = self.redis.xinfo_groups(stream)
        last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
        if last is None or last == "0-0":
            return
        pending = self.redis.xpending(stream, GROUP)
        floor = pending["min"] if pending["pending"] else _next_id(last)
        self.redis.xtrim(stream, minid=floor, approximate=False)

    def drain_shard(self, shard: int, *, max_seconds: float = 30.0, stats: DrainStats | None = None) -> DrainStats:
        """Persist batches of one shard until it is empty or ``max_seconds`` have passed."""
        stats = stats or DrainStats()
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            entries, reclaimed = self.read_batch(shard)
            if not entries:
                # empty: let the next accepted turn kick a new drain at once; entries left in the
                # stream were acknowledged by a drain stopped before its trim (Redis gone between
                # XACK and XTRIM): trim them now rather than when the next turn is drained
                self.redis.delete(kick_key(shard))
                if self.redis.xlen(outbox_key(shard)):
                    self.trim(shard)
                break
            try:
                self._persist(shard, entries, stats)
            except Exception as exc:
                if is_transient(exc):
                    raise  # PostgreSQL or Redis unreachable: the batch stays pending, nothing is dead-lettered
                log.warning(
                    "outbox shard %s: a batch of %d failed (%r); persisting one by one", shard, len(entries), exc
                )
                self._persist_one_by_one(shard, entries, stats)
            self.acknowledge(shard, (entry_id for entry_id, _ in entries))
            stats.read += len(entries)
            stats.batches += 1
            if reclaimed:
                stats.reclaimed += len(entries)
        return stats

    def _persist(self, shard: int, entries: list[tuple[str, dict[str, str]]], stats: DrainStats) -> None:
        rows = [parse_entry(fields, f"{shard}:{entry_id}") for entry_id, fields in entries]
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
        stats.add(result)
        record_drain_batch(self.redis, size=len(entries), inserted=result.inserted, duplicates=result.duplicates)

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
            stats.dead_lettered += 1
            record_dead_letter(self.redis, billed_nanos=deadletter.identity(fields)[2])

    def drain(self, shards: Iterable[int] | None = None, *, max_seconds: float = 30.0) -> DrainStats:
        """Drain the given shards (default: all), sharing one time budget."""
        stats = DrainStats()
        deadline = time.monotonic() + max_seconds
        for shard in shards if shards is not None else range(self.settings.outbox_shards):
            self.drain_shard(shard, max_seconds=max(0.0, deadline - time.monotonic()), stats=stats)
        return stats


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"
