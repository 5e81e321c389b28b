"""The /billing page at scale (issue 18, "the page stays fast"): server time of the owner page, the
end-user page, the admin page and the exports for one app with 1,000,000 usage events.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_billing_page [--events 1000000] [--requests 20] [--reuse] [--json]

**Data** (loaded in PostgreSQL with ``INSERT … SELECT generate_series``, a few tens of seconds): one
app (``bench-app``) with 20 wallets, ``events / 50`` chats of 50 turns each (a chat's turns are
consecutive in time, one wallet and one workflow a chat), 5 workflows, 4 agents, 6 models at 4
providers and 3 % non-LLM meter events (emails, storage, function calls), spread evenly over the 6
UTC months ending now (the current month up to one hour ago).  Money in integer nano-USD: cost =
tokens × the model's unit prices, billed = cost (a tenth of the wallets in development mode:
billed 0).  Then, from those rows, as the drain and the beat would leave them: ``usage_turn_key``,
``chat_session`` (sums, first/last turn; chats older than a day completed), ``chat_agent_usage``,
``wallet_transaction`` (one debit per wallet per hour of turns, ``tollgate:usage:`` keys; a Stripe
top-up per wallet per month, an allowance grant), ``wallet`` credits/debits equal to the ledger,
two wallet budgets and two workflow budgets; the drain-kept rollups recomputed from the events
(:func:`repair_rollups`); every (app, workflow, month) is marked in ``rollup_dirty`` and refreshed
by :func:`worker.chats.jobs.refresh_dirty_groups` (the beat job's body).  A second small app (``bench-other``) shares the tables.  ``--reuse`` keeps a database already
loaded with the same ``--events`` (it is only migrated to head and its dirty groups refreshed).

**Timing**: in-process FastAPI ``TestClient`` (no network, no uvicorn), ``--requests`` requests of
each view after one warm-up; per view the median and p95 wall time of a request, and the CPU seconds
per request of this process plus the PostgreSQL backends serving it (``/proc/<pid>/stat`` of every
backend of the bench database), which stay meaningful on a loaded machine where wall time does not.
PASS/FAIL: median server wall time of the owner, end-user and admin pages against 300 ms (the
verdict), and beside it their CPU per request against the same 300 ms (wall time is inflated on a
machine loaded by others; the load average is printed).  ``--dirty`` adds the owner page with every
group of the current month marked in ``rollup_dirty`` (as between two beat refreshes under a live
drain; the report reads the billing rollups, which the drain keeps current, whatever the marks).  For the
owner page, every SQL statement of one request is timed, and the slowest are EXPLAINed (ANALYZE,
BUFFERS) with their parameters.  The CSV and JSON exports stream every event of the month (by design
O(events)); they are timed once each, not judged.

Namespaces: ``TOLLGATE_BENCH_REDIS_URL`` (flushed) and ``TOLLGATE_BENCH_DATABASE_URL`` (dropped,
recreated, migrated unless ``--reuse``); :mod:`benchmarks.namespaces`.
"""

from __future__ import annotations

from benchmarks.namespaces import BENCH_DB_URL, BENCH_REDIS_URL, use_bench_namespaces

# Settings are read once and cached: point them at the bench namespaces before any worker import.
use_bench_namespaces()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
from sqlalchemy import create_engine, event, text  # noqa: E402

APP = "bench-app"
OTHER = "bench-other"
WALLETS = 20
TURNS_PER_CHAT = 50
WORKFLOWS = ("support", "research", "onboarding", "sales", "triage")
AGENTS = ("planner", "writer", "critic", "tool")
#: (provider, model, input, cached input, output) nano-USD per token
MODELS = (
    ("openai", "gpt-4o", 2_500, 1_250, 10_000),
    ("openai", "gpt-4o-mini", 150, 75, 600),
    ("anthropic", "claude-sonnet-4", 3_000, 300, 15_000),
    ("anthropic", "claude-haiku-3.5", 800, 80, 4_000),
    ("google", "gemini-2.0-flash", 100, 25, 400),
    ("mistral", "mistral-large", 2_000, 2_000, 6_000),
)
#: meter → (quantity per event, nano-USD per unit)
METERS = {"emails": (12, 100_000), "storage_gb_month": (1_500, 23_000), "function_calls": (40, 200)}
TARGET_MS = 300.0
MONTHS = 6


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """This process's user + system CPU seconds (all threads: the TestClient runs the app in threads)."""
    t = os.times()
    return t.user + t.system


def periods_ending_now(now: datetime) -> list[str]:
    """The :data:`MONTHS` UTC months ending with ``now``'s, oldest first."""
    y, m = now.year, now.month
    out = []
    for _ in range(MONTHS):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


# data ---------------------------------------------------------------------------------------------
def _models_sql() -> str:
    rows = ", ".join(
        f"({i}, '{p}', '{m}', {a}::bigint, {b}::bigint, {c}::bigint)" for i, (p, m, a, b, c) in enumerate(MODELS)
    )
    return f"(VALUES {rows}) AS md(k, provider, model, pin, pcached, pout)"


def load(engine, events: int, now: datetime) -> dict[str, Any]:
    """Load the data set (see the module docstring).  Returns counts and the load's wall seconds."""
    from sqlmodel import Session

    from models.budget import Budget
    from models.enums import BillingMode
    from models.wallet import Enterprise, Wallet
    from worker.ledger.partitions import ensure_partitions

    t0 = time.perf_counter()
    periods = periods_ending_now(now)
    first = datetime.strptime(periods[0], "%Y-%m").replace(tzinfo=UTC)
    end = now - timedelta(hours=1)
    span_s = (end - first).total_seconds()
    chats = max(1, events // TURNS_PER_CHAT)
    with Session(engine) as s:
        ensure_partitions(s, now=first, ahead=MONTHS)
        s.add(Enterprise(id=APP, name="Bench App"))
        s.add(Enterprise(id=OTHER, name="Bench Other"))
        s.flush()
        for i in range(WALLETS):
            mode = BillingMode.development if i % 10 == 9 else BillingMode.production
            s.add(Wallet(id=f"bw-{i:02d}", enterprise_id=APP, owner_id=f"user-{i:02d}", mode=mode))
        s.add(Wallet(id="bo-00", enterprise_id=OTHER, owner_id="other-user"))
        s.flush()
        s.add(Budget(enterprise_id=APP, wallet_id="bw-00", amount_nanos=50 * 10**9, created_at=first))
        s.add(Budget(enterprise_id=APP, wallet_id="bw-01", amount_nanos=500 * 10**9, created_at=first))
        s.add(Budget(enterprise_id=APP, workflow="support", amount_nanos=2_000 * 10**9, created_at=first))
        s.add(Budget(enterprise_id=APP, workflow="sales", amount_nanos=100 * 10**9, created_at=first))
        s.commit()
    meters = list(METERS.items())
    meter_case = " ".join(f"WHEN {i} THEN '{m}'" for i, (m, _) in enumerate(meters))
    qty_case = " ".join(f"WHEN {i} THEN {q}" for i, (_, (q, _)) in enumerate(meters))
    unit_case = " ".join(f"WHEN {i} THEN {u}" for i, (_, (_, u)) in enumerate(meters))
    with engine.begin() as c:
        c.execute(text("SET LOCAL synchronous_commit = off"))
        # one row per event: i → chat i/50, wallet chat%20, workflow chat%5, model i%6 (3 % meters)
        c.execute(
            text(
                f"""
                INSERT INTO usage_event (turn_id, occurred_at, enterprise_id, wallet_id, chat_id, workflow,
                    agent, model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens,
                    duration_ms, input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok,
                    cost_nanos, billed_nanos, action, outbox_id, level, billing_target, billable,
                    creator_share_nanos, platform_fee_nanos, meter, quantity, balance_after_nanos)
                SELECT 't-' || g.i, g.at, '{APP}', g.wallet, 'c-' || g.chat, g.workflow,
                    (ARRAY{list(AGENTS)})[1 + g.i % {len(AGENTS)}],
                    CASE WHEN g.meter THEN g.mname ELSE md.model END,
                    CASE WHEN g.meter THEN 'tollgate' ELSE md.provider END,
                    g.mode, g.pt, g.ct, g.cached, 300 + g.i % 4000,
                    CASE WHEN g.meter THEN 0 ELSE md.pin * 1000000 END,
                    CASE WHEN g.meter THEN 0 ELSE md.pcached * 1000000 END,
                    CASE WHEN g.meter THEN 0 ELSE md.pout * 1000000 END,
                    g.cost, CASE WHEN g.mode = 'development' THEN 0 ELSE g.cost END,
                    'continue', (g.i % 8) || ':' || g.i || '-0', 'app_usage', '{APP}', g.mode <> 'development',
                    CASE WHEN g.mode = 'development' THEN 0 ELSE g.cost * 7 / 10 END,
                    CASE WHEN g.mode = 'development' THEN 0 ELSE g.cost - g.cost * 7 / 10 END,
                    CASE WHEN g.meter THEN g.mname ELSE 'llm' END, g.qty, 1000000000
                FROM (
                    SELECT e.*, md.pin, md.pcached, md.pout,
                        CASE WHEN e.meter THEN e.qty * e.unit
                             ELSE (e.pt - e.cached) * md.pin + e.cached * md.pcached + e.ct * md.pout END AS cost
                    FROM (
                        SELECT i, i / {TURNS_PER_CHAT} AS chat,
                            'bw-' || lpad(((i / {TURNS_PER_CHAT}) % {WALLETS})::text, 2, '0') AS wallet,
                            CASE WHEN (i / {TURNS_PER_CHAT}) % {WALLETS} % 10 = 9 THEN 'development'
                                 ELSE 'production' END AS mode,
                            (ARRAY{list(WORKFLOWS)})[1 + (i / {TURNS_PER_CHAT}) % {len(WORKFLOWS)}] AS workflow,
                            timestamptz '{first.isoformat()}' + make_interval(secs => i * {span_s / events}) AS at,
                            i % 100 < 3 AS meter, CASE i % 3 {meter_case} END AS mname,
                            CASE WHEN i % 100 < 3 THEN CASE i % 3 {qty_case} END ELSE 0 END AS qty,
                            CASE i % 3 {unit_case} END AS unit,
                            CASE WHEN i % 100 < 3 THEN 0 ELSE 200 + (i * 7919) % 3000 END AS pt,
                            CASE WHEN i % 100 < 3 THEN 0 ELSE 50 + (i * 104729) % 900 END AS ct,
                            CASE WHEN i % 100 < 3 THEN 0 ELSE ((i * 7919) % 3000) / 4 END AS cached,
                            i % {len(MODELS)} AS mk
                        FROM generate_series(0::bigint, {events - 1}) AS s(i)
                    ) e JOIN {_models_sql()} ON md.k = e.mk
                ) g JOIN {_models_sql()} ON md.k = g.mk
                """
            )
        )
        # (their usage_turn_key rows: written by usage_event's insert trigger, migration 0019)
        # the other app: a few events, so the big app's queries are scoped, not alone in the table
        c.execute(
            text(
                "INSERT INTO usage_event (turn_id, occurred_at, enterprise_id, wallet_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, billed_nanos, "
                "action, outbox_id) SELECT 'o-' || i, :at - make_interval(mins => i), :o, 'bo-00', 'oc-' || i / 10, "
                "'default', 'assistant', 'gpt-4o', 'openai', 'production', 100, 10, 0, 100, 0, 0, 0, 1000, 1000, "
                "'continue', '0:o' || i FROM generate_series(1, 1000) AS s(i)"
            ),
            {"at": end, "o": OTHER},
        )
        # chat sessions and per-agent usage, as the drain sums them
        c.execute(
            text(
                "INSERT INTO chat_session (enterprise_id, chat_id, wallet_id, workflow, status, connection_state, "
                "started_at, ended_at, last_turn_at, turns, prompt_tokens, completion_tokens, cached_prompt_tokens, "
                "cost_nanos, billed_nanos, state_key) "
                "SELECT enterprise_id, chat_id, min(wallet_id), min(workflow), "
                "CASE WHEN max(occurred_at) < :done THEN 'completed' ELSE 'active' END, 'connected', "
                "min(occurred_at), CASE WHEN max(occurred_at) < :done THEN max(occurred_at) END, max(occurred_at), "
                "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_prompt_tokens), sum(cost_nanos), "
                "sum(billed_nanos), '' FROM usage_event GROUP BY enterprise_id, chat_id"
            ),
            {"done": end - timedelta(days=1)},
        )
        c.execute(
            text(
                "INSERT INTO chat_agent_usage (chat_session_id, agent, turns, duration_ms, prompt_tokens, "
                "completion_tokens, cached_prompt_tokens, cost_nanos) "
                "SELECT cs.id, ue.agent, count(*), sum(ue.duration_ms), sum(ue.prompt_tokens), "
                "sum(ue.completion_tokens), sum(ue.cached_prompt_tokens), sum(ue.cost_nanos) "
                "FROM usage_event ue JOIN chat_session cs USING (enterprise_id, chat_id) GROUP BY cs.id, ue.agent"
            )
        )
        # the ledger: one debit per wallet per hour of turns (a drain batch), Stripe top-ups and allowances
        c.execute(
            text(
                "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description, "
                "created_at) SELECT wallet_id, 'debit', sum(billed_nanos), count(*), "
                "'tollgate:usage:' || min(outbox_id) || ':' || wallet_id, 'usage of ' || count(*) || ' turn(s)', "
                "max(occurred_at) FROM usage_event GROUP BY wallet_id, date_trunc('hour', occurred_at) "
                "HAVING sum(billed_nanos) > 0"
            )
        )
        c.execute(
            text(
                "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description, "
                "created_at) SELECT w.id, 'credit', 2000 * 1000000000::bigint, 0, "
                "'stripe:cs_bench_' || w.id || '_' || m, 'top-up', "
                "CAST(:first AS timestamptz) + make_interval(months => m, hours => 2) "
                "FROM wallet w, generate_series(0, CAST(:months AS int) - 1) AS m "
                "UNION ALL SELECT w.id, 'credit', 25 * 1000000000::bigint, 0, "
                "'tollgate:allowance:' || w.id || ':' || m, 'monthly allowance', "
                "CAST(:first AS timestamptz) + make_interval(months => m) "
                "FROM wallet w, generate_series(0, CAST(:months AS int) - 1) AS m"
            ),
            {"first": first.isoformat(), "months": MONTHS},
        )
        c.execute(
            text(
                "UPDATE wallet w SET credits_nanos = t.credits, debits_nanos = t.debits FROM ("
                "SELECT wallet_id, sum(amount_nanos) FILTER (WHERE kind = 'credit') AS credits, "
                "coalesce(sum(amount_nanos) FILTER (WHERE kind = 'debit'), 0) AS debits "
                "FROM wallet_transaction GROUP BY wallet_id) t WHERE t.wallet_id = w.id"
            )
        )
        c.execute(
            text(
                "INSERT INTO rollup_dirty (enterprise_id, workflow, period) "
                "SELECT DISTINCT enterprise_id, workflow, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') "
                "FROM usage_event"
            )
        )
        repair_rollups(c)
    with engine.connect() as c:
        c.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    loaded = time.perf_counter() - t0
    t1 = time.perf_counter()
    refreshed = refresh()
    return {
        "events": events,
        "chats": chats,
        "load_s": round(loaded, 1),
        "groups_refreshed": refreshed,
        "refresh_s": round(time.perf_counter() - t1, 1),
    }


def repair_rollups(conn) -> None:
    """The drain-kept rollups (``billing_rollup``, ``chat_rollup``, ``agent_rollup``) of every
    (enterprise, workflow, month) group recomputed from the loaded events with the repair path
    (:func:`worker.chats.rollups.refresh_billing_rollups`), in ``conn``'s transaction: the rows were
    inserted past the drain, and both the report and the workflow refresh read these rollups."""
    from sqlmodel import Session

    from worker.chats.rollups import refresh_billing_rollups

    groups = conn.execute(
        text(
            "SELECT DISTINCT enterprise_id, workflow, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') "
            "FROM usage_event ORDER BY 1, 2, 3"
        )
    ).all()
    with Session(bind=conn) as session:
        for enterprise_id, workflow, period in groups:
            refresh_billing_rollups(session, enterprise_id, workflow, period)
        session.flush()


def refresh() -> int:
    """The beat job's rollup refresh until no group is dirty; returns the groups refreshed."""
    from worker.chats.jobs import refresh_dirty_groups

    return refresh_dirty_groups()


def loaded_events(engine) -> int:
    """Events of :data:`APP` in the bench database (0 when it has no schema yet)."""
    try:
        with engine.connect() as c:
            return int(
                c.execute(text("SELECT count(*) FROM usage_event WHERE enterprise_id = :a"), {"a": APP}).scalar()
            )
    except Exception:  # no database or no table yet
        return -1


# timing -------------------------------------------------------------------------------------------
def backend_pids(engine) -> list[int]:
    """Pids of the PostgreSQL backends connected to the bench database."""
    with engine.connect() as c:
        return [
            int(p)
            for (p,) in c.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            )
        ]


class StatementLog:
    """Every SQL statement the app's engine runs while ``on``: (seconds, statement, parameters)."""

    def __init__(self, app_engine) -> None:
        self.on = False
        self.rows: list[tuple[float, str, Any]] = []
        event.listen(app_engine, "before_cursor_execute", self._before)
        event.listen(app_engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.on:
            self.rows.append((time.perf_counter() - conn.info.pop("bench_t0"), statement, parameters))


def time_view(client, url: str, headers: dict[str, str], n: int, pg_engine) -> dict[str, Any]:
    """One warm-up, then ``n`` GETs of ``url``: wall ms median/p95/max, CPU ms per request (this
    process + the database's backends), response status and size."""
    r = client.get(url, headers=headers)
    status, size = r.status_code, len(r.content)
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}: {r.text[:300]}")
    pids = backend_pids(pg_engine)
    cpu0 = self_cpu() + sum(cpu_s(p) for p in pids)
    walls = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url, headers=headers)
        walls.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
    pids_after = set(pids) | set(backend_pids(pg_engine))
    cpu1 = self_cpu() + sum(cpu_s(p) for p in pids_after)
    walls.sort()
    return {
        "url": url,
        "status": status,
        "bytes": size,
        "n": n,
        "median_ms": round(statistics.median(walls), 1),
        "p95_ms": round(walls[min(n - 1, int(round(0.95 * (n - 1))))], 1),
        "max_ms": round(walls[-1], 1),
        "cpu_ms_per_request": round((cpu1 - cpu0) * 1000 / n, 1),
    }


def explain_slowest(client, url: str, headers: dict[str, str], log: StatementLog, pg_engine, top: int) -> list[dict]:
    """The statements of one GET of ``url``, slowest first; the ``top`` slowest EXPLAINed (ANALYZE, BUFFERS)."""
    log.rows.clear()
    log.on = True
    client.get(url, headers=headers)
    log.on = False
    rows = sorted(log.rows, key=lambda r: -r[0])
    out = []
    for seconds, statement, params in rows[:top]:
        plan = ""
        if statement.lstrip().upper().startswith("SELECT") or statement.lstrip().upper().startswith("WITH"):
            raw = pg_engine.raw_connection()
            try:
                cur = raw.cursor()
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                plan = "\n".join(r[0] for r in cur.fetchall())
                raw.rollback()
            finally:
                raw.close()
        out.append({"ms": round(seconds * 1000, 2), "sql": " ".join(statement.split())[:400], "plan": plan})
    return out + [{"statements": len(rows), "total_ms": round(sum(r[0] for r in rows) * 1000, 1)}]


def main(argv: list[str] | None = None) -> int:
    """Load (or reuse) the data set, time every view, print the figures and PASS/FAIL; 0 when every
    page's median is under :data:`TARGET_MS`, else 1."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="keep a database already loaded with --events")
    ap.add_argument("--explain", type=int, default=4, help="slowest statements of the owner page to EXPLAIN")
    ap.add_argument(
        "--dirty",
        action="store_true",
        help="also time the owner page with the current month's "
        "groups marked dirty (as under a live drain between two beat refreshes)",
    )
    ap.add_argument("--no-exports", action="store_true", help="skip the CSV and JSON exports (O(events))")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOLLGATE_RATE_LIMIT", "100000/minute")

    from fastapi.testclient import TestClient

    from worker.access.apikeys import create_key
    from worker.db import get_engine, session_scope
    from worker.ledger.migrate import recreate_database, upgrade

    r = redis.Redis.from_url(BENCH_REDIS_URL)
    r.flushdb()
    pg = create_engine(BENCH_DB_URL)
    now = datetime.now(UTC)
    load_before = os.getloadavg()
    setup: dict[str, Any]
    if args.reuse and loaded_events(pg) == args.events:
        upgrade(BENCH_DB_URL)
        t = time.perf_counter()
        setup = {
            "events": args.events,
            "reused": True,
            "groups_refreshed": refresh(),
            "refresh_s": round(time.perf_counter() - t, 1),
        }
    else:
        pg.dispose()
        recreate_database(BENCH_DB_URL)
        pg = create_engine(BENCH_DB_URL)
        setup = load(pg, args.events, now)
    with pg.connect() as c:
        setup["usage_event_bytes"] = int(
            c.execute(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'usage_row'::regclass"
                )
            ).scalar()
        )
        setup["wallet_transactions"] = int(c.execute(text("SELECT count(*) FROM wallet_transaction")).scalar())
    with session_scope() as s:
        keys = {
            "owner": create_key(s, role="owner", enterprise_id=APP),
            "user": create_key(s, role="end_user", enterprise_id=APP, wallet_id="bw-03"),
            "admin": create_key(s, role="admin"),
        }
    h = {k: {"Authorization": f"Bearer {v}"} for k, v in keys.items()}

    from api_stub import deps
    from api_stub.main import app

    deps.get_gate.cache_clear()
    period = periods_ending_now(now)[-1]
    log = StatementLog(get_engine())
    results: dict[str, Any] = {"setup": setup, "period": period, "target_ms": TARGET_MS, "views": {}}
    views = {
        "owner page": (f"/billing?period={period}", "owner"),
        "owner page, ledger page 20": (f"/billing?period={period}&ledger_page=20", "owner"),
        "owner page, previous month": (f"/billing?period={periods_ending_now(now)[-2]}", "owner"),
        "end-user page": (f"/billing?period={period}", "user"),
        "admin page": (f"/billing?period={period}&enterprise_id={APP}", "admin"),
        "export.pdf (owner)": (f"/billing/export.pdf?period={period}", "owner"),
    }
    judged = {"owner page", "owner page, ledger page 20", "owner page, previous month", "end-user page", "admin page"}
    with TestClient(app) as client:
        for name, (url, who) in views.items():
            results["views"][name] = time_view(client, url, h[who], args.requests, pg)
        for name, url in (
            ("export.csv (owner)", f"/billing/export.csv?period={period}"),
            ("export.json (owner)", f"/billing/export.json?period={period}"),
        ):
            if not args.no_exports:
                results["views"][name] = time_view(client, url, h["owner"], 1, pg)
        results["explain"] = explain_slowest(client, views["owner page"][0], h["owner"], log, pg, args.explain)
        if args.dirty:
            with pg.begin() as c:
                c.execute(
                    text(
                        "INSERT INTO rollup_dirty (enterprise_id, workflow, period) SELECT :a, w, :p "
                        "FROM unnest(CAST(:ws AS text[])) AS w ON CONFLICT DO NOTHING"
                    ),
                    {"a": APP, "p": period, "ws": list(WORKFLOWS)},
                )
            results["views"]["owner page, current month dirty"] = time_view(
                client, views["owner page"][0], h["owner"], args.requests, pg
            )
            judged.add("owner page, current month dirty")
            refresh()
    deps.get_gate.cache_clear()
    failed = cpu_failed = False
    print(f"bench_billing_page: {setup}")
    print(f"period {period}; {args.requests} requests per view after one warm-up; in-process TestClient")
    print(f"load average before the run: {load_before}, after: {os.getloadavg()} ({os.cpu_count()} CPUs)")
    print(f"{'view':38} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'CPU ms/req':>11} {'bytes':>9}  wall  CPU")
    for name, v in results["views"].items():
        verdict = ""
        if name in judged:
            ok, cpu_ok = v["median_ms"] < TARGET_MS, v["cpu_ms_per_request"] < TARGET_MS
            failed |= not ok
            cpu_failed |= not cpu_ok
            verdict = f"{'PASS' if ok else 'FAIL'}  {'PASS' if cpu_ok else 'FAIL'}"
        print(
            f"{name:38} {v['median_ms']:>10} {v['p95_ms']:>8} {v['max_ms']:>8} {v['cpu_ms_per_request']:>11} "
            f"{v['bytes']:>9}  {verdict}"
        )
    *slow, summary = results["explain"]
    print(f"\nowner page: {summary['statements']} SQL statements, {summary['total_ms']} ms in PostgreSQL; slowest:")
    for s in slow:
        print(f"\n-- {s['ms']} ms: {s['sql']}\n{s['plan']}")
    if args.json:
        print(json.dumps(results))
    print(
        "\nRESULT:",
        "FAIL" if failed else "PASS",
        f"(median server wall time of each page < {TARGET_MS:.0f} ms); CPU per request (this process + PostgreSQL "
        f"backends, what a loaded machine does not inflate): {'FAIL' if cpu_failed else 'PASS'}",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
