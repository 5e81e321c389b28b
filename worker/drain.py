"""The outbox drain: read accepted turns from the Redis outbox streams with a consumer group, persist
them to PostgreSQL in one transaction per batch, then acknowledge.

Order per batch (DESIGN.md, the hot path)::

    XAUTOCLAIM (a dead consumer's entries idle > reclaim_idle_ms) or XREADGROUP '>' up to N entries
    → persist_turns (INSERT … ON CONFLICT (turn_id) DO NOTHING, aggregates for inserted rows) → COMMIT
    → XACK → XTRIM MINID (only what the group has acknowledged)

A crash before COMMIT leaves the entries pending: they are reclaimed and persisted.  A crash after
COMMIT and before XACK re-delivers them: the unique ``turn_id`` drops the duplicates.  The outbox is
never trimmed by length.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Iterable

import redis

from worker.db import session_scope
from worker.ledger import persist_turns
from worker.settings import Settings, get_settings
from worker.wallet import kick_key, outbox_key

GROUP = "tollgate-drain"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def consumer_name() -> str:
    """This process's consumer name in the outbox group: ``<host>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_entry(fields: dict[str, str]) -> dict[str, Any]:
    """An outbox entry (fields ``t`` payload, ``b`` billed, ``a`` action, ``m`` mode, ``bal``) → a
    ``usage_event`` row (keys of :data:`worker.ledger.USAGE_COLUMNS`)."""
    (
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
    ) = json.loads(fields["t"])
    bal = fields.get("bal", "")
    return {
        "turn_id": turn_id,
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
        "billed_nanos": int(fields["b"]),
        "action": fields["a"],
        "mode": fields["m"],
        "balance_after_nanos": int(bal) if bal else None,
    }


@dataclass
class DrainStats:
    """What a drain did: entries read, rows inserted, re-deliveries dropped, batches, entries reclaimed."""

    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    batches: int = 0
    reclaimed: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """Counts as a plain dict (Celery result)."""
        return {k: v for k, v in self.__dict__.items() if k != "batch_sizes"}


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
        self.redis = client or redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        self.consumer = consumer or consumer_name()
        self._groups: set[str] = set()

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
        _next, claimed, _deleted = self.redis.xautoclaim(
            stream, GROUP, self.consumer, self.settings.reclaim_idle_ms, start_id="0-0", count=count
        )
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
                # empty: let the next accepted turn kick a new drain at once
                self.redis.delete(kick_key(shard))
                break
            rows = [parse_entry(fields) for _id, fields in entries]
            with session_scope() as session:
                result = persist_turns(session, rows)
            self.acknowledge(shard, (entry_id for entry_id, _ in entries))
            stats.read += len(entries)
            stats.inserted += result.inserted
            stats.duplicates += result.duplicates
            stats.batches += 1
            stats.batch_sizes.append(len(entries))
            if reclaimed:
                stats.reclaimed += len(entries)
        return stats

    def forget_idle_consumers(self, shard: int, *, idle_ms: int = 3_600_000) -> int:
        """Remove consumers of the group that hold no pending entry and were idle for ``idle_ms``
        (workers that restarted under a new name); returns how many were removed."""
        stream = outbox_key(shard)
        self.ensure_group(stream)
        removed = 0
        for c in self.redis.xinfo_consumers(stream, GROUP):
            if c["pending"] == 0 and c["idle"] >= idle_ms and c["name"] != self.consumer:
                self.redis.xgroup_delconsumer(stream, GROUP, c["name"])
                removed += 1
        return removed

    def drain(self, shards: Iterable[int] | None = None, *, max_seconds: float = 30.0) -> DrainStats:
        """Drain the given shards (default: all), sharing one time budget."""
        stats = DrainStats()
        deadline = time.monotonic() + max_seconds
        for shard in shards if shards is not None else range(self.settings.outbox_shards):
            self.drain_shard(shard, max_seconds=max(0.0, deadline - time.monotonic()), stats=stats)
        return stats

    def backlog(self) -> int:
        """Entries in all outbox streams not yet trimmed (persisted-and-acked entries are trimmed)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.settings.outbox_shards):
            pipe.xlen(outbox_key(shard))
        return sum(pipe.execute())


def _next_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"
