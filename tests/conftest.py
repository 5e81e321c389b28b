"""Shared fixtures.  Tests run against real services on loopback, in their own namespaces:

- PostgreSQL database ``tollgate_test`` (dropped, recreated and migrated by Alembic once per run),
- Redis logical database 15 (flushed before each test that uses it), also the Celery broker.

Override with ``TOLLGATE_TEST_DATABASE_URL`` / ``TOLLGATE_TEST_REDIS_URL``.  The variables are set
before any tollgate module reads its settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

TEST_DB_URL = os.environ.get("TOLLGATE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_test")
TEST_REDIS_URL = os.environ.get("TOLLGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["TOLLGATE_DATABASE_URL"] = TEST_DB_URL
os.environ["TOLLGATE_REDIS_URL"] = TEST_REDIS_URL
os.environ["TOLLGATE_BROKER_URL"] = TEST_REDIS_URL
os.environ.pop("TOLLGATE_PRICE_OVERRIDES_PATH", None)
# gate decisions are counted in Redis a second after they are made (worker.metrics.DecisionCounter):
# off, since tests compare whole Redis states; tests/integration/test_metrics_processes.py turns it on
os.environ["TOLLGATE_DECISION_METRICS"] = "0"
# tests record turns on fixed calendar dates, some months or years ahead (partitions, rollups);
# the tests of the occurred_at window set the production default (one day) themselves
os.environ["TOLLGATE_OCCURRED_AT_MAX_AHEAD_S"] = str(10 * 366 * 86_400)

REPO = Path(__file__).resolve().parent.parent


def _guard_flushall() -> None:
    """No test may FLUSHALL the shared Redis server: it clears every logical database, other
    people's included.  redis-py's ``flushall`` (sync and asyncio) refuses the server of
    ``TOLLGATE_TEST_REDIS_URL`` with RuntimeError; servers a test started itself on other ports
    (tests/faults, the cluster test) may still be flushed.  ``tests/unit/test_namespaces.py`` also
    refuses the word in any other test file."""
    from urllib.parse import urlsplit

    import redis
    import redis.asyncio

    shared_port = urlsplit(TEST_REDIS_URL).port or 6379

    def guarded(original):
        def flushall(self, *args, **kwargs):
            port = self.connection_pool.connection_kwargs.get("port")
            if port is not None and int(port) == shared_port and not type(self).__module__.startswith("fakeredis"):
                raise RuntimeError(
                    f"FLUSHALL of the shared Redis server (port {port}) refused: it clears every "
                    "logical database; flush the test's own database (FLUSHDB) instead"
                )
            return original(self, *args, **kwargs)

        flushall.tollgate_guard = True
        return flushall

    for cls in (redis.Redis, redis.asyncio.Redis):
        if not getattr(cls.flushall, "tollgate_guard", False):
            cls.flushall = guarded(cls.flushall)


_guard_flushall()
SHARED_DATA = REPO.parent / "shared" / "data"
TABLES = (
    "dead_letter, usage_row, usage_price, usage_turn_key, paused_chat, stripe_event, token_package, wallet_transaction, chat_agent_usage, chat_session, api_key, audit_log, wallet_drift, "
    "reconciliation_run, budget_alert, budget, budget_dirty, rollup_dirty, workflow_rollup, billing_rollup, chat_rollup, agent_rollup, wallet, enterprise"
)


@pytest.fixture(scope="session")
def database_url() -> str:
    """A freshly created and migrated (Alembic, head) test database."""
    from worker.db import engine_for
    from worker.ledger.migrate import recreate_database

    recreate_database(TEST_DB_URL)
    yield TEST_DB_URL
    engine_for(TEST_DB_URL).dispose()


#: whether a test may have committed rows since the last TRUNCATE (the ``session`` fixture then truncates first)
_DIRTY = {"db": True}


#: the tables of ``TABLES`` holding a row, or owning a sequence (a partition's: its root table) that
#: has handed out a value since its last restart (rolled-back inserts advance sequences too); one query
_USED_TABLES = (
    " UNION ".join(f"(SELECT '{t.strip()}' FROM {t.strip()} LIMIT 1)" for t in TABLES.split(","))
    + """ UNION SELECT coalesce(pg_partition_root(t.oid), t.oid)::regclass::text FROM pg_sequences ps
    JOIN pg_class s ON s.relname = ps.sequencename AND s.relnamespace = ps.schemaname::regnamespace
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class t ON t.oid = d.refobjid
    WHERE ps.schemaname = current_schema() AND ps.last_value IS NOT NULL"""
)


def _truncate(engine) -> None:
    """Every table of ``TABLES`` empty and its identity restarted, as ``TRUNCATE TABLES RESTART
    IDENTITY CASCADE`` leaves them.  Only the tables that are not so already are truncated: a
    TRUNCATE costs a new file for each table, partition and index it names (0.1–0.5 s for all of
    them), and most tests using ``db`` write to a few tables or none."""
    from sqlalchemy import text

    names = {t.strip() for t in TABLES.split(",")}
    with engine.begin() as conn:
        used = sorted(set(conn.execute(text(_USED_TABLES)).scalars()) & names)
        if used:
            conn.execute(text(f"TRUNCATE {', '.join(used)} RESTART IDENTITY CASCADE"))


@pytest.fixture()
def db(database_url):
    """An empty test database (all tables truncated); yields the SQLAlchemy engine.  For tests
    whose code opens its own connections (Celery workers, drains in threads, the API server, the
    CLI, services that open ``session_scope``): what they commit stays until the next TRUNCATE."""
    from worker.db import engine_for

    engine = engine_for(database_url)
    _truncate(engine)
    _DIRTY["db"] = True
    return engine


@pytest.fixture()
def session(database_url):
    """A SQLModel ``Session`` inside an outer transaction that is rolled back when the test ends
    (pypi/warehouse's ``db_session``): for tests whose code under test takes the session.  The
    code's ``session.commit()`` releases a savepoint (``join_transaction_mode="create_savepoint"``),
    so its ``after_commit`` hooks run as they would after a real commit, and ``rollback()`` returns
    to that savepoint; nothing reaches other connections, and nothing needs truncating afterwards.
    The database is truncated first only if a ``db`` test committed rows since the last TRUNCATE."""
    from sqlmodel import Session

    from worker.db import engine_for

    engine = engine_for(database_url)
    if _DIRTY["db"]:
        _truncate(engine)
        _DIRTY["db"] = False
    connection = engine.connect()
    outer = connection.begin()
    s = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        connection.close()


@pytest.fixture()
def redis_client():
    """A real Redis client on the test database, flushed first (decode_responses=True)."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    client.ping()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def own_redis_server():
    """A ``redis-server`` this test run started (no persistence), for tests that change the
    server's global state (``SCRIPT FLUSH`` empties the script cache of every logical database, so
    on the shared test server it would also hit other runs and whatever else uses that server)."""
    from worker.devtools.throwaway import RedisServer

    server = RedisServer(aof=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def own_redis_client(own_redis_server):
    """A real Redis client on :func:`own_redis_server`, flushed first (decode_responses=True)."""
    import redis

    client = redis.Redis.from_url(own_redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def settings():
    """The test settings (from the environment set above)."""
    from worker.settings import get_settings

    return get_settings()


@pytest.fixture()
def kicks():
    """A list the gate's kicker appends shard numbers to (no Celery involved)."""
    return []


@pytest.fixture()
def gate(redis_client, settings, kicks):
    """A WalletGate on real Redis whose drain kicks are recorded, not sent."""
    from worker.gate.gate import WalletGate

    return WalletGate(redis_client, settings=settings, kicker=kicks.append)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class CeleryWorker:
    """A real ``celery worker`` subprocess on the test broker (own process group, so it can be killed)."""

    def __init__(self, tmp_path: Path, concurrency: int = 1, extra_env: dict[str, str] | None = None) -> None:
        from worker.devtools.workers import ALL_QUEUES, start_celery_worker, wait_ready

        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log = tmp_path / f"{self.name}.log"
        env = _env()
        env.update(extra_env or {})
        self.proc = start_celery_worker(
            self.name, self.log, concurrency=concurrency, env=env, cwd=REPO, queues=ALL_QUEUES
        )
        wait_ready(self.proc, self.log, timeout_s=30)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
        from worker.devtools.workers import kill_process_group

        kill_process_group(self.proc)

    def stop(self) -> None:
        from worker.devtools.workers import stop_process_group

        stop_process_group(self.proc)


@pytest.fixture()
def celery_worker_factory(tmp_path, db, redis_client):
    """Starts real Celery workers on the test broker; all are stopped after the test."""
    workers: list[CeleryWorker] = []

    def start(concurrency: int = 1, extra_env: dict[str, str] | None = None) -> CeleryWorker:
        w = CeleryWorker(tmp_path, concurrency, extra_env)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``tollgate ARGS`` as a user would (a subprocess of this interpreter), capturing output."""
    full_env = _env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 30.0) -> None:
    """Poll ``GET <base>/healthz`` until it answers 200.  Raises RuntimeError (with the tail of the
    server's piped output) after killing ``proc`` when it exits first or ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pipe = proc.stderr or proc.stdout
            output = pipe.read().decode()[-2000:] if pipe is not None else ""
            raise RuntimeError(f"uvicorn did not start: {output}")
        time.sleep(0.2)


@pytest.fixture()
def cli(db, redis_client):
    """``run_cli`` on a clean database and Redis."""
    return run_cli


# ---------------------------------------------------------------------------------------------
# shared harnesses: threads released together (races), API keys and wallets seeded for a test


def run_together(*calls, timeout: float = 60.0) -> list:
    """The race harness: each zero-argument callable of ``calls`` runs in a thread of its own, all
    released at once by a barrier; each thread is joined for up to ``timeout`` seconds.

    Returns the calls' results in the order of ``calls``.  Raises AssertionError when a call raised
    (the exceptions listed) or a thread is still running after its ``timeout``.
    """
    import threading

    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call) -> None:
        try:
            barrier.wait()
            results[i] = call()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert errors == [], errors
    assert not any(t.is_alive() for t in threads), f"a racer still runs after {timeout} s"
    return results


#: what the children of ``process_context`` need, imported once in its fork server (about 1 s of CPU each)
FORKSERVER_PRELOAD = [
    "tests.conftest",
    "tests.committed",
    "models.turn",
    "worker.gate.gate",
    "worker.gate.aio",
    "worker.ledger.drain",
    "worker.ledger.reconcile",
    "worker.devtools.redis_cluster",
    "genai_prices",
]


def process_context():
    """The ``multiprocessing`` context of tests that race real processes (``ctx.Process``, ``ctx.Queue``).

    ``forkserver`` with ``FORKSERVER_PRELOAD``: each child is a fresh process forked from a
    single-threaded server that imported tollgate once, instead of a ``spawn`` that imports it again
    per child.  The server starts at the first ``Process.start()`` and keeps the environment of that
    moment (the test namespaces set at the top of this file), so fault tests, which switch
    ``TOLLGATE_*`` for a while, must not use it.  The server ends with the test run."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


@pytest.fixture()
def race():
    """``race(*calls, timeout=60.0) -> results``: ``run_together`` (calls released at once in threads)."""
    return run_together


def create_keys(spec: dict[str, tuple[str, ...]], engine=None) -> dict[str, str]:
    """API keys created in one committed transaction, as ``tollgate keys create`` would.

    ``spec`` maps a name of the test's choosing to ``(role,)``, ``(role, enterprise_id)`` or
    ``(role, enterprise_id, wallet_id)``; ``role`` is an ``ApiRole`` value (``"owner"``,
    ``"end_user"``, ``"admin"``).  ``engine``: the database (default the settings' one).
    Returns name -> the raw key (a bearer token).  Raises ValueError on an unknown role and
    ``ApiKeyError`` (naming the field) on a scope ``create_key`` refuses.
    """
    from worker.access.apikeys import create_key
    from worker.db import session_scope

    with session_scope(engine) as session:
        return {
            name: create_key(
                session,
                role=role,
                enterprise_id=rest[0] if rest else None,
                wallet_id=rest[1] if len(rest) > 1 else None,
            )
            for name, (role, *rest) in spec.items()
        }


def auth(key: str) -> dict[str, str]:
    """The ``Authorization`` header of an API key: ``{"Authorization": "Bearer <key>"}``."""
    return {"Authorization": f"Bearer {key}"}


def seed_wallet(
    gate, wallet_id: str, enterprise_id: str | None, owner_id: str, credit_nanos: int = 0, **open_kwargs
) -> None:
    """Open ``wallet_id`` of ``enterprise_id`` for ``owner_id`` (``open_kwargs``, e.g. ``level``, go to
    ``open_wallet``) and, when ``credit_nanos`` (integer nano-USD) is positive, credit it with
    idempotency key ``open-<wallet_id>``.  Raises what ``open_wallet``/``credit_wallet`` raise."""
    from tests.committed import credit_wallet, open_wallet

    open_wallet(gate, wallet_id=wallet_id, enterprise_id=enterprise_id, owner_id=owner_id, **open_kwargs)
    if credit_nanos:
        credit_wallet(gate, wallet_id=wallet_id, amount_nanos=credit_nanos, idempotency_key=f"open-{wallet_id}")


@pytest.fixture()
def http_api(db, redis_client, gate):
    """Factory of FastAPI ``TestClient``s of the HTTP API (``api_stub.main.app``) on this test's
    database and Redis: ``http_api(keys=None, headers=None, **testclient_kwargs)``.  The client
    carries ``.keys`` (name -> raw key, as given) and ``.h`` (name -> ``auth(key)`` plus ``headers``).
    The API's cached gate is cleared before the test and after it."""
    from fastapi.testclient import TestClient

    from api_stub import deps
    from api_stub.main import app

    deps.get_gate.cache_clear()

    def make(keys: dict[str, str] | None = None, headers: dict[str, str] | None = None, **kwargs) -> TestClient:
        client = TestClient(app, **kwargs)
        client.keys = dict(keys or {})
        client.h = {name: {**auth(key), **(headers or {})} for name, key in client.keys.items()}
        return client

    yield make
    deps.get_gate.cache_clear()
