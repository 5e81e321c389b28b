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
An entry that cannot be written at all (a bad payload, a constraint) goes to the shard's dead-letter
stream ``tollgate:{sN}:deadletter`` with the error, so it never blocks the turns behind it.  The
outbox is never trimmed by length.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Iterable

import redis
from sqlalchemy.exc import DataError, IntegrityError

from worker.db import session_scope
from worker.ledger import PersistResult, persist_turns
from worker.metrics import record_drain_batch
from worker.settings import Settings, get_settings, redis_client
from worker.wallet import PAYLOAD_VERSION, WalletGate, kick_key, outbox_key, shard_tag

GROUP = "tollgate-drain"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger(__name__)


class BadEntry(ValueError):
    """An outbox entry that cannot be parsed (unknown payload version, missing field)."""


def deadletter_key(shard: int) -> str:
    """The dead-letter stream of one shard: entries that could not be persisted, with the error."""
    return f"{shard_tag(shard)}:deadletter"


def consumer_name() -> str:
    """This process's consumer name in the outbox group: ``<host>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_entry(fields: dict[str, str], outbox_id: str = "") -> dict[str, Any]:
    """An outbox entry (fields ``t`` payload, ``b`` billed, ``a`` action, ``m`` mode, ``bal``) → a
    ``usage_event`` row (keys of :data:`worker.ledger.USAGE_COLUMNS`).  ``outbox_id`` is
    ``<shard>:<stream id>``.  Raises :class:`BadEntry`."""
    try:
        payload = json.loads(fields["t"])
        if payload[0] == 1:  # queued before meters existed: an LLM turn
            payload = [*payload, "llm", 0, 0, 0]
        elif payload[0] == 2:  # queued before cache writes were priced
            payload = [*payload, 0, 0]
        elif payload[0] != PAYLOAD_VERSION:
            raise BadEntry(f"outbox payload version {payload[0]!r}, expected 1..{PAYLOAD_VERSION}")
        (
            _version,
            turn_id,
            wallet_id,
            enterprise_id,
            chat_id,
            workflow,
            agent,
            model,
            provider,
            prompt,
            completion,
            cached,
            duration_ms,
            input_rate,
            cached_rate,
            output_rate,
            cost,
            ts,
            meter,
            quantity,
            cache_write,
            cache_write_rate,
        ) = payload
        bal = fields.get("bal", "")
        billed = int(fields["b"])
        level = fields.get("lv", "app_usage")
        if level == "platform":  # level 1: the platform bills the app creator; all of it is the platform's
            target, creator_share = "platform", 0
        else:  # level 2: the app bills its end user; the creator's share in whole nanos, rounded down
            target, creator_share = enterprise_id, billed * int(fields.get("sb", "0")) // 10_000
        return {
            "turn_id": turn_id,
            "outbox_id": outbox_id,
            "wallet_id": wallet_id,
            "enterprise_id": enterprise_id,
            "chat_id": chat_id,
            "workflow": workflow,
            "agent": agent,
            "model": model,
            "provider": provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_prompt_tokens": cached,
            "duration_ms": duration_ms,
            "input_nanos_per_mtok": input_rate,
            "cached_input_nanos_per_mtok": cached_rate,
            "output_nanos_per_mtok": output_rate,
            "cost_nanos": cost,
            "occurred_at": _EPOCH + timedelta(microseconds=ts),
            "billed_nanos": billed,
            "action": fields["a"],
            "mode": fields["m"],
            "balance_after_nanos": int(bal) if bal else None,
            "level": level,
            "billing_target": target,
            "billable": fields.get("bl", "1" if billed else "0") == "1",
            "creator_share_nanos": creator_share,
            "platform_fee_nanos": billed - creator_share,
            "trial_tokens": int(fields.get("tt", "0")),
            "meter": meter,
            "quantity": quantity,
            "cache_write_tokens": cache_write,
            "cache_write_nanos_per_mtok": cache_write_rate,
            "debt_nanos": int(fields.get("d", "0")),  # entries queued before debts carry none
        }
    except BadEntry:
        raise
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise BadEntry(f"malformed outbox entry: {exc!r}") from exc


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


class OutboxDrain:
    """Drains outbox shards into PostgreSQL.

    Args:
        client: redis-py client with ``decode_responses=True`` (defaults to ``settings.redis_url``).
        settings: defaults to :func:`worker.settings.get_settings`.
        consumer: consumer name in the group (defaults to :func:`consumer_name`).
    """

    def __init__(
        self, client: redis.Redis | None = None, *, settings: Settings | None = None, consumer: str | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.redis = client or redis_client(self.settings)
        self.consumer = consumer or consumer_name()
        self._groups: set[str] = set()
        self._gate: WalletGate | None = None

    @property
    def gate(self) -> WalletGate:
        """The gate, for refunds of second acceptances (created on first use)."""
        if self._gate is None:
            self._gate = WalletGate(self.redis, settings=self.settings, kicker=lambda shard: None)
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
        if claimed:
            return claimed, True
        reply = self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count)
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
            except (BadEntry, DataError, IntegrityError) as exc:
                log.warning("outbox shard %s: a batch of %d failed (%s); persisting one by one", shard, len(entries), exc)
                for entry in entries:
                    try:
                        self._persist(shard, [entry], stats)
                    except (BadEntry, DataError, IntegrityError) as one:
                        self._dead_letter(shard, entry, one, stats)
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
        for conflict in result.conflicts:  # committed: now give the second debit back in the gate
            log.warning("turn %s was accepted twice by the gate (outbox %s): refunding %s nanos to %s",
                        conflict.turn_id, conflict.outbox_id, conflict.billed_nanos, conflict.wallet_id)
            if conflict.billed_nanos:
                self.gate.credit(conflict.wallet_id, conflict.billed_nanos, f"tollgate:refund:{conflict.outbox_id}")
        if result.paused:
            self._announce_paused(result.paused)
        stats.add(result)
        record_drain_batch(self.redis, size=len(entries), inserted=result.inserted, duplicates=result.duplicates)

    def _announce_paused(self, paused) -> None:
        """``chat.paused`` for each chat the batch paused (committed), pub/sub and webhook."""
        from worker.sessions import _hooked, announce
        from worker.webhooks import Event

        try:
            with session_scope() as session:
                hooked = _hooked(session, {p.enterprise_id for p in paused})
            announce(self.gate, [Event.new("chat.paused", p.enterprise_id, {
                "chat_id": p.chat_id, "wallet_id": p.wallet_id, "reason": p.reason, "needed_nanos": p.needed_nanos,
            }) for p in paused], hooked)
        except Exception:  # the pause is committed; the orchestrator also had the 'pause' answer
            log.error("could not announce %d paused chat(s)", len(paused), exc_info=True)

    def _dead_letter(self, shard: int, entry: tuple[str, dict[str, str]], exc: Exception, stats: DrainStats) -> None:
        entry_id, fields = entry
        log.error("outbox shard %s entry %s cannot be persisted, dead-lettered: %s", shard, entry_id, exc)
        self.redis.xadd(deadletter_key(shard), {**fields, "outbox_id": entry_id, "error": str(exc)[:2000]})
        stats.dead_lettered += 1

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
