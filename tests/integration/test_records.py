"""Records as families (``models/``) against the migrated PostgreSQL schema: enum columns read back
as their enums while the columns stay what the migrations made them (``VARCHAR``)."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import UTC, datetime

from sqlalchemy import String, select, text
from sqlmodel import Session

from models.access import ApiKey
from models.chat import ChatSession
from models.enums import ApiRole, BillingMode, ChatStatus, ConnectionState, PayerLevel, TransactionKind, TrialThen
from models.turn import UsageEvent, UsageTurnKey, turn_key_digest
from models.wallet import Enterprise, Wallet, WalletTransaction

T0 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)


def test_enum_columns_read_back_as_enums_and_are_stored_as_their_values(session):
    with nullcontext(session) as s:  # the rolled-back session fixture: nothing to truncate
        s.add(Enterprise(id="e1", name="E", default_mode=BillingMode.trial, trial_then="bill"))
        s.flush()
        s.add(Wallet(id="w1", enterprise_id="e1", owner_id="u1", level=PayerLevel.platform, mode="development"))
        s.flush()
        s.add(
            WalletTransaction(
                wallet_id="w1", kind=TransactionKind.credit, amount_nanos=7_000_000_000, idempotency_key="k1"
            )
        )
        s.add(
            ChatSession(
                enterprise_id="e1",
                chat_id="c1",
                wallet_id="w1",
                workflow="wf",
                status="paused",
                connection_state=ConnectionState.resumable,
                started_at=T0,
                last_turn_at=T0,
            )
        )
        s.add(ApiKey(prefix="tg_p2c", key_sha256="0" * 64, role="end_user", enterprise_id="e1", wallet_id="w1"))
        s.commit()
    with nullcontext(session.connection()) as conn:  # written into the migrations' VARCHAR columns as the plain values
        conn.execute(
            text(
                "INSERT INTO usage_turn_key (turn_key, outbox_id, retention_date) "
                "VALUES (usage_turn_key_of('e1', 'w1', 't1'), '0:1-0', :d)"
            ),
            {"d": T0.date()},
        )
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, model,"
                " provider, mode, level, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms,"
                " input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, billed_nanos,"
                " action, occurred_at) VALUES ('t1', '0:1-0', 'w1', 'e1', 'c1', 'wf', 'a', 'gpt-4o', 'openai', 'trial',"
                " 'platform', 1000, 200, 0, 5, 2500000000, 1250000000, 10000000000, 4500000, 0, 'continue', :t)"
            ),
            {"t": T0},
        )
        raw = conn.execute(
            text(
                "SELECT e.default_mode, e.trial_then, w.level, w.mode, t.kind, c.status, c.connection_state, k.role"
                " FROM enterprise e JOIN wallet w ON w.enterprise_id = e.id JOIN wallet_transaction t ON t.wallet_id = w.id"
                " JOIN chat_session c ON c.wallet_id = w.id JOIN api_key k ON k.wallet_id = w.id"
            )
        ).one()
    assert tuple(raw) == ("trial", "bill", "platform", "development", "credit", "paused", "resumable", "end_user")
    session.expunge_all()  # read back from the database, not from the identity map
    with nullcontext(session) as s:
        e = s.get(Enterprise, "e1")
        w = s.get(Wallet, "w1")
        t = s.execute(select(WalletTransaction)).scalar_one()
        c = s.execute(select(ChatSession)).scalar_one()
        k = s.execute(select(ApiKey)).scalar_one()
        u = s.execute(select(UsageEvent)).scalar_one()
        got = [
            e.default_mode,
            e.trial_then,
            w.level,
            w.mode,
            t.kind,
            c.status,
            c.connection_state,
            k.role,
            u.mode,
            u.level,
        ]
        assert got == [
            BillingMode.trial,
            TrialThen.bill,
            PayerLevel.platform,
            BillingMode.development,
            TransactionKind.credit,
            ChatStatus.paused,
            ConnectionState.resumable,
            ApiRole.end_user,
            BillingMode.trial,
            PayerLevel.platform,
        ]
        assert [type(v) for v in got] == [
            BillingMode,
            TrialThen,
            PayerLevel,
            BillingMode,
            TransactionKind,
            ChatStatus,
            ConnectionState,
            ApiRole,
            BillingMode,
            PayerLevel,
        ]
        # a query binds a member or its plain value the same
        assert s.execute(select(Wallet.id).where(Wallet.mode == BillingMode.development)).scalars().all() == ["w1"]
        assert s.execute(select(Wallet.id).where(Wallet.mode == "development")).scalars().all() == ["w1"]
        assert s.execute(select(UsageTurnKey.turn_key)).scalars().all() == [turn_key_digest("e1", "w1", "t1")]
        assert (u.prompt_tokens, u.completion_tokens, u.cost_nanos, u.billed_nanos) == (1000, 200, 4_500_000, 0)


def test_the_tables_match_the_migrations(session):
    """Migrations stay the only source of schema: Alembic's autogenerate finds no column of the
    record families whose type, nullability or server default differs from the migrated database
    (the enum columns included: VARCHAR of the same length, no PostgreSQL enum type)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import models.access  # noqa: E401, F401
    import models.budget
    import models.chat
    import models.reconcile
    import models.rollup
    import models.stripe  # noqa: E401, F401
    import models.turn
    import models.wallet
    from models.turn import PgChar

    with nullcontext(session.connection()) as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                # SQLAlchemy reflects PostgreSQL's "char" as a VARCHAR without length
                "compare_type": lambda _ctx, _ic, _mc, it, mt: (
                    False if isinstance(mt, PgChar) and isinstance(it, String) and it.length is None else None
                ),
                "compare_server_default": True,
                # views (usage_event, migration 0019) are not tables: their columns are read through
                "include_object": lambda obj, _name, kind, _reflected, _other: (
                    not (kind == "table" and obj.info.get("view"))
                ),
            },
        )
        diff = compare_metadata(ctx, SQLModel.metadata)

    def flat(d):
        for x in d:
            yield from (flat(x) if isinstance(x, list) else [x])

    column_changes = [d for d in flat(diff) if d[0].startswith(("modify_", "add_column", "remove_column"))]
    assert column_changes == []
    added = sorted(d[1].name for d in flat(diff) if d[0] == "add_table")
    assert added == []
    with nullcontext(session.connection()) as conn:
        enum_types = conn.execute(text("SELECT count(*) FROM pg_type WHERE typtype = 'e'")).scalar_one()
    assert enum_types == 0


def test_action_meter_and_dead_letter_status_read_back_as_enums(db):
    """``usage_event.action`` and ``.meter`` and ``dead_letter.status`` hold closed sets: written as
    their plain values (as the drain writes them), they read back as ``DecisionAction``, ``Meter`` and
    ``DeadLetterStatus`` members, and a query binds a member or its value the same."""
    from models.enums import DeadLetterStatus, DecisionAction, Meter
    from models.turn import DeadLetter

    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_event (turn_id, outbox_id, wallet_id, enterprise_id, chat_id, workflow, agent, model,"
                " provider, mode, meter, quantity, prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms,"
                " input_nanos_per_mtok, cached_input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos, billed_nanos,"
                " action, occurred_at) VALUES ('t1', '0:1-0', 'w1', 'e1', 'c1', 'wf', 'a', 'emails', 'tollgate',"
                " 'production', 'emails', 3, 0, 0, 0, 0, 0, 0, 0, 300000, 300000, 'pause', :t),"
                " ('t2', '0:2-0', 'w1', 'e1', 'c1', 'wf', 'a', 'gpt-4o', 'openai', 'production', DEFAULT, DEFAULT,"
                " 10, 5, 0, 1, 2500000000, 1250000000, 10000000000, 75000, 75000, 'continue', :t)"
            ),
            {"t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO dead_letter (outbox_id, shard, billed_nanos, charged, error, error_class, fields_json,"
                " status) VALUES ('0:3-0', 0, 0, false, '', '', '{}', 'discarded')"
            )
        )
    with Session(db) as s:
        rows = s.execute(select(UsageEvent).order_by(UsageEvent.turn_id)).scalars().all()
        got = [(r.turn_id, r.meter, r.action) for r in rows]
        assert got == [("t1", Meter.emails, DecisionAction.pause), ("t2", Meter.llm, DecisionAction.continue_)]
        assert [(type(m), type(a)) for _, m, a in got] == [(Meter, DecisionAction)] * 2
        dead = s.execute(select(DeadLetter)).scalar_one()
        assert (dead.status, type(dead.status)) == (DeadLetterStatus.discarded, DeadLetterStatus)
        for value in (Meter.emails, "emails"):
            assert s.execute(select(UsageEvent.turn_id).where(UsageEvent.meter == value)).scalars().all() == ["t1"]
        for value in (DecisionAction.continue_, "continue"):
            assert s.execute(select(UsageEvent.turn_id).where(UsageEvent.action == value)).scalars().all() == ["t2"]
        assert s.execute(
            select(DeadLetter.outbox_id).where(DeadLetter.status == DeadLetterStatus.discarded)
        ).scalars().all() == ["0:3-0"]
