"""Rollups against real PostgreSQL and Redis: a replayed trace's rollup equals totals computed here
from the usage events; refreshing twice changes nothing; no dirty mark is lost to a drain committing
while a refresh runs; month boundaries; ending a chat refreshes its rollups at once."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
import time_machine
from sqlalchemy import text
from sqlmodel import Session

from models.turn import TurnIn
from tests.conftest import REPO, seed_wallet
from worker.chats.rollups import (
    build_document,
    chat_performance,
    end_chat,
    refresh_dirty,
    refresh_rollup,
    workflow_averages,
)
from worker.db import session_scope
from worker.gate.keys import outbox_key
from worker.gate.outbox import parse_entry
from worker.ledger.drain import OutboxDrain
from worker.ledger.turns import persist_turns
from worker.pricing.prices import nanos_to_usd

pytestmark = pytest.mark.integration

CONV_SAMPLE = REPO / "worker" / "devtools" / "data" / "azure_llm_2023_conv_sample.csv"
LAST_MS_OF_NOVEMBER = datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC)
FIRST_OF_DECEMBER = datetime(2026, 12, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 10, 9, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# helpers: turns through the gate, and the expected document computed here, row by row


def _wallet(gate, wallet_id: str = "w1", enterprise_id: str = "acme") -> None:
    seed_wallet(gate, wallet_id, enterprise_id, f"owner-{wallet_id}", 10**15)


def _turn(
    turn_id: str,
    *,
    chat: str = "c1",
    workflow: str = "wf",
    agent: str = "planner",
    prompt: int = 1000,
    completion: int = 100,
    cached: int = 0,
    duration_ms: int = 250,
    at: datetime | None = None,
    wallet_id: str = "w1",
    enterprise_id: str = "acme",
) -> TurnIn:
    extra = {} if at is None else {"occurred_at": at}
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id=enterprise_id,
        chat_id=chat,
        workflow=workflow,
        agent=agent,
        model="gpt-4o",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
        duration_ms=duration_ms,
        **extra,
    )


def _record(gate, turns) -> list:
    decisions = gate.record_turns(turns)
    assert all(d.accepted and not d.duplicate for d in decisions)
    return decisions


def _outbox_rows(redis_client, gate, wallet_id: str = "w1") -> list[dict]:
    """The wallet's accepted turns as usage_event rows, read straight from its outbox (not acked)."""
    shard = gate.shard(wallet_id)
    rows = [parse_entry(f, f"{shard}:{i}") for i, f in redis_client.xrange(outbox_key(shard))]
    return [r for r in rows if r["wallet_id"] == wallet_id]


def _half_up(value: Fraction, places: int) -> float:
    exp = Decimal(1).scaleb(-places)
    return float((Decimal(value.numerator) / Decimal(value.denominator)).quantize(exp, rounding=ROUND_HALF_UP))


def _expected_document(db, enterprise_id: str, workflow: str, period: str) -> dict:
    """The seed document, computed here in Python from every usage_event row (no SQL aggregate)."""
    year, month = map(int, period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    with db.connect() as conn:
        events = conn.execute(
            text(
                "SELECT chat_id, agent, prompt_tokens, completion_tokens, cost_nanos, duration_ms, occurred_at "
                "FROM usage_event WHERE enterprise_id = :e AND workflow = :w"
            ),
            {"e": enterprise_id, "w": workflow},
        ).all()
        chats_meta = {
            r.chat_id: r
            for r in conn.execute(
                text("SELECT chat_id, status, started_at, ended_at FROM chat_session WHERE enterprise_id = :e"),
                {"e": enterprise_id},
            )
        }
    chats: dict = defaultdict(lambda: {"turns": 0, "prompt": 0, "completion": 0, "cost": 0, "times": []})
    agents: dict = defaultdict(lambda: {"turns": 0, "prompt": 0, "completion": 0, "cost": 0, "ms": 0})
    for e in events:
        if not start <= e.occurred_at < end:
            continue
        for acc in (chats[e.chat_id], agents[e.agent]):
            acc["turns"] += 1
            acc["prompt"] += e.prompt_tokens
            acc["completion"] += e.completion_tokens
            acc["cost"] += e.cost_nanos
        chats[e.chat_id]["times"].append(e.occurred_at)
        agents[e.agent]["ms"] += e.duration_ms

    def iso(t):
        return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")

    doc_chats, durations_us = {}, []
    for chat_id, c in chats.items():
        meta = chats_meta[chat_id]
        first, last = min(c["times"]), max(c["times"])
        stop = last
        if meta.status == "completed" and meta.ended_at is not None and first <= meta.ended_at < end:
            stop = max(meta.ended_at, last)
        us = (stop - first) // timedelta(microseconds=1)
        durations_us.append(us)
        doc_chats[chat_id] = {
            "status": meta.status,
            "turns": c["turns"],
            "prompt_tokens": c["prompt"],
            "completion_tokens": c["completion"],
            "total_tokens": c["prompt"] + c["completion"],
            "cost_usd": nanos_to_usd(c["cost"]),
            "cost_nanos": c["cost"],
            "duration_sec": _half_up(Fraction(us, 10**6), 3),
            "started_at": iso(meta.started_at),
            "ended_at": iso(meta.ended_at),
        }
    n = len(chats)
    total_prompt = sum(c["prompt"] for c in chats.values())
    total_completion = sum(c["completion"] for c in chats.values())
    total_cost = sum(c["cost"] for c in chats.values())
    avg_cost = int(Fraction(total_cost, n) + Fraction(1, 2)) if n else 0  # half-up, integers only
    avg_us = int(Fraction(sum(durations_us), n) + Fraction(1, 2)) if n else 0
    return {
        "_id": f"mon_{enterprise_id}_{workflow}",
        "enterprise_id": enterprise_id,
        "workflow_name": workflow,
        "period": period,
        "overall_avg": {
            "avg_duration_sec": _half_up(Fraction(avg_us, 10**6), 3),
            "avg_prompt_tokens": _half_up(Fraction(total_prompt, n), 2) if n else 0.0,
            "avg_completion_tokens": _half_up(Fraction(total_completion, n), 2) if n else 0.0,
            "avg_total_tokens": _half_up(Fraction(total_prompt + total_completion, n), 2) if n else 0.0,
            "avg_cost_usd": nanos_to_usd(avg_cost),
            "avg_cost_nanos": avg_cost,
            "total_sessions": n,
            "total_turns": sum(c["turns"] for c in chats.values()),
            "total_cost_usd": nanos_to_usd(total_cost),
            "total_cost_nanos": total_cost,
        },
        "chat_sessions": doc_chats,
        "agents": {
            a: {
                "turns": v["turns"],
                "avg_response_ms": _half_up(Fraction(v["ms"], v["turns"]), 2),
                "prompt_tokens": v["prompt"],
                "completion_tokens": v["completion"],
                "total_tokens": v["prompt"] + v["completion"],
                "cost_usd": nanos_to_usd(v["cost"]),
                "cost_nanos": v["cost"],
            }
            for a, v in agents.items()
        },
    }


def _stored(db, enterprise_id: str, workflow: str, period: str):
    with db.connect() as conn:
        return conn.execute(
            text(
                "SELECT document, total_sessions, total_turns, prompt_tokens, completion_tokens, cached_prompt_tokens, "
                "cost_nanos FROM workflow_rollup WHERE enterprise_id = :e AND workflow = :w AND period = :p"
            ),
            {"e": enterprise_id, "w": workflow, "p": period},
        ).one()


def _assert_rollup_matches_events(db, enterprise_id: str, workflow: str, period: str) -> dict:
    expected = _expected_document(db, enterprise_id, workflow, period)
    row = _stored(db, enterprise_id, workflow, period)
    assert row.document == expected
    o = expected["overall_avg"]
    with db.connect() as conn:
        cached = conn.execute(
            text(
                "SELECT coalesce(sum(cached_prompt_tokens), 0) FROM usage_event WHERE enterprise_id = :e AND "
                "workflow = :w AND to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') = :p"
            ),
            {"e": enterprise_id, "w": workflow, "p": period},
        ).scalar_one()
    assert (row.total_sessions, row.total_turns, row.cost_nanos, row.cached_prompt_tokens) == (
        o["total_sessions"],
        o["total_turns"],
        o["total_cost_nanos"],
        cached,
    )
    assert row.prompt_tokens == sum(c["prompt_tokens"] for c in expected["chat_sessions"].values())
    assert row.completion_tokens == sum(c["completion_tokens"] for c in expected["chat_sessions"].values())
    return row.document


def _snapshot(db) -> dict:
    """Every rollup row (with refreshed_at and the tuple version xmin) and every dirty mark."""
    with db.connect() as conn:
        rollups = conn.execute(
            text(
                "SELECT enterprise_id, workflow, period, document::text, total_sessions, total_turns, prompt_tokens, "
                "completion_tokens, cached_prompt_tokens, cost_nanos, refreshed_at, xmin::text FROM workflow_rollup "
                "ORDER BY 1, 2, 3"
            )
        ).all()
        marks = conn.execute(
            text("SELECT enterprise_id, workflow, period, touched_at FROM rollup_dirty ORDER BY 1, 2, 3")
        ).all()
    return {"rollups": rollups, "marks": marks}


def _dirty(db) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text("SELECT enterprise_id, workflow, period FROM rollup_dirty ORDER BY 1, 2, 3"))
        ]


def _refresh_all(engine=None) -> int:
    with session_scope(engine) as session:
        return refresh_dirty(session)


# ---------------------------------------------------------------------------------------------


def test_rollup_of_a_replayed_trace_equals_totals_computed_from_the_usage_events(cli, db):
    import csv
    import json

    proc = cli("replay", str(CONV_SAMPLE), "--format", "azure", "--run-id", "r1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["turns_persisted"] == 2_000
    assert _dirty(db) == [("replay", "replay", "2023-11")]

    assert _refresh_all() == 1
    doc = _assert_rollup_matches_events(db, "replay", "replay", "2023-11")

    # and against the trace file itself, read here with csv: 2,000 rows, one chat, one agent
    with CONV_SAMPLE.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    prompt = sum(int(r["ContextTokens"]) for r in rows)
    completion = sum(int(r["GeneratedTokens"]) for r in rows)
    overall = doc["overall_avg"]
    assert (overall["total_sessions"], overall["total_turns"]) == (1, 2_000)
    assert overall["total_cost_nanos"] == report["cost_nanos"]
    assert overall["avg_cost_nanos"] == report["cost_nanos"]  # one session: the average is the total
    assert overall["total_cost_usd"] == nanos_to_usd(report["cost_nanos"])
    assert (overall["avg_prompt_tokens"], overall["avg_completion_tokens"]) == (prompt, completion)
    chat = doc["chat_sessions"]["replay-r1"]
    assert (chat["turns"], chat["prompt_tokens"], chat["completion_tokens"]) == (2_000, prompt, completion)
    first = datetime.strptime(rows[0]["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    last = datetime.strptime(rows[-1]["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    assert chat["duration_sec"] == _half_up(Fraction((last - first) // timedelta(microseconds=1), 10**6), 3)
    assert chat["started_at"] == first.isoformat().replace("+00:00", "Z") and chat["ended_at"] is None
    assert doc["agents"]["azure-trace"]["turns"] == 2_000
    assert doc["agents"]["azure-trace"]["cost_nanos"] == report["cost_nanos"]

    # the CLI prints the stored document
    shown = cli("rollup", "show", "replay", "replay", "2023-11", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == doc
    missing = cli("rollup", "show", "replay", "replay", "2023-12")
    assert missing.returncode == 2 and "no rollup" in missing.stderr


def test_refresh_twice_changes_nothing_the_second_time(db, gate, redis_client, settings):
    _wallet(gate)
    turns = [
        _turn(
            f"t{i}",
            chat=f"c{i % 3}",
            workflow=("wf", "billing")[i % 2],
            agent=("planner", "coder")[i % 2],
            prompt=1000 + 7 * i,
            completion=50 + i,
            cached=(i % 4) * 100,
            duration_ms=200 + 13 * i,
            at=T0 + timedelta(days=i * 3),
        )
        for i in range(12)
    ]  # Nov 10 … Dec 13
    _record(gate, turns)
    OutboxDrain(redis_client, settings=settings).drain()
    groups = [
        ("acme", "billing", "2026-11"),
        ("acme", "billing", "2026-12"),
        ("acme", "wf", "2026-11"),
        ("acme", "wf", "2026-12"),
    ]
    assert _dirty(db) == groups

    assert _refresh_all() == 4
    for group in groups:
        _assert_rollup_matches_events(db, *group)
    first = _snapshot(db)
    assert first["marks"] == []

    assert _refresh_all() == 0  # nothing marked: nothing refreshed ...
    assert _snapshot(db) == first  # ... and nothing written (same rows, same refreshed_at, same xmin)

    with session_scope() as session:  # an explicit refresh of unchanged groups writes nothing either
        for group in groups:
            refresh_rollup(session, *group)
    assert _snapshot(db) == first

    # a new turn changes exactly its own group, once
    _record(gate, [_turn("late", chat="c9", workflow="wf", at=T0 + timedelta(days=1))])
    OutboxDrain(redis_client, settings=settings).drain()
    assert _refresh_all() == 1
    after = _snapshot(db)
    changed = [a for a, b in zip(after["rollups"], first["rollups"]) if a != b]
    assert [(r[0], r[1], r[2]) for r in changed] == [("acme", "wf", "2026-11")]
    _assert_rollup_matches_events(db, "acme", "wf", "2026-11")
    assert _refresh_all() == 0
    assert _snapshot(db) == after


def _two_batches(gate, redis_client, n1: int = 10, n2: int = 10) -> tuple[list[dict], list[dict]]:
    _wallet(gate)
    _record(
        gate,
        [
            _turn(
                f"t{i}",
                chat=f"c{i % 2}",
                prompt=1000 + i,
                completion=10 + i,
                duration_ms=100 + i,
                at=T0 + timedelta(minutes=i),
            )
            for i in range(n1 + n2)
        ],
    )
    rows = sorted(_outbox_rows(redis_client, gate), key=lambda r: int(r["turn_id"][1:]))
    return rows[:n1], rows[n1:]


def _turn_count(db) -> int:
    return _stored(db, "acme", "wf", "2026-11").total_turns


def test_a_drain_committing_while_refresh_dirty_holds_the_mark_is_refreshed_next_run(db, gate, redis_client):
    batch1, batch2 = _two_batches(gate, redis_client)
    with session_scope() as s:
        persist_turns(s, batch1)
    refresher = Session(db, expire_on_commit=False)
    try:
        assert refresh_dirty(refresher) == 1  # mark deleted, not yet committed
        finished = threading.Event()

        def drain_batch2():
            with session_scope() as s:
                persist_turns(s, batch2)  # its mark upsert waits for the refresher's commit
            finished.set()

        drainer = threading.Thread(target=drain_batch2)
        drainer.start()
        assert not finished.wait(0.5), "the drain must wait on the mark the refresh is deleting"
        refresher.commit()
    finally:
        refresher.close()
    drainer.join(10)
    assert finished.is_set()
    assert _turn_count(db) == 10  # the refresh read before batch 2 committed ...
    assert _dirty(db) == [("acme", "wf", "2026-11")]  # ... and batch 2 left a new mark
    assert _refresh_all() == 1
    assert _turn_count(db) == 20
    _assert_rollup_matches_events(db, "acme", "wf", "2026-11")


def test_a_mark_a_drain_is_writing_is_skipped_not_lost(db, gate, redis_client):
    batch1, batch2 = _two_batches(gate, redis_client)
    with session_scope() as s:
        persist_turns(s, batch1)  # mark committed
    drainer = Session(db, expire_on_commit=False)
    try:
        persist_turns(drainer, batch2)  # holds the mark's row lock (ON CONFLICT DO UPDATE), uncommitted
        started = time.monotonic()
        assert _refresh_all() == 0  # SKIP LOCKED: no wait, the mark is left alone
        with session_scope() as s:  # a direct refresh (end_chat's path) does not wait either
            assert refresh_rollup(s, "acme", "wf", "2026-11").total_turns == 10
        assert time.monotonic() - started < 5
        drainer.commit()
    finally:
        drainer.close()
    assert _dirty(db) == [("acme", "wf", "2026-11")]
    assert _refresh_all() == 1
    assert _turn_count(db) == 20
    _assert_rollup_matches_events(db, "acme", "wf", "2026-11")


def test_concurrent_drains_and_refreshes_never_lose_a_turn(db, gate, redis_client, race):
    _wallet(gate)
    n = 600
    _record(
        gate,
        [
            _turn(
                f"t{i}",
                chat=f"c{i % 7}",
                workflow=("wf", "billing")[i % 2],
                agent=("planner", "coder", "critic")[i % 3],
                prompt=500 + i,
                completion=20 + i % 50,
                duration_ms=100 + i % 90,
                at=T0 + timedelta(hours=i),
            )
            for i in range(n)
        ],
    )  # ~25 days
    rows = sorted(_outbox_rows(redis_client, gate), key=lambda r: int(r["turn_id"][1:]))
    assert len(rows) == n
    batches = [rows[i : i + 15] for i in range(0, n, 15)]
    done = threading.Event()
    refreshed = [0, 0]

    def drain():
        try:
            for batch in batches:
                with session_scope() as s:
                    persist_turns(s, batch)
        finally:
            done.set()

    def refresh(k: int):
        while not done.is_set():
            with session_scope() as s:
                refreshed[k] += refresh_dirty(s, limit=1)
            with session_scope() as s:  # also a direct refresh racing the beat job
                refresh_rollup(s, "acme", "wf", "2026-11")

    race(drain, lambda: refresh(0), lambda: refresh(1), timeout=60)  # fails on any racer's exception
    assert sum(refreshed) > 0, "the refreshes must have run while the drain did"
    _refresh_all()
    assert _dirty(db) == []
    total = 0
    for workflow in ("wf", "billing"):
        for period in ("2026-11", "2026-12"):
            with db.connect() as conn:
                exists = conn.execute(
                    text(
                        "SELECT count(*) FROM usage_event WHERE workflow = :w AND "
                        "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') = :p"
                    ),
                    {"w": workflow, "p": period},
                ).scalar_one()
            if exists:
                total += _assert_rollup_matches_events(db, "acme", workflow, period)["overall_avg"]["total_turns"]
    assert total == n


def test_month_boundary_turns_land_in_two_rollups(db, gate, redis_client, settings):
    _wallet(gate)
    # explicit occurred_at: 1000 prompt + 100 completion of gpt-4o = 2,500,000 + 1,000,000 nanos
    decisions = _record(
        gate,
        [
            _turn("nov-last", chat="edge", prompt=1000, completion=100, at=LAST_MS_OF_NOVEMBER),
            _turn("dec-first", chat="edge", prompt=2000, completion=10, at=FIRST_OF_DECEMBER),
        ],
    )
    assert [d.cost_nanos for d in decisions] == [3_500_000, 5_100_000]
    # "now" frozen at the same instants: the turn's default occurred_at is the frozen clock
    with time_machine.travel(LAST_MS_OF_NOVEMBER, tick=False):
        _record(gate, [_turn("frozen-nov", chat="clock", prompt=400, completion=40)])
    with time_machine.travel(FIRST_OF_DECEMBER, tick=False):
        _record(gate, [_turn("frozen-dec", chat="clock", prompt=800, completion=80)])
    OutboxDrain(redis_client, settings=settings).drain()
    assert _dirty(db) == [("acme", "wf", "2026-11"), ("acme", "wf", "2026-12")]

    assert _refresh_all() == 2
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT period, total_sessions, total_turns, prompt_tokens, completion_tokens, cost_nanos "
                "FROM workflow_rollup ORDER BY period"
            )
        ).all()
    # 400 × 2,500 + 40 × 10,000 = 1,400,000;  800 × 2,500 + 80 × 10,000 = 2,800,000
    assert [tuple(r) for r in rows] == [
        ("2026-11", 2, 2, 1_400, 140, 3_500_000 + 1_400_000),
        ("2026-12", 2, 2, 2_800, 90, 5_100_000 + 2_800_000),
    ]
    nov = _assert_rollup_matches_events(db, "acme", "wf", "2026-11")
    dec = _assert_rollup_matches_events(db, "acme", "wf", "2026-12")
    assert nov["chat_sessions"]["edge"]["cost_nanos"] == 3_500_000
    assert dec["chat_sessions"]["edge"]["cost_nanos"] == 5_100_000
    assert nov["overall_avg"]["avg_cost_nanos"] == 2_450_000  # (3,500,000 + 1,400,000) / 2
    assert dec["overall_avg"]["avg_cost_usd"] == "0.003950000"  # (5,100,000 + 2,800,000) / 2 nanos
    # the chat's life is one; each month holds its own part of it
    assert (
        nov["chat_sessions"]["edge"]["started_at"]
        == dec["chat_sessions"]["edge"]["started_at"]
        == ("2026-11-30T23:59:59.999000Z")
    )
    assert nov["chat_sessions"]["edge"]["duration_sec"] == dec["chat_sessions"]["edge"]["duration_sec"] == 0.0


def test_end_chat_marks_completed_and_refreshes_every_period_at_once(db, gate, redis_client, settings):
    _wallet(gate)
    _record(
        gate,
        [
            _turn(
                "a1",
                chat="c1",
                agent="planner",
                prompt=1000,
                completion=100,
                duration_ms=200,
                at=LAST_MS_OF_NOVEMBER - timedelta(seconds=59),
            ),
            _turn("a2", chat="c1", agent="coder", prompt=1000, completion=100, duration_ms=301, at=LAST_MS_OF_NOVEMBER),
            _turn("a3", chat="c1", agent="planner", prompt=3000, completion=50, duration_ms=500, at=FIRST_OF_DECEMBER),
            _turn(
                "a4",
                chat="c1",
                agent="coder",
                prompt=10,
                completion=1,
                duration_ms=7,
                at=FIRST_OF_DECEMBER + timedelta(seconds=30),
            ),
            _turn("b1", chat="c2", agent="planner", prompt=100, completion=10, at=FIRST_OF_DECEMBER),
        ],
    )
    OutboxDrain(redis_client, settings=settings).drain()
    assert _refresh_all() == 2
    nov_before = _stored(db, "acme", "wf", "2026-11").document
    assert nov_before["chat_sessions"]["c1"]["status"] == "active"
    assert nov_before["chat_sessions"]["c1"]["duration_sec"] == 59.0

    ended_at = FIRST_OF_DECEMBER + timedelta(minutes=5)
    with time_machine.travel(ended_at, tick=False):  # default ended_at: now (UTC)
        with session_scope() as s:
            result = end_chat(s, enterprise_id="acme", chat_id="c1")
    assert result.ended_at == ended_at and not result.already_completed
    assert [(r.workflow, r.period) for r in result.rollups] == [("wf", "2026-11"), ("wf", "2026-12")]

    # no beat job ran: the stored rollups already say completed
    assert _dirty(db) == []
    nov = _assert_rollup_matches_events(db, "acme", "wf", "2026-11")
    dec = _assert_rollup_matches_events(db, "acme", "wf", "2026-12")
    for doc in (nov, dec):
        assert doc["chat_sessions"]["c1"]["status"] == "completed"
        assert doc["chat_sessions"]["c1"]["ended_at"] == "2026-12-01T00:05:00Z"
    assert nov["chat_sessions"]["c1"]["duration_sec"] == 59.0  # ended in December: last turn - first turn
    assert dec["chat_sessions"]["c1"]["duration_sec"] == 300.0  # 00:00:00 → ended_at 00:05:00
    assert dec["chat_sessions"]["c2"]["duration_sec"] == 0.0
    assert dec["overall_avg"]["avg_duration_sec"] == 150.0
    with db.connect() as conn:
        status, stored_end = conn.execute(text("SELECT status, ended_at FROM chat_session WHERE chat_id = 'c1'")).one()
    assert (status, stored_end) == ("completed", ended_at)

    # ending it again (a retried task) keeps the first ended_at and writes no rollup
    before = _snapshot(db)
    with time_machine.travel(ended_at + timedelta(hours=1), tick=False):
        with session_scope() as s:
            again = end_chat(s, enterprise_id="acme", chat_id="c1")
    assert again.already_completed and again.ended_at == ended_at
    assert _snapshot(db) == before

    # a turn drained after the end keeps the chat completed and reaches the rollup via the beat job
    _record(
        gate,
        [_turn("a5", chat="c1", agent="critic", prompt=5, completion=5, at=FIRST_OF_DECEMBER + timedelta(minutes=7))],
    )
    OutboxDrain(redis_client, settings=settings).drain()
    assert _refresh_all() == 1
    dec = _assert_rollup_matches_events(db, "acme", "wf", "2026-12")
    assert dec["chat_sessions"]["c1"]["status"] == "completed"
    assert dec["chat_sessions"]["c1"]["duration_sec"] == 420.0  # a turn after ended_at extends it
    assert "critic" in dec["agents"]


def test_end_chat_bad_input(db, gate, redis_client, settings):
    with session_scope() as s, pytest.raises(LookupError, match="enterprise_id='acme' chat_id='nope'"):
        end_chat(s, enterprise_id="acme", chat_id="nope")
    _wallet(gate)
    _record(gate, [_turn("x", chat="c1", at=T0)])
    OutboxDrain(redis_client, settings=settings).drain()
    with session_scope() as s, pytest.raises(ValueError, match="ended_at"):
        end_chat(s, enterprise_id="acme", chat_id="c1", ended_at=datetime(2026, 11, 10, 12))
    with session_scope() as s, pytest.raises(ValueError, match="chat_id"):
        end_chat(s, enterprise_id="acme", chat_id="")
    with session_scope() as s:
        for args, field in (
            (("acme", "wf", "2026-13"), "period"),
            (("", "wf", "2026-11"), "enterprise_id"),
            (("acme", "", "2026-11"), "workflow"),
        ):
            with pytest.raises(ValueError, match=field):
                refresh_rollup(s, *args)
        with pytest.raises(ValueError, match="limit"):
            refresh_dirty(s, limit=0)
    with db.connect() as conn:
        assert conn.execute(text("SELECT status FROM chat_session")).scalar_one() == "active"
        assert conn.execute(text("SELECT count(*) FROM workflow_rollup")).scalar_one() == 0


def test_workflow_averages_and_chat_performance_exact_figures(db, gate, redis_client, settings):
    _wallet(gate)
    # three sessions; per-agent response times 200, 301 → 250.5 ms
    decisions = _record(
        gate,
        [
            _turn("p1", chat="c1", agent="planner", prompt=1000, completion=100, duration_ms=200, at=T0),
            _turn(
                "p2",
                chat="c1",
                agent="planner",
                prompt=1001,
                completion=3,
                duration_ms=301,
                at=T0 + timedelta(seconds=10),
            ),
            _turn(
                "p3",
                chat="c1",
                agent="coder",
                prompt=7,
                completion=1,
                cached=5,
                duration_ms=1000,
                at=T0 + timedelta(seconds=20, milliseconds=5),
            ),
            _turn("p4", chat="c2", agent="coder", prompt=2, completion=2, duration_ms=3, at=T0),
            _turn("p5", chat="c3", agent="planner", prompt=1, completion=0, duration_ms=1, at=T0),
        ],
    )
    OutboxDrain(redis_client, settings=settings).drain()
    costs = [d.cost_nanos for d in decisions]
    total_cost = sum(costs)
    avg_cost = int(Fraction(total_cost, 3) + Fraction(1, 2))

    with session_scope() as s:
        live = workflow_averages(s, "acme", "wf", "2026-11")
    assert live["source"] == "usage_event"
    with session_scope() as s:
        refresh_rollup(s, "acme", "wf", "2026-11")
    with session_scope() as s:
        stored = workflow_averages(s, "acme", "wf", "2026-11")
    assert stored["source"] == "rollup" and stored["refreshed_at"] is not None
    figures = {
        "total_sessions": 3,
        "total_turns": 5,
        "avg_prompt_tokens": 670.33,  # 2011 / 3
        "avg_completion_tokens": 35.33,  # 106 / 3
        "avg_total_tokens": 705.67,  # 2117 / 3
        "avg_cost_nanos": avg_cost,
        "avg_cost_usd": nanos_to_usd(avg_cost),
        "total_cost_nanos": total_cost,
        "total_cost_usd": nanos_to_usd(total_cost),
        "avg_duration_sec": 6.668,
    }  # (20.005 + 0 + 0) / 3
    for averages in (live, stored):
        assert {k: averages[k] for k in figures} == figures

    with session_scope() as s:
        perf = chat_performance(s, "acme", "c1")
    assert (perf["turns"], perf["prompt_tokens"], perf["completion_tokens"], perf["cost_nanos"]) == (
        3,
        2008,
        104,
        sum(costs[:3]),
    )
    assert perf["agents"]["planner"] == {
        "turns": 2,
        "avg_response_ms": 250.5,
        "total_response_ms": 501,
        "prompt_tokens": 2001,
        "completion_tokens": 103,
        "cached_prompt_tokens": 0,
        "total_tokens": 2104,
        "cost_nanos": costs[0] + costs[1],
        "cost_usd": nanos_to_usd(costs[0] + costs[1]),
    }
    assert perf["agents"]["coder"]["avg_response_ms"] == 1000.0
    assert perf["agents"]["coder"]["cached_prompt_tokens"] == 5
    with session_scope() as s, pytest.raises(LookupError, match="chat_id='missing'"):
        chat_performance(s, "acme", "missing")
    with session_scope() as s:  # a group without turns: zeros, not an error
        empty = build_document(s, "acme", "wf", "2026-10")
    assert empty["overall_avg"]["total_sessions"] == 0 and empty["chat_sessions"] == {} and empty["agents"] == {}


def test_rollup_tasks_and_beat_entry(db, gate, redis_client, settings):
    import tasks.rollups as rollup_tasks
    from worker.celery_app import app

    entry = app.conf.beat_schedule["refresh-rollups"]
    assert (entry["task"], entry["schedule"]) == ("tollgate.rollups.refresh_dirty", 60.0)
    assert rollup_tasks.refresh_dirty.name in app.tasks

    _wallet(gate)
    _record(gate, [_turn("k1", chat="c1", at=T0), _turn("k2", chat="c2", at=FIRST_OF_DECEMBER)])
    OutboxDrain(redis_client, settings=settings).drain()
    assert rollup_tasks.refresh_dirty(limit=1) == 2  # one transaction per mark, until none is left
    assert rollup_tasks.refresh_dirty() == 0
    assert rollup_tasks.refresh("acme", "wf", "2026-11")["total_turns"] == 1
    ended = rollup_tasks.end_chat("acme", "c2", "2026-12-02T00:00:00+00:00")
    assert ended["ended_at"] == "2026-12-02T00:00:00Z"
    assert ended["rollups"] == [
        {"workflow": "wf", "period": "2026-12", "total_sessions": 1, "total_turns": 1, "cost_nanos": 3_500_000}
    ]
    assert _stored(db, "acme", "wf", "2026-12").document["chat_sessions"]["c2"]["status"] == "completed"
    with pytest.raises(LookupError, match="nope"):
        rollup_tasks.end_chat("acme", "nope")


def test_cli_refresh_all_dirty_and_chat_end(cli, db, gate, redis_client, settings):
    import json

    _wallet(gate)
    _record(gate, [_turn("u1", chat="c1", at=T0), _turn("u2", chat="c1", at=T0 + timedelta(seconds=90))])
    OutboxDrain(redis_client, settings=settings).drain()
    proc = cli("rollup", "refresh", "--all-dirty")
    assert proc.returncode == 0 and "refreshed 1 dirty rollup" in proc.stdout, proc.stderr
    assert _dirty(db) == []
    proc = cli("chat", "end", "acme", "c1", "--at", "2026-11-10T09:02:00", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ended_at"] == "2026-11-10T09:02:00Z"  # a naive --at is UTC
    chat = _assert_rollup_matches_events(db, "acme", "wf", "2026-11")["chat_sessions"]["c1"]
    assert (chat["status"], chat["duration_sec"]) == ("completed", 120.0)
    bad = cli("rollup", "refresh", "acme", "wf", "2026-13")
    assert bad.returncode == 2 and "period: '2026-13'" in bad.stderr


def test_the_beat_job_takes_marks_in_a_short_transaction_and_puts_back_what_it_failed(db, gate, monkeypatch):
    """The beat task commits the taken marks before refreshing (a drain never waits on a mark for a
    refresh's length); a refresh that fails puts its group's mark back for the next run."""
    from sqlalchemy import text as sql

    from tasks import rollups as task_module
    from worker.chats import rollups as rollup_module
    from worker.chats.rollups import mark_dirty
    from worker.db import session_scope

    with session_scope() as session:
        mark_dirty(session, [("acme", "wf-a", "2026-11"), ("acme", "wf-b", "2026-11")])
    calls = []

    def failing_refresh(session, enterprise_id, workflow, period):
        calls.append(workflow)
        raise RuntimeError("database went away")

    monkeypatch.setattr(rollup_module, "refresh_rollup", failing_refresh)  # the one refresh the task runs
    with pytest.raises(RuntimeError):
        task_module.refresh_dirty()
    with db.connect() as conn:
        marks = sorted(w for (w,) in conn.execute(sql("SELECT workflow FROM rollup_dirty")))
    assert (calls, marks) == (["wf-a"], ["wf-a", "wf-b"])
    monkeypatch.undo()
    assert task_module.refresh_dirty() == 2
    with db.connect() as conn:
        assert conn.execute(sql("SELECT count(*) FROM rollup_dirty")).scalar_one() == 0
