"""Poison entries in the outbox (issue 14, item 1): a batch that fails for any reason is persisted
entry by entry, the entries that still fail are dead-lettered with their charge named in the
ledger, reconcile reports them, and an operator retries or discards them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.schemas import TurnIn
from worker.drain import OutboxDrain
from worker.ledger import credit_wallet, open_wallet
from worker.wallet import outbox_key

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
CREDIT = 10**12


def _turn(i: int, wallet_id: str = "w1", **poison) -> TurnIn:
    turn = TurnIn(turn_id=f"t-{i}", wallet_id=wallet_id, enterprise_id="acme", chat_id=f"chat-{i % 2}",
                  workflow="wf", agent="planner", model="gpt-4o", provider="openai", prompt_tokens=1000 + i,
                  completion_tokens=50, occurred_at=T0 + timedelta(milliseconds=i))
    # below the API's validation: an older writer, or a value PostgreSQL refuses for a reason nobody foresaw
    return TurnIn.model_construct(**{**turn.model_dump(), **poison}) if poison else turn


def _open(gate, wallet_id: str = "w1") -> None:
    open_wallet(gate, wallet_id=wallet_id, enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id=wallet_id, amount_nanos=CREDIT, idempotency_key=f"open-{wallet_id}")


def _rows(db, sql: str, **params):
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


@pytest.mark.parametrize("field", ["agent", "chat_id", "workflow", "turn_id"])
def test_a_nul_in_one_turn_dead_letters_it_and_persists_the_rest(db, redis_client, gate, settings, field):
    _open(gate)
    good = gate.record_turns([_turn(1), _turn(2)])
    bad = gate.record_turns([_turn(3, **{field: "a\u0000b"})])[0]
    later = gate.record_turns([_turn(4)])
    assert all(d.accepted for d in [*good, bad, *later])
    billed_good = sum(d.billed_nanos for d in [*good, *later])
    assert bad.billed_nanos == 1003 * 2500 + 50 * 10_000  # gpt-4o: $2.50 / $10 per MTok

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()

    assert (stats.read, stats.inserted, stats.dead_lettered) == (4, 3, 1)
    assert _rows(db, "SELECT count(*), sum(billed_nanos) FROM usage_event") == [(3, billed_good)]
    assert redis_client.xlen(outbox_key(gate.shard("w1"))) == 0  # acknowledged and trimmed: nothing wedges
    # the dead letter's charge is a named debit: the wallet paid for the turn, the ledger says why
    assert _rows(db, "SELECT kind, amount_nanos FROM wallet_transaction WHERE idempotency_key LIKE "
                     "'tollgate:deadletter:%'") == [("debit", bad.billed_nanos)]
    assert _rows(db, "SELECT credits_nanos, debits_nanos FROM wallet WHERE id = 'w1'") == [
        (CREDIT, billed_good + bad.billed_nanos)]
    assert gate.balance("w1") == CREDIT - billed_good - bad.billed_nanos
