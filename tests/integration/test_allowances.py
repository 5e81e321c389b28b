"""Monthly allowances against real PostgreSQL and Redis: one grant and one expiry per (wallet, period)
however often, late or concurrently the job runs; the month boundary with frozen time; the expiry
cap; the gate's adjust script; and the ledger and the gate agreeing to the nano throughout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from worker.billing.allowances import AllowanceError, allowance_key, expiry_key, set_allowance
from worker.billing.jobs import run_monthly_reset
from worker.db import session_scope
from worker.gate.gate import UnknownWallet, WalletGate
from worker.ledger.drain import OutboxDrain
from worker.periods import current_period, period_of
from worker.pricing.prices import PriceBook

pytestmark = pytest.mark.integration

USD = 10**9
TOKEN_NANOS = 2_500  # gpt-4o: $2.50 per million prompt tokens
ALLOWANCE = 5 * USD
GRACE = 600  # settings.allowance_expiry_grace_s


@pytest.fixture()
def wallets(db, gate, redis_client, settings):
    """Opens wallets with an allowance; records and persists turns."""
    assert settings.allowance_expiry_grace_s == GRACE
    # gpt-4o's prompt price as an override without a context window: these tests spend whole
    # dollars in single turns of millions of tokens, above gpt-4o's real window (128,000)
    spend_gate = WalletGate(
        redis_client,
        settings=settings,
        kicker=gate.kicker,
        price_book=PriceBook({"openai/gpt-4o": {"input_mtok": "2.50"}}),
    )

    class Wallets:
        drain = OutboxDrain(redis_client, settings=settings, consumer="test")
        n = 0

        def open(self, wallet_id="w1", allowance=ALLOWANCE, purchased=0):
            open_wallet(gate, wallet_id=wallet_id, enterprise_id="acme", owner_id=wallet_id)
            if purchased:
                credit_wallet(gate, wallet_id=wallet_id, amount_nanos=purchased, idempotency_key=f"buy-{wallet_id}")
            with session_scope() as session:
                set_allowance(session, wallet_id, allowance)

        def spend(self, wallet_id, tokens, at=None, persist=True):
            self.n += 1
            kw = {} if at is None else {"occurred_at": at}
            decision = spend_gate.record_turn(
                TurnIn(
                    turn_id=f"t{self.n}",
                    wallet_id=wallet_id,
                    enterprise_id="acme",
                    chat_id="c1",
                    model="gpt-4o",
                    provider="openai",
                    prompt_tokens=tokens,
                    completion_tokens=0,
                    **kw,
                )
            )
            assert decision.accepted and decision.billed_nanos == tokens * TOKEN_NANOS
            if persist:
                self.drain.drain()
            return decision

    return Wallets()


def reset(gate, now, **kw):
    return run_monthly_reset(gate, now=now, **kw)


def ledger(db, wallet_id="w1") -> dict[str, int]:
    """The wallet's allowance entries: {key: signed amount}."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT idempotency_key, CASE kind WHEN 'credit' THEN amount_nanos ELSE -amount_nanos END "
                "FROM wallet_transaction WHERE wallet_id = :w AND idempotency_key LIKE 'tollgate:allowance%' "
                "ORDER BY id"
            ),
            {"w": wallet_id},
        ).all()
    return dict(rows)


def assert_agree(db, gate, wallet_id="w1") -> int:
    """Ledger (aggregates and entries) and gate hold the same balance, to the nano; returns it."""
    with db.connect() as conn:
        credits, debits = conn.execute(
            text("SELECT credits_nanos, debits_nanos FROM wallet WHERE id = :w"), {"w": wallet_id}
        ).one()
        entries = conn.execute(
            text(
                "SELECT coalesce(sum(CASE kind WHEN 'credit' THEN amount_nanos ELSE -amount_nanos END), 0) "
                "FROM wallet_transaction WHERE wallet_id = :w"
            ),
            {"w": wallet_id},
        ).scalar_one()
    assert credits - debits == entries == gate.balance(wallet_id)
    return gate.balance(wallet_id)


def test_running_the_reset_twice_grants_once(db, gate, wallets):
    wallets.open()
    now = datetime(2026, 11, 10, 9, tzinfo=UTC)
    first = reset(gate, now)
    assert [(e.period, e.kind, e.amount_nanos) for e in first.granted] == [("2026-11", "credit", ALLOWANCE)]
    again = reset(gate, now + timedelta(hours=1))
    assert (again.granted, again.expired, again.wallets_checked) == ([], [], 1)
    assert ledger(db) == {allowance_key("w1", "2026-11"): ALLOWANCE}
    assert assert_agree(db, gate) == ALLOWANCE
    with db.connect() as conn:  # the grant is a credit: audited once
        audits = conn.execute(text("SELECT actor, action, wallet_id, detail->>'amount_nanos' FROM audit_log")).all()
    assert [tuple(a) for a in audits] == [("system", "credit", "w1", str(ALLOWANCE))]


def test_concurrent_resets_grant_once(db, gate, wallets, race):
    wallets.open()
    now = datetime(2026, 11, 10, 9, tzinfo=UTC)
    reports = race(*[lambda: reset(gate, now)] * 4)  # fails on any racer's exception
    assert sorted(len(r.granted) for r in reports) == [0, 0, 0, 1]
    assert ledger(db) == {allowance_key("w1", "2026-11"): ALLOWANCE}
    assert assert_agree(db, gate) == ALLOWANCE


def test_month_boundary_with_frozen_time(db, gate, wallets):
    wallets.open()
    last_instant = datetime(2026, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    midnight = datetime(2026, 12, 1, tzinfo=UTC)
    with time_machine.travel(last_instant, tick=False):
        assert [e.period for e in run_monthly_reset(gate).granted] == ["2026-11"]
        late_nov = wallets.spend("w1", 400_000, persist=False)  # 1 USD at 23:59:59.999 (default occurred_at)
    with time_machine.travel(midnight, tick=False):
        early_dec = wallets.spend("w1", 200_000, persist=False)  # 0.5 USD at 00:00:00.000
        report = run_monthly_reset(gate)
        # December is granted at once; November's expiry waits for the grace (its last turn may
        # still be in the outbox: here it is)
        assert ([e.period for e in report.granted], report.expired) == (["2026-12"], [])
    wallets.drain.drain()
    with db.connect() as conn:
        periods = [period_of(at) for (at,) in conn.execute(text("SELECT occurred_at FROM usage_event ORDER BY id"))]
    assert periods == ["2026-11", "2026-12"]
    with time_machine.travel(midnight + timedelta(seconds=GRACE - 1), tick=False):
        assert run_monthly_reset(gate).expired == []
    with time_machine.travel(midnight + timedelta(seconds=GRACE), tick=False):
        [expiry] = run_monthly_reset(gate).expired
        assert run_monthly_reset(gate).expired == []
    assert (expiry.period, expiry.unused_nanos, expiry.amount_nanos) == ("2026-11", 4 * USD, 4 * USD)
    assert ledger(db) == {
        allowance_key("w1", "2026-11"): ALLOWANCE,
        allowance_key("w1", "2026-12"): ALLOWANCE,
        expiry_key("w1", "2026-11"): -4 * USD,
    }
    # 5 + 5 − 1 (Nov turn) − 0.5 (Dec turn) − 4 (Nov's unused allowance)
    assert assert_agree(db, gate) == 4_500_000_000
    assert late_nov.billed_nanos + early_dec.billed_nanos == 1_500_000_000


def test_late_run_after_downtime_expires_the_last_grant_and_grants_only_the_current_period(db, gate, wallets):
    wallets.open()
    reset(gate, datetime(2026, 8, 3, tzinfo=UTC))
    wallets.spend("w1", 400_000, at=datetime(2026, 8, 20, tzinfo=UTC))  # 1 USD of August's 5
    # the job is down for September and October and comes back on 15 November
    report = reset(gate, datetime(2026, 11, 15, 8, 30, tzinfo=UTC))
    assert [(e.period, e.amount_nanos) for e in report.expired] == [("2026-08", 4 * USD)]
    assert [(e.period, e.amount_nanos) for e in report.granted] == [("2026-11", ALLOWANCE)]
    again = reset(gate, datetime(2026, 11, 15, 9, 30, tzinfo=UTC))
    assert (again.granted, again.expired) == ([], [])
    assert ledger(db) == {
        allowance_key("w1", "2026-08"): ALLOWANCE,
        expiry_key("w1", "2026-08"): -4 * USD,
        allowance_key("w1", "2026-11"): ALLOWANCE,
    }  # nothing for September or October
    assert assert_agree(db, gate) == ALLOWANCE
    # an operator may backfill a missed month on purpose; the next run expires what it did not cover
    backfill = reset(gate, datetime(2026, 11, 15, 10, tzinfo=UTC), period="2026-10")
    assert [(e.period, e.amount_nanos) for e in backfill.granted] == [("2026-10", ALLOWANCE)]
    assert [(e.period, e.amount_nanos) for e in reset(gate, datetime(2026, 11, 15, 11, tzinfo=UTC)).expired] == [
        ("2026-10", ALLOWANCE)
    ]
    assert assert_agree(db, gate) == ALLOWANCE


def test_expiry_never_takes_purchased_credit_nor_makes_debt(db, gate, wallets):
    wallets.open("poor")  # allowance only
    wallets.open("rich", purchased=10 * USD)
    for w in ("poor", "rich"):
        reset(gate, datetime(2026, 11, 10, tzinfo=UTC), wallet_ids=[w])
        wallets.spend(w, 400_000, at=datetime(2026, 11, 15, tzinfo=UTC))  # 1 USD in November: 4 unused
    reset(gate, datetime(2026, 12, 1, tzinfo=UTC))  # December granted; November's expiry waits (grace)
    for w in ("poor", "rich"):  # 8 USD spent in the first minutes of December, before the expiry
        wallets.spend(w, 3_200_000, at=datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    report = reset(gate, datetime(2026, 12, 1, 1, tzinfo=UTC))
    by_wallet = {e.wallet_id: (e.unused_nanos, e.amount_nanos) for e in report.expired}
    # poor: balance 5 − 1 + 5 − 8 = 1 USD; 4 unused but only 1 left: the expiry takes 1, not 4
    # rich: balance 11 USD; the 4 unused expire and 7 purchased remain (10 bought − 3 spent past the allowance)
    assert by_wallet == {"poor": (4 * USD, 1 * USD), "rich": (4 * USD, 4 * USD)}
    assert assert_agree(db, gate, "poor") == 0
    assert assert_agree(db, gate, "rich") == 7 * USD


def test_a_fully_used_allowance_records_a_zero_expiry_once_and_a_later_top_up_is_kept(db, gate, wallets):
    wallets.open(allowance=1 * USD)
    reset(gate, datetime(2026, 11, 1, tzinfo=UTC))
    wallets.spend("w1", 400_000, at=datetime(2026, 11, 2, tzinfo=UTC))  # all of it
    with session_scope() as session:
        set_allowance(session, "w1", 0)  # the subscription ends: no December grant
    report = reset(gate, datetime(2026, 12, 2, tzinfo=UTC))
    assert ([(e.period, e.unused_nanos, e.amount_nanos) for e in report.expired], report.granted) == (
        [("2026-11", 0, 0)],
        [],
    )
    credit_wallet(gate, wallet_id="w1", amount_nanos=3 * USD, idempotency_key="top-up-1")
    assert reset(gate, datetime(2026, 12, 3, tzinfo=UTC)).expired == []
    assert ledger(db) == {allowance_key("w1", "2026-11"): 1 * USD, expiry_key("w1", "2026-11"): 0}
    assert assert_agree(db, gate) == 3 * USD


def test_a_stopped_allowance_still_expires_its_last_grant(db, gate, wallets):
    wallets.open()
    reset(gate, datetime(2026, 11, 1, tzinfo=UTC))
    with session_scope() as session:
        set_allowance(session, "w1", 0)
    report = reset(gate, datetime(2026, 12, 1, 2, tzinfo=UTC))
    assert ([(e.period, e.amount_nanos) for e in report.expired], report.granted) == ([("2026-11", ALLOWANCE)], [])
    assert assert_agree(db, gate) == 0


def test_reset_validates_its_period_and_allowances_their_amount(db, gate, wallets):
    wallets.open()
    now = datetime(2026, 11, 10, tzinfo=UTC)
    for period, match in (("2026-12", "after the current period"), ("2026-13", "YYYY-MM"), ("26-1", "YYYY-MM")):
        with pytest.raises(AllowanceError, match=f"^period: .*{match}"):
            reset(gate, now, period=period)
    for amount in (-1, 1.5, True, 2**62 + 1):
        with pytest.raises(AllowanceError, match="^amount_nanos"):
            with session_scope() as session:
                set_allowance(session, "w1", amount)
    with pytest.raises(AllowanceError, match="^wallet_id"):
        with session_scope() as session:
            set_allowance(session, "nope", 1)
    assert ledger(db) == {}


@pytest.fixture(params=["fakeredis", "redis"])
def any_gate(request, settings):
    """A gate on fakeredis[lua] (fast, no server) and on the real Redis."""
    from worker.gate.gate import WalletGate

    if request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    else:
        client = request.getfixturevalue("redis_client")
    return WalletGate(client, settings=settings, kicker=lambda shard: None)


def test_gate_adjust_applies_a_signed_delta_once_per_key_with_exact_integers(any_gate):
    gate = any_gate
    gate.load_wallet("big", mode="production", limited=True, balance_nanos=2**62 + 1)
    assert gate.adjust("big", -(2**62), "k1") == 1
    assert gate.adjust("big", -(2**62), "k1") == 1  # the same key again: nothing
    assert gate.adjust("big", 2**53 + 1, "k2") == 2**53 + 2  # beyond a double's exact range
    assert gate.adjust("big", -(2**53 + 5), "k3") == -3  # the ledger may say below zero
    for bad in (0, 1.0, True, 2**62 + 1):
        with pytest.raises(ValueError, match="delta_nanos"):
            gate.adjust("big", bad, "k4")
    with pytest.raises(UnknownWallet):
        gate.adjust("nobody", -1, "k5")


def test_monthly_reset_and_check_budgets_tasks_change_nothing_the_second_time(db, gate, wallets):
    from tasks.billing import check_budgets, monthly_reset
    from worker.billing.budgets import set_budget

    wallets.open()
    with session_scope() as session:
        set_budget(session, enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    first = monthly_reset.apply().result
    assert (first["period"], first["granted"], first["granted_nanos"]) == (current_period(), 1, ALLOWANCE)
    assert monthly_reset.apply().result == {**first, "granted": 0, "granted_nanos": 0}
    wallets.spend("w1", 400_000)  # 1 USD now: the budget's 100 %
    checked = check_budgets.apply().result
    assert (len(checked["alerts"]), checked["paused_wallets"]) == (3, ["w1"])
    assert check_budgets.apply().result == {**checked, "alerts": [], "paused_wallets": [], "events": []}
    assert assert_agree(db, gate) == 4 * USD


def test_cli_sets_and_resets_allowances_and_budgets(cli, gate):
    """One real ``tollgate`` subprocess for the reset; the rest in-process (same code, faster)."""
    from typer.testing import CliRunner

    from worker.cli import app

    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, list(args))

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="o1")
    assert run("allowance", "set", "w1", "--usd", "5").exit_code == 0
    first = cli("allowance", "reset", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout.splitlines()[-1])
    assert (data["period"], data["granted_nanos"], len(data["granted"])) == (current_period(), ALLOWANCE, 1)
    second = json.loads(run("allowance", "reset", "--json").stdout.splitlines()[-1])
    assert (second["granted"], second["expired"]) == ([], [])
    assert gate.balance("w1") == ALLOWANCE

    for args, field in (
        (("allowance", "reset", "--period", "2999-01"), "--period:"),
        (("allowance", "set", "nope", "--usd", "1"), "WALLET_ID:"),
        (("allowance", "set", "w1", "--usd", "-1"), "--usd:"),
        (
            ("budget", "set", "--enterprise", "acme", "--wallet", "w1", "--workflow", "wf", "--usd", "1"),
            "--wallet/--workflow:",
        ),
        (("budget", "set", "--enterprise", "acme", "--wallet", "w1", "--usd", "0"), "--usd:"),
        (("budget", "set", "--enterprise", "acme", "--wallet", "ghost", "--usd", "1"), "--wallet:"),
        (("budget", "set", "--enterprise", "ghost", "--workflow", "wf", "--usd", "1"), "--enterprise:"),
    ):
        bad = run(*args)
        assert (bad.exit_code, field in bad.stderr) == (2, True), (args, bad.stderr)

    ok = run("budget", "set", "--enterprise", "acme", "--wallet", "w1", "--usd", "2.5", "--auto-pause")
    assert ok.exit_code == 0 and "2.500000000 USD" in ok.stdout, ok.stderr
    check = run("budget", "check", "--json")
    assert check.exit_code == 0, check.stderr
    report = json.loads(check.stdout.splitlines()[-1])
    assert [(b["wallet_id"], b["amount_nanos"], b["spent_nanos"]) for b in report["budgets"]] == [
        ("w1", 2_500_000_000, 0)
    ]
    table = run("budget", "check")
    assert table.exit_code == 0 and "wallet w1" in table.stdout


def test_a_grant_made_mid_month_covers_the_whole_periods_spend(db, gate, wallets):
    """A grant belongs to its period, whenever it is made (issue 14, item 10: the rule used to count
    only spend after the grant's creation, so this expiry took all $5 and the wallet kept $0, less
    than was bought): $1 bought and spent on the 5th, a $5 allowance granted on the 20th: the 5th's
    $1 is November's spend, so $4 expire and the wallet keeps the $1 it bought."""
    wallets.open("late", purchased=1 * USD)
    wallets.spend("late", 400_000, at=datetime(2026, 11, 5, tzinfo=UTC))  # 1 USD, before any grant
    reset(gate, datetime(2026, 11, 20, tzinfo=UTC), wallet_ids=["late"])
    report = reset(gate, datetime(2026, 12, 2, tzinfo=UTC), wallet_ids=["late"])
    by_wallet = {e.wallet_id: (e.unused_nanos, e.amount_nanos) for e in report.expired}
    assert by_wallet == {"late": (4 * USD, 4 * USD)}
    assert assert_agree(db, gate, "late") == 6 * USD  # 1 bought + 5 (Nov) + 5 (Dec) granted − 1 spent − 4 expired
