"""persist_turns through its staging table: rows of loose types written as the column wants them,
a float in a money column refused naming the column with nothing persisted, two batches in one
transaction, one of them repeating turns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, text

from models.wallet import Wallet
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.turns import USAGE_COLUMNS, persist_turns

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 3, 9, tzinfo=UTC)


def _row(i: int, **over) -> dict:
    row = {
        **dict.fromkeys(USAGE_COLUMNS, 0),
        "turn_id": f"t{i}",
        "outbox_id": f"0:{1_700_000_000_000 + i}-0",
        "wallet_id": "w-acme",
        "enterprise_id": "acme",
        "chat_id": f"chat-{i % 2}",
        "workflow": "wf",
        "agent": "a",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 100 + i,
        "completion_tokens": 10,
        "cost_nanos": 1_000 + i,
        "billed_nanos": 1_000 + i,
        "platform_fee_nanos": 1_000 + i,
        "occurred_at": T0 + timedelta(seconds=i),
        "action": "continue",
        "mode": "production",
        "balance_after_nanos": None,
        "level": "app_usage",
        "billing_target": "acme",
        "billable": True,
        "meter": "llm",
        "service_tier": None,
    }
    row.update(over)
    return row


@pytest.fixture()
def wallet(db):
    with session_scope() as s:
        ensure_enterprise(s, "acme")
        s.execute(insert(Wallet).values(id="w-acme", enterprise_id="acme", owner_id="acme"))
    return "w-acme"


def _sums(db) -> tuple[int, int, int]:
    with db.connect() as conn:
        return tuple(
            int(v)
            for v in conn.execute(
                text(
                    "SELECT count(*), coalesce(sum(billed_nanos), 0), "
                    "(SELECT debits_nanos FROM wallet WHERE id = 'w-acme') FROM usage_event"
                )
            ).one()
        )


def test_subclasses_are_written_as_the_columns_want(wallet, db):
    """A str subclass (an enum) in a text column, an int subclass in an integer one, 0/1 in a
    boolean one: written as the column's type."""
    import enum

    class Agent(enum.StrEnum):
        a = "agent-a"

    class Quantity(enum.IntEnum):
        one = 1

    rows = [_row(0, billable=1), _row(1, agent=Agent.a, quantity=Quantity.one)]
    with session_scope() as s:
        result = persist_turns(s, rows)
    assert (result.inserted, result.duplicates, result.billed_nanos) == (2, 0, 2_001)
    with db.connect() as conn:
        got = conn.execute(
            text("SELECT turn_id, service_tier, billable, agent, quantity FROM usage_event ORDER BY 1")
        ).all()
    assert [tuple(r) for r in got] == [("t0", None, True, "a", 0), ("t1", None, True, "agent-a", 1)]
    assert _sums(db) == (2, 2_001, 2_001)


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"service_tier": 0}, "service_tier"),  # was written as the text '0'
        ({"agent": 7}, "agent"),  # was '7'
        ({"quantity": True}, "quantity"),  # was 1
        ({"prompt_tokens": False}, "prompt_tokens"),  # was 0
        ({"billable": 2}, "billable"),  # was true
    ],
)
def test_a_value_of_another_type_is_refused_naming_its_column_and_nothing_is_persisted(wallet, db, change, column):
    """No gate writes these; the drain dead-letters such an entry with this error rather than store
    a value as something it is not."""
    with pytest.raises(TypeError, match=column):
        with session_scope() as s:
            persist_turns(s, [_row(0), _row(1, **change)])
    assert _sums(db) == (0, 0, 0)


def test_a_float_in_a_money_column_is_refused_naming_it_and_nothing_is_persisted(wallet, db):
    with pytest.raises(TypeError, match="billed_nanos"):
        with session_scope() as s:
            persist_turns(s, [_row(0), _row(1, billed_nanos=1001.5)])
    assert _sums(db) == (0, 0, 0)
    with session_scope() as s:  # the connection's staging table is usable again
        assert persist_turns(s, [_row(0), _row(1)]).inserted == 2
    assert _sums(db) == (2, 2_001, 2_001)


def test_two_batches_in_one_transaction_and_a_repeat(wallet, db):
    with session_scope() as s:
        first = persist_turns(s, [_row(0), _row(1)])
        second = persist_turns(s, [_row(1), _row(2), _row(2)])  # t1 again (re-delivery), t2 twice
    assert (first.inserted, first.duplicates) == (2, 0)
    assert (second.inserted, second.duplicates, second.conflicts) == (1, 2, ())
    assert _sums(db) == (3, 3_003, 3_003)
    with db.connect() as conn:
        debits = conn.execute(
            text("SELECT turns, amount_nanos FROM wallet_transaction WHERE kind = 'debit' ORDER BY id")
        ).all()
        chats = conn.execute(text("SELECT chat_id, turns, billed_nanos FROM chat_session ORDER BY 1")).all()
    assert [tuple(d) for d in debits] == [(2, 2_001), (1, 1_002)]
    assert [tuple(c) for c in chats] == [("chat-0", 2, 2_002), ("chat-1", 1, 1_001)]
