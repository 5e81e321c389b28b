"""Migration 0021 (``usage_row`` without what a row implies: zeros and the implied platform fee as
NULL, the implied billing target as ``''``; turn keys with one ``retention_date``): every
``usage_event`` row reads the same through the view for rows stored before and after it, through
its downgrade and upgrade again; drained turns store the implied forms and 64-byte turn keys;
retention reads both key forms; the migration's frozen SQL agrees with the code's."""

from __future__ import annotations

import importlib
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text

from models.enums import PayerLevel
from models.turn import TurnIn, retention_date_sql
from models.usage_codes import IMPLIED, ZERO_AS_NULL, read_sql, store_sql
from tests.committed import credit_wallet, open_wallet
from tests.conftest import TEST_DB_URL
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.drain import OutboxDrain
from worker.ledger.partitions import apply_retention, ensure_partitions

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
OLD = datetime(2023, 11, 16, 18, 15, tzinfo=UTC)  # the DEFAULT partition
MIGRATION = importlib.import_module("models.migrations.versions.0021_implied_forms")
EVENT = importlib.import_module("models.migrations.versions.0019_usage_row").EVENT
WALLETS = {"u-acme": PayerLevel.app_usage, "creator": PayerLevel.platform}


@pytest.fixture()
def fresh_db(db):
    """The test database, re-created afterwards: the test migrates it."""
    from worker.ledger.migrate import recreate_database

    yield db
    recreate_database(TEST_DB_URL)


def test_the_migrations_sql_is_the_codes():
    assert (MIGRATION.ZERO_AS_NULL, MIGRATION.IMPLIED) == (ZERO_AS_NULL, IMPLIED)
    for c in IMPLIED:
        assert MIGRATION.store_sql(c, "s") == store_sql(c, "s")
        assert MIGRATION.read_sql(c, "r") == read_sql(c, "r")
    assert MIGRATION.retention_date_sql("NEW.occurred_at") == retention_date_sql("NEW.occurred_at")


def _turn(turn_id: str, wallet_id: str, when: datetime) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id="acme",
        chat_id=f"c-{wallet_id}",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000 + len(turn_id),
        completion_tokens=100,
        occurred_at=when,
    )


def _rows(conn) -> list[tuple]:
    """Every usage_event row, every column, sorted by id."""
    return [tuple(r) for r in conn.execute(text(f"SELECT {', '.join(EVENT)} FROM usage_event ORDER BY id"))]


def _stored(conn) -> dict[str, str | None]:
    """turn_id → usage_row.billing_target as stored."""
    return dict(conn.execute(text("SELECT turn_id, billing_target FROM usage_row")).all())


def _nulls(conn) -> dict[str, tuple[str, ...]]:
    """turn_id → the usage_row columns stored NULL."""
    return {
        t: tuple(c for c, v in zip(IMPLIED, values) if v is None)
        for t, *values in conn.execute(text(f"SELECT turn_id, {', '.join(IMPLIED)} FROM usage_row"))
    }


def _keys(conn) -> dict:
    """turn_id → (occurred_at, the retention column) of its turn key (rows with a usage_row)."""
    date_column = conn.execute(
        text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'usage_turn_key' "
            "AND column_name IN ('recorded_on', 'retention_date')"
        )
    ).scalar_one()
    return {
        t: (o, d)
        for t, o, d in conn.execute(
            text(
                f"SELECT r.turn_id, k.occurred_at, k.{date_column} FROM usage_turn_key k JOIN usage_row r "
                "ON k.turn_key = usage_turn_key_of(r.enterprise_id, r.wallet_id, r.turn_id)"
            )
        )
    }


def _insert(conn, turn_id: str, outbox_id: str, level: str, target: str | None, when: datetime) -> None:
    """A row written through the view (a tool, a seed), ``target`` None: the view's default."""
    cols = "level, billing_target" if target is not None else "level"
    vals = ":level, :target" if target is not None else ":level"
    conn.execute(
        text(
            "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
            f"model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, {cols}, "
            "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, billed_nanos, "
            f"action, occurred_at) VALUES (:t, :o, 'u-acme', 'acme', 'c-x', 'default', 'assistant', 'gpt-4o', "
            f"'openai', 'production', 1000, 7, 0, 5, {vals}, 1, 1, 1, 11, 11, 'continue', :at)"
        ),
        {"t": turn_id, "o": outbox_id, "level": level, "target": target, "at": when},
    )


#: rows written through the view with billing targets their level does not imply, and ones it does
ODD = (
    ("odd:empty", "app_usage", ""),
    ("odd:other", "app_usage", "globex"),
    ("odd:platform-at-app", "app_usage", "platform"),
    ("odd:app-at-platform", "platform", "acme"),
    ("odd:implied", "app_usage", "acme"),
    ("odd:default", "platform", None),  # the view's default, 'platform'
)


def test_rows_read_the_same_before_and_after_the_migration(fresh_db, gate, redis_client, settings):
    from alembic import command

    from worker.ledger.migrate import alembic_config

    db = fresh_db
    cfg = alembic_config(TEST_DB_URL)
    with session_scope() as s:
        ensure_partitions(s, now=NOW, ahead=1)
        ensure_enterprise(s, "acme")
    for wallet, level in WALLETS.items():
        enterprise = "acme" if level == PayerLevel.app_usage else None
        open_wallet(gate, wallet_id=wallet, enterprise_id=enterprise, owner_id=f"o-{wallet}", level=level)
        credit_wallet(gate, wallet_id=wallet, amount_nanos=10**12, idempotency_key=f"seed-{wallet}")

    # 0020: rows and keys in the old form (written through the view, as 0020's drain left them)
    db.dispose()
    command.downgrade(cfg, "0020")
    db.dispose()
    old = [_turn(f"old:{w}:{i}", w, when) for w in WALLETS for i, when in enumerate((OLD, NOW))]
    with db.begin() as conn:
        for i, t in enumerate(old):
            level = WALLETS[t.wallet_id].value
            target = "platform" if level == "platform" else "acme"
            conn.execute(
                text(
                    "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                    "model, provider, mode, level, billing_target, prompt_tokens, completion_tokens, "
                    "cached_prompt_tokens, duration_ms, input_nanos_per_mtok, cached_input_nanos_per_mtok, "
                    "output_nanos_per_mtok, cost_nanos, billed_nanos, action, occurred_at) VALUES (:t, :o, :w, "
                    "'acme', 'c', 'default', 'assistant', 'gpt-4o', 'openai', 'production', :level, :target, "
                    "1000, 7, 0, 5, 1, 1, 1, 11, 11, 'continue', :at)"
                ),
                {
                    "t": t.turn_id,
                    "o": f"0:{i}-0",
                    "w": t.wallet_id,
                    "level": level,
                    "target": target,
                    "at": t.occurred_at,
                },
            )
        for i, (turn_id, level, target) in enumerate(ODD):
            _insert(conn, turn_id, f"1:{i}-0", level, target, NOW)
        before = _rows(conn)
        old_stored = _stored(conn)
        old_keys = _keys(conn)
    today = datetime.now(UTC).date()
    assert old_stored["odd:empty"] == "" and old_stored["odd:default"] == "platform"
    assert all(o is not None and d == today for o, d in old_keys.values())

    # up: every row reads the same, the old ones keep their text (a literal '' as NULL)
    db.dispose()
    command.upgrade(cfg, "head")
    db.dispose()
    with db.connect() as conn:
        assert _rows(conn) == before
        assert _stored(conn) == {t: (None if v == "" else v) for t, v in old_stored.items()}
        assert {c for cs in _nulls(conn).values() for c in cs} == {"billing_target"}  # 'odd:empty' only
        assert _keys(conn) == old_keys  # occurred_at kept, recorded_on as retention_date

    # new rows: drained (both levels) and through the view
    new = [_turn(f"new:{w}:{i}", w, when) for w in WALLETS for i, when in enumerate((OLD, NOW))]
    assert all(d.accepted for d in gate.record_turns(new))
    assert OutboxDrain(redis_client, settings=settings).drain(max_seconds=30).inserted == len(new)
    with db.begin() as conn:
        for i, (turn_id, level, target) in enumerate(ODD):
            _insert(conn, "new" + turn_id, f"2:{i}-0", level, target, NOW)
        after = _rows(conn)
        stored = _stored(conn)
        nulls = _nulls(conn)
        keys = _keys(conn)
        key_sizes = conn.execute(
            text("SELECT max(pg_column_size(k.*)) FROM usage_turn_key k WHERE occurred_at IS NULL")
        ).scalar_one()
    by_id = {r[EVENT.index("turn_id")]: r for r in after}
    target_at = EVENT.index("billing_target")
    for t in new:  # the drain's: the implied target, stored as ''
        implied = "platform" if WALLETS[t.wallet_id] == PayerLevel.platform else "acme"
        assert by_id[t.turn_id][target_at] == implied and stored[t.turn_id] == ""
        assert keys[t.turn_id] == (None, max(t.occurred_at.date(), today))
    for turn_id, _level, target in ODD:  # through the view: what was written reads back
        written = "platform" if target is None else target
        assert by_id["new" + turn_id][target_at] == by_id[turn_id][target_at] == written
        assert keys["new" + turn_id] == (None, today)
    # a drained LLM turn: its fee, zero counts (and a platform payer's creator share) as NULL
    llm_zeros = ("debt_nanos", "quantity", "cached_prompt_tokens", "trial_tokens", "cache_write_tokens", "duration_ms")
    for t in new:
        share = ("creator_share_nanos",) if WALLETS[t.wallet_id] == PayerLevel.platform else ()
        assert set(nulls[t.turn_id]) == {*llm_zeros, "cache_write_1h_tokens", "platform_fee_nanos", *share}
    # through the view: billed 11, no share, a fee of 0 (not the implied 11: stored)
    assert "platform_fee_nanos" not in nulls["newodd:other"] and "creator_share_nanos" in nulls["newodd:other"]
    assert stored["newodd:empty"] is None and stored["newodd:other"] == "globex"
    assert stored["newodd:implied"] == stored["newodd:default"] == ""
    assert key_sizes <= 64  # 24-B header, 16-B key, 4-B date, a 17-character outbox id or so
    assert [r for r in after if r[EVENT.index("turn_id")] in old_stored] == before

    # retention reads both key forms: the old turns' keys stay while recorded today, and go once
    # recorded back then (their rows go from the DEFAULT partition at once)
    with session_scope() as s:
        report = apply_retention(s, months=3, now=NOW)
    assert (report.default_rows_deleted, report.turn_keys_deleted) == (4, 0)
    with db.begin() as conn:
        for t in old + new:
            conn.execute(
                text(
                    "UPDATE usage_turn_key SET retention_date = :d WHERE turn_key = usage_turn_key_of('acme', :w, :t)"
                ),
                {"d": t.occurred_at.date(), "w": t.wallet_id, "t": t.turn_id},
            )
        kept = _rows(conn)
        keys = _keys(conn)
    with session_scope() as s:
        assert apply_retention(s, months=3, now=NOW).turn_keys_deleted == 4  # old:*:0 and new:*:0
    assert len(kept) == len(after) - 4 and len(keys) == len(kept)

    # a row deleted through the view leaves its key (as retention leaves a late turn's)
    with db.begin() as conn:
        assert conn.execute(text("DELETE FROM usage_event WHERE turn_id = 'newodd:other'")).rowcount == 1
        kept = _rows(conn)
    orphan = keys.pop("newodd:other")
    assert orphan == (None, today)

    # down: every row reads the same, stored as text again, keys with their turn's time
    db.dispose()
    command.downgrade(cfg, "0020")
    db.dispose()
    with db.connect() as conn:
        assert _rows(conn) == kept
        down = _stored(conn)
        down_keys = _keys(conn)
    assert down == {r[EVENT.index("turn_id")]: r[target_at] for r in kept}
    with db.connect() as conn:
        alone = conn.execute(
            text(
                "SELECT occurred_at, recorded_on FROM usage_turn_key WHERE turn_key = usage_turn_key_of('acme', 'u-acme', 'newodd:other')"
            )
        ).one()
    assert tuple(alone) == (datetime.combine(today, datetime.min.time(), UTC), today)  # retention: as before
    # (an old key keeps its occurred_at; a new one gets its row's; the date is the one retention read)
    assert down_keys == {t: (by_id[t][EVENT.index("occurred_at")], d) for t, (_o, d) in keys.items()}
    assert {t: o for t, (o, _d) in keys.items() if o is not None} == {
        t: o for t, (o, _d) in old_keys.items() if t in keys
    }
