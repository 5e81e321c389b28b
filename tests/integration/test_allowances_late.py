"""Late data and monthly allowances (issue 14, item 10), against real PostgreSQL and Redis: every rule
uses the period a record belongs to (a turn's ``occurred_at``, a grant's period), never when it
arrived.  A grant made late for its period covers that period's spend; a turn persisted after its
period's expiry gives back what the expiry took too much; whatever the order, an allowance's expiry
never takes bought credit nor another period's grant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from worker.billing.allowances import allowance_key, expiry_key, restore_key, set_allowance
from worker.billing.jobs import run_monthly_reset
from worker.db import session_scope
from worker.gate.gate import WalletGate
from worker.ledger.drain import OutboxDrain
from worker.periods import period_bounds
from worker.pricing.prices import PriceBook

pytestmark = pytest.mark.integration

USD = 10**9
TOKEN_NANOS = 2_500  # gpt-4o: $2.50 per million prompt tokens


class Book:
    """Opens wallets, records and persists turns, and reads a wallet's ledger."""

    def __init__(self, db, gate, redis_client, settings) -> None:
        self.db, self.gate = db, gate
        # gpt-4o's prompt price as an override without a context window: these tests spend dollars
        # in single turns of hundreds of thousands of tokens, above gpt-4o's real window (128,000)
        self.spend_gate = WalletGate(
            gate.redis,
            settings=settings,
            kicker=gate.kicker,
            price_book=PriceBook({"openai/gpt-4o": {"input_mtok": "2.50"}}),
        )
        self.drain = OutboxDrain(redis_client, settings=settings, consumer="late")

    def open(self, wallet_id: str, *, bought: int, allowance: int = 0) -> None:
        open_wallet(self.gate, wallet_id=wallet_id, enterprise_id="acme", owner_id=wallet_id)
        if bought:
            credit_wallet(self.gate, wallet_id=wallet_id, amount_nanos=bought, idempotency_key=f"buy-{wallet_id}")
        self.allow(wallet_id, allowance)

    def allow(self, wallet_id: str, allowance: int) -> None:
        with session_scope() as session:
            set_allowance(session, wallet_id, allowance)

    def spend(self, wallet_id: str, tokens: int, at: datetime) -> int:
        """Record a turn that occurred at ``at`` and persist it now; returns the nanos billed."""
        decision = self.spend_gate.record_turn(
            TurnIn(
                turn_id=f"t-{uuid.uuid4().hex}",
                wallet_id=wallet_id,
                enterprise_id="acme",
                chat_id="c1",
                model="gpt-4o",
                provider="openai",
                prompt_tokens=tokens,
                completion_tokens=0,
                occurred_at=at,
            )
        )
        assert decision.accepted and decision.billed_nanos == tokens * TOKEN_NANOS
        assert self.drain.drain().inserted == 1
        return decision.billed_nanos

    def balance(self, wallet_id: str) -> int:
        """The ledger's balance, checked against its entries and the gate's, to the nano."""
        with self.db.connect() as conn:
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
        assert credits - debits == entries == self.gate.balance(wallet_id)
        return credits - debits

    def allowance_entries(self, wallet_id: str) -> dict[str, int]:
        with self.db.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idempotency_key, CASE kind WHEN 'credit' THEN amount_nanos ELSE -amount_nanos END "
                    "FROM wallet_transaction WHERE wallet_id = :w AND idempotency_key LIKE 'tollgate:allowance%' "
                    "ORDER BY id"
                ),
                {"w": wallet_id},
            ).all()
        return dict(rows)


@pytest.fixture()
def book(db, gate, redis_client, settings):
    return Book(db, gate, redis_client, settings)


def test_a_grant_made_late_for_its_period_expires_only_what_the_period_left(book, gate):
    """The issue's case: $10 bought, $1.05 of November turns, then a $4 allowance for 2026-11
    granted in December: the expiry takes $2.95 (it used to take $4, leaving $8.95)."""
    book.open("w", bought=10 * USD)
    assert book.spend("w", 420_000, datetime(2026, 11, 12, tzinfo=UTC)) == 1_050_000_000
    book.allow("w", 4 * USD)
    backfill = run_monthly_reset(gate, now=datetime(2026, 12, 3, 9, tzinfo=UTC), period="2026-11", wallet_ids=["w"])
    assert [(e.period, e.amount_nanos) for e in backfill.granted] == [("2026-11", 4 * USD)]
    book.allow("w", 0)  # only November is granted
    report = run_monthly_reset(gate, now=datetime(2026, 12, 3, 10, tzinfo=UTC), wallet_ids=["w"])
    assert [(e.period, e.unused_nanos, e.amount_nanos) for e in report.expired] == [
        ("2026-11", 2_950_000_000, 2_950_000_000)
    ]
    assert book.allowance_entries("w") == {
        allowance_key("w", "2026-11"): 4 * USD,
        expiry_key("w", "2026-11"): -2_950_000_000,
    }
    assert book.balance("w") == 10 * USD  # the allowance paid November's $1.05: all that was bought is left


def test_turns_of_a_period_persisted_after_its_expiry_restore_what_it_took_too_much(book, gate):
    """$10 bought, a $4 November allowance granted on time, $1 spent in November; the expiry takes
    $3.  Then November turns arrive in December: $0.50 (covered by the allowance: $0.50 restored),
    then $3 more (Nov spend $4.50 > $4: only the $2.50 still expired comes back)."""
    book.open("w", bought=10 * USD, allowance=4 * USD)
    run_monthly_reset(gate, now=datetime(2026, 11, 1, 1, tzinfo=UTC), wallet_ids=["w"])
    book.allow("w", 0)
    book.spend("w", 400_000, datetime(2026, 11, 10, tzinfo=UTC))
    expired = run_monthly_reset(gate, now=datetime(2026, 12, 1, 1, tzinfo=UTC), wallet_ids=["w"]).expired
    assert [(e.period, e.amount_nanos) for e in expired] == [("2026-11", 3 * USD)]
    assert book.balance("w") == 10 * USD

    book.spend("w", 200_000, datetime(2026, 11, 20, tzinfo=UTC))  # $0.50 of November, arriving on Dec 3
    report = run_monthly_reset(gate, now=datetime(2026, 12, 3, tzinfo=UTC), wallet_ids=["w"])
    assert ([(e.period, e.kind, e.key, e.amount_nanos) for e in report.restored], report.expired, report.granted) == (
        [("2026-11", "credit", restore_key("w", "2026-11", 500_000_000), 500_000_000)],
        [],
        [],
    )
    assert book.balance("w") == 10 * USD
    assert run_monthly_reset(gate, now=datetime(2026, 12, 3, 1, tzinfo=UTC), wallet_ids=["w"]).restored == []

    book.spend("w", 1_200_000, datetime(2026, 11, 29, tzinfo=UTC))  # $3 more of November
    report = run_monthly_reset(gate, now=datetime(2026, 12, 5, tzinfo=UTC), wallet_ids=["w"])
    assert [(e.key, e.amount_nanos) for e in report.restored] == [(restore_key("w", "2026-11", 3 * USD), 2_500_000_000)]
    assert book.allowance_entries("w") == {
        allowance_key("w", "2026-11"): 4 * USD,
        expiry_key("w", "2026-11"): -3 * USD,
        restore_key("w", "2026-11", 500_000_000): 500_000_000,
        restore_key("w", "2026-11", 3 * USD): 2_500_000_000,
    }
    assert book.balance("w") == 9_500_000_000  # $10 bought − the $0.50 November spent beyond its allowance
    assert run_monthly_reset(gate, now=datetime(2026, 12, 5, 1, tzinfo=UTC)).restored == []  # the hourly job too


def test_the_hourly_job_finds_a_wallet_whose_only_link_is_an_expiry_to_restore(book, gate):
    """A wallet with no allowance any more and its last grant expired is still looked at, so a late
    turn of that period is given back by the scheduled job (not only by a run naming the wallet)."""
    book.open("w", bought=10 * USD, allowance=2 * USD)
    run_monthly_reset(gate, now=datetime(2026, 11, 1, 1, tzinfo=UTC), wallet_ids=["w"])
    book.allow("w", 0)
    run_monthly_reset(gate, now=datetime(2026, 12, 1, 1, tzinfo=UTC))
    book.spend("w", 400_000, datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    report = run_monthly_reset(gate, now=datetime(2026, 12, 1, 2, tzinfo=UTC))
    assert [(e.wallet_id, e.amount_nanos) for e in report.restored] == [("w", 1 * USD)]
    assert book.balance("w") == 10 * USD


MONTHS = ["2026-07", "2026-08", "2026-09", "2026-10"]  # all in the past: turns are never ahead of now
END = datetime(2026, 11, 30, tzinfo=UTC)


@st.composite
def histories(draw):
    """Grants (one per period, maybe none) and turns (each in a period), each arriving at a time of
    its own on or after its period starts, plus hourly-job runs at arbitrary times: in any order."""
    events = []
    for i, month in enumerate(MONTHS):
        start, _ = period_bounds(month)
        span = int((END - start).total_seconds())
        grant = draw(st.sampled_from([0, 1 * USD, 2 * USD, 3 * USD]))
        if grant:
            events.append((start + timedelta(seconds=draw(st.integers(0, span))), "grant", month, grant))
        for _ in range(draw(st.integers(0, 3))):
            _, end = period_bounds(month)
            occurred = start + timedelta(seconds=draw(st.integers(0, int((end - start).total_seconds()) - 1)))
            # a turn arrives when it occurred or later, up to two months late
            late = draw(st.sampled_from([0, 0, 60, 3_600, 5 * 86_400, 40 * 86_400]))
            tokens = draw(st.integers(1, 800_000))  # up to $2
            events.append((min(occurred + timedelta(seconds=late), END), "turn", occurred, tokens))
    for _ in range(draw(st.integers(0, 5))):
        events.append(
            (
                datetime(2026, 7, 1, tzinfo=UTC)
                + timedelta(
                    seconds=draw(st.integers(0, int((END - datetime(2026, 7, 1, tzinfo=UTC)).total_seconds())))
                ),
                "run",
            )
        )
    return sorted(events, key=lambda e: (e[0], e[1]))


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_late_grants_and_late_turns_never_leave_the_wallet_below_bought_minus_spent(book, gate, history):
    """Property: whatever order grants, turns and job runs arrive in, once every period is over the
    wallet holds exactly what was bought minus the spend its periods' allowances did not cover, so
    never less than bought − spent, to the nano."""
    wallet = f"p-{uuid.uuid4().hex[:12]}"
    bought = 40 * USD  # more than any history spends (≤ 12 turns of ≤ $2)
    book.open(wallet, bought=bought)
    granted: dict[str, int] = {}
    spent: dict[str, int] = {}
    for event in history:
        at, kind = event[0], event[1]
        if kind == "grant":
            _, _, month, amount = event
            book.allow(wallet, amount)
            run_monthly_reset(gate, now=at, period=month, wallet_ids=[wallet])
            book.allow(wallet, 0)  # only grant events grant
            granted[month] = amount
        elif kind == "turn":
            _, _, occurred, tokens = event
            month = occurred.strftime("%Y-%m")
            spent[month] = spent.get(month, 0) + book.spend(wallet, tokens, occurred)
        else:
            run_monthly_reset(gate, now=at, wallet_ids=[wallet])
    final = run_monthly_reset(gate, now=datetime(2027, 1, 1, tzinfo=UTC), wallet_ids=[wallet])
    assert final.granted == []
    again = run_monthly_reset(gate, now=datetime(2027, 1, 1, 1, tzinfo=UTC), wallet_ids=[wallet])
    assert (again.granted, again.expired, again.restored) == ([], [], [])
    uncovered = sum(max(0, s - granted.get(m, 0)) for m, s in spent.items())
    balance = book.balance(wallet)
    assert balance >= bought - sum(spent.values())
    assert balance == bought - uncovered
