"""Migration 0019 (usage_row under a usage_event view): every row reads back the same through the
view, goes down to 0018's table and up again with partitions (a month, DEFAULT, an isolated app's
sub-partitions in its schema), counts, nanos sums, prices and outbox ids intact; the drain and an
insert through the view share one price row per tuple; the codes agree with the migration's."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from models.usage_codes import CODES, read_sql
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
MIGRATION = importlib.import_module("models.migrations.versions.0019_usage_row")
NANOS = ("cost_nanos", "billed_nanos", "platform_fee_nanos", "creator_share_nanos", "debt_nanos")


@pytest.fixture()
def fresh_db(db):
    """The test database, re-created afterwards: the test migrates it and isolates an app."""
    from worker.ledger.migrate import recreate_database

    yield db
    recreate_database(TEST_DB_URL)


def test_the_codes_are_the_migrations():
    assert MIGRATION.CODES == CODES


def _turn(turn_id: str, app: str, when: datetime, prompt: int, **kw) -> TurnIn:
    fields = dict(
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
    fields.update(kw)
    return TurnIn(**fields)


def _rows(conn) -> list[tuple]:
    """Every usage_event row, every column (0018's order), sorted by id."""
    cols = ", ".join(MIGRATION.EVENT)
    return [tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM usage_event ORDER BY id"))]


def _places(conn, table: str) -> dict[tuple[str, str], tuple[int, ...]]:
    """Per partition (schema-qualified) and app: rows and the nanos sums."""
    sums = ", ".join(f"sum({read_sql(c, table)})::bigint" for c in NANOS)  # (usage_row's NULLs: 0021)
    return {
        (p, a): tuple(rest)
        for p, a, *rest in conn.execute(
            text(f"SELECT tableoid::regclass::text, enterprise_id, count(*), {sums} FROM {table} GROUP BY 1, 2")
        )
    }


def test_the_migration_goes_down_and_up_with_every_row_intact(fresh_db, gate, redis_client, settings):
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
    turns += [
        _turn("acme:mini", "acme", NOW, 5000, model="gpt-4o-mini"),
        _turn("iso:mail", "iso", NOW, 0, model="emails", meter="emails", quantity=3, completion_tokens=0),
    ]
    assert all(d.accepted for d in gate.record_turns(turns))
    OutboxDrain(redis_client, settings=settings).drain()
    with db.connect() as conn:
        before = _rows(conn)
        places = _places(conn, "usage_row")
        prices = conn.execute(text("SELECT count(*) FROM usage_price")).scalar_one()
        keys = conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one()
    assert len(before) == len(turns) == keys
    assert prices == 3  # gpt-4o, gpt-4o-mini, emails: one row each, whatever the number of turns
    assert all(r[MIGRATION.EVENT.index("outbox_id")] for r in before)  # each from its turn key
    assert {p for p, _a in places} == {
        "usage_event_default_shared",
        "usage_event_2026_12_shared",
        "usage_event_2027_01_shared",
        "app_iso.usage_event_default",
        "app_iso.usage_event_2026_12",
        "app_iso.usage_event_2027_01",
    }
    cfg = alembic_config(TEST_DB_URL)

    db.dispose()
    command.downgrade(cfg, "0018")
    db.dispose()
    with db.begin() as conn:
        assert _rows(conn) == before
        assert _places(conn, "usage_event") == places
        # what 0018's drain wrote: an event (its key added by the upgrade if missing: none expected)
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                "billed_nanos, action, occurred_at, service_tier) VALUES ('late:1', '0:1-0', 'wi', 'iso', 'c-iso', "
                "'default', 'assistant', 'gpt-4o', 'openai', 'trial', 1000000000, 7, 3, 5, 1, 1, 1, 11, 11, "
                "'pause', :t, 'flex')"
            ),
            {"t": NOW},
        )
        middle = _rows(conn)
        middle_places = _places(conn, "usage_event")

    db.dispose()
    command.upgrade(cfg, "head")
    db.dispose()
    with db.connect() as conn:
        assert _rows(conn) == middle
        assert _places(conn, "usage_row") == middle_places
        assert conn.execute(text("SELECT count(*) FROM usage_price")).scalar_one() == 4  # + gpt-4o flex
        late = conn.execute(
            text("SELECT mode, action, service_tier, outbox_id FROM usage_event WHERE turn_id = 'late:1'")
        ).one()
        assert tuple(late) == ("trial", "pause", "flex", "0:1-0")
        indexes = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_row'")).scalars())
    assert indexes == {
        "ix_usage_row_id",
        "ix_usage_event_wallet",
        "ix_usage_event_enterprise_workflow",
        "ix_usage_event_enterprise_chat",
        "ix_usage_event_occurred_brin",
    }

    # writes through the view: a known price tuple reuses its row, a delete removes the stored row
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, "
                "model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, "
                "input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, "
                "billed_nanos, action, occurred_at, service_tier) VALUES ('late:2', '0:2-0', 'wi', 'iso', 'c-iso', "
                "'default', 'assistant', 'gpt-4o', 'openai', 'trial', 1, 7, 0, 5, 1, 1, 1, 11, 11, "
                "'pause', :t, 'flex')"
            ),
            {"t": NOW},
        )
        assert conn.execute(text("SELECT count(*) FROM usage_price")).scalar_one() == 4
        assert conn.execute(text("DELETE FROM usage_event WHERE turn_id = 'late:2'")).rowcount == 1
        assert conn.execute(text("SELECT count(*) FROM usage_row WHERE turn_id = 'late:2'")).scalar_one() == 0
        with pytest.raises(Exception, match="mode"):
            with conn.begin_nested():
                conn.execute(
                    text(
                        "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, "
                        "agent, model, provider, mode, prompt_tokens, completion_tokens, cached_prompt_tokens, "
                        "duration_ms, input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, "
                        "cost_nanos, billed_nanos, action, occurred_at) VALUES ('bad', '0:3-0', 'wi', 'iso', 'c', "
                        "'d', 'a', 'gpt-4o', 'openai', 'free', 1, 1, 0, 1, 1, 1, 1, 1, 1, 'continue', :t)"
                    ),
                    {"t": NOW},
                )

    # and down once more: 0018's rows, exactly
    db.dispose()
    command.downgrade(cfg, "0018")
    db.dispose()
    with db.connect() as conn:
        assert _rows(conn) == middle
        assert _places(conn, "usage_event") == middle_places


def test_two_drains_adding_the_same_new_price_tuple_share_one_price_row(db):
    """Two transactions persist turns of the same new price tuple at once: the second waits for the
    first's price row, then uses it (one ``usage_price`` row, every turn with its prices)."""
    import threading

    from sqlalchemy import insert as sa_insert

    from models.wallet import Wallet
    from tests.integration.test_drain_staged import _row
    from worker.ledger.accounts import ensure_enterprise
    from worker.ledger.turns import persist_turns

    with session_scope() as s:
        ensure_enterprise(s, "acme")
        s.execute(sa_insert(Wallet).values(id="w-acme", enterprise_id="acme", owner_id="acme"))
    new = {"model": "gpt-new", "input_nanos_per_mtok": 7, "output_nanos_per_mtok": 9, "service_tier": "flex"}
    first_in = threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            first_in.wait(10)
            with session_scope() as s:  # blocks on the first's uncommitted price row
                persist_turns(s, [_row(i, **new) for i in range(10, 20)])
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            second_done.set()

    t = threading.Thread(target=second)
    t.start()
    with session_scope() as s:
        persist_turns(s, [_row(i, **new) for i in range(10)])
        first_in.set()
        assert not second_done.wait(1.0)  # still waiting for this transaction
    t.join(20)
    assert errors == [] and second_done.is_set()
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_price")).scalar_one() == 1
        rows = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT turn_id), min(model), max(service_tier), "
                "sum(input_nanos_per_mtok), sum(output_nanos_per_mtok), sum(cost_nanos) FROM usage_event"
            )
        ).one()
    assert tuple(rows) == (20, 20, "gpt-new", "flex", 140, 180, sum(1_000 + i for i in range(20)))
