"""Metrics of other processes, exposed on the API's ``/metrics`` at scrape time.

The Celery workers count drained batches and persisted turns in Redis (``worker.metrics``: one
hash shared by every worker on every host); this collector reads it, and each outbox stream's lag
(age of the oldest entry not yet persisted), when Prometheus scrapes the API.  Registered once in
the default registry when this module is imported (``api_stub.routes.metrics`` does).
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy.exc import SQLAlchemyError

from api_stub.deps import get_gate
from worker.db import session_scope
from worker.gate.keys import outbox_key
from worker.ledger.deadletter import list_dead_letters, summary
from worker.ledger.drain import GROUP
from worker.metrics import decision_counter, decision_counts, drain_counters, gate_seconds, outbox_lag_seconds
from worker.settings import get_settings

log = logging.getLogger(__name__)


class WorkerMetrics:
    """A Prometheus collector: ``tollgate_gate_seconds`` (histogram, the API's turn requests of
    every web process: :data:`worker.metrics.gate_seconds`), ``tollgate_drain_batch_size`` (histogram, entries per batch),
    ``tollgate_persisted_turns_total``, ``tollgate_duplicate_turns_total`` (counters) and
    ``tollgate_outbox_lag_seconds{shard}`` (gauge), read from Redis at each scrape; dead letters:
    ``tollgate_dead_lettered_turns_total`` (counter) and, from PostgreSQL's open dead letters,
    ``tollgate_deadletter_entries{shard}`` and ``tollgate_deadletter_nanos{shard}`` (gauges: alert
    on > 0, an operator acts with ``tollgate deadletter list|retry|discard``)."""

    def describe(self):
        """Nothing at registration: collecting reads Redis, which only a scrape should do."""
        return []

    def collect(self):
        try:
            client = get_gate().redis
            decision_counter.flush()  # this process's own decisions, up to now
            decisions = decision_counts(client)
            latency, latency_sum = gate_seconds.figures(client)  # every web process's, this one's flushed
            counters = drain_counters(client)
            lags = [
                (str(s), outbox_lag_seconds(client, outbox_key(s), GROUP)) for s in range(get_settings().outbox_shards)
            ]
            with session_scope() as session:
                dead = summary(list_dead_letters(session))
        except (redis.RedisError, SQLAlchemyError):
            log.warning("worker metrics unavailable: Redis or PostgreSQL error", exc_info=True)
            return
        decided = CounterMetricFamily(
            "tollgate_decisions", "Gate decisions by outcome, every process (worker.metrics)", labels=["outcome"]
        )
        for outcome, n in decisions.items():
            decided.add_metric([outcome], n)
        yield decided
        gate = HistogramMetricFamily(
            "tollgate_gate_seconds", "Time to price and record turns through the gate, per request (seconds)"
        )
        gate.add_metric([], buckets=latency, sum_value=latency_sum)
        yield gate
        batch = HistogramMetricFamily("tollgate_drain_batch_size", "Outbox entries per persisted drain batch")
        batch.add_metric([], buckets=counters["buckets"], sum_value=counters["batch_size_sum"])
        yield batch
        yield CounterMetricFamily(
            "tollgate_persisted_turns",
            "Usage events inserted by the drain (all workers)",
            value=counters["persisted_turns"],
        )
        yield CounterMetricFamily(
            "tollgate_duplicate_turns",
            "Outbox re-deliveries dropped (turn_id already persisted)",
            value=counters["duplicate_turns"],
        )
        lag = GaugeMetricFamily(
            "tollgate_outbox_lag_seconds",
            "Age of the oldest outbox entry not yet persisted, per shard (0: none)",
            labels=["shard"],
        )
        for shard, seconds in lags:
            lag.add_metric([shard], seconds)
        yield lag
        yield CounterMetricFamily(
            "tollgate_dead_lettered_turns",
            "Outbox entries the drain dead-lettered (all workers)",
            value=counters["dead_lettered_turns"],
        )
        entries = GaugeMetricFamily(
            "tollgate_deadletter_entries", "Dead letters waiting for an operator, per shard", labels=["shard"]
        )
        nanos = GaugeMetricFamily(
            "tollgate_deadletter_nanos", "Billed nanos held by dead letters, per shard", labels=["shard"]
        )
        for shard, _seconds in lags:
            figure = dead["by_shard"].get(shard, {"count": 0, "nanos": 0})
            entries.add_metric([shard], figure["count"])
            nanos.add_metric([shard], figure["nanos"])
        yield entries
        yield nanos


COLLECTOR = WorkerMetrics()
try:
    REGISTRY.register(COLLECTOR)
except ValueError:  # already registered (module reloaded)
    pass
