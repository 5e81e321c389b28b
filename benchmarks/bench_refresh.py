"""The workflow rollup refresh of one big group (issue 16, outbox lag p99): what one
:func:`worker.chats.rollups.refresh_rollup` costs when the group's month holds ``--events`` usage
events, in CPU (this process and the PostgreSQL backend), wall time, statements and rows read.

Run (the bench database is dropped and re-created unless ``--reuse``)::

    TOLLGATE_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_bench_<you> \\
    PYTHONPATH=. .venv/bin/python benchmarks/bench_refresh.py [--events 1000000] [--chats 300] [--repeat 10]

To compare two versions of the code, seed once with this one, then run the script file with
``PYTHONPATH`` pointing at the other checkout and ``--reuse`` (it only imports
``worker.chats.rollups.refresh_rollup`` and the session helpers, so it runs against older code).

**Data**: app ``big``, workflow ``wf``, November 2026: ``--events`` LLM turns through the
``usage_event`` view (``INSERT … SELECT generate_series``), evenly spread over the month, of
``--chats`` chats interleaved (turn ``i`` belongs to chat ``i mod chats``), 6 agents, 3 wallets (a
chat's wallet, every 50th turn paid by the next wallet); ``chat_session`` as the drain leaves it
(every 4th chat completed a minute after its last turn); then the drain-kept rollups recomputed from
the events with the repair path (:func:`worker.chats.rollups.refresh_billing_rollups`) and
``VACUUM ANALYZE``.  Parallel query is off for the database, so a statement's whole work is in its
backend.

**Timing**: ``--repeat`` refreshes after one warm-up, each in its own transaction rolled back (so
each writes a new row, as a refresh after new turns does).  Per refresh: wall ms (median), CPU ms of
this process (``getrusage``) and of its backend (``/proc/<pid>/stat``; CPU holds on a loaded
machine, wall does not), the statements sent, and the rows the backend read
(``pg_stat_xact_user_tables``: ``seq_tup_read + idx_tup_fetch`` over every table and partition).
The printed digest is the SHA-256 of the document's JSON: equal digests, equal documents.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks.namespaces import BENCH_DB_URL, use_bench_namespaces

use_bench_namespaces()

from sqlalchemy import event, text  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GROUP = ("big", "wf", "2026-11")
_ROWS_READ = "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables"


def _seed(engine, events: int, chats: int) -> None:
    """Load the group (see the module docstring) and repair its rollups."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from models.wallet import Enterprise
    from worker.chats.rollups import refresh_billing_rollups

    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS usage_event_2026_11 PARTITION OF usage_row "
                "FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')"
            )
        )
        conn.execute(insert(Enterprise.__table__).values(id="big", name="Big App"))  # with the model's defaults
        conn.execute(
            text(
                "INSERT INTO wallet (id, enterprise_id, owner_id, level, mode, currency, limited) "
                "SELECT 'w-' || g, 'big', 'u-' || g, 'app_usage', 'production', 'USD', true "
                "FROM generate_series(0, 2) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                "billed_nanos, action, occurred_at) "
                "SELECT 't-' || i, '0:' || i || '-0', 'w-' || ((i % :c + (i % 50 = 0)::int) % 3), 'big', "
                "'c-' || (i % :c), 'wf', 'agent-' || (i % 6), 'gpt-4o', 'openai', 'production', "
                "1000 + i % 5000, 100 + i % 700, (i % 4) * 100, 300 + i % 4999, 2500000000, 1250000000, "
                "10000000000, 2500 * (1000 + i % 5000 - (i % 4) * 100) + 1250 * (i % 4) * 100 "
                "+ 10000 * (100 + i % 700), 2500 * (1000 + i % 5000 - (i % 4) * 100) + 1250 * (i % 4) * 100 "
                "+ 10000 * (100 + i % 700), 'continue', "
                "timestamptz '2026-11-01 00:00+00' + i * (interval '30 days' / :n) "
                "FROM generate_series(0, :n - 1) i"
            ),
            {"n": events, "c": chats},
        )
        conn.execute(
            text(
                "INSERT INTO chat_session (enterprise_id, chat_id, wallet_id, workflow, status, started_at, "
                "last_turn_at, ended_at, turns, prompt_tokens, completion_tokens, cached_prompt_tokens, "
                "cost_nanos, billed_nanos) SELECT enterprise_id, chat_id, min(wallet_id), 'wf', "
                "CASE WHEN substr(chat_id, 3)::int % 4 = 0 THEN 'completed' ELSE 'active' END, "
                "min(occurred_at), max(occurred_at), "
                "CASE WHEN substr(chat_id, 3)::int % 4 = 0 THEN max(occurred_at) + interval '1 minute' END, "
                "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_prompt_tokens), "
                "sum(cost_nanos), sum(billed_nanos) FROM usage_event GROUP BY enterprise_id, chat_id"
            )
        )
        with Session(bind=conn) as session:
            refresh_billing_rollups(session, *GROUP)
            session.flush()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    """Seed (unless ``--reuse``), then time ``--repeat`` refreshes and print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--chats", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--reuse", action="store_true", help="keep the bench database seeded by a previous run")
    ap.add_argument("--label", default="", help="printed with the figures (e.g. before / after)")
    args = ap.parse_args()

    from sqlmodel import Session

    from worker.chats.rollups import refresh_rollup
    from worker.db import engine_for
    from worker.ledger.migrate import recreate_database

    if not args.reuse:
        recreate_database(BENCH_DB_URL)
    engine = engine_for(BENCH_DB_URL)
    started = time.perf_counter()
    if not args.reuse:
        _seed(engine, args.events, args.chats)
        with engine.begin() as conn:
            db = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.execute(text(f'ALTER DATABASE "{db}" SET max_parallel_workers_per_gather = 0'))
        engine.dispose()
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM usage_event WHERE enterprise_id = 'big'")).scalar_one()
        conn.execute(text("DELETE FROM workflow_rollup"))
        conn.commit()
    seeded = time.perf_counter() - started

    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    walls, own, backend, reads, counts, digests = [], [], [], [], [], set()
    for i in range(args.repeat + 1):
        with Session(engine) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            read0 = session.execute(text(_ROWS_READ)).scalar_one()
            statements.clear()
            b0, s0, t0 = _proc_cpu(pid), _self_cpu(), time.perf_counter()
            row = refresh_rollup(session, *GROUP)
            t1, s1, b1 = time.perf_counter(), _self_cpu(), _proc_cpu(pid)
            sent = len(statements)
            read1 = session.execute(text(_ROWS_READ)).scalar_one()
            digests.add(hashlib.sha256(json.dumps(row.document).encode()).hexdigest())
            session.rollback()
        if i:  # the first is the warm-up
            walls.append(t1 - t0)
            own.append(s1 - s0)
            backend.append(b1 - b0)
            reads.append(int(read1) - int(read0))
            counts.append(sent)
    result = {
        "label": args.label,
        "events": int(events),
        "chats": args.chats,
        "seed_s": round(seeded, 1),
        "refreshes": args.repeat,
        "wall_ms_median": round(statistics.median(walls) * 1000, 1),
        "wall_ms_max": round(max(walls) * 1000, 1),
        "client_cpu_ms_mean": round(statistics.mean(own) * 1000, 1),
        "backend_cpu_ms_mean": round(statistics.mean(backend) * 1000, 1),
        "statements": sorted(set(counts)),
        "rows_read": sorted(set(reads)),
        "document_sha256": sorted(digests),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    if len(digests) != 1:
        sys.exit("the refreshes computed different documents")


if __name__ == "__main__":
    main()
