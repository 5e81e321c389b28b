"""Records as families (``models/``): one shape per record, shared by the gate, the ledger and the API."""

from __future__ import annotations

import pytest

from models.wallet import ReservationPublic
from tests.unit.test_gate import client, kicked, wg  # noqa: F401  (fixtures)


def test_the_gate_answers_a_reservation_with_the_api_shape(wg):
    """``WalletGate.reserve`` returns the API's ``ReservationPublic`` itself (no dataclass copied
    field by field into it), and its JSON is the body ``POST /v1/wallets/{id}/reservations`` sends."""
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    hold = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(hold) is ReservationPublic
    assert hold.model_dump() == {
        "reservation_id": "r1",
        "wallet_id": "w1",
        "granted": True,
        "amount_nanos": 6_000_000,
        "balance_nanos": 10_000_000,
        "held_nanos": 6_000_000,
        "duplicate": False,
    }
    again = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(again) is ReservationPublic
    assert (again.granted, again.duplicate, again.held_nanos) == (True, True, 6_000_000)


def test_models_check_occurred_at_against_the_window_passed_in():
    """``models.validation`` imports nothing of ours: without the worker it checks against its
    defaults, and the window is whatever the process configured (``worker.settings`` passes its own)."""
    import subprocess
    import sys

    code = """
import sys
from datetime import UTC, datetime, timedelta
from models.validation import DEFAULT_OCCURRED_AT_MIN, configure_occurred_at_window, utc_problem
from models.turn import TurnIn
assert utc_problem(DEFAULT_OCCURRED_AT_MIN) == (datetime(2000, 1, 1, tzinfo=UTC), None)
print(utc_problem(datetime(1999, 12, 31, 23, 59, tzinfo=UTC))[1])
configure_occurred_at_window(lambda: (datetime(2026, 1, 1, tzinfo=UTC), 0))
try:
    TurnIn(turn_id="t", wallet_id="w", enterprise_id="e", chat_id="c", model="m", prompt_tokens=1,
           completion_tokens=1, occurred_at=datetime(2025, 12, 31, tzinfo=UTC))
except ValueError as exc:
    print(exc.errors()[0]["loc"])
print(sorted(m for m in sys.modules if m == "worker" or m.startswith(("worker.", "tasks", "api_stub"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "1999-12-31T23:59:00+00:00 is before 2000-01-01T00:00:00+00:00",
        "('occurred_at',)",
        "[]",
    ]


def test_worker_settings_give_models_their_window(monkeypatch):
    from datetime import UTC, datetime, timedelta

    from models.validation import occurred_at_window
    from worker.settings import get_settings
    from worker.validation import InvalidInput, check_occurred_at

    monkeypatch.setattr(get_settings(), "occurred_at_min", datetime(2020, 6, 1, tzinfo=UTC))
    monkeypatch.setattr(get_settings(), "occurred_at_max_ahead_s", 60)
    earliest, latest = occurred_at_window()
    assert earliest == datetime(2020, 6, 1, tzinfo=UTC)
    assert timedelta(seconds=59) < latest - datetime.now(UTC) <= timedelta(seconds=60)
    with pytest.raises(InvalidInput, match="^occurred_at: 2020-05-31T23:59:59"):
        check_occurred_at(datetime(2020, 5, 31, 23, 59, 59, tzinfo=UTC))
    assert check_occurred_at(datetime(2020, 6, 1, tzinfo=UTC)) == datetime(2020, 6, 1, tzinfo=UTC)


def test_worker_validation_alone_checks_against_the_configured_window():
    """``worker.validation.check_occurred_at`` in a process that imports nothing else of ours uses
    the window of that process's settings (``TOLLGATE_OCCURRED_AT_MIN``), not the models' default."""
    import os
    import subprocess
    import sys

    code = """
from datetime import UTC, datetime
from worker.validation import InvalidInput, check_occurred_at
assert check_occurred_at(datetime(2020, 6, 1, tzinfo=UTC)) == datetime(2020, 6, 1, tzinfo=UTC)
try:
    check_occurred_at(datetime(2020, 5, 31, 23, 59, 59, tzinfo=UTC))
except InvalidInput as exc:
    print(exc.field, exc.message)
"""
    env = {**os.environ, "TOLLGATE_OCCURRED_AT_MIN": "2020-06-01T00:00:00Z"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.splitlines() == ["occurred_at 2020-05-31T23:59:59+00:00 is before 2020-06-01T00:00:00+00:00"]


def test_public_shapes_are_built_from_their_rows_with_the_fields_they_share():
    """``XPublic`` derives from ``XBase`` like the table: a row validates into it with no field list
    repeated, and the JSON keeps the API's keys in the API's order."""
    from datetime import UTC, datetime

    from models.enums import TransactionKind
    from models.rollup import WorkflowRollup, WorkflowRollupBase, WorkflowRollupPublic
    from models.wallet import WalletTransaction, WalletTransactionBase, WalletTransactionPublic

    at = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    assert issubclass(WalletTransaction, WalletTransactionBase) and issubclass(
        WalletTransactionPublic, WalletTransactionBase
    )
    row = WalletTransaction(
        id=7,
        wallet_id="w1",
        kind=TransactionKind.debit,
        amount_nanos=4_500_000,
        turns=3,
        idempotency_key="drain:0:1-0",
        created_at=at,
    )
    assert WalletTransactionPublic.model_validate(row).model_dump_json() == (
        '{"id":7,"kind":"debit","amount_nanos":4500000,"turns":3,"idempotency_key":"drain:0:1-0",'
        '"description":"","created_at":"2026-11-03T12:00:00Z"}'
    )
    assert issubclass(WorkflowRollup, WorkflowRollupBase) and issubclass(WorkflowRollupPublic, WorkflowRollupBase)
    rollup = WorkflowRollup(
        enterprise_id="e1",
        workflow="wf",
        period="2026-11",
        document={"chats": ["c1"]},
        total_sessions=2,
        total_turns=5,
        prompt_tokens=1000,
        completion_tokens=200,
        cached_prompt_tokens=100,
        cost_nanos=4_500_000,
        refreshed_at=at,
    )
    assert WorkflowRollupPublic.model_validate(rollup, update={"document": None}).model_dump_json() == (
        '{"enterprise_id":"e1","workflow":"wf","period":"2026-11","total_sessions":2,"total_turns":5,'
        '"prompt_tokens":1000,"completion_tokens":200,"cached_prompt_tokens":100,"cost_nanos":4500000,'
        '"refreshed_at":"2026-11-03T12:00:00Z","document":null}'
    )
    assert WorkflowRollupPublic.model_validate(rollup).document == {"chats": ["c1"]}


def test_turn_wallet_and_chat_families_share_their_fields_and_keep_the_api_json():
    """``UsageEvent``, ``Wallet``, ``ChatSession`` and ``ChatAgentUsage`` are families like the others
    (table and ``XPublic`` both derive from ``XBase``), and their API shapes answer the same JSON as
    before the split: the same keys, in the same order (``GET /v1/usage``'s CSV columns follow it);
    a chat's agents list their shared figures first."""
    from datetime import UTC, datetime

    from models.chat import (
        ChatAgentUsage,
        ChatAgentUsageBase,
        ChatAgentUsagePublic,
        ChatSession,
        ChatSessionBase,
        ChatSessionPublic,
    )
    from models.turn import UsageEvent, UsageEventBase, UsageEventPublic
    from models.wallet import Wallet, WalletBase, WalletPublic

    for table, base, public in (
        (UsageEvent, UsageEventBase, UsageEventPublic),
        (Wallet, WalletBase, WalletPublic),
        (ChatSession, ChatSessionBase, ChatSessionPublic),
        (ChatAgentUsage, ChatAgentUsageBase, ChatAgentUsagePublic),
    ):
        assert issubclass(table, base) and issubclass(public, base) and not issubclass(public, table)
    at = datetime(2026, 11, 3, 12, 0, 0, 123456, tzinfo=UTC)
    row = UsageEvent(
        id=9,
        turn_id="t1",
        outbox_id="0:1-0",
        occurred_at=at,
        enterprise_id="e1",
        wallet_id="w1",
        chat_id="c1",
        workflow="wf",
        agent="a",
        model="gpt-4o",
        provider="openai",
        mode="trial",
        prompt_tokens=1000,
        completion_tokens=200,
        cached_prompt_tokens=0,
        duration_ms=5,
        input_nanos_per_mtok=2_500_000_000,
        cached_input_nanos_per_mtok=1_250_000_000,
        output_nanos_per_mtok=10_000_000_000,
        cost_nanos=4_500_000,
        billed_nanos=0,
        action="continue",
    )
    assert UsageEventPublic.model_validate(row).model_dump_json() == (
        '{"id":9,"turn_id":"t1","occurred_at":"2026-11-03T12:00:00.123456Z","enterprise_id":"e1",'
        '"wallet_id":"w1","chat_id":"c1","workflow":"wf","agent":"a","model":"gpt-4o","provider":"openai",'
        '"mode":"trial","prompt_tokens":1000,"completion_tokens":200,"cached_prompt_tokens":0,"duration_ms":5,'
        '"input_nanos_per_mtok":2500000000,"cached_input_nanos_per_mtok":1250000000,'
        '"output_nanos_per_mtok":10000000000,"cost_nanos":4500000,"billed_nanos":0,"action":"continue"}'
    )
    wallet = WalletPublic(
        wallet_id="w1",
        enterprise_id="e1",
        level="app_usage",
        mode="production",
        limited=True,
        gate_balance_nanos=5,
        held_nanos=1,
        can_continue=True,
        ledger_balance_nanos=5,
        credits_nanos=10,
        debits_nanos=5,
    )
    assert wallet.model_dump_json(by_alias=True) == (
        '{"wallet_id":"w1","enterprise_id":"e1","level":"app_usage","mode":"production","limited":true,'
        '"gate_balance_nanos":5,"held_nanos":1,"can_continue":true,"ledger_balance_nanos":5,"credits_nanos":10,'
        '"debits_nanos":5,"debt_nanos":0,"reservations_required":false}'
    )
    agent = {
        "turns": 2,
        "avg_response_ms": 1.5,
        "total_response_ms": 3,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_prompt_tokens": 0,
        "total_tokens": 15,
        "cost_nanos": 7,
        "cost_usd": "0.000000007",
    }
    chat = ChatSessionPublic(
        enterprise_id="e1",
        chat_id="c1",
        wallet_id="w1",
        workflow="wf",
        status="paused",
        connection_state="paused",
        pause_reason="wallet_exhausted",
        can_resume=False,
        started_at="2026-11-03T12:00:00.123456Z",
        ended_at=None,
        last_turn_at="2026-11-03T12:00:00Z",
        turns=2,
        prompt_tokens=10,
        completion_tokens=5,
        cached_prompt_tokens=0,
        total_tokens=15,
        cost_nanos=7,
        cost_usd="0.000000007",
        agents={"a": agent},
    )
    assert chat.model_dump_json() == (
        '{"enterprise_id":"e1","chat_id":"c1","wallet_id":"w1","workflow":"wf","status":"paused",'
        '"connection_state":"paused","pause_reason":"wallet_exhausted","can_resume":false,'
        '"started_at":"2026-11-03T12:00:00.123456Z","ended_at":null,"last_turn_at":"2026-11-03T12:00:00Z",'
        '"turns":2,"prompt_tokens":10,"completion_tokens":5,"cached_prompt_tokens":0,"total_tokens":15,'
        '"cost_nanos":7,"cost_usd":"0.000000007","agents":{"a":{"turns":2,"prompt_tokens":10,"completion_tokens":5,'
        '"cached_prompt_tokens":0,"cost_nanos":7,"avg_response_ms":1.5,"total_response_ms":3,"total_tokens":15,'
        '"cost_usd":"0.000000007"}}}'
    )


def test_stripe_shapes_live_in_their_family_and_refuse_unknown_fields():
    """The Checkout shapes are ``models.stripe``'s (the route imports them): an input refuses unknown
    fields and control characters naming the field."""
    from pydantic import ValidationError

    from api_stub.routes import stripe as route
    from models.stripe import CheckoutCreate, CheckoutPublic, WebhookReceiptPublic

    assert (route.CheckoutCreate, route.CheckoutPublic, route.WebhookReceiptPublic) == (
        CheckoutCreate,
        CheckoutPublic,
        WebhookReceiptPublic,
    )
    ok = {"wallet_id": "w1", "package_id": "p1", "success_url": "https://x/ok", "cancel_url": "https://x/no"}
    assert CheckoutCreate(**ok).package_id == "p1"
    for bad in ({**ok, "extra": 1}, {**ok, "package_id": "p\x001"}, {**ok, "cancel_url": ""}):
        with pytest.raises(ValidationError) as info:
            CheckoutCreate(**bad)
        assert info.value.errors()[0]["loc"] == (next(k for k in bad if bad[k] != ok.get(k)),)


def test_reservation_keys_come_from_the_key_map(wg, client):  # noqa: F811  (fixtures)
    """A reservation's hash and its shard's expiry index are the key map's
    (``keys.reservation_key``, ``keys.reservation_expiry_key``), under the names Redis has always
    stored them by, and the sweep releases what is due through them."""
    from worker.gate.keys import reservation_expiry_key, reservation_key, shard_tag

    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    wg.reserve("w1", 4_000_000, reservation_id="r1", ttl_s=5)
    tag = shard_tag(wg.shard("w1"))
    assert reservation_key(tag, "r1") == f"{tag}:hold:r1" and reservation_expiry_key(tag) == f"{tag}:holds"
    assert client.hget(reservation_key(tag, "r1"), "amount") == "4000000"
    expires_ms = int(client.zscore(reservation_expiry_key(tag), "r1"))
    assert wg.expire_reservations(now_ms=expires_ms - 1) == 0
    assert wg.expire_reservations(now_ms=expires_ms) == 1
    assert not client.exists(reservation_key(tag, "r1"))
    assert client.zscore(reservation_expiry_key(tag), "r1") is None
    assert wg.available("w1") == (10_000_000, 0, "production")


def test_the_session_keyword_types_name_what_their_calls_take():
    """The typed keywords of the billing sessions (``SessionOptions``, ``LlmTurnArgs``,
    ``ResponseTurnArgs``, ``MeterArgs``) are written once for the sync and asyncio twins: the turn
    ones name ``TurnIn`` fields only, the options exactly what a session is made from."""
    import inspect

    from models.turn import TurnIn
    from worker.client import LlmTurnArgs, MeterArgs, ResponseTurnArgs, SessionOptions
    from worker.client.session import _Core

    def keys(t):
        return t.__required_keys__ | t.__optional_keys__

    assert LlmTurnArgs.__required_keys__ == {"agent", "model", "prompt_tokens", "completion_tokens"}
    assert ResponseTurnArgs.__required_keys__ == {"agent"} and MeterArgs.__required_keys__ == {"quantity"}
    for t in (LlmTurnArgs, ResponseTurnArgs, MeterArgs):
        assert keys(t) <= set(TurnIn.model_fields), t.__name__
    made_from = inspect.signature(_Core.__init__).parameters
    assert keys(SessionOptions) == set(made_from) - {"self", "transport"}
    assert SessionOptions.__required_keys__ == {n for n, p in made_from.items() if p.default is p.empty} - {
        "self",
        "transport",
    }
