"""The billing rollups (``billing_rollup``, ``chat_rollup``) against real PostgreSQL and Redis: the
drain keeps them incrementally, so after every drain (a re-delivered batch, a second acceptance of a
turn_id included) and after the rollup refresh the rollup rows equal ``GROUP BY`` sums of the events
exactly and the billing report (read from the rollups only) equals sums computed here from
``usage_event`` to the nano; a refresh after the drain writes nothing; a refresh racing a drain
leaves them exact; and a group whose events are gone (deleted other than by the drain) loses its
rows when it is refreshed."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.billing_seed import seed
from tests.conftest import seed_wallet
from worker.billing.report import billing_report, history_periods
from worker.chats.jobs import refresh_dirty_groups
from worker.db import session_scope
from worker.ledger.drain import OutboxDrain

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 20, 9, tzinfo=UTC)  # October and November 2026
NOW = datetime(2026, 12, 2, tzinfo=UTC)
SUMS = (
    "count(*), sum(quantity), sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), "
    "sum(cost_nanos), sum(billed_nanos), sum(creator_share_nanos), sum(platform_fee_nanos)"
)
FIGURES = (
    "events, quantity, prompt_tokens, cached_prompt_tokens, completion_tokens, cost_nanos, billed_nanos, "
    "creator_share_nanos, platform_fee_nanos"
)
PERIOD_SQL = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM')"


def _rows(db, query: str, **params) -> list[tuple]:
    """Rows of ``query`` as tuples of plain ints and strings (PostgreSQL's sums are NUMERIC)."""
    with db.connect() as conn:
        return [
            tuple(int(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, float) else v for v in r)
            for r in conn.execute(text(query), params).all()
        ]


def _expected_billing(db) -> list[tuple]:
    return _rows(
        db,
        f"SELECT enterprise_id, {PERIOD_SQL}, workflow, wallet_id, provider, model, meter, {SUMS} "
        "FROM usage_event GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7",
    )


def _stored_billing(db) -> list[tuple]:
    return _rows(
        db,
        f"SELECT enterprise_id, period, workflow, wallet_id, provider, model, meter, {FIGURES} "
        "FROM billing_rollup ORDER BY 1, 2, 3, 4, 5, 6, 7",
    )


def _expected_chats(db) -> list[tuple]:
    return _rows(
        db,
        f"SELECT enterprise_id, {PERIOD_SQL}, workflow, wallet_id, chat_id, {SUMS}, min(occurred_at), "
        "max(occurred_at) FROM usage_event GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    )


def _stored_chats(db) -> list[tuple]:
    return _rows(
        db,
        f"SELECT enterprise_id, period, workflow, wallet_id, chat_id, {FIGURES}, first_at, last_at "
        "FROM chat_rollup ORDER BY 1, 2, 3, 4, 5",
    )


def _versions(db) -> list[tuple]:
    """Every billing rollup row's key and tuple version (``xmin``): unchanged when nothing was written."""
    return _rows(
        db,
        "SELECT 'b', enterprise_id, period, workflow, wallet_id, provider || '/' || model || '/' || meter, "
        "xmin::text FROM billing_rollup UNION ALL SELECT 'c', enterprise_id, period, workflow, wallet_id, chat_id, "
        "xmin::text FROM chat_rollup ORDER BY 1, 2, 3, 4, 5, 6",
    )


def _dirty(db) -> list[tuple]:
    return _rows(db, "SELECT enterprise_id, workflow, period FROM rollup_dirty ORDER BY 1, 2, 3")


def _assert_exact(db) -> None:
    """Both billing rollups equal ``GROUP BY`` sums of ``usage_event``, row for row, to the nano."""
    assert _stored_billing(db) == _expected_billing(db)
    assert _stored_chats(db) == _expected_chats(db)


def _check_report(db, enterprise: str, period: str, wallet: str | None = None) -> None:
    """The report of ``period`` (narrowed to ``wallet``) equals sums computed from ``usage_event`` here."""
    with session_scope() as s:
        r = billing_report(s, enterprise_id=enterprise, period=period, wallet_id=wallet, now=NOW)
    scope = "enterprise_id = :e AND (CAST(:w AS text) IS NULL OR wallet_id = :w)"
    params = {"e": enterprise, "w": wallet, "p": period}
    lines = _rows(
        db,
        f"SELECT provider, model, meter, {SUMS} FROM usage_event WHERE {scope} AND {PERIOD_SQL} = :p "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        **params,
    )
    got = [(x.provider, x.model, x.meter, *(getattr(x.figures, f) for f in FIGURES.split(", "))) for x in r.lines]
    assert got == lines
    ((total,),) = _rows(
        db, f"SELECT coalesce(sum(cost_nanos), 0) FROM usage_event WHERE {scope} AND {PERIOD_SQL} = :p", **params
    )
    assert r.total.cost_nanos == total
    chats = _rows(
        db,
        f"SELECT chat_id, max(workflow), max(wallet_id), min(occurred_at), max(occurred_at), {SUMS} FROM usage_event "
        f"WHERE {scope} AND {PERIOD_SQL} = :p GROUP BY chat_id ORDER BY sum(cost_nanos) DESC, chat_id LIMIT 50",
        **params,
    )
    got_chats = [
        (
            c.chat_id,
            c.workflow,
            c.wallet_id,
            c.first_at,
            c.last_at,
            *(getattr(c.figures, f) for f in FIGURES.split(", ")),
        )
        for c in r.top_chats
    ]
    assert got_chats == chats
    ((n_chats,),) = _rows(
        db, f"SELECT count(DISTINCT chat_id) FROM usage_event WHERE {scope} AND {PERIOD_SQL} = :p", **params
    )
    assert r.chats_in_period == n_chats
    periods = history_periods(period)
    history = {
        (p, provider): cost
        for p, provider, cost in _rows(
            db,
            f"SELECT {PERIOD_SQL}, provider, sum(cost_nanos) FROM usage_event WHERE {scope} "
            f"AND {PERIOD_SQL} = ANY(:ps) GROUP BY 1, 2",
            ps=periods,
            **params,
        )
    }
    got_history = {
        (p, provider): values[i]
        for provider, values in r.history.by_provider.items()
        for i, p in enumerate(r.history.periods)
        if values[i]
    }
    assert got_history == {k: v for k, v in history.items() if v}
    for b in r.budgets:
        column, key = ("billed_nanos", "wallet_id") if b.scope == "wallet" else ("cost_nanos", "workflow")
        ((spent,),) = _rows(
            db,
            f"SELECT coalesce(sum({column}), 0) FROM usage_event WHERE enterprise_id = :e AND {key} = :t "
            f"AND {PERIOD_SQL} = :p",
            e=enterprise,
            t=b.target,
            p=period,
        )
        assert b.spent_nanos == spent


def _turn(i: int, *, workflow: str, wallet: str, chat: str, at: datetime, **kw) -> TurnIn:
    if kw.get("meter"):
        return TurnIn(
            turn_id=f"t{i}", wallet_id=wallet, enterprise_id="acme", chat_id=chat, workflow=workflow,
            occurred_at=at, **kw,
        )  # fmt: skip
    return TurnIn(
        turn_id=f"t{i}",
        wallet_id=wallet,
        enterprise_id="acme",
        chat_id=chat,
        workflow=workflow,
        agent=("planner", "coder")[i % 2],
        model=("gpt-4o", "gpt-4o-mini")[i % 2],
        provider="openai",
        prompt_tokens=1000 + 37 * i,
        completion_tokens=50 + 11 * i,
        cached_prompt_tokens=(i % 3) * 100,
        duration_ms=200 + i,
        occurred_at=at,
    )


def _record_and_drain(gate, redis_client, settings, turns: list[TurnIn]) -> None:
    decisions = gate.record_turns(turns)
    assert all(d.accepted and not d.duplicate for d in decisions)
    OutboxDrain(redis_client, settings=settings).drain()


def _first_turns() -> list[TurnIn]:
    turns = []
    for i in range(24):
        turns.append(
            _turn(
                i,
                workflow=("support", "research")[i % 2],
                wallet=("w1", "w2")[i % 3 == 0],
                chat=f"c{i % 5}",
                at=T0 + timedelta(days=i * 1.5, minutes=i),  # 20 Oct … 23 Nov
            )
        )
    turns.append(_turn(100, workflow="support", wallet="w1", chat="c0", at=T0, meter="emails", quantity=7))
    turns.append(
        _turn(101, workflow="research", wallet="w2", chat="c3", at=T0 + timedelta(days=20), meter="function_calls",
              quantity=16_659)
    )  # fmt: skip
    return turns


def test_rollups_equal_the_events_after_the_drain_and_after_a_refresh(db, gate, redis_client, settings):
    seed_wallet(gate, "w1", "acme", "owner-1", 10**15)
    seed_wallet(gate, "w2", "acme", "owner-2", 10**15)
    _record_and_drain(gate, redis_client, settings, _first_turns())
    groups = [(e, w, p) for e in ("acme",) for w in ("research", "support") for p in ("2026-10", "2026-11")]
    assert _dirty(db) == groups

    # after the drain: every group is dirty (for its workflow rollup), the billing rollups are
    # already the events' sums, and the report reads them
    _assert_exact(db)
    assert len(_stored_chats(db)) >= 10
    for period in ("2026-10", "2026-11"):
        for wallet in (None, "w1", "w2"):
            _check_report(db, "acme", period, wallet)

    # the refresh recomputes the same sums: it writes no billing rollup row
    before = _versions(db)
    assert refresh_dirty_groups() == 4
    assert _dirty(db) == []
    assert _versions(db) == before
    _assert_exact(db)

    # a second refresh of every group writes nothing either
    with session_scope() as s:
        from worker.chats.rollups import refresh_rollup

        for group in groups:
            refresh_rollup(s, *group)
    assert _versions(db) == before

    # late turns of one group: only that group is marked, only its rows move, and they are exact
    late = [
        _turn(200 + i, workflow="support", wallet="w2", chat=f"late{i % 2}", at=T0 + timedelta(days=2, hours=i))
        for i in range(4)
    ]
    _record_and_drain(gate, redis_client, settings, late)
    assert _dirty(db) == [("acme", "support", "2026-10")]
    _assert_exact(db)
    changed = {(r[2], r[3]) for r in set(_versions(db)) - set(before)}  # rows new or rewritten
    assert changed == {("2026-10", "support")}
    for wallet in (None, "w1", "w2"):
        _check_report(db, "acme", "2026-10", wallet)
        _check_report(db, "acme", "2026-11", wallet)  # its history reads October
    after_drain = _versions(db)
    assert refresh_dirty_groups() == 1
    assert _versions(db) == after_drain
    _assert_exact(db)


def test_a_group_whose_events_are_gone_loses_its_rollup_rows(db, gate, redis_client, settings):
    seed_wallet(gate, "w1", "acme", "owner-1", 10**15)
    seed_wallet(gate, "w2", "acme", "owner-2", 10**15)
    _record_and_drain(gate, redis_client, settings, _first_turns())
    refresh_dirty_groups()
    with db.begin() as conn:  # rows deleted other than by the drain (a hand-made repair)
        conn.execute(text("DELETE FROM usage_event WHERE chat_id = 'c1' OR meter = 'emails'"))
    # the rollups count them until the groups are repaired; the beat's refresh does not touch them
    assert _stored_billing(db) != _expected_billing(db)
    refresh_dirty_groups()
    assert _stored_billing(db) != _expected_billing(db)
    from worker.chats.rollups import refresh_billing_rollups

    with session_scope() as s:
        for workflow in ("research", "support"):
            for period in ("2026-10", "2026-11"):
                refresh_billing_rollups(s, "acme", workflow, period)
    assert _stored_billing(db) == _expected_billing(db)
    assert _stored_chats(db) == _expected_chats(db)
    assert not any(r[4] == "c1" for r in _stored_chats(db))
    assert not any(r[6] == "emails" for r in _stored_billing(db))
    _check_report(db, "acme", "2026-11")


def test_the_seeded_app_reads_the_same_from_rollups_as_from_events(db):
    """Every view of every month of the /billing seed (LLM turns, meters, budgets, two apps): the
    report before the beat's refresh (every group marked, its billing rollups recomputed by the seed as
    the drain would have kept them) equals the report after it, field by field; and both equal SQL
    sums."""
    seeded = seed(db)
    periods = [p for (p,) in _rows(db, f"SELECT DISTINCT {PERIOD_SQL} FROM usage_event ORDER BY 1")]
    assert len(periods) >= 6
    views = [("acme", None, True), ("acme", seeded.end_user_wallet, True), ("acme", None, False), ("other", None, True)]

    def reports():
        with session_scope() as s:
            return [
                billing_report(s, enterprise_id=e, period=p, wallet_id=w, detail=d, now=NOW)
                for p in periods
                for e, w, d in views
            ]

    live = reports()
    assert _dirty(db)
    _assert_exact(db)
    refresh_dirty_groups()
    assert _dirty(db) == []
    assert _stored_billing(db) == _expected_billing(db)
    assert _stored_chats(db) == _expected_chats(db)
    assert reports() == live
    for p in periods:
        _check_report(db, "acme", p)
        _check_report(db, "acme", p, seeded.end_user_wallet)


def _read(redis_client, settings, gate, turns: list[TurnIn]) -> list[dict]:
    """Record ``turns`` and read their outbox entries with a consumer that never acknowledges them:
    the usage rows a drain would persist (``worker.gate.outbox.parse_entry``'s)."""
    from worker.gate.outbox import parse_entry

    assert all(d.accepted and not d.duplicate for d in gate.record_turns(turns))
    rows = []
    for s in sorted({gate.shard(t.wallet_id) for t in turns}):
        entries, _ = OutboxDrain(redis_client, settings=settings, consumer="reader").read_batch(s)
        rows += [parse_entry(f, f"{s}:{i}") for i, f in entries]
    assert len(rows) == len(turns)
    return rows


def test_a_redelivered_batch_and_a_second_acceptance_leave_the_rollups_exact(db, gate, redis_client, settings):
    from worker.ledger.turns import persist_turns

    seed_wallet(gate, "w1", "acme", "owner-1", 10**15)
    seed_wallet(gate, "w2", "acme", "owner-2", 10**15)
    rows = _read(redis_client, settings, gate, _first_turns())
    with session_scope() as s:
        assert persist_turns(s, rows).inserted == len(rows)
    _assert_exact(db)
    before = _versions(db)
    with session_scope() as s:  # the same batch again (committed, then not acknowledged)
        again = persist_turns(s, rows + rows[:3])
    assert (again.inserted, again.duplicates) == (0, len(rows) + 3)
    assert _versions(db) == before  # not a row written
    _assert_exact(db)

    # the gate forgets two turn_ids and accepts them again: second acceptances, refunded, not counted
    for turn_id in ("t0", "t7"):
        wallet = next(r["wallet_id"] for r in rows if r["turn_id"] == turn_id)
        assert gate.forget_turn("acme", wallet, turn_id) == 1
    fresh = [
        _turn(300 + i, workflow="support", wallet="w1", chat="c9", at=T0 + timedelta(days=3, hours=i)) for i in range(3)
    ]
    retried = [t for t in _first_turns() if t.turn_id in ("t0", "t7")]
    _record_and_drain(gate, redis_client, settings, [*retried, *fresh])
    ((events,),) = _rows(db, "SELECT count(*) FROM usage_event")
    assert events == len(rows) + 3
    _assert_exact(db)
    assert refresh_dirty_groups() == 4
    _assert_exact(db)
    for period in ("2026-10", "2026-11"):
        _check_report(db, "acme", period)


def _wait_for_lock_wait(db, timeout: float = 10.0) -> None:
    """Wait until some backend waits for an advisory lock (the racing side is blocked)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((n,),) = _rows(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        if n:
            return
        time.sleep(0.02)
    raise AssertionError("no backend waits for an advisory lock")


def test_a_refresh_racing_a_drain_leaves_the_rollups_exact(db, gate, redis_client, settings):
    """Two connections.  (1) A drain has inserted its events and added its sums but not committed;
    a billing repair of its group starts, waits for the drain's commit (the drain's shared lock), then reads
    its events: exact.  (2) A repair has read the events and written its rows but not committed; a
    drain of the group inserts its events, then waits for the refresh to commit before it adds its
    sums (the refresh's exclusive lock): exact."""
    from worker.chats.rollups import refresh_billing_rollups
    from worker.ledger.turns import persist_turns

    seed_wallet(gate, "w1", "acme", "owner-1", 10**15)
    seed_wallet(gate, "w2", "acme", "owner-2", 10**15)
    _record_and_drain(gate, redis_client, settings, _first_turns())
    group = ("acme", "support", "2026-10")

    # (1) the drain first: its commit lands between the refresh's start and its read
    rows = _read(redis_client, settings, gate, [
        _turn(400 + i, workflow="support", wallet="w1", chat=f"r{i % 2}", at=T0 + timedelta(hours=i))
        for i in range(5)
    ])  # fmt: skip
    refreshed = threading.Event()
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            with session_scope() as s:
                refresh_billing_rollups(s, *group)
            refreshed.set()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with session_scope() as drain_session:
        assert persist_turns(drain_session, rows).inserted == 5
        racer = threading.Thread(target=refresh)
        racer.start()
        _wait_for_lock_wait(db)
        assert not refreshed.is_set()  # the refresh waits for the drain
    racer.join(30)
    assert refreshed.is_set() and not errors
    _assert_exact(db)

    # (2) the refresh first: the drain inserts its events while the refresh holds the group
    rows = _read(redis_client, settings, gate, [
        _turn(500 + i, workflow="support", wallet="w2", chat=f"r{i % 3}", at=T0 + timedelta(hours=i, minutes=7))
        for i in range(6)
    ])  # fmt: skip
    drained = threading.Event()

    def drain() -> None:
        try:
            with session_scope() as s:
                assert persist_turns(s, rows).inserted == 6
            drained.set()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with session_scope() as refresh_session:
        refresh_billing_rollups(refresh_session, *group)
        racer = threading.Thread(target=drain)
        racer.start()
        _wait_for_lock_wait(db)
        assert not drained.is_set()  # the drain waits for the refresh
    racer.join(30)
    assert drained.is_set() and not errors
    _assert_exact(db)
    assert refresh_dirty_groups() >= 1
    _assert_exact(db)
    _check_report(db, "acme", "2026-10")
