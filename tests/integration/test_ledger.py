"""Credits and wallets: PostgreSQL ledger first, then the gate; both agree to the nano."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.committed import credit_wallet_in, open_wallet_in
from worker.db import session_scope
from worker.gate.gate import UnknownWallet
from worker.ledger.accounts import LedgerError, ledger_balance

pytestmark = pytest.mark.integration


def test_credit_is_applied_once_per_key_in_ledger_and_gate(session, gate):
    open_wallet_in(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    assert (
        credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=2_000_000_000, idempotency_key="pi_1")
        == 2_000_000_000
    )
    assert (
        credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=2_000_000_000, idempotency_key="pi_1")
        == 2_000_000_000
    )
    assert credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=500, idempotency_key="pi_2") == 2_000_000_500
    assert ledger_balance(session, "w1") == 2_000_000_500
    assert session.execute(text("SELECT credits_nanos FROM wallet WHERE id='w1'")).scalar_one() == 2_000_000_500
    assert session.execute(text("SELECT count(*) FROM wallet_transaction")).scalar_one() == 2


def test_a_key_reused_for_another_wallet_or_amount_is_refused_and_changes_nothing(session, gate):
    open_wallet_in(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    open_wallet_in(session, gate, wallet_id="w2", enterprise_id="acme", owner_id="u2")
    credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=700, idempotency_key="pi_1")
    with pytest.raises(LedgerError, match="idempotency_key: 'pi_1' was already used .* wallet 'w1'"):
        credit_wallet_in(session, gate, wallet_id="w2", amount_nanos=700, idempotency_key="pi_1")
    with pytest.raises(LedgerError, match="idempotency_key"):
        credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=800, idempotency_key="pi_1")
    assert (gate.balance("w1"), gate.balance("w2")) == (700, 0)
    with pytest.raises(UnknownWallet, match="unknown wallet 'nope'"):
        credit_wallet_in(session, gate, wallet_id="nope", amount_nanos=1, idempotency_key="pi_9")
    with pytest.raises(LedgerError, match="amount_nanos"):
        credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=-5, idempotency_key="pi_8")
    assert session.execute(text("SELECT count(*) FROM wallet_transaction")).scalar_one() == 1


def test_reopening_a_wallet_keeps_its_gate_balance(session, gate):
    open_wallet_in(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet_in(session, gate, wallet_id="w1", amount_nanos=1_234, idempotency_key="k")
    open_wallet_in(session, gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    assert gate.balance("w1") == 1_234


def test_cli_wallet_create_credit_show(cli, db):
    created = cli("wallet", "create", "cli-w", "--enterprise", "acme")
    assert created.returncode == 0, created.stderr
    credited = cli("wallet", "credit", "cli-w", "--usd", "12.345678901", "--key", "k1")
    assert credited.returncode == 0, credited.stderr
    again = cli("wallet", "credit", "cli-w", "--usd", "12.345678901", "--key", "k1")
    assert again.returncode == 0, again.stderr
    shown = cli("wallet", "show", "cli-w", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["gate_balance_nanos"] == data["ledger_balance_nanos"] == data["credits_nanos"] == 12_345_678_901
    with db.connect() as conn:  # the credit is audited once, the repeat not at all
        audits = conn.execute(text("SELECT actor, action, wallet_id, detail->>'amount_nanos' FROM audit_log")).all()
    assert [tuple(a) for a in audits] == [("cli", "credit", "cli-w", "12345678901")]
    bad = cli("wallet", "credit", "cli-w", "--usd", "0.0000000001", "--key", "k2")
    assert bad.returncode == 2
    assert "--usd" in bad.stderr and "nano" in bad.stderr
    missing = cli("wallet", "show", "ghost")
    assert missing.returncode == 2 and "unknown wallet 'ghost'" in missing.stderr
