"""usage_event partitioned by month: rows land in their month's partition (or the default one), a
turn_id retried with another occurred_at is still one row, the daily job creates the coming months
and drops the ones past retention, and balances never change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.conftest import run_cli
from worker.db import session_scope
from worker.ledger.accounts import ledger_balance
from worker.ledger.drain import OutboxDrain
from worker.ledger.partitions import apply_retention, ensure_partitions, maintain, monthly_partitions

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def _turn(turn_id: str, when: datetime) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id="w1",
        enterprise_id="acme",
        chat_id="c1",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000,
        completion_tokens=100,
        occurred_at=when,
    )


def _where(db) -> list[tuple[str, str]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text("SELECT turn_id, tableoid::regclass::text FROM usage_row ORDER BY turn_id"))
        ]


def test_rows_land_in_their_month_and_a_retried_turn_id_is_one_row(db, gate, redis_client, settings):
    with session_scope() as s:
        ensure_partitions(s, now=NOW, ahead=2)
        assert {"2026-12", "2027-01", "2027-02"} <= set(monthly_partitions(s))
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=10**12, idempotency_key="seed")
    gate.record_turns(
        [
            _turn("old", datetime(2023, 11, 16, 18, 15, tzinfo=UTC)),
            _turn("dec", datetime(2026, 12, 1, 9, tzinfo=UTC)),
            _turn("jan", datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ]
    )
    drain = OutboxDrain(redis_client, settings=settings)
    assert drain.drain().inserted == 3
    # the gate forgot "dec" (its dedupe key expired, or Redis was rebuilt) and the orchestrator
    # retries it with another occurred_at: the drain refunds it, usage_event keeps one row
    assert gate.forget_turn("acme", "w1", "dec") == 1
    second = gate.record_turn(_turn("dec", datetime(2027, 1, 2, tzinfo=UTC)))
    assert second.accepted and not second.duplicate
    stats = drain.drain()
    assert (stats.inserted, stats.refunded) == (0, 1)
    assert _where(db) == [
        ("dec", "usage_event_2026_12"),
        ("jan", "usage_event_2027_01"),
        ("old", "usage_event_default"),
    ]
    cost = gate.prices.price(
        model="gpt-4o", provider="openai", when=NOW, prompt_tokens=1000, completion_tokens=100
    ).cost_nanos
    assert gate.balance("w1") == 10**12 - 3 * cost
    with session_scope() as s:
        assert ledger_balance(s, "w1") == 10**12 - 3 * cost


def test_retention_drops_old_months_and_keeps_balances(db, gate, redis_client, settings):
    with session_scope() as s:
        ensure_partitions(s, now=datetime(2026, 9, 1, tzinfo=UTC), ahead=4)  # 2026-09 .. 2027-01
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=10**12, idempotency_key="seed")
    months = [
        datetime(2025, 5, 3, tzinfo=UTC),
        datetime(2026, 9, 10, tzinfo=UTC),
        datetime(2026, 10, 10, tzinfo=UTC),
        datetime(2026, 11, 10, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    ]
    gate.record_turns([_turn(f"t{i}", when) for i, when in enumerate(months)])
    OutboxDrain(redis_client, settings=settings).drain()
    balance = gate.balance("w1")
    with session_scope() as s:
        report = apply_retention(s, months=3, now=NOW)  # keep 2026-10, -11, -12
    # the old turns' keys stay: they were recorded today (a late turn keeps its idempotency)
    assert (report.dropped, report.default_rows_deleted, report.turn_keys_deleted) == (["2026-09"], 1, 0)
    with db.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one() == 5
        # as if recorded back then (the key keeps the later of the turn's and its recording's UTC dates)
        for i, when in enumerate(months):
            conn.execute(
                text(
                    "UPDATE usage_turn_key SET retention_date = :d WHERE turn_key = usage_turn_key_of('acme', 'w1', :t)"
                ),
                {"d": when.date(), "t": f"t{i}"},
            )
    with session_scope() as s:
        assert apply_retention(s, months=3, now=NOW).turn_keys_deleted == 2
    assert [t for t, _ in _where(db)] == ["t2", "t3", "t4"]
    with session_scope() as s:
        assert ledger_balance(s, "w1") == balance == gate.balance("w1")
        assert "2026-09" not in monthly_partitions(s)
        for bad in (-1, 1, 2):  # the allowance expiry and late alerts read the months before
            with pytest.raises(ValueError, match="months"):
                apply_retention(s, months=bad)
        assert apply_retention(s, months=0).dropped == []


def test_a_month_with_rows_in_the_default_partition_is_reported_not_broken(db, gate, redis_client, settings):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=10**12, idempotency_key="seed")
    far = datetime(2031, 3, 3, tzinfo=UTC)  # no partition yet: lands in the default one
    gate.record_turn(_turn("far", far))
    OutboxDrain(redis_client, settings=settings).drain()
    with session_scope() as s:
        report = maintain(s, now=datetime(2031, 2, 1, tzinfo=UTC), settings=settings)
    assert "2031-03" in report.blocked and "2031-02" in report.created
    assert _where(db) == [("far", "usage_event_default")]


def test_cli_runs_the_daily_job(db):
    result = run_cli("db", "partitions", "--json")
    assert result.returncode == 0, result.stderr
    assert '"dropped": []' in result.stdout.splitlines()[-1]
