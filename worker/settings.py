"""tollgate's one settings object, read from the environment (prefix ``TOLLGATE_``).

Every default works against the services of a development machine: PostgreSQL on
127.0.0.1:5432 with trust auth and Redis on 127.0.0.1:6379.  Example::

    TOLLGATE_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_test tollgate db upgrade
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.enums import BillingMode
from models.validation import DEFAULT_OCCURRED_AT_MAX_AHEAD_S, DEFAULT_OCCURRED_AT_MIN, configure_occurred_at_window
from worker.errors import InvalidInput


class Settings(BaseSettings):
    """Configuration of the gate, the outbox drain and the database.

    Fields (env var ``TOLLGATE_<NAME>``):
        redis_url: Redis holding wallets, idempotency keys and the outbox.
        database_url: SQLAlchemy URL of PostgreSQL (psycopg 3 driver).
        broker_url: Celery broker; defaults to ``redis_url``.
        outbox_shards: number of outbox streams; a wallet lives on shard
            ``crc32(wallet_id) % outbox_shards``.  Fixed once wallets exist.
        outbox_batch_size: entries a drain reads from one shard at once (one XREADGROUP).
        outbox_group_size: entries a drain persists in one transaction at most: one batch of each
            shard in turn (of at most ``ceil(outbox_shards / persisters)`` shards, see
            ``worker.ledger.drain.OutboxDrain.drain``) until the group holds this many (group commit: PostgreSQL's cost per row
            falls with the rows per transaction: 57 µs of its CPU a row at 250 rows, 39 at 1,000, 25 at 4,000 on the
            benchmark machine; benchmarks/RESULTS.md).  At most ``outbox_batch_size``: one shard's
            batch per transaction.
        dedupe_ttl_s: seconds a turn_id is remembered by the gate at least (>= 24 h; default 48 h);
            it is remembered for up to twice this (time buckets of this width, the current and the
            previous one read; ``worker.gate.dedupe``).  Each remembered turn costs about 50 B of
            Redis memory.  Changing it starts new buckets: the turn_ids remembered under the old
            width are forgotten (a retry of one is accepted again and refunded by the drain).
        dedupe_key: the key of the turn_id fingerprints (keyed BLAKE2b, ``worker.gate.dedupe``).
            Every gate process on one Redis must use the same; set a random secret in production
            so that no client can make two turn_ids collide on purpose.  Changing it forgets the
            turn_ids remembered under the old one.
        reclaim_idle_ms: an outbox entry read but not acknowledged for this long
            (milliseconds) is presumed to belong to a dead consumer and is reclaimed.
        kick_interval_ms: at most one drain task is sent per shard per interval.
        drain_loop: each Celery worker process also runs a long-lived drain consumer on a thread
            (``worker.ledger.drain.DrainLoop``, started at ``worker_process_init``): it serves every
            shard in turn without waiting for kicks; the kicked task and beat's backstop go on.
        drain_loops: the worker pool processes (slots 0 … n − 1) that run a drain loop when
            ``drain_loop`` is on; the others only run tasks.  Each loop serves every shard, and two
            loops of one worker drain the same entries' shards at about 1.5 × the CPU per row of
            one (their transactions wait on the same wallets' rows: benchmarks/RESULTS.md); more
            workers (machines) each bring their own.
        drain_backlog_loops: the pool processes after those (slots ``drain_loops`` … ``drain_loops +
            drain_backlog_loops − 1``) that run a *backlog* drain loop when ``drain_loop`` is on: it
            drains only while the outbox streams hold at least ``drain_backlog_entries`` entries in
            all (read or not, not yet acknowledged), in rounds of at most a second, and otherwise
            only looks (four XLEN a ``drain_idle_ms``).  In service one loop keeps up and drains
            bigger batches alone (a second loop would split them: the CPU per row above); behind, a
            second consumer drains 5–25 % more rows a second on two cores (5–10 % on the machine of
            benchmarks/RESULTS.md's section "a backlog drain loop", 15–25 % on the one before):
            after an outage, a stall or a burst the backlog goes sooner.
        drain_backlog_entries: the outbox length (entries, every shard) from which backlog loops
            drain: about a second of a busy worker's traffic (the soak at 10,000 turns/s holds up
            to about 4,000).
        drain_idle_ms: a drain loop that found every shard empty reads again after this long
            (milliseconds): the lag it adds when idle, and its polling rate.
        default_mode: billing mode of a new wallet unless given.
        price_overrides_path: optional JSON file of price overrides (see ``worker.pricing.prices``).
        webhook_timeout_s: seconds one webhook POST may take (connect + response).
        webhook_max_retries: retries of a webhook after a connection error or a 5xx (4xx: none).
        webhook_backoff_base_s: delay before the first retry, seconds; retry n waits base × 2^n
            (capped by ``webhook_backoff_max_s``).  0 retries at once (tests).
        webhook_backoff_max_s: longest delay between two retries, seconds.
        allowance_expiry_grace_s: seconds after a period ends before its unused monthly allowance
            expires, so turns of its last seconds are persisted first (the outbox lags by < 1 s).
        rate_limit: requests each API key may make, in the ``limits`` notation
            (``"600/minute"``, ``"50/second;1000/hour"``); over it the API answers 429 with Retry-After.
        rate_limit_strategy: ``moving-window`` (exact, one sorted set per key) or ``fixed-window``
            (one counter per key and window; cheaper, allows a burst of 2× at a window edge).
        api_key_cache_ttl_s: seconds an API process trusts a key it authenticated in PostgreSQL
            before reading it again (0: every request reads PostgreSQL).  A key revoked elsewhere
            is refused at once through its Redis marker; without Redis, within this bound at most
            (``worker.access.apikeys``).
        stripe_api_key: Stripe secret key (``sk_…``) for Checkout; None: Checkout is refused.
        stripe_webhook_secret: signing secret of the Stripe webhook endpoint (``whsec_…``); None:
            every Stripe webhook is refused.
        stripe_api_base: base address of Stripe's API (default: Stripe's own); tests point it at a
            local server.
        occurred_at_min: earliest ``occurred_at`` (and chat start/end) accepted, aware (default
            2000-01-01T00:00Z); earlier input is refused naming the field (``models.validation``).
        occurred_at_max_ahead_s: how far past now an ``occurred_at`` may be, seconds (default one
            day: clock skew of the orchestrator's hosts).
    """

    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/tollgate"
    broker_url: str | None = None
    outbox_shards: int = Field(default=4, ge=1, le=1024)
    outbox_batch_size: int = Field(default=1000, ge=1, le=10_000)
    outbox_group_size: int = Field(default=4000, ge=1, le=40_000)
    dedupe_ttl_s: int = Field(default=48 * 3600, ge=24 * 3600)
    dedupe_key: str = Field(default="tollgate-dedupe-v1", min_length=1, max_length=64)
    reclaim_idle_ms: int = Field(default=30_000, ge=100)
    kick_interval_ms: int = Field(default=200, ge=1)
    drain_loop: bool = False
    drain_loops: int = Field(default=1, ge=1, le=64)
    drain_backlog_loops: int = Field(default=1, ge=0, le=64)
    drain_backlog_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    drain_idle_ms: int = Field(default=50, ge=1, le=5_000)
    default_mode: BillingMode = BillingMode.production
    price_overrides_path: str | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_max_retries: int = Field(default=5, ge=0, le=20)
    webhook_backoff_base_s: float = Field(default=30.0, ge=0)
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0)
    allowance_expiry_grace_s: int = Field(default=600, ge=0, le=7 * 86_400)
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    #: the gate's Redis (``redis_url``) is a Redis Cluster: the gate and the drain use a cluster
    #: client (every script's keys share one hash tag, so one slot); the Celery broker
    #: (``broker_url``) must then be a separate, non-cluster Redis
    redis_cluster: bool = False
    #: months of usage_event partitions kept ahead of the current one (created by the daily job)
    usage_partitions_ahead: int = Field(default=3, ge=1, le=24)
    #: months of usage events kept (the current one included); 0 keeps them forever.  Older
    #: partitions are dropped by the daily job; ledger entries and rollups are kept.
    usage_retention_months: int = Field(default=0, ge=0, le=1200)
    rate_limit: str = "600/minute"
    rate_limit_strategy: Literal["moving-window", "fixed-window"] = "moving-window"
    api_key_cache_ttl_s: float = Field(default=5.0, ge=0, le=300)
    #: largest request body the HTTP API reads, bytes (counted as it streams in, chunked or not);
    #: over it: 413 problem+json naming the limit
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1 << 30)
    #: seconds a /billing sign-in lasts (server-side session in Redis; the cookie holds its id only)
    billing_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)
    #: sign-in attempts (POST /billing/login) one client IP may make, ``limits`` notation
    billing_login_rate_limit: str = "10/minute"
    #: the site's own origin as browsers see it (``https://billing.example.com``) when a proxy
    #: changes scheme or host; default: the request's own scheme and Host.  Sign-in and sign-out
    #: are refused from any other Origin.
    web_origin: str | None = None
    occurred_at_min: datetime = DEFAULT_OCCURRED_AT_MIN
    occurred_at_max_ahead_s: int = Field(default=DEFAULT_OCCURRED_AT_MAX_AHEAD_S, ge=0, le=10 * 366 * 86_400)

    @field_validator("occurred_at_min")
    @classmethod
    def _aware_min(cls, v: datetime) -> datetime:
        if v.utcoffset() is None:
            raise InvalidInput("occurred_at_min", f"{v.isoformat()} must carry a time zone")
        return v.astimezone(UTC)

    @field_validator("usage_retention_months")
    @classmethod
    def _keeps_what_jobs_read(cls, v: int) -> int:
        # the allowance expiry reads the previous month's usage, late budget alerts the month before
        if 0 < v < 3:
            raise InvalidInput("usage_retention_months", f"{v} is too short; 0 (keep all) or at least 3")
        return v

    @field_validator("rate_limit", "billing_login_rate_limit")
    @classmethod
    def _parses_as_rate_limit(cls, v: str, info: ValidationInfo) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError as exc:
            raise ValueError(f"{info.field_name}: {v!r} is not a rate limit such as '600/minute' ({exc})") from None
        return v

    @model_validator(mode="after")
    def _broker_defaults_to_redis(self) -> "Settings":
        if not self.broker_url:
            self.broker_url = self.redis_url
        return self


def redis_client(settings: Settings, url: str | None = None):
    """A redis-py client for ``url`` (default ``settings.redis_url``), ``decode_responses=True``:
    a ``RedisCluster`` (which discovers every node from this one) when ``settings.redis_cluster``,
    else a plain ``Redis``."""
    import redis

    url = url or settings.redis_url
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(url, decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide :class:`Settings`, read once from the environment."""
    return Settings()


def _occurred_at_window() -> tuple[datetime, int]:
    s = get_settings()
    return s.occurred_at_min, s.occurred_at_max_ahead_s


# models.validation checks every occurred_at against this process's settings (read at each check)
configure_occurred_at_window(_occurred_at_window)
