"""The /billing drill-down views on a big app: server time of a conversation page (first and last
turn page), a workflow page and a date-range view for an app with 1,000,000 usage events over three
monthly partitions, and the plan of each query (no sequential scan of ``usage_event``).

Run::

    TOLLGATE_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_bench_<you> \\
    TOLLGATE_BENCH_REDIS_URL=redis://127.0.0.1:6379/<your bench db> \\
    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_drill [--events 1000000] [--repeat 20]

It drops, recreates and migrates the bench database.  The app ``big`` gets ``--events`` LLM turns,
120 consecutive turns per conversation (7.8 s apart, from 2026-09-01: September to November), five
workflows, three agents, 100 wallets; ``chat_session``/``chat_agent_usage`` as the drain leaves them
and every workflow × month rolled up.  Each view is requested ``--repeat`` times in-process (FastAPI
TestClient, owner key) and reported as the median wall time and the mean CPU time per request of
this process (``getrusage``: routing, rendering) and of the PostgreSQL backends (``/proc/<pid>/stat``
of every backend of the bench database, before and after; parallel query off, so all the work is
in them): CPU figures hold on a busy machine, wall times do not.  ``--reuse`` skips the seeding.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

from benchmarks.namespaces import BENCH_DB_URL, use_bench_namespaces

use_bench_namespaces()
# one backend per query (no parallel workers, whose CPU would not show in the backend's /proc stat):
# the PG CPU figures are then the whole work of each request
PARALLEL_OFF = "ALTER DATABASE {db} SET max_parallel_workers_per_gather = 0"

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MONTHS = ("2026-09", "2026-10", "2026-11")


def _seed(engine, events: int) -> None:
    from sqlalchemy import insert

    from models.wallet import Enterprise

    with engine.begin() as conn:
        for p in MONTHS:
            y, m = map(int, p.split("-"))
            nxt = f"{y + (m == 12)}-{m % 12 + 1:02d}-01"
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS usage_event_{y}_{m:02d} PARTITION OF usage_row "
                    f"FOR VALUES FROM ('{p}-01 00:00+00') TO ('{nxt} 00:00+00')"
                )
            )
        conn.execute(insert(Enterprise.__table__).values(id="big", name="Big App"))
        conn.execute(
            text(
                "INSERT INTO wallet (id, enterprise_id, owner_id, level, mode, currency, limited) "
                "SELECT 'w-' || g, 'big', 'u-' || g, 'app_usage', 'production', 'USD', true "
                "FROM generate_series(0, 99) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                "billed_nanos, action, occurred_at) "
                "SELECT 't-' || i, '0:' || i || '-0', 'w-' || (i / 120 % 100), 'big', 'c-' || (i / 120), "
                "'wf-' || (i / 120 % 5), 'agent-' || (i % 3), 'gpt-4o', 'openai', 'production', "
                "1000 + i % 5000, 100 + i % 700, (i % 4) * 100, 500 + i % 900, 2500000000, 1250000000, "
                "10000000000, 2500 * (1000 + i % 5000 - (i % 4) * 100) + 1250 * (i % 4) * 100 "
                "+ 10000 * (100 + i % 700), 2500 * (1000 + i % 5000 - (i % 4) * 100) + 1250 * (i % 4) * 100 "
                "+ 10000 * (100 + i % 700), 'continue', "
                "timestamptz '2026-09-01 00:00+00' + i * interval '7.8 seconds' "
                "FROM generate_series(0, :n - 1) i"
            ),
            {"n": events},
        )
        conn.execute(
            text(
                "INSERT INTO chat_session (enterprise_id, chat_id, wallet_id, workflow, status, started_at, "
                "last_turn_at, turns, prompt_tokens, completion_tokens, cached_prompt_tokens, cost_nanos, "
                "billed_nanos) SELECT enterprise_id, chat_id, min(wallet_id), min(workflow), 'completed', "
                "min(occurred_at), max(occurred_at), count(*), sum(prompt_tokens), sum(completion_tokens), "
                "sum(cached_prompt_tokens), sum(cost_nanos), sum(billed_nanos) FROM usage_event "
                "WHERE enterprise_id = 'big' GROUP BY enterprise_id, chat_id"
            )
        )
        conn.execute(
            text(
                "INSERT INTO chat_agent_usage (chat_session_id, agent, turns, duration_ms, prompt_tokens, "
                "completion_tokens, cached_prompt_tokens, cost_nanos) SELECT s.id, u.agent, count(*), "
                "sum(u.duration_ms), sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.cached_prompt_tokens), "
                "sum(u.cost_nanos) FROM usage_event u JOIN chat_session s ON s.enterprise_id = u.enterprise_id "
                "AND s.chat_id = u.chat_id WHERE u.enterprise_id = 'big' GROUP BY s.id, u.agent"
            )
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def _backend_cpu(engine) -> float:
    """CPU seconds used so far by every other backend connected to the bench database (``engine``:
    one of its own, not the app's pool, whose connections it would otherwise leave out)."""
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        ).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / TICK


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    """Seed, then time each view and print its plan summary (see the module docstring)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="keep the bench database seeded by a previous run")
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from api_stub.app import create_app
    from worker.access.apikeys import create_key
    from worker.chats.rollups import refresh_billing_rollups, refresh_rollup
    from worker.db import engine_for, session_scope
    from worker.ledger.migrate import recreate_database

    if not args.reuse:
        recreate_database(BENCH_DB_URL)
    engine = engine_for(BENCH_DB_URL)
    started = time.perf_counter()
    if not args.reuse:
        _seed(engine, args.events)
    with engine.begin() as conn:  # new connections (the app's too) run without parallel workers
        db = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(PARALLEL_OFF.format(db=f'"{db}"')))
    engine.dispose()
    with session_scope() as session:
        if not args.reuse:
            for w in range(5):
                for p in MONTHS:
                    refresh_rollup(session, "big", f"wf-{w}", p)
                    refresh_billing_rollups(session, "big", f"wf-{w}", p)  # events seeded past the drain
        key = create_key(session, role="owner", enterprise_id="big")
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM usage_event WHERE enterprise_id = 'big'")).scalar_one()
    print(
        f"{events:,} events of app 'big' ({'reused' if args.reuse else 'seeded'} in {time.perf_counter() - started:.1f} s)"
    )
    args.events = int(events)

    last_chat = f"c-{(args.events - 1) // 120}"
    client = TestClient(create_app())
    headers = {"Authorization": f"Bearer {key}"}
    # the last page of the newest chat: follow its cursor once
    first = client.get(f"/billing/chats/{last_chat}", headers=headers)
    assert first.status_code == 200, first.text
    cursor = first.text.split("after=", 1)[1].split('"', 1)[0].split("#", 1)[0] if "after=" in first.text else ""
    probe = create_engine(BENCH_DB_URL, poolclass=NullPool)  # outside the app's pool
    views = {
        "chat page 1": f"/billing/chats/{last_chat}?period=2026-11",
        "chat page 2": f"/billing/chats/{last_chat}?period=2026-11&after={cursor}",
        "workflow (rollup)": "/billing/workflows/wf-2?period=2026-10",
        "range 7 days": "/billing/range?from=2026-10-10&to=2026-10-16",
        "range 3 months": "/billing/range?from=2026-09-01&to=2026-11-30",
        "month page": "/billing?period=2026-10",
    }
    print(f"{'view':<20} {'median wall ms':>15} {'py CPU ms':>10} {'PG CPU ms':>10}   (CPU: mean per request)")
    for name, url in views.items():
        client.get(url, headers=headers)  # warm: connections, caches
        walls = []
        pg0, py0 = _backend_cpu(probe), _self_cpu()
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = client.get(url, headers=headers)
            walls.append(time.perf_counter() - t0)
            assert r.status_code == 200, (url, r.status_code, r.text[:300])
        py, pg = (_self_cpu() - py0) / args.repeat, (_backend_cpu(probe) - pg0) / args.repeat
        print(f"{name:<20} {statistics.median(walls) * 1000:>15.1f} {py * 1000:>10.1f} {pg * 1000:>10.1f}")

    # the plans: no sequential scan of usage_event (or its partitions)
    with engine.connect() as conn:
        sid, lo, hi = conn.execute(
            text("SELECT id, started_at, last_turn_at FROM chat_session WHERE enterprise_id = 'big' AND chat_id = :c"),
            {"c": last_chat},
        ).one()
        plans = {
            "turn page": (
                "SELECT id, occurred_at, cost_nanos FROM usage_event WHERE enterprise_id = 'big' AND chat_id = :c "
                "AND occurred_at >= :lo AND occurred_at <= :hi ORDER BY occurred_at, id LIMIT 51",
                {"c": last_chat, "lo": lo, "hi": hi},
            ),
            "range 7 days": (
                "SELECT provider, model, meter, count(*), sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'big' "
                "AND occurred_at >= '2026-10-10Z' AND occurred_at < '2026-10-17Z' GROUP BY 1, 2, 3",
                {},
            ),
        }
        for name, (sql, params) in plans.items():
            plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params))
            scans = [ln.strip() for ln in plan.splitlines() if "Scan" in ln]
            print(f"\n{name}:")
            for ln in scans:
                print("  ", ln[:140])
            print("  ", [ln.strip() for ln in plan.splitlines() if "Execution Time" in ln][0])


if __name__ == "__main__":
    main()
