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

import atexit
import logging
import os
import threading
import time
from typing import Any

import redis

from worker.gate.keys import DECISION_METRICS_KEY, DRAIN_METRICS_KEY, GATE_LATENCY_METRICS_KEY

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


# gate decisions ---------------------------------------------------------------------------------
#: seconds a process keeps decisions before adding them to Redis (a scrape of the web process
#: flushes its own first; other processes' decisions show within this delay)
DECISION_FLUSH_S = 1.0
OUTCOMES = ("accepted", "denied", "duplicate")


class RedisCounts:
    """Integer counters of this process added to one Redis hash, ``key`` (``HINCRBY``), shared by
    every process on every host, which ``/metrics`` reads: the reason of the drain counters above
    (prometheus-client's multiprocess mode needs one shared directory on one host).  Counting is in
    memory, no round trip per event: the counts are flushed by a timer ``flush_s`` seconds after the
    first unflushed count, at exit, and by the web process before each scrape; a process killed with
    SIGKILL loses at most that last second of counts.  A forked child drops what it inherited (its
    parent flushes that).  ``TOLLGATE_DECISION_METRICS=0`` turns counting off (the test suite does:
    its tests compare whole Redis states, which a counter flushed a second later would change)."""

    def __init__(self, key: str, flush_s: float = DECISION_FLUSH_S) -> None:
        self.key = key
        self.flush_s = flush_s
        self.enabled = os.environ.get("TOLLGATE_DECISION_METRICS", "1") != "0"
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._client: redis.Redis | redis.RedisCluster | None = None
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()
        atexit.register(self.flush)

    def add_counts(self, client: redis.Redis | redis.RedisCluster, counts: dict[str, int]) -> None:
        """Add ``counts`` (hash field → integer to add) to the pending counts, to be flushed
        through ``client`` (a blocking client: the timer thread has no event loop); never raises."""
        if not self.enabled:
            return
        with self._lock:
            self._fresh()
            for field, n in counts.items():
                self._pending[field] = self._pending.get(field, 0) + n
            self._armed(client)

    def _fresh(self) -> None:
        """(Lock held.)  Forked: the parent's counts are the parent's to flush."""
        if self._pid != os.getpid():
            self._pid, self._pending, self._timer = os.getpid(), {}, None

    def _armed(self, client: redis.Redis | redis.RedisCluster) -> None:
        """(Lock held.)  Remember ``client`` and start the flush timer if none runs."""
        self._client = client
        if self._timer is None:
            self._timer = threading.Timer(self.flush_s, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Add the pending counts to Redis now (one pipelined round trip); on a Redis error they
        are kept for the next flush (logged).  Never raises."""
        with self._lock:
            if self._pid != os.getpid():
                return
            pending, client = self._pending, self._client
            self._pending, self._timer = {}, None
        if client is None or not any(pending.values()):
            return
        try:
            pipe = client.pipeline(transaction=False)
            for field, n in pending.items():
                if n:
                    pipe.hincrby(self.key, field, n)
            pipe.execute()
        except redis.RedisError:
            log.warning("metrics of %s not recorded (kept for the next flush)", self.key, exc_info=True)
            with self._lock:
                for field, n in pending.items():
                    self._pending[field] = self._pending.get(field, 0) + n

    def read(self, client: redis.Redis | redis.RedisCluster) -> dict[str, int]:
        """Every process's counts (this one's flushed first): hash field → integer."""
        self.flush()
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(self.key).items()}


class DecisionCounter(RedisCounts):
    """Gate decisions by outcome, counted in the process that made them (the web API, Celery's
    ``record_turn`` task, replays, in-process clients) and added to one Redis hash,
    ``tollgate:metrics:decisions`` (fields :data:`OUTCOMES`), which ``/metrics`` reads
    (:class:`RedisCounts`: flushed within :data:`DECISION_FLUSH_S` seconds)."""

    def __init__(self, flush_s: float = DECISION_FLUSH_S) -> None:
        super().__init__(DECISION_METRICS_KEY, flush_s)

    def add(self, client: redis.Redis | redis.RedisCluster, decisions) -> None:
        """Count ``decisions`` (``models.turn.Decision``; None entries, turns not applied, are
        skipped) made through ``client``'s Redis; never raises."""
        if not self.enabled:
            return
        counts = dict.fromkeys(OUTCOMES, 0)
        for d in decisions:
            if d is not None:
                counts["duplicate" if d.duplicate else "accepted" if d.accepted else "denied"] += 1
        self.add_counts(client, counts)


class LatencyHistogram(RedisCounts):
    """A Prometheus histogram of durations that every process adds to (one Redis hash ``key``,
    :class:`RedisCounts`), so ``/metrics`` shows one histogram whichever of the web server's
    processes answers the scrape.  Fields: ``count``, ``sum_us`` (integer microseconds: ``HINCRBY``
    stays exact) and ``le:<bound>`` (observations in that bucket, not cumulative; ``le:+Inf``
    above the last bound).

    Args:
        key: the Redis hash.
        buckets: upper bounds in seconds, increasing.
    """

    def __init__(self, key: str, buckets: tuple[float, ...], flush_s: float = DECISION_FLUSH_S) -> None:
        super().__init__(key, flush_s)
        self.buckets = buckets
        self._fields = [f"le:{bound:g}" for bound in buckets]

    def observe(self, client: redis.Redis | redis.RedisCluster, seconds: float) -> None:
        """Count one duration of ``seconds``, to be flushed through ``client``; never raises."""
        if not self.enabled:
            return
        field = next((f for bound, f in zip(self.buckets, self._fields) if seconds <= bound), "le:+Inf")
        with self._lock:
            self._fresh()
            pending = self._pending
            pending[field] = pending.get(field, 0) + 1
            pending["count"] = pending.get("count", 0) + 1
            pending["sum_us"] = pending.get("sum_us", 0) + round(seconds * 1e6)
            self._armed(client)

    def figures(self, client: redis.Redis | redis.RedisCluster) -> tuple[list[tuple[str, int]], float]:
        """Every process's histogram (this one's flushed first): ``([(upper bound as str,
        cumulative count)] ending with "+Inf", sum in seconds)``."""
        raw = self.read(client)
        cumulative, buckets = 0, []
        for bound, field in (*zip(self.buckets, self._fields), (float("inf"), "le:+Inf")):
            cumulative += raw.get(field, 0)
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        return buckets, raw.get("sum_us", 0) / 1e6


#: this process's counter (the gate adds to it, ``/metrics`` flushes it)
decision_counter = DecisionCounter()

#: upper bounds (seconds) of ``tollgate_gate_seconds``
GATE_SECONDS_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: this process's part of ``tollgate_gate_seconds`` (the API's turn routes observe it, ``/metrics``
#: flushes and reads it): time to price and record turns through the gate, per request
gate_seconds = LatencyHistogram(GATE_LATENCY_METRICS_KEY, GATE_SECONDS_BUCKETS)


def decision_counts(client: redis.Redis) -> dict[str, int]:
    """Every process's gate decisions so far: ``{outcome: count}`` for each of :data:`OUTCOMES`."""
    raw = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(DECISION_METRICS_KEY).items()}
    return {outcome: raw.get(outcome, 0) for outcome in OUTCOMES}
