"""Worker-side metrics, kept in Redis so the API process can expose them on ``/metrics``.

Celery workers are other processes (prefork children, often other hosts) than the API that
Prometheus scrapes, so counters kept in their memory would never be seen.  prometheus-client's
multiprocess mode only works for processes sharing one directory on one host and needs cleanup of
dead pids; instead each drained batch adds to one Redis hash with ``HINCRBY`` (atomic, 64-bit,
shared by every worker on every host, surviving worker restarts), and the API reads it at scrape
time.  Counters live as long as Redis does (they reset with a Redis loss, which Prometheus treats as
a counter reset).

Hash ``tollgate:metrics:drain`` (fields are integer counters)::

    batches              persisted batches (each batch of the drain; a failed batch retried one by one counts each entry)
    batch_size_sum       outbox entries in those batches
    batch_size_le:<b>    batches of at most b entries (b in BATCH_SIZE_BUCKETS, not cumulative)
    persisted_turns      usage events inserted
    duplicate_turns      re-deliveries dropped (turn_id already persisted)
    dead_lettered_turns  outbox entries dead-lettered (:mod:`worker.ledger.deadletter`)
    dead_lettered_nanos  their billed nanos

Outbox length and lag (age of the oldest entry not yet persisted) are read from the streams
themselves at scrape time (:func:`outbox_lag_seconds`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from worker.gate.keys import DRAIN_METRICS_KEY

log = logging.getLogger(__name__)

DRAIN_KEY = DRAIN_METRICS_KEY
#: upper bounds of the drain batch-size histogram (entries per batch)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _bucket(size: int) -> str:
    for bound in BATCH_SIZE_BUCKETS:
        if size <= bound:
            return f"batch_size_le:{bound}"
    return "batch_size_le:+Inf"


def record_drain_batch(client: redis.Redis, *, size: int, inserted: int, duplicates: int) -> None:
    """Count one persisted batch of ``size`` outbox entries (``inserted`` new usage events,
    ``duplicates`` dropped re-deliveries): one pipelined round trip.  Never raises: a metrics
    failure must not fail a drain whose rows are committed (it is logged)."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(DRAIN_KEY, "batches", 1)
        pipe.hincrby(DRAIN_KEY, "batch_size_sum", size)
        pipe.hincrby(DRAIN_KEY, _bucket(size), 1)
        pipe.hincrby(DRAIN_KEY, "persisted_turns", inserted)
        pipe.hincrby(DRAIN_KEY, "duplicate_turns", duplicates)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not record drain metrics", exc_info=True)


def record_dead_letter(client: redis.Redis, *, billed_nanos: int) -> None:
    """Count one dead-lettered outbox entry and its billed nanos.  Never raises (logged)."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(DRAIN_KEY, "dead_lettered_turns", 1)
        pipe.hincrby(DRAIN_KEY, "dead_lettered_nanos", billed_nanos)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not record dead-letter metrics", exc_info=True)


def drain_counters(client: redis.Redis) -> dict[str, Any]:
    """The drain counters: ``{"batches", "batch_size_sum", "persisted_turns", "duplicate_turns",
    "dead_lettered_turns", "dead_lettered_nanos": int, "buckets": [(upper bound as str, cumulative
    count)] ending with "+Inf"}``."""
    raw = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(DRAIN_KEY).items()}

    def num(field: str) -> int:
        return raw.get(field, 0)

    cumulative, buckets = 0, []
    for bound in (*BATCH_SIZE_BUCKETS, "+Inf"):
        cumulative += num(f"batch_size_le:{bound}")
        buckets.append((str(bound), cumulative))
    return {
        "batches": num("batches"),
        "batch_size_sum": num("batch_size_sum"),
        "persisted_turns": num("persisted_turns"),
        "duplicate_turns": num("duplicate_turns"),
        "dead_lettered_turns": num("dead_lettered_turns"),
        "dead_lettered_nanos": num("dead_lettered_nanos"),
        "buckets": buckets,
    }


def outbox_lag_seconds(client: redis.Redis, stream: str, group: str, *, now_ms: int | None = None) -> float:
    """Age in seconds of the oldest entry of ``stream`` not yet persisted: the oldest entry pending
    in ``group`` (read, not acknowledged) or, if none, the first entry the group has not read yet.
    0.0 when everything is persisted (or the stream does not exist).  The age comes from
    the entry id's millisecond timestamp (the Redis clock when the gate appended it)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    oldest: bytes | str | None = None  # entry ids: str with decode_responses=True, bytes without
    try:
        pending = client.xpending(stream, group)
        if pending and pending.get("pending"):
            oldest = pending["min"]
        else:
            groups = {g["name"]: g for g in client.xinfo_groups(stream)}
            last = groups[group]["last-delivered-id"] if group in groups else "0-0"
            after = client.xrange(stream, min=f"({last}", count=1)
            oldest = after[0][0] if after else None
    except redis.ResponseError:  # no group yet (never drained): every entry is unread
        first = client.xrange(stream, count=1)
        oldest = first[0][0] if first else None
    if oldest is None:
        return 0.0
    if isinstance(oldest, bytes):
        oldest = oldest.decode()
    return max(0.0, (now_ms - int(oldest.split("-", 1)[0])) / 1000.0)
