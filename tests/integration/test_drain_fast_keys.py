"""persist_turns' turn keys: a batch of fresh turns goes in by a plain insert (no ``ON CONFLICT``:
``worker.ledger.turns._FAST_KEYS``); a batch holding a turn persisted already falls back, after its
savepoint, to ``ON CONFLICT DO NOTHING``, with the same rows, sums and ledger as before, and the
transaction goes on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import insert, text

from models.wallet import Wallet
from tests.integration.test_drain_staged import _row, wallet  # noqa: F401  (one row maker and wallet fixture for both files)
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.turns import USAGE_COLUMNS, persist_turns


def _keys_statements(session) -> list[str]:
    """The turn keys' statements prepared on the session's connection."""
    return [
        sql
        for (sql,) in session.connection().exec_driver_sql("SELECT statement FROM pg_prepared_statements").all()
        if sql.startswith("WITH fresh AS (INSERT INTO usage_turn_key")
    ]


def _state(db) -> tuple:
    with db.connect() as conn:
        return (
            tuple(
                conn.execute(
                    text(
                        "SELECT count(*), sum(billed_nanos), sum(prompt_tokens), "
                        "(SELECT count(*) FROM usage_turn_key), "
                        "(SELECT debits_nanos FROM wallet WHERE id = 'w-acme') FROM usage_event"
                    )
                ).one()
            ),
            [
                tuple(r)
                for r in conn.execute(
                    text("SELECT chat_id, turns, billed_nanos, prompt_tokens FROM chat_session ORDER BY 1")
                )
            ],
            [tuple(r) for r in conn.execute(text("SELECT amount_nanos, turns FROM wallet_transaction ORDER BY id"))],
        )


def _fresh_connection(db) -> None:
    """Close the pool's connections, so the next session's has nothing prepared yet."""
    from worker.db import get_engine

    get_engine().dispose()


def test_a_fresh_batch_inserts_its_keys_without_on_conflict(wallet, db):
    _fresh_connection(db)
    with session_scope() as s:
        result = persist_turns(s, [_row(0), _row(1), _row(2)])
        prepared = _keys_statements(s)
    assert (result.inserted, result.duplicates, result.billed_nanos) == (3, 0, 3_003)
    assert len(prepared) == 1 and "ON CONFLICT" not in prepared[0]
    assert _state(db) == (
        (3, 3_003, 303, 3, 3_003),
        [("chat-0", 2, 2_002, 202), ("chat-1", 1, 1_001, 101)],
        [(3_003, 3)],
    )


def test_a_batch_with_a_persisted_turn_falls_back_to_on_conflict_and_the_transaction_goes_on(wallet, db):
    with session_scope() as s:
        assert persist_turns(s, [_row(0), _row(1)]).inserted == 2
    _fresh_connection(db)
    with session_scope() as s:
        # t1 persisted from the same entry (a re-delivery) and t0 from another entry (a second
        # acceptance): the plain insert fails, the batch is persisted again with ON CONFLICT
        again = persist_turns(s, [_row(1), _row(2), _row(0, outbox_id="0:1700000000009-0"), _row(3)])
        prepared = _keys_statements(s)
        after = persist_turns(s, [_row(4)])  # the same transaction, the savepoint gone
    assert (again.inserted, again.duplicates, [c.turn_id for c in again.conflicts]) == (2, 1, ["t0"])
    assert (after.inserted, after.duplicates) == (1, 0)
    assert sorted("ON CONFLICT" in sql for sql in prepared) == [False, True]
    assert _state(db) == (
        (5, 5_010, 510, 5, 5_010),
        [("chat-0", 3, 3_006, 306), ("chat-1", 2, 2_004, 204)],
        [(2_001, 2), (2_005, 2), (1_004, 1)],
    )


def test_another_unique_violation_is_raised_and_nothing_is_persisted(wallet, db):
    """A unique violation that is not the turn keys' (here the wallet debit's idempotency key, taken
    by an earlier transaction) is raised as it is, not retried as a persisted turn."""
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description) "
                "VALUES ('w-acme', 'debit', 1, 1, 'tollgate:usage:0:1700000000000-0', 'taken')"
            )
        )
    with pytest.raises(psycopg.errors.UniqueViolation) as caught:
        with session_scope() as s:
            persist_turns(s, [_row(0), _row(1)])
    assert caught.value.diag.constraint_name != "usage_turn_key_pkey"
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one() == 0
