"""Two levels of payer, the four billing modes and the paused-chat lifecycle, against real Redis and
PostgreSQL: revenue share and platform fee sum to every charge, development turns are persisted
and never debited, the trial allowance is counted once, track_only apps pay a flat fee once a
month, a mode change never loses or re-bills a turn, and a credit resumes exactly the paused
chats of its wallet, once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.enums import PayerLevel
from models.turn import TurnIn
from tests.committed import open_wallet
from worker import (
    OutboxDrain,  # wired: announces chat.paused / chat.resumable
    credit_wallet,  # wired: resumes paused chats, announces wallet.credited
    pause_chat,  # the public API: its own transaction
)
from worker.billing.modes import (
    FLAT_FEE_PREFIX,
    ModeError,
    charge_flat_fees,
    configure_app,
    set_app_mode,
    set_wallet_mode,
)
from worker.billing.payers import split_charge, wallet_id_for
from worker.chats.lifecycle import can_continue, wallet_state
from worker.chats.wiring import resume_wallet_chats
from worker.db import session_scope
from worker.events import channel
from worker.ledger.accounts import ensure_enterprise, ledger_balance

pytestmark = pytest.mark.integration
WHEN = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _turn(
    turn_id: str,
    wallet_id: str,
    enterprise_id: str = "acme",
    chat_id: str = "c1",
    prompt: int = 1000,
    completion: int = 100,
    occurred_at: datetime = WHEN,
    **kw,
) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id=enterprise_id,
        chat_id=chat_id,
        model="gpt-4o",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=completion,
        occurred_at=occurred_at,
        **kw,
    )


def _cost(gate, prompt: int = 1000, completion: int = 100) -> int:
    return gate.prices.price(
        model="gpt-4o", provider="openai", when=WHEN, prompt_tokens=prompt, completion_tokens=completion
    ).cost_nanos


def _drain(redis_client, settings):
    return OutboxDrain(redis_client, settings=settings).drain(max_seconds=30)


def _rows(db, sql: str, **params):
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def _app(enterprise_id: str, **columns) -> None:
    with session_scope() as s:
        ensure_enterprise(s, enterprise_id)
        if columns:
            sets = ", ".join(f"{k} = :{k}" for k in columns)
            s.execute(text(f"UPDATE enterprise SET {sets} WHERE id = :id"), {"id": enterprise_id, **columns})


class Events:
    """Pub/sub listener on one app's channel."""

    END = "__end__"

    def __init__(self, redis_client, enterprise_id: str) -> None:
        self.redis, self.channel = redis_client, channel(enterprise_id)
        self.sub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe(self.channel)
        self.sub.get_message(timeout=1)

    def take(self, type_: str) -> list[dict]:
        self.redis.publish(self.channel, self.END)
        out = []
        while (m := self.sub.get_message(timeout=5)) is not None and m["data"] != self.END:
            event = json.loads(m["data"])
            if event["type"] == type_:
                out.append(event)
        assert m is not None
        return out


# --- two levels of payer ---------------------------------------------------------------------------


def test_wallet_resolution_names_the_level_and_refuses_bad_ids():
    assert wallet_id_for("platform", enterprise_id="acme", payer_id="creator-7") == "plat:creator-7"
    assert wallet_id_for("app_usage", enterprise_id="acme", payer_id="u1") == "app:acme:u1"
    with pytest.raises(ValueError, match="level"):
        wallet_id_for("reseller", enterprise_id="acme", payer_id="u1")
    with pytest.raises(ValueError, match="enterprise_id"):
        wallet_id_for("app_usage", enterprise_id=None, payer_id="u1")
    with pytest.raises(ValueError, match="payer_id"):
        wallet_id_for("app_usage", enterprise_id="acme", payer_id="a b")
    assert split_charge(1_000_001, 7000) == (700_000, 300_001)


def test_revenue_share_and_platform_fee_sum_to_every_charge(db, gate, redis_client, settings):
    _app("acme")  # default share: 70 %
    _app("globex", creator_share_bps=8333)
    creator = wallet_id_for("platform", enterprise_id=None, payer_id="creator-1")
    acme_user = wallet_id_for("app_usage", enterprise_id="acme", payer_id="u1")
    globex_user = wallet_id_for("app_usage", enterprise_id="globex", payer_id="u2")
    open_wallet(gate, wallet_id=creator, enterprise_id=None, owner_id="creator-1", level=PayerLevel.platform)
    open_wallet(gate, wallet_id=acme_user, enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id=globex_user, enterprise_id="globex", owner_id="u2")
    for w in (creator, acme_user, globex_user):
        credit_wallet(gate, wallet_id=w, amount_nanos=10**12, idempotency_key=f"seed-{w}")
    turns = []
    for i in range(40):  # odd token counts: costs that do not divide evenly
        turns.append(
            _turn(
                f"p{i}",
                creator,
                "acme",
                f"build-{i % 3}",
                prompt=997 + 13 * i,
                completion=31 + i,
                workflow="app_generation",
            )
        )
        turns.append(_turn(f"a{i}", acme_user, "acme", f"chat-{i % 4}", prompt=1001 + 7 * i, completion=17 + i))
        turns.append(_turn(f"g{i}", globex_user, "globex", f"chat-{i % 2}", prompt=333 + 11 * i, completion=3 + i))
    decisions = gate.record_turns(turns)
    assert all(d.accepted for d in decisions)
    assert _drain(redis_client, settings).inserted == 120
    rows = _rows(
        db,
        "SELECT turn_id, level, billing_target, billed_nanos, creator_share_nanos, platform_fee_nanos "
        "FROM usage_event ORDER BY turn_id",
    )
    by_id = {d.turn_id: d.billed_nanos for d in decisions}
    for turn_id, level, target, billed, share, fee in rows:
        assert billed == by_id[turn_id] > 0
        assert share + fee == billed
        if turn_id.startswith("p"):
            assert (level, target, share) == ("platform", "platform", 0)
        elif turn_id.startswith("a"):
            assert (level, target, share) == ("app_usage", "acme", billed * 7000 // 10_000)
        else:
            assert (level, target, share) == ("app_usage", "globex", billed * 8333 // 10_000)
    # per app: the totals split exactly too
    totals = _rows(
        db,
        "SELECT billing_target, sum(billed_nanos), sum(creator_share_nanos), sum(platform_fee_nanos) "
        "FROM usage_event GROUP BY 1 ORDER BY 1",
    )
    for _target, billed, share, fee in totals:
        assert share + fee == billed
    # the share configured later applies to later charges only
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", creator_share_bps=5000)
    gate.record_turn(_turn("a-late", acme_user, "acme", prompt=1001, completion=17))
    _drain(redis_client, settings)
    ((billed, share),) = _rows(db, "SELECT billed_nanos, creator_share_nanos FROM usage_event WHERE turn_id = 'a-late'")
    assert share == billed * 5000 // 10_000
    ((old_share,),) = _rows(db, "SELECT creator_share_nanos FROM usage_event WHERE turn_id = 'a0'")
    assert old_share == by_id["a0"] * 7000 // 10_000


# --- modes ------------------------------------------------------------------------------------------


def test_development_turns_are_persisted_but_never_debited_nor_billed(db, gate, redis_client, settings):
    _app("acme", default_mode="development")
    w = open_wallet(gate, wallet_id="dev-1", enterprise_id="acme", owner_id="u1")
    assert w.mode == "development" and w.mode_override is False
    gate.set_blocked("dev-1", "budget_exceeded")  # development is never blocked either
    decisions = gate.record_turns([_turn(f"d{i}", "dev-1", chat_id=f"c{i % 2}") for i in range(25)])
    assert [(d.accepted, d.billed_nanos, d.action) for d in decisions] == [(True, 0, "continue")] * 25
    assert _drain(redis_client, settings).inserted == 25
    assert _rows(
        db,
        "SELECT count(*), sum(cost_nanos), sum(billed_nanos), bool_or(billable), "
        "sum(creator_share_nanos + platform_fee_nanos) FROM usage_event",
    ) == [(25, 25 * _cost(gate), 0, False, 0)]
    assert _rows(db, "SELECT debits_nanos FROM wallet WHERE id = 'dev-1'") == [(0,)]
    assert gate.balance("dev-1") == 0
    assert _rows(db, "SELECT sum(amount_nanos) FROM wallet_transaction WHERE kind = 'debit'") == [(0,)]


def test_trial_allowance_is_counted_once_then_pauses(db, gate, redis_client, settings):
    _app("acme", default_mode="trial", trial_token_allowance=5000, trial_then="pause")
    open_wallet(gate, wallet_id="t-1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="t-1", amount_nanos=10**10, idempotency_key="seed")
    turns = [_turn(f"t{i}", "t-1") for i in range(7)]  # 1,100 tokens each
    first = gate.record_turns(turns)
    # 4 free turns leave 600 tokens; the 5th is free too and crosses zero (pause); then denied
    assert [(d.accepted, d.billed_nanos, d.action) for d in first] == (
        [(True, 0, "continue")] * 4 + [(True, 0, "pause")] + [(False, 0, "pause")] * 2
    )
    again = gate.record_turns(turns)  # retries: the first answers, nothing counted twice
    assert [(d.accepted, d.action, d.duplicate) for d in again] == [(d.accepted, d.action, True) for d in first]
    assert redis_client.hget(gate.wallet_key("t-1"), "trial_left") == str(5000 - 5 * 1100)
    _drain(redis_client, settings)
    _drain(redis_client, settings)  # a second drain finds nothing: still counted once
    assert _rows(db, "SELECT trial_tokens_used, debits_nanos FROM wallet WHERE id = 't-1'") == [(5500, 0)]
    assert _rows(db, "SELECT count(*), sum(trial_tokens), bool_or(billable), sum(billed_nanos) FROM usage_event") == [
        (5, 5500, False, 0)
    ]
    assert _rows(db, "SELECT reason, needed_nanos FROM paused_chat WHERE resumed_at IS NULL") == [
        ("trial_exhausted", 0)
    ]
    assert not can_continue(gate, "t-1")
    # a credit cannot lift a trial that pauses; the app moving its trial to 'bill' does
    credit_wallet(gate, wallet_id="t-1", amount_nanos=1000, idempotency_key="more")
    assert _rows(db, "SELECT count(*) FROM paused_chat WHERE resumed_at IS NULL") == [(1,)]
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", trial_then="bill")
    assert resume_wallet_chats(gate, "t-1", cause="trial_then_bill") == [("acme", "c1")]
    billed = gate.record_turn(_turn("t-after", "t-1"))
    assert (billed.accepted, billed.billed_nanos) == (True, _cost(gate))
    # a rebuilt gate gets the allowance left from PostgreSQL
    _drain(redis_client, settings)
    assert wallet_state(gate, "t-1").trial_left == -500


def test_track_only_is_never_blocked_and_pays_a_flat_fee_once_a_month(db, gate, redis_client, settings):
    _app("selfhost", default_mode="track_only")
    open_wallet(
        gate, wallet_id="fees", enterprise_id=None, owner_id="creator-9", level=PayerLevel.platform, mode="production"
    )
    credit_wallet(gate, wallet_id="fees", amount_nanos=500_000_000, idempotency_key="seed")
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "selfhost", flat_fee_nanos=49_000_000_000 // 100, fee_wallet_id="fees")  # $0.49
    open_wallet(gate, wallet_id="sh-user", enterprise_id="selfhost", owner_id="u1")
    gate.set_blocked("sh-user", "payment_failed")
    decisions = gate.record_turns([_turn(f"s{i}", "sh-user", "selfhost") for i in range(10)])
    assert {(d.accepted, d.billed_nanos, d.action) for d in decisions} == {(True, 0, "continue")}
    _drain(redis_client, settings)
    assert _rows(db, "SELECT count(*), sum(billed_nanos), bool_or(billable), min(mode) FROM usage_event") == [
        (10, 0, False, "track_only")
    ]
    with session_scope() as s:  # the entry point's transaction
        first = charge_flat_fees(s, gate, period="2026-11")
    with session_scope() as s:  # the entry point's transaction
        second = charge_flat_fees(s, gate, period="2026-11")
    assert first.charged == [("selfhost", "fees", 490_000_000)] and second.charged == []
    assert gate.balance("fees") == 10_000_000
    with session_scope() as s:
        assert ledger_balance(s, "fees") == 10_000_000
    assert _rows(db, "SELECT idempotency_key FROM wallet_transaction WHERE kind = 'debit' AND amount_nanos > 0") == [
        (f"{FLAT_FEE_PREFIX}selfhost:2026-11",)
    ]
    with pytest.raises(ModeError, match="period"):
        with session_scope() as s:  # the entry point's transaction
            charge_flat_fees(s, gate, period="2026-13")


def test_allowance_reset_and_the_beat_task_charge_the_flat_fee_on_one_code_path(db, gate):
    """`tollgate allowance reset` is documented as what beat does: it charges track_only apps' flat fee
    too (issue 17), once per period whichever of the two runs first."""
    from typer.testing import CliRunner

    from tasks.billing import monthly_reset
    from worker.cli import app

    _app("selfhost", default_mode="track_only")
    open_wallet(
        gate, wallet_id="fees", enterprise_id=None, owner_id="creator-9", level=PayerLevel.platform, mode="production"
    )
    credit_wallet(gate, wallet_id="fees", amount_nanos=500_000_000, idempotency_key="seed")
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "selfhost", flat_fee_nanos=490_000_000, fee_wallet_id="fees")
    done = CliRunner().invoke(app, ["allowance", "reset", "--period", "2026-11", "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout.splitlines()[-1])
    assert data["flat_fees"]["charged"] == [["selfhost", "fees", 490_000_000]]
    assert data["flat_fees"]["charged_nanos"] == 490_000_000
    assert gate.balance("fees") == 10_000_000
    again = monthly_reset.apply(kwargs={"period": "2026-11"}).result
    assert (again["flat_fees"], again["flat_fees_nanos"]) == (0, 0)
    with session_scope() as s:
        assert ledger_balance(s, "fees") == 10_000_000
    done = CliRunner().invoke(app, ["allowance", "reset", "--period", "2026-11"])
    assert done.exit_code == 0 and "0 flat fee(s) of 0.000000000 USD" in done.stdout, done.output


def test_a_mode_change_never_loses_or_rebills_a_turn(db, gate, redis_client, settings):
    _app("acme")
    open_wallet(gate, wallet_id="m-1", enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id="m-own", enterprise_id="acme", owner_id="u2", mode="production")
    credit_wallet(gate, wallet_id="m-1", amount_nanos=10**10, idempotency_key="seed")
    cost = _cost(gate)
    prod = gate.record_turns([_turn(f"m{i}", "m-1") for i in range(3)])
    assert [d.billed_nanos for d in prod] == [cost] * 3
    with session_scope() as s:  # the entry point's transaction
        assert set_app_mode(s, gate, "acme", "development", resume=resume_wallet_chats) == [
            "m-1"
        ]  # the overriding wallet keeps its mode
    assert _rows(db, "SELECT id, mode, mode_override FROM wallet ORDER BY id") == [
        ("m-1", "development", False),
        ("m-own", "production", True),
    ]
    retried = gate.record_turns([_turn(f"m{i}", "m-1") for i in range(3)])
    assert [(d.billed_nanos, d.duplicate) for d in retried] == [(cost, True)] * 3
    dev = gate.record_turn(_turn("m3", "m-1"))
    assert (dev.accepted, dev.billed_nanos) == (True, 0)
    with session_scope() as s:  # the entry point's transaction
        set_app_mode(s, gate, "acme", "production", resume=resume_wallet_chats)
    assert gate.record_turn(_turn("m3", "m-1")).billed_nanos == 0  # decided in development: stays free
    assert gate.record_turn(_turn("m4", "m-1")).billed_nanos == cost
    with session_scope() as s:  # the entry point's transaction
        assert set_wallet_mode(s, gate, "m-own", None, resume=resume_wallet_chats) == "production"
    _drain(redis_client, settings)
    assert _rows(db, "SELECT turn_id, mode, billed_nanos FROM usage_event ORDER BY turn_id") == [
        ("m0", "production", cost),
        ("m1", "production", cost),
        ("m2", "production", cost),
        ("m3", "development", 0),
        ("m4", "production", cost),
    ]
    assert gate.balance("m-1") == 10**10 - 4 * cost
    with session_scope() as s:
        assert ledger_balance(s, "m-1") == 10**10 - 4 * cost
    assert _rows(
        db, "SELECT action, detail->>'from', detail->>'to' FROM audit_log WHERE action = 'mode_change' ORDER BY id"
    ) == [
        ("mode_change", "production", "development"),
        ("mode_change", "development", "production"),
        ("mode_change", "production", "production"),
    ]
    with pytest.raises(ModeError, match="mode"):
        with session_scope() as s:  # the entry point's transaction
            set_app_mode(s, gate, "acme", "free", resume=resume_wallet_chats)


# --- pause and resume -------------------------------------------------------------------------------


def test_a_credit_resumes_exactly_the_paused_chats_of_its_wallet_once(db, gate, redis_client, settings):
    _app("acme", callback_url="http://127.0.0.1:9/hook", webhook_secret="whsec_test")
    open_wallet(gate, wallet_id="poor", enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id="other", enterprise_id="acme", owner_id="u2")
    cost = _cost(gate)
    credit_wallet(gate, wallet_id="poor", amount_nanos=2 * cost + 1, idempotency_key="seed-poor")
    credit_wallet(gate, wallet_id="other", amount_nanos=1, idempotency_key="seed-other")
    events = Events(redis_client, "acme")
    # chats c1 and c2 exhaust "poor" (the 3rd turn overdraws and pauses); c9 exhausts "other"
    decisions = gate.record_turns(
        [
            _turn("x1", "poor", chat_id="c1"),
            _turn("x2", "poor", chat_id="c2"),
            _turn("x3", "poor", chat_id="c1"),
            _turn("x4", "poor", chat_id="c2"),
            _turn("y1", "other", chat_id="c9"),
        ]
    )
    assert [(d.accepted, d.action) for d in decisions] == [
        (True, "continue"),
        (True, "continue"),
        (True, "pause"),
        (False, "pause"),
        (True, "pause"),
    ]
    _drain(redis_client, settings)
    # the denied turn of c2 never reached the outbox: the orchestrator reports it (handle exhaustion)
    assert pause_chat(gate, enterprise_id="acme", chat_id="c2", wallet_id="poor") is True
    assert pause_chat(gate, enterprise_id="acme", chat_id="c2", wallet_id="poor") is False
    paused = events.take("chat.paused")
    assert sorted(e["data"]["chat_id"] for e in paused) == ["c1", "c2", "c9"]
    assert _rows(db, "SELECT chat_id, wallet_id, reason, needed_nanos FROM paused_chat ORDER BY chat_id") == [
        # balance after: 1 − cost; one more nano than that deficit lets the next turn in
        ("c1", "poor", "wallet_exhausted", cost),
        ("c2", "poor", "wallet_exhausted", cost),
        ("c9", "other", "wallet_exhausted", cost),
    ]
    assert _rows(db, "SELECT chat_id, status, connection_state, can_resume FROM chat_session ORDER BY chat_id") == [
        ("c1", "paused", "paused", False),
        ("c2", "paused", "paused", False),
        ("c9", "paused", "paused", False),
    ]
    # too small a credit resumes nothing
    credit_wallet(gate, wallet_id="poor", amount_nanos=cost - 1, idempotency_key="too-small")
    assert events.take("chat.resumable") == []
    # a top-up, delivered twice (a replayed webhook): the two chats of "poor" resume, once
    for _ in range(2):
        credit_wallet(gate, wallet_id="poor", amount_nanos=5 * cost, idempotency_key="stripe:cs_123", system_key=True)
    resumed = events.take("chat.resumable")
    assert sorted((e["data"]["chat_id"], e["data"]["wallet_id"], e["data"]["cause"]) for e in resumed) == [
        ("c1", "poor", "stripe:cs_123"),
        ("c2", "poor", "stripe:cs_123"),
    ]
    assert _rows(db, "SELECT chat_id, resumed_by FROM paused_chat ORDER BY chat_id") == [
        ("c1", "stripe:cs_123"),
        ("c2", "stripe:cs_123"),
        ("c9", None),
    ]
    assert _rows(db, "SELECT chat_id, connection_state, can_resume FROM chat_session ORDER BY chat_id") == [
        ("c1", "resumable", True),
        ("c2", "resumable", True),
        ("c9", "paused", False),
    ]
    assert gate.balance("poor") == 2 * cost + 1 - 3 * cost + cost - 1 + 5 * cost
    # the webhook side: resumes of an app with a callback are queued for signed delivery
    sent = []
    open_wallet(gate, wallet_id="third", enterprise_id="acme", owner_id="u3")
    pause_chat(gate, enterprise_id="acme", chat_id="c7", wallet_id="third", send_task=lambda *a, **k: sent.append(k))
    credit_wallet(gate, wallet_id="third", amount_nanos=10, idempotency_key="t-1")  # resumed here (no capture)
    assert resume_wallet_chats(gate, "third", cause="again", send_task=lambda *a, **k: sent.append(k)) == []
    assert [json.loads(k["kwargs"]["body"])["type"] for k in sent] == ["chat.paused"]
    # the chat goes on: its next turn closes nothing more and marks it connected
    gate.record_turn(_turn("x5", "poor", chat_id="c1"))
    _drain(redis_client, settings)
    assert _rows(db, "SELECT status, connection_state, can_resume FROM chat_session WHERE chat_id = 'c1'") == [
        ("active", "connected", False)
    ]


def test_concurrent_mode_changes_leave_redis_on_the_committed_mode(db, gate, race):
    """Changes race: whichever commits last, Redis ends on PostgreSQL's mode (each push re-reads
    the mode under the wallet's advisory lock)."""
    _app("acme")
    open_wallet(gate, wallet_id="race", enterprise_id="acme", owner_id="u1")

    def flip(modes):
        for m in modes:
            with session_scope() as s:  # the entry point's transaction
                set_wallet_mode(s, gate, "race", m, resume=resume_wallet_chats)

    race(
        lambda: flip(["development", "production"] * 15),
        lambda: flip(["trial", "track_only", "production", "development"] * 8),
        timeout=120,
    )  # fails on an exception
    with db.connect() as conn:
        committed = conn.execute(text("SELECT mode FROM wallet WHERE id = 'race'")).scalar_one()
    assert gate.redis.hget(gate.wallet_key("race"), "mode") == committed


def test_app_settings_never_create_a_wallet_the_gate_lost(db, gate, redis_client):
    """After Redis lost a wallet (before a rebuild), changing the app's settings must not leave a
    partial hash that would look like a wallet, or hide the wallet from the rebuild."""
    from worker.ledger.reconcile import reconcile

    _app("acme")
    open_wallet(gate, wallet_id="lost", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="lost", amount_nanos=5_000, idempotency_key="seed")
    redis_client.delete(gate.wallet_key("lost"))
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", creator_share_bps=6000, trial_token_allowance=100)
    with session_scope() as s:  # the entry point's transaction
        set_app_mode(s, gate, "acme", "development", resume=resume_wallet_chats)
    assert redis_client.exists(gate.wallet_key("lost")) == 0
    reconcile(gate, rebuild=True)
    assert (
        gate.balance("lost"),
        redis_client.hget(gate.wallet_key("lost"), "mode"),
        redis_client.hget(gate.wallet_key("lost"), "share_bps"),
    ) == (5_000, "development", "6000")


def test_a_late_turn_never_shrinks_the_rollup_of_a_month_past_retention(db, gate, redis_client, settings, monkeypatch):
    from worker.chats.rollups import get_rollup, refresh_rollup

    _app("acme")
    open_wallet(gate, wallet_id="old", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="old", amount_nanos=10**12, idempotency_key="seed")
    march = datetime(2026, 3, 5, tzinfo=UTC)
    gate.record_turns([_turn(f"o{i}", "old", occurred_at=march) for i in range(3)])
    _drain(redis_client, settings)
    with session_scope() as s:
        assert refresh_rollup(s, "acme", "default", "2026-03").total_turns == 3
    with db.begin() as conn:  # retention dropped March's events
        conn.execute(text("DELETE FROM usage_event"))
    monkeypatch.setattr(settings, "usage_retention_months", 3)
    gate.record_turn(_turn("late", "old", occurred_at=march))  # a late turn for March
    _drain(redis_client, settings)
    with session_scope() as s:
        assert refresh_rollup(s, "acme", "default", "2026-03").total_turns == 3
        assert get_rollup(s, "acme", "default", "2026-03").cost_nanos == 3 * _cost(gate)


def test_a_batch_drained_after_a_newer_one_does_not_undo_the_pause(db, gate, redis_client, settings):
    """Two drains of one shard at once can commit an older batch after a newer one: the chat's
    state stays the newest turn's (paused), and its paused record stays open."""
    from worker.gate.keys import outbox_key
    from worker.gate.outbox import parse_entry
    from worker.ledger.turns import persist_turns

    _app("acme")
    open_wallet(gate, wallet_id="oo", enterprise_id="acme", owner_id="u1")
    cost = _cost(gate)
    credit_wallet(gate, wallet_id="oo", amount_nanos=3 * cost - 1, idempotency_key="seed")
    start = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    decisions = gate.record_turns([_turn(f"oo{i}", "oo", occurred_at=start + timedelta(seconds=i)) for i in range(3)])
    assert [d.action for d in decisions] == ["continue", "continue", "pause"]
    shard = gate.shard("oo")
    rows = [parse_entry(fields, f"{shard}:{eid}") for eid, fields in redis_client.xrange(outbox_key(shard))]
    with session_scope() as s:  # the newer batch commits first
        assert persist_turns(s, rows[2:]).paused
    with session_scope() as s:
        assert persist_turns(s, rows[:2]).paused == ()
    assert _rows(db, "SELECT status, connection_state, turns, last_turn_at FROM chat_session") == [
        ("paused", "paused", 3, start + timedelta(seconds=2))
    ]
    assert _rows(db, "SELECT chat_id, resumed_at FROM paused_chat") == [("c1", None)]


def test_a_rebuild_counts_the_trial_tokens_of_turns_still_queued(db, gate, redis_client, settings):
    """Redis loses a trial wallet while its outbox survives, part of it persisted: the rebuilt
    wallet's trial tokens left = allowance − used (PostgreSQL) − what the queued turns took, so a
    queued turn's tokens are not granted again (before this, 3 turns' 3,300 tokens were)."""
    from worker.ledger.reconcile import reconcile

    _app("acme", default_mode="trial", trial_token_allowance=10_000, trial_then="bill")
    open_wallet(gate, wallet_id="t-2", enterprise_id="acme", owner_id="u2")
    credit_wallet(gate, wallet_id="t-2", amount_nanos=10**10, idempotency_key="seed")
    gate.record_turns([_turn(f"a{i}", "t-2") for i in range(4)])  # 4 × 1,100 tokens, persisted
    assert _drain(redis_client, settings).inserted == 4
    gate.record_turns([_turn(f"b{i}", "t-2") for i in range(3)])  # 3 × 1,100 tokens, still queued
    before = redis_client.hgetall(gate.wallet_key("t-2"))
    assert before["trial_left"] == str(10_000 - 7 * 1100)
    redis_client.delete(gate.wallet_key("t-2"))
    assert reconcile(gate, rebuild=True).wallets_drifted == 0
    after = redis_client.hgetall(gate.wallet_key("t-2"))
    assert (after["trial_left"], after["balance"], after["mode"]) == (before["trial_left"], str(10**10), "trial")
    # and the next turns see the same allowance: 2,300 tokens left, then it bills
    decisions = gate.record_turns([_turn(f"c{i}", "t-2") for i in range(4)])
    assert [d.billed_nanos for d in decisions] == [0, 0, 0, _cost(gate)]
    assert _drain(redis_client, settings).inserted == 7
    assert _rows(db, "SELECT trial_tokens_used FROM wallet WHERE id = 't-2'") == [(10 * 1100,)]
