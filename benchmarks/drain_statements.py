"""PostgreSQL CPU per drained row, statement by statement: where the drain's backend time goes.

Run from the repository root::

    .venv/bin/python -m benchmarks.drain_statements [--turns 20000] [--explain]

Fills the (flushed) outbox of the bench namespaces with ``--turns`` accepted turns of the bench's
synthetic spread (``benchmarks.bench_pipeline.make_turns``), parses them shard by shard as the drain
reads them, and persists them in ``outbox_batch_size`` batches with ``persist_turns``' own steps and
SQL (``worker.ledger.turns``), run one statement at a time instead of in one pipeline: the staging
tables' reset, the binary staging COPY, every statement of ``_STATEMENTS`` (the turn keys by the
plain insert a batch of fresh turns takes), and the ``COMMIT``.  Around each, the backend's CPU
time is read from ``/proc/<pid>/schedstat`` (nanoseconds on CPU, not the 10 ms ticks of
``/proc/<pid>/stat``), so the figures hold on a loaded machine.  Prints µs of PostgreSQL CPU per
row for each step (the first two batches left out, warm-up) as JSON.  ``--explain`` prints
``EXPLAIN (ANALYZE, BUFFERS, VERBOSE)`` of each statement of the sixth batch instead of timing it.
Namespaces: ``TOLLGATE_BENCH_REDIS_URL`` (flushed) and ``TOLLGATE_BENCH_DATABASE_URL`` (recreated).
"""

from __future__ import annotations

from benchmarks.namespaces import BENCH_REDIS_URL, use_bench_namespaces

use_bench_namespaces()

import argparse  # noqa: E402
import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

#: a name for each statement of ``worker.ledger.turns._STATEMENTS``, by what it starts with
_NAMES = (
    ("WITH fresh AS (INSERT INTO usage_turn_key", "turn_keys"),
    ("INSERT INTO usage_price", "usage_price"),
    ("INSERT INTO usage_row", "usage_row"),
    ("INSERT INTO tollgate_drain_groups", "fill_groups"),
    ("SELECT 1 FROM wallet", "wallet_lock"),
    ("WITH agg AS", "wallet_debit"),
    ("WITH g AS MATERIALIZED", "chats_agents_marks"),
    ("SELECT count(pg_advisory_xact_lock_shared", "rollup_locks"),
    ("INSERT INTO billing_rollup", "billing_rollup"),
    ("INSERT INTO chat_rollup", "chat_rollup"),
)


def _cpu_ns(pid: int) -> int:
    """Nanoseconds the process ``pid`` has spent on a CPU (``/proc/<pid>/schedstat``, first field)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _name(sql: str, i: int) -> str:
    return next((name for start, name in _NAMES if sql.startswith(start)), f"statement_{i}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drain_statements", description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20_000, help="turns (default 20,000)")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the sixth batch's statements")
    args = parser.parse_args(argv)

    from sqlmodel import Session

    from benchmarks import bench_pipeline as bp
    from models.turn import turn_key_bytes
    from worker.db import get_engine
    from worker.devtools.traces import read_trace
    from worker.gate.gate import WalletGate
    from worker.gate.keys import outbox_key
    from worker.gate.outbox import parse_entry
    from worker.ledger import turns as T
    from worker.settings import get_settings

    settings = get_settings()
    r = redis.Redis.from_url(BENCH_REDIS_URL, decode_responses=True)
    r.flushdb()
    bp.reset_database()
    trace = bp.DEFAULT_TRACE if bp.DEFAULT_TRACE.is_file() else bp.BUNDLED_TRACE
    gate = WalletGate(r, settings=settings, kicker=lambda shard: None)
    bp.open_wallets(gate)
    turns = bp.make_turns("stmts", args.turns, read_trace(trace, "azure"))
    for i in range(0, len(turns), bp.BATCH):
        if not all(d.accepted for d in gate.record_turns(turns[i : i + bp.BATCH])):
            raise RuntimeError("a bench turn was denied")
    rows: list[dict[str, Any]] = []
    for shard in range(settings.outbox_shards):  # shard by shard, in stream order, as the drain reads
        entries: Any = r.xrange(outbox_key(shard))  # decoded: [(id, fields)]
        rows.extend(parse_entry(fields, f"{shard}:{sid}") for sid, fields in entries)
    r.flushdb()
    statements = (getattr(T, "_FAST_KEYS", T._STATEMENTS[0]), *T._STATEMENTS[1:])
    size = settings.outbox_batch_size
    spent: dict[str, list[int]] = defaultdict(list)
    engine = get_engine()
    window = T.drain_window()
    for batch_no, start in enumerate(range(0, len(rows), size)):
        first: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in rows[start : start + size]:
            first.setdefault((row["enterprise_id"], row["wallet_id"], row["turn_id"]), row)
        with Session(engine) as session:
            conn = T._psycopg(session)
            row0 = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row0 is not None
            pid = row0[0]
            with conn.cursor() as cur:
                t0 = _cpu_ns(pid)
                cur.execute(f"{T._CREATE_STAGE};\n{T._CREATE_GROUPS};\nDELETE FROM {T.STAGE};\nDELETE FROM {T.GROUPS}")
                t1 = _cpu_ns(pid)
                cur.adapters.register_dumper(None, T._KeyDumper)
                with cur.copy(T._COPY_STAGE) as copy:
                    copy.set_types(T._STAGE_TYPES)
                    for i, ((enterprise_id, wallet_id, turn_id), row) in enumerate(first.items()):
                        key = turn_key_bytes(enterprise_id, wallet_id, turn_id)
                        copy.write_row((i, key, T.chat_order(row["outbox_id"]), *T._stage_values(row, window)))
                t2 = _cpu_ns(pid)
                spent["stage_reset"].append(t1 - t0)
                spent["stage_copy"].append(t2 - t1)
                for i, sql in enumerate(statements):
                    params = {"staged": len(first)} if i == 0 else None
                    if args.explain and batch_no == 5:
                        plan = cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, VERBOSE) {sql}", params).fetchall()
                        print(f"--- {_name(sql, i)}\n" + "\n".join(line for (line,) in plan))
                        continue
                    before = _cpu_ns(pid)
                    cur.execute(sql, params, prepare=True)
                    spent[_name(sql, i)].append(_cpu_ns(pid) - before)
            before = _cpu_ns(pid)
            session.commit()
            spent["commit"].append(_cpu_ns(pid) - before)
    figures = {name: sum(ns[2:]) / (len(ns[2:]) * size) / 1000 for name, ns in spent.items() if ns[2:]}
    figures["total"] = sum(figures.values())
    print(json.dumps({name: round(us, 2) for name, us in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
