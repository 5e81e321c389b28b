"""Per-app usage schemas (worker.ledger.isolation): an isolated app's usage events sit in its own schema,
its existing rows moved there, new turns routed there by PostgreSQL, exactly once; every reader
sees the same figures as before; new months are created split; retention drops them whole."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.conftest import TEST_DB_URL, run_cli
from worker.chats.analytics import usage_analytics
from worker.db import session_scope
from worker.ledger.accounts import ledger_balance
from worker.ledger.drain import OutboxDrain
from worker.ledger.isolation import IsolationError, isolate_app, isolated_apps
from worker.ledger.partitions import apply_retention, ensure_partitions, monthly_partitions

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
OLD = datetime(2023, 11, 16, 18, 15, tzinfo=UTC)  # no monthly partition: the DEFAULT one
APPS = {"acme": "wa", "globex": "wg", "initech": "wi"}


@pytest.fixture()
def fresh_db(db):
    """The test database, re-created afterwards: isolation changes its partitions' structure."""
    from worker.ledger.migrate import recreate_database

    yield db
    recreate_database(TEST_DB_URL)


def _turn(turn_id: str, app: str, when: datetime, prompt: int = 1000) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=APPS[app],
        enterprise_id=app,
        chat_id=f"c-{app}",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=100,
        occurred_at=when,
    )


def _where(db) -> dict[str, str]:
    """turn_id → the table (schema-qualified outside public) that holds its row."""
    with db.connect() as conn:
        return dict(conn.execute(text("SELECT turn_id, tableoid::regclass::text FROM usage_row")).all())


def _sums(db) -> dict[str, tuple[int, int, int]]:
    with db.connect() as conn:
        return {
            e: (n, t, c)
            for e, n, t, c in conn.execute(
                text(
                    "SELECT enterprise_id, count(*), sum(prompt_tokens + completion_tokens), sum(cost_nanos) "
                    "FROM usage_event GROUP BY enterprise_id"
                )
            )
        }


def test_an_isolated_app_keeps_its_usage_in_its_schema_exactly_once(fresh_db, gate, redis_client, settings):
    db = fresh_db
    with session_scope() as s:
        ensure_partitions(s, now=NOW, ahead=1)  # 2026-12, 2027-01
    for app, wallet in APPS.items():
        open_wallet(gate, wallet_id=wallet, enterprise_id=app, owner_id=f"u-{app}")
        credit_wallet(gate, wallet_id=wallet, amount_nanos=10**12, idempotency_key=f"seed-{app}")
    drain = OutboxDrain(redis_client, settings=settings)
    gate.record_turns(
        [
            _turn(f"{app}-{m}", app, when, prompt=1000 + i)
            for i, app in enumerate(APPS)
            for m, when in (("old", OLD), ("dec", NOW))
        ]
    )
    assert drain.drain().inserted == 6
    before = _sums(db)
    with session_scope() as s:
        report_before = usage_analytics(
            s,
            enterprise_id="acme",
            granularity="day",
            group_by=("workflow", "model"),
            start=datetime(2023, 1, 1, tzinfo=UTC),
            end=datetime(2027, 6, 1, tzinfo=UTC),
        )

    with session_scope() as s:
        assert isolate_app(s, "acme") == "app_acme"
    assert _where(db) == {
        "acme-old": "app_acme.usage_event_default",
        "acme-dec": "app_acme.usage_event_2026_12",
        "globex-old": "usage_event_default_shared",
        "globex-dec": "usage_event_2026_12_shared",
        "initech-old": "usage_event_default_shared",
        "initech-dec": "usage_event_2026_12_shared",
    }
    assert _sums(db) == before  # moved, not copied or lost
    with session_scope() as s:
        assert (
            usage_analytics(
                s,
                enterprise_id="acme",
                granularity="day",
                group_by=("workflow", "model"),
                start=datetime(2023, 1, 1, tzinfo=UTC),
                end=datetime(2027, 6, 1, tzinfo=UTC),
            )
            == report_before
        )
        assert isolate_app(s, "acme", "app_acme") == "app_acme"  # again: nothing to do
        assert isolated_apps(s) == {"acme": "app_acme"}

    # new turns of both apps, one retried: PostgreSQL routes each by enterprise_id, once
    turns = [
        _turn("acme-jan", "acme", datetime(2027, 1, 5, tzinfo=UTC)),
        _turn("globex-jan", "globex", datetime(2027, 1, 5, tzinfo=UTC)),
        _turn("acme-dec2", "acme", NOW),
    ]
    gate.record_turns(turns)
    entries = redis_client.xrange(f"{gate.wallet_key('wa').split(':wallet:')[0]}:outbox")
    assert drain.drain().inserted == 3
    # a re-delivery of the same entries (a worker killed after its commit, before XACK) adds nothing
    from worker.gate.outbox import parse_entry
    from worker.ledger.turns import persist_turns

    shard = gate.shard("wa")
    with session_scope() as s:
        again = persist_turns(s, [parse_entry(f, f"{shard}:{i}") for i, f in entries if f["t"].find("acme-") > 0])
    assert (again.inserted, again.duplicates) == (0, 2)
    where = _where(db)
    assert (where["acme-jan"], where["acme-dec2"], where["globex-jan"]) == (
        "app_acme.usage_event_2027_01",
        "app_acme.usage_event_2026_12",
        "usage_event_2027_01_shared",
    )
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_event WHERE enterprise_id = 'acme'")).scalar_one() == 4
        assert conn.execute(text("SELECT count(*) FROM app_acme.usage_event_2026_12")).scalar_one() == 2
        shared = conn.execute(text("SELECT count(*) FROM ONLY usage_event_2026_12_shared WHERE enterprise_id = 'acme'"))
        assert shared.scalar_one() == 0
    cost = {
        t.turn_id: gate.prices.price(
            model="gpt-4o", provider="openai", when=NOW, prompt_tokens=t.prompt_tokens, completion_tokens=100
        ).cost_nanos
        for t in turns
    }
    with session_scope() as s:
        assert ledger_balance(s, "wa") == gate.balance("wa") == 10**12 - 4 * cost["acme-jan"]  # 4 turns of 1000 + 100

    # a second app later: its sub-partitions join the months already split
    with session_scope() as s:
        isolate_app(s, "globex", "tenant_globex")
        # a month created from now on is split for both (one far ahead: no migration made it)
        report = ensure_partitions(s, now=datetime(2031, 1, 1, tzinfo=UTC), ahead=0)
    assert report.created == ["2031-01"]
    with db.connect() as conn:
        tables = set(
            conn.execute(
                text("SELECT schemaname || '.' || tablename FROM pg_tables WHERE tablename LIKE 'usage_event_%'")
            ).scalars()
        )
    assert {
        "app_acme.usage_event_2031_01",
        "tenant_globex.usage_event_2031_01",
        "public.usage_event_2031_01_shared",
        "tenant_globex.usage_event_2026_12",
        "tenant_globex.usage_event_default",
    } <= tables
    assert _where(db)["globex-dec"] == "tenant_globex.usage_event_2026_12"
    assert _where(db)["initech-dec"] == "usage_event_2026_12_shared"
    assert _sums(db)["globex"] == (3, before["globex"][1] + 1100, before["globex"][2] + cost["globex-jan"])

    # retention drops a whole month, its apps' sub-partitions with it
    with session_scope() as s:
        # every month before 2027-01 goes (2026-12 here; earlier months too if an earlier test in the
        # session created them: partitions outlive the fixture's TRUNCATE)
        older = [m for m in monthly_partitions(s) if m < "2027-01"]
        dropped = apply_retention(s, months=3, now=datetime(2027, 3, 1, tzinfo=UTC)).dropped  # keep 2027-01..03
        assert "2026-12" in older and dropped == older
        assert not [m for m in monthly_partitions(s) if m < "2027-01"]
    with db.connect() as conn:
        left = set(
            conn.execute(
                text("SELECT schemaname || '.' || tablename FROM pg_tables WHERE tablename = 'usage_event_2026_12'")
            ).scalars()
        )
    assert left == set()
    assert sorted(_where(db)) == ["acme-jan", "globex-jan"]


def test_isolating_refuses_bad_input_and_changes_nothing(fresh_db):
    with session_scope() as s:
        from worker.ledger.accounts import ensure_enterprise

        ensure_enterprise(s, "acme")
        ensure_enterprise(s, "globex")
    for app, schema, field in (
        ("nope", None, "enterprise_id"),
        ("acme", "Bad-Name", "schema"),
        ("acme", "public", "schema"),
        ("acme", "pg_x", "schema"),
    ):
        with pytest.raises(IsolationError, match=f"^{field}:"):
            with session_scope() as s:
                isolate_app(s, app, schema)
    with session_scope() as s:
        isolate_app(s, "acme", "shared_one")
    with pytest.raises(IsolationError, match="^schema: 'shared_one' already holds app 'acme'"):
        with session_scope() as s:
            isolate_app(s, "globex", "shared_one")
    with pytest.raises(IsolationError, match="^enterprise_id: 'acme' already keeps its usage in 'shared_one'"):
        with session_scope() as s:
            isolate_app(s, "acme", "other")
    with session_scope() as s:
        assert isolated_apps(s) == {"acme": "shared_one"}
    with fresh_db.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname IN ('other', 'bad-name')")).scalar_one()
            == 0
        )
    done = run_cli("app", "isolate", "globex", "--schema", "Bad")
    assert done.returncode == 2 and "--schema:" in done.stderr + done.stdout
    done = run_cli("app", "isolate", "globex")
    assert done.returncode == 0 and "usage events in schema app_globex" in done.stdout
    with session_scope() as s:
        assert isolated_apps(s) == {"acme": "shared_one", "globex": "app_globex"}
