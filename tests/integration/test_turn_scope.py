"""One idempotency scope in Redis and PostgreSQL: a turn_id is unique per (enterprise_id, wallet_id).

Inside its scope a reused turn_id returns the first answer; in another scope (another app's wallet,
another wallet of the same app, or the same platform wallet charged by another app) it is an
independent turn: billed once, persisted once, never billed and then dropped and refunded.  Ids may
contain ':', and the gate's keys cannot be confused by it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn, turn_key_digest
from tests.committed import credit_wallet
from tests.conftest import seed_wallet
from worker.gate.keys import shard_of
from worker.ledger.drain import OutboxDrain
from worker.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration
COST = 3_500_000  # gpt-4o at OpenAI: 1,000 prompt × 2,500 + 100 completion × 10,000 nanos
CREDIT = 100_000_000
TURN = "support-chat-42:turn-1"


def _turn(wallet_id: str, enterprise_id: str, turn_id: str = TURN) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id=enterprise_id,
        chat_id="support-chat-42",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000,
        completion_tokens=100,
        occurred_at=datetime(2026, 11, 2, 9, tzinfo=UTC),
    )


def _open(gate, wallet_id: str, enterprise_id: str | None, level: str = "app_usage") -> None:
    seed_wallet(gate, wallet_id, enterprise_id, wallet_id, CREDIT, level=level)


def _ledger(db) -> tuple[dict, list, dict]:
    """(wallet → (credits, debits)), the usage rows (enterprise, wallet, turn, billed), and the
    credit entries per wallet (a drain refund would show as a second one)."""
    with db.connect() as conn:
        wallets = {w: (c, d) for w, c, d in conn.execute(text("SELECT id, credits_nanos, debits_nanos FROM wallet"))}
        rows = sorted(
            conn.execute(text("SELECT enterprise_id, wallet_id, turn_id, billed_nanos FROM usage_event")).all()
        )
        credits = dict(
            conn.execute(
                text("SELECT wallet_id, count(*) FROM wallet_transaction WHERE kind = 'credit' GROUP BY wallet_id")
            ).all()
        )
    return wallets, rows, credits


def test_same_turn_id_in_two_apps_is_two_turns_billed_and_persisted(db, redis_client, gate, settings):
    _open(gate, "app:a:u1", "app-a")
    _open(gate, "app:b:u1", "app-b")
    first = gate.record_turn(_turn("app:b:u1", "app-b"))
    second = gate.record_turn(_turn("app:a:u1", "app-a"))
    assert (first.accepted, first.duplicate, first.billed_nanos) == (True, False, COST)
    assert (second.accepted, second.duplicate, second.billed_nanos) == (True, False, COST)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    wallets, rows, credits = _ledger(db)
    assert rows == [("app-a", "app:a:u1", TURN, COST), ("app-b", "app:b:u1", TURN, COST)]
    assert wallets == {"app:a:u1": (CREDIT, COST), "app:b:u1": (CREDIT, COST)}
    assert credits == {"app:a:u1": 1, "app:b:u1": 1}  # nothing refunded
    assert (gate.balance("app:a:u1"), gate.balance("app:b:u1")) == (CREDIT - COST, CREDIT - COST)
    report = reconcile(gate)
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (2, 0, 0)


def test_same_turn_id_on_two_wallets_of_one_app_is_two_turns(db, redis_client, gate, settings):
    _open(gate, "u1", "app-a")
    _open(gate, "u2", "app-a")
    assert gate.record_turn(_turn("u1", "app-a")).billed_nanos == COST
    assert gate.record_turn(_turn("u2", "app-a")).billed_nanos == COST
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    wallets, rows, credits = _ledger(db)
    assert rows == [("app-a", "u1", TURN, COST), ("app-a", "u2", TURN, COST)]
    assert wallets == {"u1": (CREDIT, COST), "u2": (CREDIT, COST)} and credits == {"u1": 1, "u2": 1}


def test_a_platform_wallet_shared_by_two_apps_keeps_their_turns_apart(db, redis_client, gate, settings):
    _open(gate, "plat:maker-1", None, level="platform")
    a = gate.record_turn(_turn("plat:maker-1", "app-a"))
    b = gate.record_turn(_turn("plat:maker-1", "app-b"))
    again = gate.record_turn(_turn("plat:maker-1", "app-a"))  # inside its scope: the first answer
    assert (a.billed_nanos, b.billed_nanos, b.duplicate) == (COST, COST, False)
    assert again == a.model_copy(update={"duplicate": True})
    assert gate.balance("plat:maker-1") == CREDIT - 2 * COST
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    wallets, rows, credits = _ledger(db)
    assert rows == [("app-a", "plat:maker-1", TURN, COST), ("app-b", "plat:maker-1", TURN, COST)]
    assert wallets == {"plat:maker-1": (CREDIT, 2 * COST)} and credits == {"plat:maker-1": 1}
    report = reconcile(gate)
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (1, 0, 0)


def test_a_second_acceptance_inside_the_scope_is_still_refunded(db, redis_client, gate, settings):
    """The drain's refund of a turn the gate accepted twice (its answer forgotten) stays, per scope."""
    _open(gate, "u1", "app-a")
    gate.record_turn(_turn("u1", "app-a"))
    drain = OutboxDrain(redis_client, settings=settings, consumer="c")
    drain.drain()
    assert gate.forget_turn("app-a", "u1", TURN) == 1
    assert gate.record_turn(_turn("u1", "app-a")).duplicate is False
    assert gate.balance("u1") == CREDIT - 2 * COST
    stats = drain.drain()
    assert (stats.inserted, stats.refunded) == (0, 1)
    wallets, rows, _credits = _ledger(db)
    assert rows == [("app-a", "u1", TURN, COST)] and wallets == {"u1": (CREDIT, COST)}
    assert gate.balance("u1") == CREDIT - COST


def test_ids_with_colons_never_share_a_key(db, redis_client, gate, settings):
    """Wallet 'app:x:<u>' with turn 't' and wallet 'app:x' with turn '<u>:t' are two turns (one
    shard for both, so a joined key would collide)."""
    shards = settings.outbox_shards
    user = next(f"u{i}" for i in range(1000) if shard_of(f"app:x:u{i}", shards) == shard_of("app:x", shards))
    _open(gate, f"app:x:{user}", "x")
    _open(gate, "app:x", "x")
    one = gate.record_turn(_turn(f"app:x:{user}", "x", "t"))
    two = gate.record_turn(_turn("app:x", "x", f"{user}:t"))
    assert (one.duplicate, one.billed_nanos, two.duplicate, two.billed_nanos) == (False, COST, False, COST)
    assert (gate.balance(f"app:x:{user}"), gate.balance("app:x")) == (CREDIT - COST, CREDIT - COST)
    # credits too: wallet 'app:x:<u>' key 'k' and wallet 'app:x' key '<u>:k' are two credits
    credit_wallet(gate, wallet_id=f"app:x:{user}", amount_nanos=5, idempotency_key="k")
    credit_wallet(gate, wallet_id="app:x", amount_nanos=7, idempotency_key=f"{user}:k")
    assert (gate.balance(f"app:x:{user}"), gate.balance("app:x")) == (CREDIT - COST + 5, CREDIT - COST + 7)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    _wallets, rows, _credits = _ledger(db)
    assert rows == [("x", "app:x", f"{user}:t", COST), ("x", f"app:x:{user}", "t", COST)]
    report = reconcile(gate)
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (2, 0, 0)


def test_the_migration_gives_persisted_turn_keys_their_scope(db, database_url):
    """0012 on a database with turns: each usage_turn_key row gets the app and wallet of its usage
    event; a key whose event is gone keeps empty ids (it can match no turn again)."""
    from alembic import command

    from worker.ledger.migrate import alembic_config

    cfg = alembic_config(database_url)
    db.dispose()
    command.downgrade(cfg, "0010")
    try:
        with db.begin() as conn:
            for i, (app, wallet) in enumerate([("app-a", "u1"), ("app-b", "u2")]):
                conn.execute(
                    text(
                        "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                        "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                        "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                        "billed_nanos, action, occurred_at) VALUES (:t, :o, :w, :e, 'c', 'wf', 'a', 'gpt-4o', 'openai', "
                        "'production', 1000, 100, 0, 0, 1, 1, 1, :cost, :cost, 'continue', '2026-11-02T09:00:00Z')"
                    ),
                    {"t": f"turn-{i}", "o": f"0:{i}-0", "w": wallet, "e": app, "cost": COST},
                )
                conn.execute(
                    text(
                        "INSERT INTO usage_turn_key (turn_id, outbox_id, occurred_at) "
                        "VALUES (:t, :o, '2026-11-02T09:00:00Z')"
                    ),
                    {"t": f"turn-{i}", "o": f"0:{i}-0"},
                )
            conn.execute(
                text(
                    "INSERT INTO usage_turn_key (turn_id, outbox_id, occurred_at) "
                    "VALUES ('orphan', '0:9-0', '2026-01-02T09:00:00Z')"
                )
            )
    finally:
        db.dispose()
        command.upgrade(cfg, "0016")
    try:
        with db.connect() as conn:
            keys = sorted(conn.execute(text("SELECT enterprise_id, wallet_id, turn_id FROM usage_turn_key")).all())
            debt = conn.execute(text("SELECT sum(debt_nanos) FROM usage_event")).scalar_one()
            pk = conn.execute(
                text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'usage_turn_key_pkey'")
            ).scalar_one()
        assert keys == [("", "", "orphan"), ("app-a", "u1", "turn-0"), ("app-b", "u2", "turn-1")]
        assert debt == 0 and pk == "PRIMARY KEY (enterprise_id, wallet_id, turn_id)"
    finally:
        db.dispose()
        command.upgrade(cfg, "head")
    # 0017 keys them by the digest of the same three (tests/integration/test_compact_usage.py)
    with db.connect() as conn:
        digests = set(conn.execute(text("SELECT turn_key FROM usage_turn_key")).scalars())
    assert digests == {turn_key_digest(*k) for k in keys}
