"""The workflow refresh reads the drain-kept rollups, not the month's events (issue 16, outbox lag
p99): ``chat_rollup`` for the per-chat figures, ``agent_rollup`` (migration 0020) for the per-agent
ones.  The document must be exactly what the recompute from ``usage_event`` gave:

- on a seeded month (events inserted directly, then the repair path, as a hand-made repair leaves
  them): several chats, agents, wallets (one chat paid by two), meters, completed chats whose end
  falls inside, after and before the month's turns, chats spanning both month boundaries;
- through the real drain (Redis gate, outbox, ``persist_turns``), where ``agent_rollup`` equals
  the events' sums at every commit;
- and migration 0020 creates ``agent_rollup`` filled from the stored events, drops it going down.

The reference is the recompute from the events as it was before (:func:`_from_events`, the old
``_compute`` kept here verbatim but for its name)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import and_, event, func, insert, select, text
from sqlmodel import Session, col

from models.chat import ChatSession
from models.enums import ChatStatus
from models.turn import TurnIn, UsageEvent
from models.wallet import Enterprise, Wallet
from tests.billing_seed import _chat_totals, _event, mark_groups_dirty
from tests.conftest import TEST_DB_URL, seed_wallet
from worker.chats.rollups import (
    _avg,
    _avg_int,
    _compute,
    _iso,
    _seconds,
    build_document,
    end_chat,
    refresh_dirty,
    refresh_rollup,
    rollup_id,
)
from worker.db import session_scope, table_of
from worker.ledger.drain import OutboxDrain
from worker.periods import period_bounds
from worker.pricing.prices import nanos_to_usd

pytestmark = pytest.mark.integration

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
AGENTS = ("planner", "coder", "critic")
AGENT_SUMS = "count(*), sum(duration_ms), sum(prompt_tokens), sum(completion_tokens), sum(cost_nanos)"


def _from_events(session: Session, enterprise_id: str, workflow: str, period: str) -> tuple[dict, dict]:
    """The document and totals as the refresh computed them before issue 16: aggregates over the
    group's ``usage_event`` rows (main's ``worker.chats.rollups._compute``)."""
    start, end = period_bounds(period)
    ue = UsageEvent
    in_group = and_(
        col(ue.enterprise_id) == enterprise_id,
        col(ue.workflow) == workflow,
        col(ue.occurred_at) >= start,
        col(ue.occurred_at) < end,
    )
    per_chat = (
        select(
            col(ue.chat_id).label("chat_id"),
            func.count().label("turns"),
            func.sum(col(ue.prompt_tokens)).label("prompt_tokens"),
            func.sum(col(ue.completion_tokens)).label("completion_tokens"),
            func.sum(col(ue.cached_prompt_tokens)).label("cached_prompt_tokens"),
            func.sum(col(ue.cost_nanos)).label("cost_nanos"),
            func.min(col(ue.occurred_at)).label("first_turn"),
            func.max(col(ue.occurred_at)).label("last_turn"),
        )
        .where(in_group)
        .group_by(col(ue.chat_id))
        .subquery()
    )
    cs = table_of(ChatSession)
    chat_rows = session.execute(
        select(per_chat, cs.c.status, cs.c.started_at, cs.c.ended_at)
        .select_from(
            per_chat.outerjoin(cs, and_(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == per_chat.c.chat_id))
        )
        .order_by(per_chat.c.chat_id)
    ).all()
    agent_rows = session.execute(
        select(
            col(ue.agent),
            func.count(),
            func.sum(col(ue.duration_ms)),
            func.sum(col(ue.prompt_tokens)),
            func.sum(col(ue.completion_tokens)),
            func.sum(col(ue.cost_nanos)),
        )
        .where(in_group)
        .group_by(col(ue.agent))
        .order_by(col(ue.agent))
    ).all()
    chats: dict[str, dict[str, Any]] = {}
    totals = dict.fromkeys(
        ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos", "duration_us"), 0
    )
    for r in chat_rows:
        prompt, completion, cost = int(r.prompt_tokens), int(r.completion_tokens), int(r.cost_nanos)
        session_end = r.last_turn
        if r.status == ChatStatus.completed and r.ended_at is not None and r.first_turn <= r.ended_at < end:
            session_end = max(r.ended_at, r.last_turn)
        duration_us = (session_end - r.first_turn) // _US
        chats[r.chat_id] = {
            "status": r.status,
            "turns": int(r.turns),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": nanos_to_usd(cost),
            "cost_nanos": cost,
            "duration_sec": _seconds(duration_us),
            "started_at": _iso(r.started_at),
            "ended_at": _iso(r.ended_at),
        }
        totals["turns"] += int(r.turns)
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        totals["cached_prompt_tokens"] += int(r.cached_prompt_tokens)
        totals["cost_nanos"] += cost
        totals["duration_us"] += duration_us
    agents: dict[str, dict[str, Any]] = {}
    for agent, turns, duration_ms, prompt, completion, cost in agent_rows:
        agents[agent] = {
            "turns": int(turns),
            "avg_response_ms": _avg(int(duration_ms), int(turns)),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "total_tokens": int(prompt) + int(completion),
            "cost_usd": nanos_to_usd(int(cost)),
            "cost_nanos": int(cost),
        }
    sessions = len(chats)
    avg_cost = _avg_int(totals["cost_nanos"], sessions)
    return (
        {
            "_id": rollup_id(enterprise_id, workflow),
            "enterprise_id": enterprise_id,
            "workflow_name": workflow,
            "period": period,
            "overall_avg": {
                "avg_duration_sec": _seconds(_avg_int(totals["duration_us"], sessions)),
                "avg_prompt_tokens": _avg(totals["prompt_tokens"], sessions),
                "avg_completion_tokens": _avg(totals["completion_tokens"], sessions),
                "avg_total_tokens": _avg(totals["prompt_tokens"] + totals["completion_tokens"], sessions),
                "avg_cost_usd": nanos_to_usd(avg_cost),
                "avg_cost_nanos": avg_cost,
                "total_sessions": sessions,
                "total_turns": totals["turns"],
                "total_cost_usd": nanos_to_usd(totals["cost_nanos"]),
                "total_cost_nanos": totals["cost_nanos"],
            },
            "chat_sessions": chats,
            "agents": agents,
        },
        totals,
    )


def _assert_same(session: Session, enterprise_id: str, workflow: str, period: str) -> dict:
    """``_compute`` (from the rollups) equals the recompute from the events: same dicts, same key
    order, same JSON bytes, same totals; returns the document."""
    new_doc, new_totals = _compute(session, enterprise_id, workflow, period)
    old_doc, old_totals = _from_events(session, enterprise_id, workflow, period)
    assert new_doc == old_doc
    assert json.dumps(new_doc) == json.dumps(old_doc)  # insertion order too: chats and agents sorted alike
    assert new_totals == old_totals
    return new_doc


def _agent_rollups(conn) -> dict[tuple, tuple]:
    return {
        tuple(k): tuple(v)
        for *k, v in (
            (e, p, w, a, (n, d, pt, ct, c))
            for e, p, w, a, n, d, pt, ct, c in conn.execute(
                text(
                    "SELECT enterprise_id, period, workflow, agent, events, duration_ms, prompt_tokens, "
                    "completion_tokens, cost_nanos FROM agent_rollup"
                )
            )
        )
    }


def _agent_sums_of_events(conn) -> dict[tuple, tuple]:
    return {
        tuple(k): tuple(int(x) for x in v)
        for *k, v in (
            (e, p, w, a, rest)
            for e, p, w, a, *rest in conn.execute(
                text(
                    "SELECT enterprise_id, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM'), workflow, agent, "
                    f"{AGENT_SUMS} FROM usage_event GROUP BY 1, 2, 3, 4"
                )
            )
        )
    }


# ---------------------------------------------------------------------------------------------
# a seeded month: events inserted directly, the rollups repaired from them


def _seed_rows() -> list[dict]:
    """Usage events of ``acme`` (workflows ``support`` and ``research``) and ``other`` around
    November 2026: see the module docstring.  Agents from the event number's parity, plus ``critic``."""
    models = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4")]
    rows: list[dict] = []

    def add(chat: str, wallet: str, at: datetime, workflow: str = "support", enterprise: str = "acme", **kw) -> None:
        n = len(rows) + 1
        provider, model = models[n % 3]
        meter = kw.pop("meter", "llm")
        if meter == "llm":
            kw.setdefault("prompt", 1_000 + (n * 7_919) % 90_001)
            kw.setdefault("cached", kw["prompt"] // (2 + n % 3) if n % 4 else 0)
            kw.setdefault("completion", 37 + (n * 977) % 5_003)
        else:
            kw.setdefault("quantity", 3 + n % 5)
        agent = kw.pop("agent", None)
        row = _event(
            n,
            enterprise=enterprise,
            wallet=wallet,
            chat=chat,
            workflow=workflow,
            provider=provider,
            model=model,
            at=at,
            meter=meter,
            development=n % 9 == 0,
            **kw,
        )
        row["duration_ms"] = 101 + (n * 337) % 4_999  # odd response times: averages that round
        if agent:
            row["agent"] = agent
        rows.append(row)

    # plain chats, several turns and agents
    for c in range(7):
        for t in range(2 + c % 4):
            add(f"c-{c}", "w1" if c % 2 else "w2", NOV + timedelta(days=3 + c, minutes=17 * t, milliseconds=c * 7 + t))
    # one chat paid by two wallets (turns alternate): its wallets' chat_rollup rows are summed
    for t in range(6):
        add("c-two-wallets", ("w1", "w2")[t % 2], NOV + timedelta(days=12, seconds=41 * t + 0.0005 * t))
    # a third agent and a meter
    add("c-0", "w2", NOV + timedelta(days=3, hours=5), agent="critic")
    add("c-two-wallets", "w2", NOV + timedelta(days=12, minutes=9), agent="critic", meter="emails")
    # completed chats: ended inside the month (after its last turn), after the month, before its turns
    for t in range(3):
        add("c-ended-in", "w1", NOV + timedelta(days=20, minutes=t))
    for t in range(2):
        add("c-ended-after", "w2", NOV + timedelta(days=28, minutes=t))
    for t in range(2):
        add("c-ended-before", "w1", NOV + timedelta(days=25, minutes=t))
    # spanning both month boundaries
    add("c-span", "w1", NOV - timedelta(minutes=3))
    add("c-span", "w1", NOV + timedelta(microseconds=1))
    add("c-span", "w2", DEC - timedelta(microseconds=1))
    add("c-span", "w2", DEC + timedelta(seconds=2))
    # noise the group must not count: another workflow, another app, another month
    add("c-r", "w1", NOV + timedelta(days=4), workflow="research")
    add("c-0", "x1", NOV + timedelta(days=5), enterprise="other")
    add("c-old", "w1", NOV - timedelta(days=20))
    return rows


def _seed(engine) -> None:
    rows = _seed_rows()
    chats = _chat_totals(rows, [])
    ended = {
        "c-ended-in": NOV + timedelta(days=20, hours=1, microseconds=1_500),
        "c-ended-after": DEC + timedelta(hours=2),
        "c-ended-before": NOV + timedelta(days=24),
        "c-span": DEC + timedelta(minutes=1),
    }
    for chat in chats:
        if chat["chat_id"] in ended:
            chat["ended_at"] = ended[chat["chat_id"]]
        elif chat["chat_id"] != "c-1":  # c-1 stays completed at its last turn
            chat["status"] = ("active", "paused")[len(chat["chat_id"]) % 2]
    with engine.begin() as conn:
        conn.execute(insert(Enterprise.__table__), [dict(id="acme", name="Acme"), dict(id="other", name="Other")])
        conn.execute(
            insert(Wallet.__table__),
            [
                dict(id=w, enterprise_id=e, owner_id=w, level="app_usage", mode="production", currency="USD")
                for w, e in (("w1", "acme"), ("w2", "acme"), ("x1", "other"))
            ],
        )
        conn.execute(insert(ChatSession.__table__), chats)
        conn.execute(insert(UsageEvent.__table__), rows)
        mark_groups_dirty(conn)


def test_the_document_from_the_rollups_equals_the_one_from_the_events(db):
    _seed(db)
    with Session(db) as s:
        doc = _assert_same(s, "acme", "support", "2026-11")
        for group in (("acme", "support", "2026-10"), ("acme", "support", "2026-12"), ("acme", "research", "2026-11")):
            _assert_same(s, *group)
        _assert_same(s, "other", "support", "2026-11")
        _assert_same(s, "acme", "nothing", "2026-11")  # no rows: zeros, as before
    # the seed reaches every case it claims
    chats = doc["chat_sessions"]
    assert set(doc["agents"]) == {"planner", "writer", "critic"}
    assert chats["c-ended-in"]["status"] == "completed"
    assert chats["c-ended-in"]["duration_sec"] == 3600.002  # first turn → ended_at (rounded half-up)
    assert chats["c-ended-after"]["duration_sec"] == 60.0  # ended in December: last turn − first
    assert chats["c-ended-before"]["duration_sec"] == 60.0  # ended before its turns: ignored
    assert chats["c-span"]["turns"] == 2  # its October and December turns are their months'
    assert chats["c-span"]["duration_sec"] == 2_592_000.0  # 30 days − 2 µs, rounded half-up to ms
    assert chats["c-two-wallets"]["turns"] == 7
    with db.connect() as conn:
        wallets = conn.execute(
            text("SELECT count(*) FROM chat_rollup WHERE chat_id = 'c-two-wallets' AND period = '2026-11'")
        ).scalar_one()
        assert wallets == 2
        assert _agent_rollups(conn) == _agent_sums_of_events(conn)

    # and refreshed, the stored document is that document (a second refresh writes nothing)
    with session_scope() as s:
        assert refresh_dirty(s) == 5
    with Session(db) as s:
        stored = s.execute(
            text(
                "SELECT document, refreshed_at FROM workflow_rollup WHERE enterprise_id = 'acme' AND workflow = 'support' AND period = '2026-11'"
            )
        ).one()
        assert stored.document == _from_events(s, "acme", "support", "2026-11")[0]
    with session_scope() as s:
        refresh_rollup(s, "acme", "support", "2026-11")
    with db.connect() as conn:
        again = conn.execute(
            text(
                "SELECT refreshed_at FROM workflow_rollup WHERE enterprise_id = 'acme' AND workflow = 'support' AND period = '2026-11'"
            )
        ).scalar_one()
    assert again == stored.refreshed_at


def test_a_refresh_reads_no_usage_event_row(db):
    """The refresh's statements read the rollup tables: none touches ``usage_event`` / ``usage_row``
    (the month's events), whatever their number."""
    _seed(db)
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(db, "before_cursor_execute", record)
    try:
        with Session(db) as s:
            refresh_rollup(s, "acme", "support", "2026-11")
            build_document(s, "acme", "support", "2026-11")
            s.rollback()
    finally:
        event.remove(db, "before_cursor_execute", record)
    assert seen, "no statement recorded"
    reads = [q for q in seen if "usage_event" in q or "usage_row" in q]
    assert reads == []
    assert any("chat_rollup" in q for q in seen) and any("agent_rollup" in q for q in seen)


# ---------------------------------------------------------------------------------------------
# through the real drain


def _turn(turn_id: str, chat: str, agent: str, at: datetime, n: int, wallet_id: str = "w1") -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id="acme",
        chat_id=chat,
        workflow="wf",
        agent=agent,
        model=("gpt-4o", "gpt-4o-mini")[n % 2],
        provider="openai",
        prompt_tokens=900 + (n * 7_919) % 20_011,
        completion_tokens=11 + (n * 977) % 3_001,
        cached_prompt_tokens=(n * 31) % 700,
        duration_ms=99 + (n * 337) % 2_999,
        occurred_at=at,
    )


def test_through_the_drain_the_refreshed_document_equals_the_events_figures(db, gate, redis_client, settings):
    seed_wallet(gate, "w1", "acme", "owner-w1", 10**15)
    seed_wallet(gate, "w2", "acme", "owner-w2", 10**15)
    base = DEC - timedelta(hours=1)
    turns = [
        _turn(
            f"t{n}",
            f"c{n % 5}",
            ("planner", "coder", "critic")[n % 3],
            base + timedelta(minutes=n % 70, milliseconds=n),
            n,
            wallet_id=("w1", "w2")[n % 7 == 0],
        )
        for n in range(120)
    ]
    drain = OutboxDrain(redis_client, settings=settings)
    for i in range(0, len(turns), 25):  # several drains: the rollups are added to, batch by batch
        decisions = gate.record_turns(turns[i : i + 25])
        assert all(d.accepted for d in decisions)
        drain.drain()
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one() == 120
        rollups = _agent_rollups(conn)
        assert rollups == _agent_sums_of_events(conn)
        assert {(p, a) for _e, p, _w, a in rollups} == {(p, a) for p in ("2026-11", "2026-12") for a in AGENTS}
    with session_scope() as s:
        assert refresh_dirty(s) == 2
    with session_scope() as s:
        ended = end_chat(s, enterprise_id="acme", chat_id="c1", ended_at=DEC + timedelta(minutes=30))
    assert [(r.workflow, r.period) for r in ended.rollups] == [("wf", "2026-11"), ("wf", "2026-12")]
    with Session(db) as s:
        for period in ("2026-11", "2026-12"):
            stored = s.execute(
                text("SELECT document, total_turns, cost_nanos FROM workflow_rollup WHERE period = :p"), {"p": period}
            ).one()
            expected, totals = _from_events(s, "acme", "wf", period)
            assert stored.document == expected
            assert (stored.total_turns, stored.cost_nanos) == (totals["turns"], totals["cost_nanos"])
            _assert_same(s, "acme", "wf", period)
        dec = _from_events(s, "acme", "wf", "2026-12")[0]
    assert dec["chat_sessions"]["c1"]["status"] == "completed"
    assert dec["chat_sessions"]["c1"]["ended_at"] == "2026-12-01T00:30:00Z"


# ---------------------------------------------------------------------------------------------
# migration 0020


@pytest.fixture()
def fresh_db(db):
    """The test database, re-created afterwards: the test migrates it down and up."""
    from worker.ledger.migrate import recreate_database

    yield db
    recreate_database(TEST_DB_URL)


def test_migration_0020_creates_agent_rollup_from_the_events_and_drops_it(fresh_db, gate, redis_client, settings):
    from alembic import command

    from worker.ledger.migrate import alembic_config

    db = fresh_db
    seed_wallet(gate, "w1", "acme", "owner-w1", 10**15)
    turns = [_turn(f"m{n}", f"c{n % 3}", AGENTS[n % 3], DEC - timedelta(minutes=30 - n), n) for n in range(40)]
    assert all(d.accepted for d in gate.record_turns(turns))
    OutboxDrain(redis_client, settings=settings).drain()
    with db.connect() as conn:
        drained = _agent_rollups(conn)
        assert drained == _agent_sums_of_events(conn) and len(drained) == 6

    cfg = alembic_config(TEST_DB_URL)
    db.dispose()
    command.downgrade(cfg, "0019")
    db.dispose()
    with db.begin() as conn:
        assert conn.execute(text("SELECT to_regclass('agent_rollup')")).scalar_one() is None
        # an event 0019 stored (a hand-made repair, a seed): the upgrade counts it too
        conn.execute(insert(UsageEvent.__table__), [{**_event(1, **_LATE), "agent": "late-agent"}])
    db.dispose()
    command.upgrade(cfg, "head")
    db.dispose()
    with db.connect() as conn:
        filled = _agent_rollups(conn)
        assert filled == _agent_sums_of_events(conn)
        assert len(filled) == 7 and filled[("acme", "2026-11", "wf", "late-agent")][0] == 1
        nov = {k: v for k, v in filled.items() if k[1] == "2026-11" and k[3] != "late-agent"}
        assert nov == {k: v for k, v in drained.items() if k[1] == "2026-11"}
        columns = {
            r.column_name: (r.data_type, r.is_nullable, r.column_default)
            for r in conn.execute(
                text(
                    "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                    "WHERE table_name = 'agent_rollup'"
                )
            )
        }
    assert {c: t for c, (t, _n, _d) in columns.items()} == {
        "enterprise_id": "character varying",
        "period": "character varying",
        "workflow": "character varying",
        "agent": "character varying",
        **dict.fromkeys(("events", "duration_ms", "prompt_tokens", "completion_tokens", "cost_nanos"), "bigint"),
    }
    assert all(n == "NO" for _t, n, _d in columns.values())
    # the drain adds to the filled rows
    more = [_turn(f"n{n}", "c9", "planner", DEC - timedelta(minutes=5), 100 + n) for n in range(4)]
    assert all(d.accepted for d in gate.record_turns(more))
    OutboxDrain(redis_client, settings=settings).drain()
    with db.connect() as conn:
        assert _agent_rollups(conn) == _agent_sums_of_events(conn)

    db.dispose()
    command.downgrade(cfg, "0019")
    db.dispose()
    with db.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('agent_rollup')")).scalar_one() is None


_LATE = dict(
    enterprise="acme",
    wallet="w1",
    chat="c0",
    workflow="wf",
    provider="openai",
    model="gpt-4o",
    at=DEC - timedelta(hours=3),
    prompt=10,
    completion=3,
)


def test_cli_refresh_repair_recomputes_the_rollups_from_events_written_past_the_drain(
    cli, db, gate, redis_client, settings
):
    """An event written other than by the drain (a hand-made repair) is not in the drain-kept sums, so
    a plain refresh leaves it out; ``tollgate rollup refresh … --repair`` recomputes the sums from the
    events first, and the document is the events' again."""
    seed_wallet(gate, "w1", "acme", "owner-w1", 10**15)
    turns = [_turn(f"r{n}", f"c{n % 2}", AGENTS[n % 3], DEC - timedelta(hours=2, minutes=n), n) for n in range(9)]
    assert all(d.accepted for d in gate.record_turns(turns))
    OutboxDrain(redis_client, settings=settings).drain()
    with db.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), [{**_event(1, **_LATE), "agent": "late-agent"}])
    proc = cli("rollup", "refresh", "acme", "wf", "2026-11", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["turns"] == 9  # the drain's sums: the hand-written event is not in them
    with Session(db) as s:
        expected = _from_events(s, "acme", "wf", "2026-11")[0]
        assert expected["overall_avg"]["total_turns"] == 10
    proc = cli("rollup", "refresh", "acme", "wf", "2026-11", "--repair", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["turns"] == 10
    with db.connect() as conn:
        stored = conn.execute(text("SELECT document FROM workflow_rollup WHERE period = '2026-11'")).scalar_one()
        assert _agent_rollups(conn) == _agent_sums_of_events(conn)
    assert stored == expected and "late-agent" in stored["agents"]
    bad = cli("rollup", "refresh", "--all-dirty", "--repair")
    assert bad.returncode != 0 and "--all-dirty" in bad.stderr
