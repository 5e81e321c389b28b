"""Benchmark of the metered-turn pipeline, each figure next to a raw baseline on the same services.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_pipeline [--trace PATH] [--quick] [--json]

What it measures, in one run (see ``benchmarks/README.md``):

- raw Redis: EVALSHA of a one-HINCRBY script, sequential latency and pipelined throughput;
- the gate: ``WalletGate.record_turn`` sequential latency (pricing + EVALSHA, measured around the
  Python call) and ``WalletGate.record_turns`` pipelined throughput (batches of 500); pipelined
  raw and ours run in 5 alternating rounds and each figure is its median round;
- raw PostgreSQL: SQLAlchemy core multi-row INSERT of the same usage rows, and raw COPY, in the
  shape ``usage_row`` stores them into a scratch table with its indexes; the drain as the Procfile's
  worker runs it (its drain loop and backlog loop, each in its pool process: :func:`bench_drain`)
  rows/s on a pre-filled outbox, and one drain loop alone; raw COPY and the drains in 3 alternating
  rounds (:func:`bench_drain_rounds`), each figure its median round's;
- Redis memory per queued turn (the outbox stream, and everything a turn leaves in Redis) and per
  remembered turn_id (INFO used_memory around 100,000 turns, the outbox deleted; MEMORY USAGE of the
  gate's ``seen`` hashes), against issue 16's targets (≤ 300 B queued, ≤ 64 B remembered);
- end to end: ``worker.devtools.replay.replay`` of the Azure conversation trace with its own Celery worker
  (cold) and with a pre-started warm worker, against the target of 10,000 turns/s (issue 7).

Namespaces of its own, so it can run while the tests do: Redis logical DB 12 (flushed) and the
PostgreSQL database ``tollgate_bench`` (dropped, recreated and migrated with Alembic).  Override with
``TOLLGATE_BENCH_REDIS_URL`` / ``TOLLGATE_BENCH_DATABASE_URL``.  Only time is measured here; money
stays in integer nano-USD as everywhere else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks.namespaces import BENCH_DB_URL, BENCH_REDIS_URL, REPO, use_bench_namespaces

# Settings are read once and cached: point them at the bench namespaces before any worker import.
use_bench_namespaces()
os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

TARGET_TURNS_PER_S = 10_000  # issue 7: end-to-end replay target on this 2-core machine
QUEUED_TURN_TARGET_BYTES = 300  # issue 16: Redis per queued (not yet drained) turn, its remembered turn_id included
REMEMBERED_TURN_TARGET_BYTES = 64  # issue 16: Redis per remembered turn_id (window >= 24 h)
PERSISTED_TURN_TARGET_BYTES = 400  # issue 16: PostgreSQL per persisted turn (rows, indexes, turn key, ledger)
BATCH = 500  # pipelined batch size (gate and raw), as replay() uses
MODEL, PROVIDER = "gpt-4o", "openai"
WALLETS, CHATS, AGENTS = 16, 64, 4  # spread of the synthetic turns (a chat belongs to one wallet)
DEFAULT_TRACE = REPO.parent / "shared" / "data" / "azure_llm_2023_conv_shared.csv"
BUNDLED_TRACE = REPO / "worker" / "devtools" / "data" / "azure_llm_2023_conv_sample.csv"
RAW_LUA = "return redis.call('HINCRBY', KEYS[1], 'n', 1)"
WALLET_CREDIT_NANOS = 10**15  # 1,000,000 USD per bench wallet: no turn is ever denied

out = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
log = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Sizes:
    """Iteration counts of one mode."""

    seq_raw: int
    seq_ours: int
    pipe_raw: int
    pipe_ours: int
    drain: int
    trace_rows: int | None  # None: the whole trace
    warmup: int
    memory: int  # turns recorded for the Redis memory figures


FULL = Sizes(
    seq_raw=20_000,
    seq_ours=20_000,
    pipe_raw=200_000,
    pipe_ours=100_000,
    drain=50_000,
    trace_rows=None,
    warmup=500,
    memory=100_000,
)
QUICK = Sizes(
    seq_raw=2_000,
    seq_ours=2_000,
    pipe_raw=20_000,
    pipe_ours=10_000,
    drain=5_000,
    trace_rows=3_000,
    warmup=200,
    memory=10_000,
)


# ---------------------------------------------------------------------------------------------
# figures


@dataclass
class Figure:
    """One line of the result table; ``ratio`` is ours / raw (or ours / target)."""

    key: str
    label: str
    value: float
    unit: str
    raw: float | None = None
    raw_label: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.raw if self.raw else None


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``samples``."""
    return samples[max(0, min(len(samples) - 1, math.ceil(q * len(samples)) - 1))]


def fmt_num(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:,.2f}"


# ---------------------------------------------------------------------------------------------
# setup


def machine_info(r: redis.Redis) -> dict[str, str | int]:
    from sqlalchemy import text

    from worker.db import get_engine

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with get_engine().connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": r.info("server")["redis_version"],
        "postgresql": pg,
        "redis_py": pkg_version("redis"),
        "hiredis": "yes" if _has("hiredis") else "no",
        "sqlalchemy": pkg_version("SQLAlchemy"),
        "psycopg": pkg_version("psycopg"),
        "celery": pkg_version("celery"),
        "code": code_version(),
    }


def code_version() -> str:
    """``<commit>`` of the checkout, plus the production files modified in the working tree."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "worker", "models", "tasks"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return (commit or "unknown") + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def reset_database() -> None:
    """Drop, recreate and migrate ``tollgate_bench``."""
    from worker.ledger.migrate import recreate_database

    recreate_database(BENCH_DB_URL)


def wallet_ids() -> list[str]:
    return [f"bench-w{i:02d}" for i in range(WALLETS)]


def open_wallets(gate) -> None:
    """Create the bench wallets in PostgreSQL and the gate, each with a large opening credit."""
    from worker import credit_wallet, open_wallet

    for i, wallet_id in enumerate(wallet_ids()):
        open_wallet(gate, wallet_id=wallet_id, enterprise_id=f"bench-e{i % 4}", owner_id=wallet_id, limited=True)
        credit_wallet(
            gate,
            wallet_id=wallet_id,
            amount_nanos=WALLET_CREDIT_NANOS,
            idempotency_key=f"bench:{wallet_id}:opening",
            description="bench opening balance",
        )


def reload_wallets(gate) -> None:
    """After a FLUSHDB: put the wallets back into the gate (balance as opened)."""
    for wallet_id in wallet_ids():
        gate.load_wallet(wallet_id, mode="production", limited=True, balance_nanos=WALLET_CREDIT_NANOS, overwrite=True)


def make_turns(prefix: str, n: int, trace_rows) -> list:
    """``n`` valid turns spread over the bench wallets, chats and agents, tokens taken from the trace."""
    from models.turn import TurnIn

    turns = []
    m = len(trace_rows)
    for i in range(n):
        row = trace_rows[i % m]
        chat = i % CHATS
        wallet = chat % WALLETS
        turns.append(
            TurnIn(
                turn_id=f"{prefix}:{i}",
                wallet_id=f"bench-w{wallet:02d}",
                enterprise_id=f"bench-e{wallet % 4}",
                chat_id=f"chat-{chat}",
                workflow="bench",
                agent=f"agent-{(i // CHATS) % AGENTS}",
                model=MODEL,
                provider=PROVIDER,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cached_prompt_tokens=0,
                duration_ms=1000,
                occurred_at=row.occurred_at,
            )
        )
    return turns


# ---------------------------------------------------------------------------------------------
# measurements


def bench_raw_redis(r: redis.Redis, sizes: Sizes) -> dict[str, float]:
    """EVALSHA of a one-HINCRBY script: sequential latency (µs)."""
    sha = r.script_load(RAW_LUA)
    key = "tollgate:{s0}:bench-raw"
    for _ in range(sizes.warmup):
        r.evalsha(sha, 1, key)
    samples = []
    pc = time.perf_counter
    for _ in range(sizes.seq_raw):
        t0 = pc()
        r.evalsha(sha, 1, key)
        samples.append(pc() - t0)
    samples.sort()
    return {
        "p50_us": pct(samples, 0.50) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
        "p999_us": pct(samples, 0.999) * 1e6,
    }


def bench_gate(gate, trace_rows, sizes: Sizes) -> dict[str, float]:
    """record_turn sequential latency (µs)."""
    pc = time.perf_counter
    for t in make_turns("warm", sizes.warmup, trace_rows):
        gate.record_turn(t)
    turns = make_turns("seq", sizes.seq_ours, trace_rows)
    samples = []
    for t in turns:
        t0 = pc()
        d = gate.record_turn(t)
        samples.append(pc() - t0)
        if not d.accepted:
            raise RuntimeError(f"bench turn denied: {d}")
    samples.sort()
    return {
        "p50_us": pct(samples, 0.50) * 1e6,
        "p99_us": pct(samples, 0.99) * 1e6,
        "p999_us": pct(samples, 0.999) * 1e6,
    }


#: pipelined throughput is measured in this many rounds, raw and ours alternating, and each figure
#: is the median round: on a shared VM one slow second would otherwise decide a whole figure
ROUNDS = 5


def bench_pipelined(r: redis.Redis, gate, trace_rows, sizes: Sizes) -> dict[str, object]:
    """Pipelined throughput, ``ROUNDS`` rounds each of raw EVALSHA (one-HINCRBY script, batches of
    :data:`BATCH` through redis-py's pipeline) then ``record_turns`` (batches of :data:`BATCH`, no
    Celery kicks).  Returns the median calls/s and turns/s and every round's figures."""
    sha = r.script_load(RAW_LUA)
    key = "tollgate:{s0}:bench-raw"
    pc = time.perf_counter
    raw_rounds: list[float] = []
    ours_rounds: list[float] = []
    raw_batches = max(1, sizes.pipe_raw // BATCH // ROUNDS)
    ours_per_round = max(BATCH, sizes.pipe_ours // ROUNDS)
    for k in range(ROUNDS):
        t0 = pc()
        for _ in range(raw_batches):
            pipe = r.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.evalsha(sha, 1, key)
            pipe.execute()
        raw_rounds.append(raw_batches * BATCH / (pc() - t0))
        turns = make_turns(f"pipe{k}", ours_per_round, trace_rows)
        t0 = pc()
        for i in range(0, len(turns), BATCH):
            gate.record_turns(turns[i : i + BATCH])
        ours_rounds.append(len(turns) / (pc() - t0))
    return {
        "calls_per_s": sorted(raw_rounds)[ROUNDS // 2],
        "turns_per_s": sorted(ours_rounds)[ROUNDS // 2],
        "raw_rounds": raw_rounds,
        "ours_rounds": ours_rounds,
    }


def prefill_outbox(gate, r: redis.Redis, trace_rows, n: int, prefix: str = "drain") -> dict[str, float]:
    """Fill the (flushed) outbox with ``n`` accepted turns (turn_ids ``<prefix>:<i>``); MEMORY USAGE per
    entry and per remembered turn_id."""
    from worker.gate.keys import outbox_key

    r.flushdb()
    reload_wallets(gate)
    turns = make_turns(prefix, n, trace_rows)
    for i in range(0, n, BATCH):
        for d in gate.record_turns(turns[i : i + BATCH]):
            if not d.accepted:
                raise RuntimeError(f"bench turn denied: {d}")
    shards = gate.settings.outbox_shards
    entries = sum(r.xlen(outbox_key(s)) for s in range(shards))
    stream_bytes = sum(r.memory_usage(outbox_key(s), samples=0) or 0 for s in range(shards))
    first = r.xrange(outbox_key(gate.shard(turns[0].wallet_id)), count=1)
    dedupe = seen_bytes(r) / n
    if entries != n:
        raise RuntimeError(f"outbox holds {entries} entries, expected {n}")
    return {
        "entries": entries,
        "stream_bytes_per_entry": stream_bytes / entries,
        "payload_bytes": len(first[0][1]["t"]) if first else 0,
        "dedupe_key_bytes": dedupe,
    }


def used_memory(r: redis.Redis) -> int:
    """INFO ``used_memory`` less the buffers of client connections (``mem_clients_normal``): a
    pipelined batch leaves up to a few hundred kB in its connection's query buffer for a while,
    which is not the data's."""
    info = r.info("memory")
    return info["used_memory"] - info.get("mem_clients_normal", 0)


def seen_bytes(r: redis.Redis) -> int:
    """MEMORY USAGE summed over the gate's remembered turn_ids (every ``tollgate:{sN}:seen:…`` key)."""
    return sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter("tollgate:*:seen:*", count=1000))


def own_redis_server() -> tuple[subprocess.Popen | None, str]:
    """A ``redis-server`` of the benchmark's own on a free port (no persistence), so INFO
    used_memory counts our keys alone: on a shared server every logical database's writes move it.
    Returns (process, url), or (None, the bench URL) when ``redis-server`` is not installed."""
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        return None, BENCH_REDIS_URL
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def bench_memory(settings, trace_rows, n: int) -> dict[str, object]:
    """Redis memory of ``n`` turns on a Redis of the benchmark's own (:func:`own_redis_server`):
    INFO used_memory (less client buffers) before and after, per queued turn (its outbox entry and
    its remembered turn_id) and, once the outbox streams are deleted (as the drain's trim does), per
    remembered turn_id alone; plus MEMORY USAGE of the remembered turn_ids' hashes and how they are
    encoded (listpack while small)."""
    from worker.gate.gate import WalletGate
    from worker.gate.keys import outbox_key

    proc, url = own_redis_server()
    try:
        r = redis.Redis.from_url(url, decode_responses=True)
        gate = WalletGate(r, settings=settings.model_copy(update={"redis_url": url}), kicker=lambda shard: None)
        r.flushdb()
        reload_wallets(gate)
        # one batch first: the scripts loaded, the first buckets and streams made (fixed costs, about
        # 300 kB, that would otherwise be spread over the n turns)
        gate.record_turns(make_turns("mem-warm", BATCH, trace_rows))
        used_before = used_memory(r)
        turns = make_turns("mem", n, trace_rows)
        for i in range(0, n, BATCH):
            for d in gate.record_turns(turns[i : i + BATCH]):
                if not d.accepted:
                    raise RuntimeError(f"bench turn denied: {d}")
        used_queued = used_memory(r)
        seen = seen_bytes(r)
        shards = gate.settings.outbox_shards
        stream_bytes = sum(r.memory_usage(outbox_key(s), samples=0) or 0 for s in range(shards))
        encodings: dict[str, int] = {}
        for key in r.scan_iter("tollgate:*:seen:*:*:*", count=1000):
            kind = r.object("encoding", key)
            encodings[kind] = encodings.get(kind, 0) + 1
        for s in range(shards):
            r.delete(outbox_key(s))
        used_remembered = used_memory(r)
        r.flushdb()
        r.close()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    return {
        "turns": n,
        "server": "its own redis-server"
        if proc is not None
        else f"{url} (shared: used_memory moves with others' data)",
        "queued_bytes_per_turn": (used_queued - used_before) / n,
        "remembered_bytes_per_turn": (used_remembered - used_before) / n,
        "seen_usage_bytes_per_turn": seen / (n + BATCH),
        "stream_bytes_per_entry": stream_bytes / (n + BATCH),
        "encodings": encodings,
    }


def bench_raw_insert(r: redis.Redis, gate, batch_size: int) -> dict[str, float]:
    """SQLAlchemy Core multi-row ``INSERT`` of the outbox's rows into what stores them, one
    transaction per ``batch_size`` rows, as the drain commits.

    ``rows_per_s``: the rows in the stored shape (:func:`_stored_tuples`: ``usage_row``'s columns
    but ``id``, price id and one-byte codes), as dicts through ``insert(UsageRow's table)`` renamed
    to ``bench_raw_usage``, a scratch ``CREATE TABLE … (LIKE usage_row INCLUDING ALL)``: its
    columns, defaults (``id`` from the same sequence) and five indexes (checked against
    ``pg_indexes``: RuntimeError if any is missing), unpartitioned.

    ``unindexed_rows_per_s``: the baseline before this one, kept for comparison: the parsed rows
    (``usage_event``'s wide shape, prices inline, codes as text) into ``LIKE usage_event INCLUDING
    ALL``, which since migration 0019 (``usage_event`` a view) copies columns only: no index.

    Both runs check that every row arrived (RuntimeError otherwise)."""
    from sqlalchemy import MetaData, insert, text

    from models.turn import UsageEvent, UsageRow
    from worker.db import get_engine
    from worker.ledger.usage_rows import ROW_COLUMNS

    rows = _outbox_rows(r, gate)
    stored = [dict(zip(ROW_COLUMNS[1:], values)) for values in _stored_tuples(rows)]
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_raw_usage"))
        conn.execute(text("DROP TABLE IF EXISTS bench_raw_usage_wide"))
        conn.execute(text("CREATE TABLE bench_raw_usage (LIKE usage_row INCLUDING ALL)"))
        conn.execute(text("CREATE TABLE bench_raw_usage_wide (LIKE usage_event INCLUDING ALL)"))
        indexes = [
            conn.execute(text("SELECT count(*) FROM pg_indexes WHERE tablename = :t"), {"t": t}).scalar_one()
            for t in ("usage_row", "bench_raw_usage")
        ]
    if indexes[0] != indexes[1] or not indexes[0]:
        raise RuntimeError(f"bench_raw_usage has {indexes[1]} indexes, usage_row {indexes[0]}")
    elapsed = {}
    for table, model, batch in (("bench_raw_usage", UsageRow, stored), ("bench_raw_usage_wide", UsageEvent, rows)):
        stmt = insert(model.__table__.to_metadata(MetaData(), name=table))
        t0 = time.perf_counter()
        for i in range(0, len(batch), batch_size):
            with engine.begin() as conn:
                conn.execute(stmt, batch[i : i + batch_size])
        elapsed[table] = time.perf_counter() - t0
    with engine.begin() as conn:
        counts = [
            conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("bench_raw_usage", "bench_raw_usage_wide")
        ]
        conn.execute(text("DROP TABLE bench_raw_usage"))
        conn.execute(text("DROP TABLE bench_raw_usage_wide"))
    if counts != [len(rows), len(rows)]:
        raise RuntimeError(f"raw insert wrote {counts} rows, expected {len(rows)}")
    return {
        "rows_per_s": len(rows) / elapsed["bench_raw_usage"],
        "unindexed_rows_per_s": len(rows) / elapsed["bench_raw_usage_wide"],
        "rows": len(rows),
        "indexes": indexes[1],
    }


def _outbox_rows(r: redis.Redis, gate) -> list[dict[str, Any]]:
    """Every row of the pre-filled outbox, parsed as the drain parses them."""
    from worker.gate.keys import outbox_key
    from worker.gate.outbox import parse_entry

    rows = []
    for s in range(gate.settings.outbox_shards):
        rows.extend(parse_entry(fields) for _id, fields in r.xrange(outbox_key(s)))
    return rows


def _stored_tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows in the shape ``usage_row`` stores them (migration 0019; ``worker.ledger.usage_rows``):
    :data:`~worker.ledger.usage_rows.ROW_COLUMNS` but ``id`` (the sequence fills it, as for the
    drain), each price tuple as a small integer id (numbered here: the scratch table has no
    ``usage_price``), the closed-set columns as their one-byte codes (``models.usage_codes``), the
    numbers that are 0 and the implied platform fee as NULL, the billing target ``''`` when the
    level implies it (migration 0021, ``models.usage_codes.store_sql``)."""
    from models.turn import PRICE_COLUMNS
    from models.usage_codes import CODES, ZERO_AS_NULL
    from worker.ledger.usage_rows import ROW_COLUMNS

    prices: dict[tuple[Any, ...], int] = {}
    out = []
    for row in rows:
        values = []
        for c in ROW_COLUMNS[1:]:
            if c == "price_id":
                tier = tuple(row[p] if p != "service_tier" else row[p] or "" for p in PRICE_COLUMNS)
                values.append(prices.setdefault(tier, len(prices) + 1))
            elif c in CODES:
                values.append(CODES[c][str(row[c])])
            elif c == "billing_target":
                implied = "platform" if str(row["level"]) == "platform" else row["enterprise_id"]
                values.append("" if row[c] == implied else row[c] or None)
            elif c == "platform_fee_nanos":
                values.append(None if row[c] == row["billed_nanos"] - row["creator_share_nanos"] else row[c])
            elif c in ZERO_AS_NULL:
                values.append(row[c] or None)
            else:
                values.append(row[c])
        out.append(tuple(values))
    return out


def _copy_batches(table: str, columns: tuple[str, ...], tuples: list[tuple[Any, ...]], batch_size: int) -> float:
    """``COPY table (columns) FROM STDIN`` (text format, rows written with ``write_row``) of
    ``tuples``, one transaction per ``batch_size`` rows; returns the seconds it took."""
    from worker.db import get_engine

    engine = get_engine()
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    t0 = time.perf_counter()
    for i in range(0, len(tuples), batch_size):
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(sql) as copy:
                for row in tuples[i : i + batch_size]:
                    copy.write_row(row)
    return time.perf_counter() - t0


def bench_raw_copy(r: redis.Redis, gate, batch_size: int, unindexed: bool = True) -> dict[str, float]:
    """Raw COPY of the outbox's rows into what stores them, the drain's baseline (issue 16).

    ``rows_per_s``: psycopg ``COPY … FROM STDIN`` (text format, ``write_row``) of the rows in the
    stored shape (:func:`_stored_tuples`: ``usage_row``'s columns, price id and one-byte codes)
    into ``bench_raw_copy``, a scratch ``CREATE TABLE … (LIKE usage_row INCLUDING ALL)``: the
    partitioned parent's columns, defaults (``id`` from the same sequence) and its five indexes
    (checked against ``pg_indexes``: RuntimeError if any is missing), unpartitioned; one
    transaction per ``batch_size`` rows, as the drain commits.

    ``unindexed_rows_per_s``: the baseline before this one, kept for comparison: the rows in
    ``usage_event``'s wide shape (every :data:`~worker.ledger.turns.USAGE_COLUMNS`, texts for the
    codes and the prices inline) into ``LIKE usage_event INCLUDING ALL``, which since migration 0019
    copies a view's columns only: no index at all, so not what storing a turn costs (measured after
    the other unless ``unindexed`` is False; then 0.0).

    Both runs check that every row arrived (RuntimeError otherwise)."""
    from sqlalchemy import text

    from worker.db import get_engine
    from worker.ledger.turns import USAGE_COLUMNS
    from worker.ledger.usage_rows import ROW_COLUMNS

    rows = _outbox_rows(r, gate)
    stored = _stored_tuples(rows)
    wide = [tuple(row[c] for c in USAGE_COLUMNS) for row in rows] if unindexed else []
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_raw_copy"))
        conn.execute(text("DROP TABLE IF EXISTS bench_raw_copy_wide"))
        conn.execute(text("CREATE TABLE bench_raw_copy (LIKE usage_row INCLUDING ALL)"))
        conn.execute(text("CREATE TABLE bench_raw_copy_wide (LIKE usage_event INCLUDING ALL)"))
        indexes = [
            conn.execute(text("SELECT count(*) FROM pg_indexes WHERE tablename = :t"), {"t": t}).scalar_one()
            for t in ("usage_row", "bench_raw_copy")
        ]
    if indexes[0] != indexes[1] or not indexes[0]:
        raise RuntimeError(f"bench_raw_copy has {indexes[1]} indexes, usage_row {indexes[0]}")
    elapsed = _copy_batches("bench_raw_copy", ROW_COLUMNS[1:], stored, batch_size)
    elapsed_wide = _copy_batches("bench_raw_copy_wide", USAGE_COLUMNS, wide, batch_size) if unindexed else 0.0
    with engine.begin() as conn:
        counts = [
            conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("bench_raw_copy", "bench_raw_copy_wide")
        ]
        conn.execute(text("DROP TABLE bench_raw_copy"))
        conn.execute(text("DROP TABLE bench_raw_copy_wide"))
    if counts != [len(rows), len(rows) if unindexed else 0]:
        raise RuntimeError(f"raw COPY wrote {counts} rows, expected {len(rows)}")
    return {
        "rows_per_s": len(rows) / elapsed,
        "unindexed_rows_per_s": len(rows) / elapsed_wide if unindexed else 0.0,
        "indexes": indexes[1],
    }


def raw_stream_bytes(r: redis.Redis, gate, n: int = 10_000) -> float:
    """Bytes per entry of a plain stream holding the same entries (XADD of the outbox's own fields,
    copied): what any Redis stream costs for this payload, without the gate's dedupe key."""
    from worker.gate.keys import outbox_key

    entries = r.xrange(outbox_key(0), count=n)
    key = "tollgate:{s0}:bench-raw-stream"
    pipe = r.pipeline(transaction=False)
    for _id, fields in entries:
        pipe.xadd(key, fields)
    pipe.execute()
    size = (r.memory_usage(key, samples=0) or 0) / max(1, len(entries))
    r.delete(key)
    return size


def drain_processes() -> int:
    """Drain processes of the drain benchmark: the drain loops a worker runs, ``settings.drain_loops``
    (``TOLLGATE_DRAIN_LOOPS``, default 1: its first pool process) and then its backlog loops,
    ``settings.drain_backlog_loops`` (``TOLLGATE_DRAIN_BACKLOG_LOOPS``, default 1: its second, which
    drains while the outbox holds ``drain_backlog_entries``, as the pre-filled one does).  Before
    2026-12-06 every pool process of the Procfile's ``--concurrency 2`` ran a loop (2); then only the
    first (1) until the backlog loops (2 again: one of each)."""
    from worker.settings import get_settings

    settings = get_settings()
    return settings.drain_loops + settings.drain_backlog_loops


def _drain_process(index: int, ready: Any, go: Any, stop: Any, results: Any) -> None:
    """One worker process's drain as ``tasks.usage.start_drain_loop`` runs it in pool slot ``index``:
    a :class:`~worker.ledger.drain.DrainLoop` over ``OutboxDrain(consumer=…-loop,
    announce=announce_chat_changes)`` on the process's own Redis, gate and engine, a backlog loop
    from slot ``settings.drain_loops`` on.  Connects first (``ready``), starts its loop at ``go``,
    stops at ``stop``; puts (drain stats, CPU seconds between go and stop) on ``results``."""
    from sqlalchemy import text

    from worker.chats.lifecycle import announce_chat_changes
    from worker.db import session_scope
    from worker.ledger.drain import DrainLoop, OutboxDrain
    from worker.settings import get_settings

    drain = OutboxDrain(consumer=f"bench-slot{index}-loop", announce=announce_chat_changes)
    drain.redis.ping()
    with session_scope() as session:  # the engine's first connection, as a worker's is before a backlog
        session.execute(text("SELECT 1"))
    settings = get_settings()
    loop = DrainLoop(drain, backlog=None if index < settings.drain_loops else settings.drain_backlog_entries)
    ready.set()
    go.wait()
    cpu0 = _self_cpu()
    loop.start()
    stop.wait()
    loop.stop(timeout=None)
    results.put((loop.stats.as_dict(), _self_cpu() - cpu0))


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_drain(r: redis.Redis, n: int, processes: int | None = None) -> dict[str, float]:
    """The worker's drain on the pre-filled outbox, as the Procfile runs it: ``processes`` drain-loop
    processes (default :func:`drain_processes`; spawned, each connected before the clock starts), each running its drain loop
    (:func:`_drain_process`: every shard in turn, groups of batches, two persisters).  Timed from the start signal until
    every outbox stream is empty (each entry persisted, acknowledged and trimmed), polled every 2 ms;
    then the rows it added to ``usage_turn_key`` are counted (exactly ``n``, or RuntimeError).  Also returns
    the CPU per row of the drain processes and of the bench database's PostgreSQL backends
    (``/proc``), which stay meaningful on a loaded machine."""
    import multiprocessing

    from sqlalchemy import text

    from benchmarks.drain_cpu import Backends
    from worker.db import get_engine
    from worker.gate.keys import outbox_key
    from worker.settings import get_settings

    shards = range(get_settings().outbox_shards)
    processes = processes or drain_processes()
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(processes)]
    go, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_drain_process, args=(i, ready[i], go, stop, results)) for i in range(processes)]
    for p in procs:
        p.start()
    backends = Backends()
    with get_engine().connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one()
    try:
        for event in ready:
            if not event.wait(120):
                raise RuntimeError("a drain process did not start within 120 s")
        pg0 = backends.snapshot()
        t0 = time.perf_counter()
        go.set()
        deadline = t0 + 3600
        pipe = r.pipeline(transaction=False)
        while True:
            for s in shards:
                pipe.xlen(outbox_key(s))
            if not any(pipe.execute()):
                break
            if time.perf_counter() > deadline or not all(p.is_alive() for p in procs):
                raise RuntimeError("the drain processes did not empty the outbox")
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        pg_cpu = Backends.delta(pg0, backends.snapshot())
    finally:
        stop.set()
        try:
            outcomes = [results.get(timeout=120) for _ in procs]
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
            backends.conn.close()
            backends.engine.dispose()
    with get_engine().connect() as conn:
        persisted = conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one()
    inserted = sum(stats["inserted"] for stats, _cpu in outcomes)
    if persisted - before != n or inserted != n:
        raise RuntimeError(f"drain persisted {persisted} rows ({inserted} inserted), expected {n}: {outcomes}")
    return {
        "rows_per_s": n / elapsed,
        "batches": sum(stats["batches"] for stats, _cpu in outcomes),
        "seconds": elapsed,
        "processes": processes,
        "worker_cpu_us_per_row": sum(cpu for _stats, cpu in outcomes) / n * 1e6,
        "pg_cpu_us_per_row": pg_cpu / n * 1e6,
    }


#: rounds of the drain benchmark (:func:`bench_drain_rounds`): raw COPY, the drain loops, one loop
DRAIN_ROUNDS = 3


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median ``rows_per_s`` (its other figures with it)."""
    return sorted(rounds, key=lambda d: d["rows_per_s"])[len(rounds) // 2]


def bench_drain_rounds(r: redis.Redis, gate, trace_rows, n: int, batch_size: int) -> dict[str, Any]:
    """:data:`DRAIN_ROUNDS` rounds, each: the outbox pre-filled with ``n`` turns (the first round's
    is already, and the raw INSERT has read it), raw COPY of its rows (:func:`bench_raw_copy`, the
    unindexed variant in the first round only), the drain loops as the worker runs them
    (:func:`bench_drain`), then the outbox filled again and one drain loop alone.  The two cores'
    speed drifts by tens of per cent within a minute here, so each figure is the median round's,
    and each drain round is measured right after its COPY.  ``pg_bytes``: PostgreSQL per persisted
    turn after the first round's drain (:func:`pg_bytes_per_turn`, ``n`` rows in a fresh
    database).  Returns {"copy", "drain", "one": the median rounds' figures, each with ``rounds``
    (every round's rows/s), "pg_bytes"}."""
    copies: list[dict[str, Any]] = []
    drains: list[dict[str, Any]] = []
    ones: list[dict[str, Any]] = []
    pg_bytes = 0.0
    for k in range(DRAIN_ROUNDS):
        if k:
            prefill_outbox(gate, r, trace_rows, n, prefix=f"drain{k}")
        copies.append(bench_raw_copy(r, gate, batch_size, unindexed=not k))
        drains.append(bench_drain(r, n))
        if not k:
            pg_bytes = pg_bytes_per_turn(n)
        prefill_outbox(gate, r, trace_rows, n, prefix=f"one{k}")
        ones.append(bench_drain(r, n, processes=1))
    out: dict[str, Any] = {"pg_bytes": pg_bytes}
    for name, rounds in (("copy", copies), ("drain", drains), ("one", ones)):
        out[name] = {**_median_round(rounds), "rounds": [d["rows_per_s"] for d in rounds]}
    out["copy"]["unindexed_rows_per_s"] = copies[0]["unindexed_rows_per_s"]
    return out


def pg_bytes_per_turn(rows: int) -> float:
    """PostgreSQL bytes per persisted turn after the drain benchmark: ``pg_total_relation_size``
    (heap, TOAST, indexes) of every ``usage_row`` partition (the table under the ``usage_event``
    view, migration 0019), ``usage_price``, ``usage_turn_key`` and ``wallet_transaction``, over the ``rows`` the drain inserted (a fresh database: no bloat)."""
    from sqlalchemy import text

    from worker.db import get_engine

    with get_engine().connect() as conn:
        size = conn.execute(
            text(
                "SELECT (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('usage_row'))"
                " + pg_total_relation_size('usage_price') + pg_total_relation_size('usage_turn_key')"
                " + pg_total_relation_size('wallet_transaction')"
            )
        ).scalar_one()
    return int(size) / rows


def trace_for_run(path: Path, rows: int | None) -> tuple[Path, int, Path | None]:
    """The trace to replay (its first ``rows`` data rows in a temp copy); returns (path, rows, temp)."""
    lines = path.read_bytes().splitlines(keepends=True)
    if rows is None or rows >= len(lines) - 1:
        return path, len(lines) - 1, None
    fd, tmp = tempfile.mkstemp(prefix="tollgate-bench-", suffix=".csv")
    with os.fdopen(fd, "wb") as fh:
        fh.writelines(lines[: rows + 1])
    return Path(tmp), rows, Path(tmp)


def start_warm_worker(run_id: str) -> tuple[subprocess.Popen, Path, float]:
    """A Celery worker like the replay's own (prefork, concurrency 2, queue tollgate.usage), logged at
    INFO so its ``ready.`` line can be waited for.  Returns (process, log, boot seconds)."""
    from worker.devtools.workers import start_celery_worker, wait_ready

    log_path = Path(tempfile.gettempdir()) / f"tollgate-bench-worker-{run_id}.log"
    proc = start_celery_worker(f"bench-{run_id}", log_path, cwd=REPO)
    return proc, log_path, wait_ready(proc, log_path)


def warm_up_worker(log_path: Path) -> None:
    """Run one empty drain in each pool child, so imports, engine and connections are warm."""
    from worker.celery_app import app

    for _ in range(2):
        app.send_task("tollgate.usage.drain_outbox", kwargs={})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(re.findall(rb"drain_outbox\[[^\]]+\] succeeded", log_path.read_bytes())) >= 2:
            return
        time.sleep(0.05)


def stop_worker(proc: subprocess.Popen) -> None:
    from worker.devtools.workers import stop_process_group

    stop_process_group(proc)


def bench_replay(r: redis.Redis, trace: Path, rows: int) -> dict[str, float]:
    """replay() end to end: with its own (cold) worker, then with a pre-started warm worker."""
    from worker.devtools.replay import replay

    result: dict[str, float] = {"rows": rows}
    r.flushdb()
    t0 = time.perf_counter()
    cold = replay(trace, fmt="azure", model=MODEL, provider=PROVIDER, start_worker=True)
    result["cold_call_s"] = time.perf_counter() - t0
    if cold.turns_persisted != rows:
        raise RuntimeError(f"cold replay persisted {cold.turns_persisted} of {rows}")
    result["cold_turns_per_s"] = cold.turns_per_s
    result["cold_wall_s"] = cold.wall_s

    r.flushdb()
    run_id = uuid.uuid4().hex[:8]
    proc, log_path, boot_s = start_warm_worker(run_id)
    try:
        result["worker_boot_s"] = boot_s
        warm_up_worker(log_path)
        warm = replay(trace, fmt="azure", model=MODEL, provider=PROVIDER, start_worker=False)
    finally:
        stop_worker(proc)
    if warm.turns_persisted != rows:
        raise RuntimeError(f"warm replay persisted {warm.turns_persisted} of {rows}")
    result["warm_turns_per_s"] = warm.turns_per_s
    result["warm_wall_s"] = warm.wall_s
    return result


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help=f"Azure conv trace CSV (default {DEFAULT_TRACE} if present, else the bundled sample)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test, < 30 s)")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object on the last line")
    args = parser.parse_args(argv)
    from benchmarks.soak.stack import raise_on_sigterm

    raise_on_sigterm()  # a SIGTERM runs the finally blocks that stop its celery worker and redis-server
    sizes = QUICK if args.quick else FULL
    trace_path = args.trace or (DEFAULT_TRACE if DEFAULT_TRACE.is_file() else BUNDLED_TRACE)

    from worker.devtools.traces import read_trace
    from worker.gate.gate import WalletGate
    from worker.settings import get_settings

    settings = get_settings()
    assert settings.redis_url == BENCH_REDIS_URL and settings.database_url == BENCH_DB_URL
    started = time.perf_counter()
    r = redis.Redis.from_url(BENCH_REDIS_URL, decode_responses=True)
    r.ping()
    r.flushdb()
    log.print(f"[dim]setup: {BENCH_REDIS_URL} flushed, recreating {BENCH_DB_URL} …[/]")
    reset_database()
    machine = machine_info(r)
    trace_rows = read_trace(trace_path, "azure")
    gate = WalletGate(r, settings=settings, kicker=lambda shard: None)
    open_wallets(gate)

    log.print("[dim]raw Redis EVALSHA …[/]")
    raw_redis = bench_raw_redis(r, sizes)
    log.print("[dim]gate record_turn …[/]")
    ours_gate = bench_gate(gate, trace_rows, sizes)
    log.print(f"[dim]pipelined: raw EVALSHA and record_turns, {ROUNDS} rounds each, alternating …[/]")
    pipelined = bench_pipelined(r, gate, trace_rows, sizes)
    log.print(f"[dim]Redis memory of {sizes.memory:,} turns, queued and remembered …[/]")
    memory = bench_memory(settings, trace_rows, sizes.memory)
    log.print(f"[dim]pre-filling the outbox with {sizes.drain:,} turns …[/]")
    mem = prefill_outbox(gate, r, trace_rows, sizes.drain)
    log.print("[dim]raw PostgreSQL INSERT …[/]")
    raw_pg = bench_raw_insert(r, gate, settings.outbox_batch_size)
    raw_stream = raw_stream_bytes(r, gate)
    log.print(f"[dim]raw PostgreSQL COPY and the drain, {DRAIN_ROUNDS} rounds alternating …[/]")
    drains = bench_drain_rounds(r, gate, trace_rows, sizes.drain, settings.outbox_batch_size)
    raw_copy, ours_drain, one_drain, pg_bytes = drains["copy"], drains["drain"], drains["one"], drains["pg_bytes"]
    replay_path, replay_rows, tmp = trace_for_run(trace_path, sizes.trace_rows)
    log.print(f"[dim]replay of {replay_rows:,} turns (cold worker, then warm worker) …[/]")
    try:
        e2e = bench_replay(r, replay_path, replay_rows)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    r.flushdb()
    total_s = time.perf_counter() - started
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)

    figures = [
        Figure("raw_evalsha_p50_us", "raw EVALSHA (1 HINCRBY) p50", raw_redis["p50_us"], "µs"),
        Figure("raw_evalsha_p99_us", "raw EVALSHA (1 HINCRBY) p99", raw_redis["p99_us"], "µs"),
        Figure(
            "raw_evalsha_pipelined_per_s",
            f"raw EVALSHA pipelined ×{BATCH} (median)",
            pipelined["calls_per_s"],
            "calls/s",
        ),
        Figure("record_turn_p50_us", "record_turn p50", ours_gate["p50_us"], "µs", raw_redis["p50_us"], "EVALSHA p50"),
        Figure("record_turn_p99_us", "record_turn p99", ours_gate["p99_us"], "µs", raw_redis["p99_us"], "EVALSHA p99"),
        Figure(
            "record_turn_p999_us",
            "record_turn p99.9",
            ours_gate["p999_us"],
            "µs",
            raw_redis["p999_us"],
            "EVALSHA p99.9",
        ),
        Figure(
            "record_turns_pipelined_per_s",
            f"record_turns pipelined ×{BATCH} (median)",
            pipelined["turns_per_s"],
            "turns/s",
            pipelined["calls_per_s"],
            "EVALSHA calls/s",
        ),
        Figure(
            "raw_insert_rows_per_s",
            f"raw PG multi-row INSERT ×{settings.outbox_batch_size}, usage_row shape, {raw_pg['indexes']} indexes",
            raw_pg["rows_per_s"],
            "rows/s",
        ),
        Figure(
            "raw_insert_unindexed_rows_per_s",
            "  before: wide rows, no index (LIKE the view)",
            raw_pg["unindexed_rows_per_s"],
            "rows/s",
        ),
        Figure(
            "raw_copy_rows_per_s",
            f"raw PG COPY ×{settings.outbox_batch_size}, usage_row shape, {raw_copy['indexes']} indexes",
            raw_copy["rows_per_s"],
            "rows/s",
        ),
        Figure(
            "raw_copy_unindexed_rows_per_s",
            "  before: wide rows, no index (LIKE the view)",
            raw_copy["unindexed_rows_per_s"],
            "rows/s",
        ),
        Figure(
            "drain_rows_per_s",
            f"drain loops, {ours_drain['processes']} process(es) as the worker runs them ({sizes.drain:,} turns)",
            ours_drain["rows_per_s"],
            "rows/s",
            raw_pg["rows_per_s"],
            "INSERT rows/s",
        ),
        Figure(
            "drain_vs_copy",
            "  drain loops vs COPY",
            ours_drain["rows_per_s"],
            "rows/s",
            raw_copy["rows_per_s"],
            "COPY rows/s",
        ),
        Figure(
            "drain_one_process_rows_per_s",
            "  drain loop, 1 process",
            one_drain["rows_per_s"],
            "rows/s",
            raw_copy["rows_per_s"],
            "COPY rows/s",
        ),
        Figure(
            "outbox_bytes_per_entry",
            "outbox stream memory / entry",
            mem["stream_bytes_per_entry"],
            "B",
            raw_stream,
            "plain stream, same fields",
        ),
        Figure("outbox_payload_bytes", "  of which JSON payload 't'", mem["payload_bytes"], "B"),
        Figure("dedupe_key_bytes", "remembered turn_id, MEMORY USAGE / turn", mem["dedupe_key_bytes"], "B"),
        Figure(
            "redis_bytes_per_turn",
            f"Redis used_memory / queued turn ({memory['turns']:,}, own server)",
            memory["queued_bytes_per_turn"],
            "B",
            QUEUED_TURN_TARGET_BYTES,
            "target",
        ),
        Figure(
            "redis_bytes_per_remembered_turn",
            f"Redis used_memory / remembered turn_id ({memory['turns']:,}, own server)",
            memory["remembered_bytes_per_turn"],
            "B",
            REMEMBERED_TURN_TARGET_BYTES,
            "target",
        ),
        Figure(
            "remembered_turn_usage_bytes",
            "  MEMORY USAGE of its hashes / turn_id",
            memory["seen_usage_bytes_per_turn"],
            "B",
        ),
        Figure(
            "pg_bytes_per_persisted_turn",
            "PostgreSQL / persisted turn (usage, key, ledger)",
            pg_bytes,
            "B",
            PERSISTED_TURN_TARGET_BYTES,
            "target",
        ),
        Figure(
            "replay_cold_turns_per_s",
            "replay end to end (own worker)",
            e2e["cold_turns_per_s"],
            "turns/s",
            TARGET_TURNS_PER_S,
            "target",
        ),
        Figure(
            "replay_cold_vs_insert",
            "  replay (own worker) vs raw INSERT",
            e2e["cold_turns_per_s"],
            "turns/s",
            raw_pg["rows_per_s"],
            "INSERT rows/s",
        ),
        Figure("replay_cold_wall_s", "  wall, first turn → last persisted", e2e["cold_wall_s"], "s"),
        Figure("replay_cold_call_s", "  replay() call incl. worker start/stop", e2e["cold_call_s"], "s"),
        Figure("worker_boot_s", "celery worker boot (to ready.)", e2e["worker_boot_s"], "s"),
        Figure(
            "replay_warm_turns_per_s",
            "replay end to end (warm worker)",
            e2e["warm_turns_per_s"],
            "turns/s",
            TARGET_TURNS_PER_S,
            "target",
        ),
        Figure("replay_warm_wall_s", "  wall, first turn → last persisted", e2e["warm_wall_s"], "s"),
    ]

    out.print(f"[bold]tollgate pipeline benchmark[/] — {machine['date']}  ({'quick' if args.quick else 'full'} mode)")
    out.print(
        f"machine: {machine['nproc']} CPU(s), {machine['cpu']} · Python {machine['python']} · "
        f"Redis {machine['redis']} · PostgreSQL {machine['postgresql']} · load avg (1 min) at start "
        f"{machine['loadavg_1m']}, at end {machine['loadavg_1m_end']}"
    )
    out.print(
        f"libs: redis-py {machine['redis_py']} (hiredis: {machine['hiredis']}) · SQLAlchemy "
        f"{machine['sqlalchemy']} · psycopg {machine['psycopg']} · celery {machine['celery']}"
    )
    out.print(f"code: {machine['code']}")
    out.print(f"trace: {trace_path} ({replay_rows:,} turns replayed)")
    out.print(
        f"namespaces: Redis {BENCH_REDIS_URL} · PostgreSQL {BENCH_DB_URL.rsplit('/', 1)[-1]} · "
        f"outbox shards {settings.outbox_shards}, drain batch {settings.outbox_batch_size}, "
        f"{WALLETS} wallets × {CHATS} chats × {AGENTS} agents"
    )
    table = Table(title="ratio = ours / raw (latency: >1 is slower; throughput: <1 is slower)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("raw baseline", justify="right")
    table.add_column("ratio", justify="right")
    for f in figures:
        raw = f"{fmt_num(f.raw)} ({f.raw_label})" if f.raw is not None else "—"
        table.add_row(f.label, fmt_num(f.value), f.unit, raw, f"{f.ratio:.2f}×" if f.ratio is not None else "—")
    out.print(table)
    out.print(
        "[dim]pipelined rounds (raw calls/s → ours turns/s, ratio): "
        + " · ".join(
            f"{fmt_num(a)} → {fmt_num(b)} ({b / a:.2f}×)"
            for a, b in zip(pipelined["raw_rounds"], pipelined["ours_rounds"])
        )
        + "[/]"
    )
    out.print(
        "[dim]drain rounds (raw COPY rows/s → drain loops · one loop rows/s, ratios to COPY): "
        + " · ".join(
            f"{fmt_num(c)} → {fmt_num(d)} ({d / c:.2f}×) · {fmt_num(o)} ({o / c:.2f}×)"
            for c, d, o in zip(drains["copy"]["rounds"], drains["drain"]["rounds"], drains["one"]["rounds"])
        )
        + "[/]"
    )
    targets = (
        (
            "redis_bytes_per_turn",
            f"Redis ≤ {QUEUED_TURN_TARGET_BYTES} B / queued turn",
            lambda f: f.value <= QUEUED_TURN_TARGET_BYTES,
        ),
        (
            "redis_bytes_per_remembered_turn",
            f"Redis ≤ {REMEMBERED_TURN_TARGET_BYTES} B / remembered turn_id",
            lambda f: f.value <= REMEMBERED_TURN_TARGET_BYTES,
        ),
        (
            "pg_bytes_per_persisted_turn",
            f"PostgreSQL ≤ {PERSISTED_TURN_TARGET_BYTES} B / persisted turn",
            lambda f: f.value <= PERSISTED_TURN_TARGET_BYTES,
        ),
        ("record_turn_p99_us", "gate p99 < 1 ms", lambda f: f.value < 1000),
        ("record_turns_pipelined_per_s", "pipelined gate ≥ 40 % of raw EVALSHA", lambda f: f.ratio >= 0.40),
        ("drain_rows_per_s", "drain ≥ 30 % of raw INSERT", lambda f: f.ratio >= 0.30),
        ("drain_vs_copy", "drain ≥ 50 % of raw COPY (issue 16)", lambda f: f.ratio >= 0.50),
    )
    verdicts = {}
    for key, label, ok in targets:
        f = next(f for f in figures if f.key == key)
        ratio = f", ratio {f.ratio:.2f}×" if f.ratio is not None else ""
        out.print(
            f"target {label}: {'[green]PASS[/]' if ok(f) else '[red]FAIL[/]'} ({fmt_num(f.value)} {f.unit}{ratio})"
        )
        verdicts[key] = "PASS" if ok(f) else "FAIL"
    out.print(
        f"[dim]memory measured on {memory['server']}; remembered turn_ids: {memory['encodings']} sub-hashes "
        f"by encoding; a turn_id is remembered "
        f"{settings.dedupe_ttl_s / 3600:g} h to {2 * settings.dedupe_ttl_s / 3600:g} h (dedupe_ttl_s)[/]"
    )
    for key, label in (("replay_cold_turns_per_s", "own worker"), ("replay_warm_turns_per_s", "warm worker")):
        value = next(f.value for f in figures if f.key == key)
        ok = value >= TARGET_TURNS_PER_S
        verdicts[key] = "PASS" if ok else "FAIL"
        note = (
            f" [dim](quick mode: a {replay_rows:,}-turn prefix, where fixed start/finish latencies weigh; "
            f"judge the target on a full run)[/]"
            if args.quick
            else ""
        )
        out.print(
            f"target ≥ {TARGET_TURNS_PER_S:,} turns/s end to end ({label}): "
            f"{'[green]PASS[/]' if ok else '[red]FAIL[/]'} ({value:,.0f} turns/s){note}"
        )
    out.print(f"[dim]benchmark took {total_s:.1f} s[/]")

    if args.json:
        payload = {
            "machine": machine,
            "mode": "quick" if args.quick else "full",
            "trace": str(trace_path),
            "turns_replayed": replay_rows,
            "target_turns_per_s": TARGET_TURNS_PER_S,
            "figures": {
                f.key: {
                    "value": round(f.value, 3),
                    "unit": f.unit,
                    "raw": round(f.raw, 3) if f.raw is not None else None,
                    "ratio": round(f.ratio, 4) if f.ratio is not None else None,
                }
                for f in figures
            },
            "verdicts": verdicts,
            "drain_batches": ours_drain["batches"],
            "drain_processes": ours_drain["processes"],
            "drain_worker_cpu_us_per_row": round(ours_drain["worker_cpu_us_per_row"], 2),
            "drain_pg_cpu_us_per_row": round(ours_drain["pg_cpu_us_per_row"], 2),
            "drain_one_process_worker_cpu_us_per_row": round(one_drain["worker_cpu_us_per_row"], 2),
            "drain_one_process_pg_cpu_us_per_row": round(one_drain["pg_cpu_us_per_row"], 2),
            "drain_rounds": {
                "raw_copy_rows_per_s": [round(x) for x in drains["copy"]["rounds"]],
                "drain_rows_per_s": [round(x) for x in drains["drain"]["rounds"]],
                "drain_one_process_rows_per_s": [round(x) for x in drains["one"]["rounds"]],
            },
            "pipelined_rounds": {
                "raw_calls_per_s": [round(x) for x in pipelined["raw_rounds"]],
                "ours_turns_per_s": [round(x) for x in pipelined["ours_rounds"]],
            },
            "elapsed_s": round(total_s, 1),
        }
        sys.stdout.flush()
        print(json.dumps(payload, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
