"""Entry points own the transaction: services take the caller's session, never commit, and send
their side effects (the gate's copies) with ``after_commit``; the ``session`` fixture runs a test
inside a transaction rolled back at its end."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.committed import open_wallet
from worker.billing.modes import ModeError, set_app_mode, set_wallet_mode
from worker.db import after_commit, engine_for, session_scope
from worker.ledger.accounts import ensure_enterprise

pytestmark = pytest.mark.integration


def test_the_session_fixture_commits_to_a_savepoint_runs_hooks_and_shows_nothing_outside(session, database_url):
    ran: list[str] = []
    ensure_enterprise(session, "tx-app")
    after_commit(session, lambda: ran.append("hook"))
    assert ran == []
    session.commit()  # the code's own commit: a savepoint of the test's outer transaction
    assert ran == ["hook"]
    assert session.execute(text("SELECT count(*) FROM enterprise WHERE id = 'tx-app'")).scalar_one() == 1
    with engine_for(database_url).connect() as other:  # nothing reached other connections
        assert other.execute(text("SELECT count(*) FROM enterprise WHERE id = 'tx-app'")).scalar_one() == 0
    ensure_enterprise(session, "tx-gone")
    after_commit(session, lambda: ran.append("dropped"))
    session.rollback()  # back to the savepoint: the row and the hook are gone, the committed row stays
    assert ran == ["hook"]
    assert session.execute(text("SELECT id FROM enterprise WHERE id LIKE 'tx-%'")).scalars().all() == ["tx-app"]


def _gate_mode(gate, wallet_id: str) -> str:
    return gate.redis.hget(gate.wallet_key(wallet_id), "mode")


def test_a_mode_change_reaches_the_gate_only_when_the_caller_commits(db, gate):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id="w2", enterprise_id="acme", owner_id="u2")
    assert (_gate_mode(gate, "w1"), _gate_mode(gate, "w2")) == ("production", "production")
    with session_scope() as session:
        assert set_wallet_mode(session, gate, "w1", "development") == "development"
        assert _gate_mode(gate, "w1") == "production"  # not committed yet: the gate is not told
    assert _gate_mode(gate, "w1") == "development"
    # the caller's transaction fails after the change: PostgreSQL and the gate keep the old mode
    with pytest.raises(RuntimeError, match="caller failed"):
        with session_scope() as session:
            assert set_app_mode(session, gate, "acme", "trial") == ["w2"]
            raise RuntimeError("caller failed")
    assert _gate_mode(gate, "w2") == "production"
    with db.connect() as conn:
        assert conn.execute(text("SELECT id, mode FROM wallet ORDER BY id")).all() == [
            ("w1", "development"),
            ("w2", "production"),
        ]
        assert conn.execute(text("SELECT default_mode FROM enterprise WHERE id = 'acme'")).scalar_one() == "production"
        assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'mode_change'")).scalar_one() == 1
    # a refused change names the field and changes nothing
    with pytest.raises(ModeError, match="^wallet_id"):
        with session_scope() as session:
            set_wallet_mode(session, gate, "nope", "development")
    assert _gate_mode(gate, "w1") == "development"


def test_a_hook_added_inside_a_rolled_back_savepoint_is_dropped_and_a_released_one_kept(session):
    ran: list[str] = []
    after_commit(session, lambda: ran.append("outer"))
    with pytest.raises(RuntimeError):
        with session.begin_nested():
            after_commit(session, lambda: ran.append("rolled back"))
            with session.begin_nested():
                after_commit(session, lambda: ran.append("inner of rolled back"))
            raise RuntimeError("savepoint fails")
    with session.begin_nested():
        after_commit(session, lambda: ran.append("released"))
    assert ran == []
    session.commit()
    assert ran == ["outer", "released"]


def test_a_wallet_opened_and_credited_in_the_caller_s_session_reaches_the_gate_on_commit(session, gate):
    from worker.ledger import accounts

    accounts.open_wallet(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    assert gate.redis.exists(gate.wallet_key("w1")) == 0  # not committed yet: the gate is not told
    session.commit()
    assert gate.balance("w1") == 0
    pending = accounts.credit_wallet(session, gate, wallet_id="w1", amount_nanos=7_000, idempotency_key="k1")
    assert (pending.new, pending.balance_nanos, gate.balance("w1")) == (True, None, 0)
    session.commit()
    assert (pending.balance_nanos, gate.balance("w1")) == (7_000, 7_000)
    assert accounts.ledger_balance(session, "w1") == 7_000
    # rolled back: the ledger entry and the gate's copy both stay out
    accounts.credit_wallet(session, gate, wallet_id="w1", amount_nanos=5_000, idempotency_key="k2")
    session.rollback()
    assert (gate.balance("w1"), accounts.ledger_balance(session, "w1")) == (7_000, 7_000)


def test_a_follow_up_transaction_runs_on_the_caller_s_bind_and_sees_what_it_committed(session, gate):
    """``after_commit_in_transaction`` opens its follow-up on the caller's bind: in this rolled-back
    fixture, the same connection (a new savepoint), so the mirror of the reservations rule reads the
    wallet the test wrote and nothing reaches other connections."""
    from tests.committed import open_wallet_in
    from worker.billing.modes import set_wallet_reservations

    open_wallet_in(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    assert gate.redis.hget(gate.wallet_key("w1"), "require_hold") in (None, "0")
    assert set_wallet_reservations(session, gate, "w1", True) is True
    assert gate.redis.hget(gate.wallet_key("w1"), "require_hold") in (None, "0")  # not committed yet
    session.commit()
    assert gate.redis.hget(gate.wallet_key("w1"), "require_hold") == "1"
