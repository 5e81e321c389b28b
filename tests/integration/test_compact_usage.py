"""Migration 0017 (compact usage rows): the 16-byte turn key agrees between Python and PostgreSQL,
and the migration goes down and up again on a database holding partitioned usage (a monthly
partition, the DEFAULT one, an isolated app's sub-partitions) with every row, sum and key intact."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn, turn_key_digest
from models.usage_codes import read_sql
from tests.committed import credit_wallet, open_wallet
from tests.conftest import TEST_DB_URL
from worker.db import session_scope
from worker.ledger.drain import OutboxDrain
from worker.ledger.isolation import isolate_app
from worker.ledger.partitions import ensure_partitions

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
OLD = datetime(2023, 11, 16, 18, 15, tzinfo=UTC)  # no monthly partition: the DEFAULT one
APPS = {"acme": "wa", "iso": "wi"}
TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "trial_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)
NANOS = ("cost_nanos", "billed_nanos", "platform_fee_nanos", "creator_share_nanos", "debt_nanos")

#: ids a naive concatenation would confuse, and text outside ASCII
TRICKY = [
    ("a", "b:c", "d"),
    ("a:b", "c", "d"),
    ("a", "b", "c:d"),
    ("é", "wallet", "turn"),
    ("app", "钱包", "🙂-1"),
    ("", "", "orphan"),
]


@pytest.fixture()
def fresh_db(db):
    """The test database, re-created afterwards: the test migrates it and isolates an app."""
    from worker.ledger.migrate import recreate_database

    yield db
    recreate_database(TEST_DB_URL)


def test_python_and_postgresql_compute_the_same_turn_key(db):
    with db.connect() as conn:
        for e, w, t in TRICKY:
            got = conn.execute(text("SELECT usage_turn_key_of(:e, :w, :t)"), {"e": e, "w": w, "t": t}).scalar_one()
            assert got == turn_key_digest(e, w, t)
    assert len({turn_key_digest(*k) for k in TRICKY}) == len(TRICKY)
    # the stored form: changing it would make every persisted turn look new (sha256sum of "1:a:1:b:c")
    assert turn_key_digest("a", "b", "c") == uuid.UUID("1b149166-93a3-a3cc-7b72-68f60ee2900e")


def _turn(turn_id: str, app: str, when: datetime, prompt: int) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=APPS[app],
        enterprise_id=app,
        chat_id=f"c-{app}",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=100 + prompt % 7,
        cached_prompt_tokens=prompt // 4,
        duration_ms=900 + prompt,
        occurred_at=when,
    )


def _figures(conn) -> dict[tuple[str, str], tuple[int, ...]]:
    """Per table (schema-qualified partition) and app: rows, then the sums of every token and nano column."""
    # from 0019 on, usage_event is a view over usage_row (the partitioned table), which since 0021
    # stores zeros and the implied fee as NULL (read_sql reads both forms)
    table = "usage_row" if conn.execute(text("SELECT to_regclass('usage_row')")).scalar() else "usage_event"
    cols = ", ".join(f"sum({read_sql(c, table)})::bigint" for c in (*TOKENS, *NANOS))
    return {
        (part, app): tuple(rest)
        for part, app, *rest in conn.execute(
            text(
                f"SELECT tableoid::regclass::text, enterprise_id, count(*), {cols} FROM {table} "
                "GROUP BY 1, 2 ORDER BY 1, 2"
            )
        )
    }


def _types(conn) -> set[str]:
    return set(
        conn.execute(
            text(
                "SELECT DISTINCT data_type FROM information_schema.columns WHERE table_name = 'usage_event' "
                f"AND column_name IN ({', '.join(repr(c) for c in TOKENS)})"
            )
        ).scalars()
    )


def test_the_migration_goes_down_and_up_with_partitioned_rows_intact(fresh_db, gate, redis_client, settings):
    from alembic import command

    from worker.ledger.migrate import alembic_config

    db = fresh_db
    with session_scope() as s:
        ensure_partitions(s, now=NOW, ahead=1)  # 2026-12, 2027-01
    for app, wallet in APPS.items():
        open_wallet(gate, wallet_id=wallet, enterprise_id=app, owner_id=f"u-{app}")
        credit_wallet(gate, wallet_id=wallet, amount_nanos=10**12, idempotency_key=f"seed-{app}")
    with session_scope() as s:
        isolate_app(s, "iso")
    months = (OLD, NOW, datetime(2027, 1, 5, tzinfo=UTC))
    turns = [_turn(f"{app}:{i}", app, when, 1000 + 37 * i) for app in APPS for i, when in enumerate(months * 3)]
    assert all(d.accepted for d in gate.record_turns(turns))
    OutboxDrain(redis_client, settings=settings).drain()
    with db.connect() as conn:
        before = _figures(conn)
        keys = {
            turn_key_digest(e, w, t): (e, w, t, o, when)
            for e, w, t, o, when in conn.execute(
                text("SELECT enterprise_id, wallet_id, turn_id, outbox_id, occurred_at FROM usage_event")
            )
        }
        stored = dict(conn.execute(text("SELECT turn_key, outbox_id FROM usage_turn_key")).all())
        # (since 0021 the later of the turn's UTC date and the day it was recorded: 0021's downgrade
        # gives that as recorded_on, which retention reads alike)
        retained = dict(conn.execute(text("SELECT turn_key, retention_date FROM usage_turn_key")).all())
    # every partition kind holds rows: DEFAULT, a month, an isolated app's sub-partitions in its schema
    assert {p for p, _a in before} == {
        "usage_event_default_shared",
        "usage_event_2026_12_shared",
        "usage_event_2027_01_shared",
        "app_iso.usage_event_default",
        "app_iso.usage_event_2026_12",
        "app_iso.usage_event_2027_01",
    }
    assert sum(v[0] for v in before.values()) == len(turns) == len(keys) == len(stored)
    assert stored == {k: v[3] for k, v in keys.items()}
    cfg = alembic_config(TEST_DB_URL)

    db.dispose()
    command.downgrade(cfg, "0016")
    db.dispose()
    with db.begin() as conn:
        assert _figures(conn) == before and _types(conn) == {"bigint"}
        old_keys = sorted(
            conn.execute(
                text(
                    "SELECT enterprise_id, wallet_id, turn_id, outbox_id, occurred_at, recorded_at FROM usage_turn_key"
                )
            ).all()
        )
        assert old_keys == sorted(
            (*v, datetime.combine(retained[k], datetime.min.time(), UTC)) for k, v in keys.items()
        )
        # what 0016's drain and 0012's upgrade wrote: a key with its event, and an orphan key
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                "billed_nanos, action, occurred_at) VALUES ('late:1', '0:1-0', 'wi', 'iso', 'c-iso', 'default', "
                "'assistant', 'gpt-4o', 'openai', 'production', 1000000000, 7, 3, 5, 1, 1, 1, 11, 11, 'continue', "
                ":t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO usage_turn_key (enterprise_id, wallet_id, turn_id, outbox_id, occurred_at) VALUES "
                "('iso', 'wi', 'late:1', '0:1-0', :t), ('', '', 'orphan', '0:9-0', :o)"
            ),
            {"t": NOW, "o": OLD},
        )
        middle = _figures(conn)
    assert middle[("app_iso.usage_event_2026_12", "iso")][:2] == (
        4,
        before[("app_iso.usage_event_2026_12", "iso")][1] + 10**9,
    )

    db.dispose()
    command.upgrade(cfg, "0018")  # 0017 (and 0018, which keeps its table); 0019: test_usage_row
    db.dispose()
    with db.connect() as conn:
        assert _figures(conn) == middle and _types(conn) == {"integer"}
        up = dict(conn.execute(text("SELECT turn_key, outbox_id FROM usage_turn_key")).all())
        mismatched = conn.execute(
            text(
                "SELECT count(*) FROM usage_event u LEFT JOIN usage_turn_key k "
                "ON k.turn_key = usage_turn_key_of(u.enterprise_id, u.wallet_id, u.turn_id) "
                "AND k.outbox_id = u.outbox_id AND k.occurred_at = u.occurred_at WHERE k.turn_key IS NULL"
            )
        ).scalar_one()
        indexes = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_event'")).scalars())
    assert mismatched == 0
    assert up == {
        **stored,
        turn_key_digest("iso", "wi", "late:1"): "0:1-0",
        turn_key_digest("", "", "orphan"): "0:9-0",
    }
    assert indexes == {
        "usage_event_pkey",
        "ix_usage_event_wallet",
        "ix_usage_event_enterprise_workflow",
        "ix_usage_event_enterprise_chat",
        "ix_usage_event_occurred_brin",
    }

    # down once more: the orphan key has no event to take its ids from; it comes back matching no turn
    db.dispose()
    command.downgrade(cfg, "0016")
    db.dispose()
    with db.connect() as conn:
        assert _figures(conn) == middle
        again = conn.execute(
            text("SELECT enterprise_id, wallet_id, turn_id FROM usage_turn_key WHERE outbox_id = '0:9-0'")
        ).one()
        count = conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one()
    assert tuple(again) == ("", "", str(turn_key_digest("", "", "orphan")))
    assert count == len(turns) + 2
    db.dispose()
    command.upgrade(cfg, "0018")  # 0017 (and 0018, which keeps its table); 0019: test_usage_row
