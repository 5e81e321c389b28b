"""Fault-suite fixtures: our own PostgreSQL cluster and Redis servers on free loopback ports (never
the shared 6379 / 5432), and helpers that check every accepted turn is persisted exactly once and
that every balance reconciles to the nano.

The servers live for the package (started by the first fault test, stopped after the last).  Each
test switches this process's ``TOLLGATE_*`` environment to them (``fault_env``) and restores it
afterwards, so the rest of ``pytest tests`` keeps its own namespaces; subprocesses started inside a
test (Celery workers, beat) inherit the switched environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from tests.conftest import REPO, TABLES, seed_wallet
from worker.devtools.throwaway import PostgresServer, RedisServer

T0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
ENTERPRISE = "fault-app"


@pytest.fixture(scope="package")
def pg_server():
    """A throwaway PostgreSQL 15 cluster with database ``tollgate`` migrated by Alembic."""
    from worker.db import engine_for
    from worker.ledger.migrate import recreate_database

    server = PostgresServer()
    try:
        recreate_database(server.url)
        yield server
    finally:
        engine_for(server.url).dispose()
        server.close()


@pytest.fixture(scope="package")
def redis_server():
    """A throwaway Redis without persistence (flushed by each test that uses it)."""
    server = RedisServer(aof=False)
    try:
        yield server
    finally:
        server.close()


@dataclass
class FaultEnv:
    """The services of one fault test and this process's settings pointing at them."""

    pg: PostgresServer
    redis_server: RedisServer
    redis_url: str
    tmp_path: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    supervisors: list["Supervisor"] = field(default_factory=list)

    @property
    def settings(self):
        from worker.settings import get_settings

        return get_settings()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra)
        return env

    def celery_app(self):
        """A Celery app on this test's broker (the module-level one is bound to the shared test broker)."""
        from worker.celery_app import make_app

        return make_app()

    def start_worker(self, *, concurrency: int = 2, **extra_env: str) -> subprocess.Popen:
        """A real ``celery worker`` (both queues) on this test's broker, ready; stopped after the test."""
        from worker.devtools.workers import ALL_QUEUES, start_celery_worker, wait_ready

        name = f"fault-{uuid.uuid4().hex[:8]}"
        log = self.tmp_path / f"{name}.log"
        proc = start_celery_worker(
            name, log, concurrency=concurrency, env=self.env(**extra_env), cwd=REPO, queues=ALL_QUEUES
        )
        self.procs.append(proc)
        proc.log_path = log  # type: ignore[attr-defined]
        wait_ready(proc, log, timeout_s=60)
        return proc

    def supervised_worker(self, *, concurrency: int = 2, **extra_env: str) -> "Supervisor":
        """A worker restarted whenever it exits, as a process manager (systemd, Procfile runners) would."""
        sup = Supervisor(self, concurrency, extra_env)
        self.supervisors.append(sup)
        return sup

    def start_process(self, args: list[str], name: str, **extra_env: str) -> subprocess.Popen:
        """Any ``python -m …`` subprocess in its own process group, logged; stopped after the test."""
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=self.env(**extra_env),
            start_new_session=True,
        )
        proc.log_path = self.tmp_path / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc


class Supervisor:
    """Keeps one Celery worker running: a thread restarts it (ready) whenever it has exited."""

    def __init__(self, fe: FaultEnv, concurrency: int, extra_env: dict[str, str]) -> None:
        self.fe, self.concurrency, self.extra_env = fe, concurrency, extra_env
        self.restarts = 0
        self.proc = fe.start_worker(concurrency=concurrency, **extra_env)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc.poll() is not None:
                try:
                    self.proc = self.fe.start_worker(concurrency=self.concurrency, **self.extra_env)
                    self.restarts += 1
                except RuntimeError:  # e.g. the broker is still down: try again
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _switch_env(redis_url: str, database_url: str) -> dict[str, str | None]:
    from worker.settings import get_settings

    saved = {
        k: os.environ.get(k)
        for k in ("TOLLGATE_REDIS_URL", "TOLLGATE_BROKER_URL", "TOLLGATE_DATABASE_URL", "TOLLGATE_PRICE_OVERRIDES_PATH")
    }
    os.environ["TOLLGATE_REDIS_URL"] = redis_url
    os.environ["TOLLGATE_BROKER_URL"] = redis_url
    os.environ["TOLLGATE_DATABASE_URL"] = database_url
    os.environ.pop("TOLLGATE_PRICE_OVERRIDES_PATH", None)
    get_settings.cache_clear()
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    from worker.settings import get_settings

    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()


def _clean(pg: PostgresServer, redis_url: str) -> None:
    from worker.db import engine_for

    with engine_for(pg.url).begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


@contextmanager
def fault_services(pg: PostgresServer, server: RedisServer, tmp_path: Path) -> Iterator[FaultEnv]:
    """The one set-up and tear-down of a fault run: ``pg`` and ``server`` emptied, this process's
    ``TOLLGATE_*`` settings pointed at them while the block runs, and afterwards every supervisor
    stopped and every process started through the yielded ``FaultEnv`` killed (process group), then
    the settings restored.  The servers themselves are the caller's to close."""
    from worker.devtools.workers import stop_process_group

    _clean(pg, server.url)
    saved = _switch_env(server.url, pg.url)
    fe = FaultEnv(pg, server, server.url, tmp_path)
    try:
        yield fe
    finally:
        for sup in fe.supervisors:
            sup.stop()
        for proc in fe.procs:
            stop_process_group(proc, timeout_s=10)
        _restore_env(saved)


@pytest.fixture()
def fault_env(pg_server, redis_server, tmp_path):
    """Our own services, empty, with this process's settings pointing at them; every process the
    test starts through it is killed (process group) afterwards."""
    with fault_services(pg_server, redis_server, tmp_path) as fe:
        yield fe


@pytest.fixture()
def aof_env(pg_server, tmp_path):
    """Like ``fault_env`` but on a Redis of its own started with AOF (appendfsync everysec)."""
    server = RedisServer(aof=True)
    try:
        with fault_services(pg_server, server, tmp_path) as fe:
            yield fe
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# workload and checks


def make_turns(wallet_ids: list[str], n: int, *, prefix: str = "t", offset: int = 0):
    """``n`` valid gpt-4o turns spread round-robin over ``wallet_ids``, 3 chats and 2 agents each."""
    from models.turn import TurnIn

    turns = []
    for j in range(offset, offset + n):
        w = wallet_ids[j % len(wallet_ids)]
        turns.append(
            TurnIn(
                turn_id=f"{prefix}-{j}",
                wallet_id=w,
                enterprise_id=ENTERPRISE,
                chat_id=f"{w}-chat-{j % 3}",
                workflow="wf",
                agent=f"agent-{j % 2}",
                model="gpt-4o",
                provider="openai",
                prompt_tokens=900 + j % 211,
                completion_tokens=40 + j % 17,
                cached_prompt_tokens=(j % 4) * 100,
                duration_ms=150 + j % 9,
                occurred_at=T0 + timedelta(milliseconds=j),
            )
        )
    return turns


def open_wallets(gate, wallet_ids: list[str], credit_nanos: int = 10**15) -> None:
    """Each of ``wallet_ids`` opened in app ``ENTERPRISE`` (owner: itself) with ``credit_nanos``."""
    for w in wallet_ids:
        seed_wallet(gate, w, ENTERPRISE, w, credit_nanos)


def spread_wallets(shards: int, per_shard: int = 1) -> list[str]:
    """Wallet ids covering every outbox shard ``per_shard`` times."""
    from worker.gate.keys import shard_of

    found: dict[int, list[str]] = {s: [] for s in range(shards)}
    i = 0
    while any(len(ws) < per_shard for ws in found.values()):
        w = f"fw{i}"
        if len(found[shard_of(w, shards)]) < per_shard:
            found[shard_of(w, shards)].append(w)
        i += 1
    return sorted(w for ws in found.values() for w in ws)


@dataclass
class Accepted:
    """What the gate accepted: each turn once (its first answer), with its billed nanos."""

    turns: dict[str, object] = field(default_factory=dict)  # turn_id -> TurnIn
    billed: dict[str, int] = field(default_factory=dict)  # turn_id -> billed nanos
    cost: dict[str, int] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)  # turn_id -> time.monotonic() of the answer

    def add(self, turns, decisions) -> None:
        now = time.monotonic()
        for t, d in zip(turns, decisions):
            assert d.turn_id == t.turn_id
            if d.duplicate:
                assert t.turn_id in self.turns, f"{t.turn_id} answered as duplicate but never accepted here"
                continue
            if d.accepted:
                self.turns[t.turn_id] = t
                self.billed[t.turn_id] = d.billed_nanos
                self.cost[t.turn_id] = d.cost_nanos
                self.at[t.turn_id] = now

    def totals(self, only: set[str] | None = None) -> tuple[int, int, int, int, int, int]:
        ids = self.turns.keys() if only is None else only
        ts = [self.turns[i] for i in ids]
        return (
            len(ts),
            sum(t.prompt_tokens for t in ts),
            sum(t.completion_tokens for t in ts),
            sum(t.cached_prompt_tokens for t in ts),
            sum(self.cost[i] for i in ids),
            sum(self.billed[i] for i in ids),
        )


def persisted_count(pg: PostgresServer) -> int:
    from worker.db import engine_for

    try:
        with engine_for(pg.url).connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one())
    except Exception:  # PostgreSQL restarting
        return -1


def persisted_totals(pg: PostgresServer) -> tuple[int, int, int, int, int, int]:
    from worker.db import engine_for

    with engine_for(pg.url).connect() as conn:
        return tuple(
            int(v)
            for v in conn.execute(
                text(
                    "SELECT count(DISTINCT turn_id), coalesce(sum(prompt_tokens),0), coalesce(sum(completion_tokens),0), "
                    "coalesce(sum(cached_prompt_tokens),0), coalesce(sum(cost_nanos),0), coalesce(sum(billed_nanos),0) "
                    "FROM usage_event"
                )
            ).one()
        )


def persisted_ids(pg: PostgresServer) -> set[str]:
    from worker.db import engine_for

    with engine_for(pg.url).connect() as conn:
        return set(conn.execute(text("SELECT turn_id FROM usage_event")).scalars())


def wait_until(predicate, timeout: float, what: str, *, every=None, interval: float = 0.05):
    """Poll ``predicate`` until truthy; ``every()`` is called about once a second (e.g. a drain kick)."""
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if every is not None and time.monotonic() - last >= 1.0:
            every()
            last = time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kick_all(app, shards: int):
    """Send one drain task per shard (what the gate's kicks and beat's backstop do)."""

    def kick() -> None:
        for s in range(shards):
            app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": s})

    return kick


def assert_exactly_once_and_reconciled(fe: FaultEnv, gate, accepted: Accepted) -> None:
    """Every accepted turn is in PostgreSQL exactly once (count, distinct turn_ids and the sums of
    tokens, cost and billed nanos equal what the gate accepted), nothing else is, the outbox is
    empty, and every wallet reconciles to the nano (gate = credits − debits, ledger entries agree)."""
    from worker.db import engine_for
    from worker.gate.keys import outbox_key
    from worker.ledger.drain import GROUP
    from worker.ledger.reconcile import reconcile

    with engine_for(fe.pg.url).connect() as conn:
        count, distinct = conn.execute(text("SELECT count(*), count(DISTINCT turn_id) FROM usage_event")).one()
        ids = set(conn.execute(text("SELECT turn_id FROM usage_event")).scalars())
        wallets = conn.execute(text("SELECT id, credits_nanos, debits_nanos FROM wallet ORDER BY id")).all()
        ledger = dict(
            conn.execute(
                text(
                    "SELECT wallet_id, sum(amount_nanos) FROM wallet_transaction WHERE kind = 'debit' GROUP BY wallet_id"
                )
            ).all()
        )
        per_wallet = dict(
            conn.execute(text("SELECT wallet_id, sum(billed_nanos) FROM usage_event GROUP BY wallet_id")).all()
        )
    assert count == distinct == len(accepted.turns)
    assert ids == set(accepted.turns)
    assert persisted_totals(fe.pg) == accepted.totals()
    r = fe.client()
    for s in range(fe.settings.outbox_shards):
        assert r.xlen(outbox_key(s)) == 0
        if r.exists(outbox_key(s)):
            assert r.xpending(outbox_key(s), GROUP)["pending"] == 0
    for wallet_id, credits, debits in wallets:
        billed = sum(b for t, b in accepted.billed.items() if accepted.turns[t].wallet_id == wallet_id)
        assert debits == int(ledger.get(wallet_id, 0)) == int(per_wallet.get(wallet_id, 0)) == billed
        assert gate.balance(wallet_id) == credits - debits
    report = reconcile(gate)
    assert (
        report.wallets_checked,
        report.wallets_drifted,
        report.drift_nanos_abs,
        report.wallets_busy,
        report.ledger_mismatches,
        report.wallets_missing,
    ) == (len(wallets), 0, 0, 0, 0, 0)
    r.close()
