"""Per-turn limits (issue 14, item 5) against real Redis and PostgreSQL: tokens above the model's
context window, a meter's quantity above its maximum, and a turn costing more than its app's
``max_turn_cost_nanos`` are refused naming the field, with nothing charged, on every path (HTTP
turn and batch, the Celery task, the in-process gate, the Lua script itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.turn import TurnIn
from models.wallet import DEFAULT_MAX_TURN_COST_NANOS
from tests.committed import credit_wallet, open_wallet
from tests.conftest import create_keys, seed_wallet
from worker.db import session_scope
from worker.gate.gate import GateBatchError, WalletGate
from worker.pricing.prices import PriceBook, TurnLimitExceeded

pytestmark = pytest.mark.integration

TURN = {
    "turn_id": "t-1",
    "wallet_id": "w1",
    "enterprise_id": "acme",
    "chat_id": "c1",
    "agent": "planner",
    "model": "gpt-4o",
    "provider": "openai",
    "prompt_tokens": 1000,
    "completion_tokens": 100,
    "occurred_at": "2026-11-01T12:00:00Z",
}
COST = 1000 * 2_500 + 100 * 10_000  # gpt-4o: 3,500,000 nanos
WALLET = 40_000_000  # $0.04, the wallet


@pytest.fixture()
def wallet(db, redis_client, gate):
    seed_wallet(gate, "w1", "acme", "u1", WALLET)
    return gate


@pytest.fixture()
def api(wallet, http_api):
    client = http_api(create_keys({"owner": ("owner", "acme")}))
    client.h = client.h["owner"]  # this module's requests all go with the owner key
    return client


def _outbox_len(redis_client, gate, wallet_id: str = "w1") -> int:
    return redis_client.xlen(gate.wallet_key(wallet_id).replace(f":wallet:{wallet_id}", ":outbox"))


def _nothing_charged(redis_client, gate) -> None:
    assert gate.balance("w1") == WALLET
    assert _outbox_len(redis_client, gate) == 0


# context window ---------------------------------------------------------------------------------
def test_fifty_million_prompt_tokens_on_gpt_4o_are_refused_naming_prompt_tokens(api, redis_client, wallet):
    """The issue's instance: 50,000,000 prompt tokens on gpt-4o (context window 128,000) were
    accepted and a $0.04 wallet ended at −$125."""
    r = api.post("/v1/turns", json={**TURN, "prompt_tokens": 50_000_000}, headers=api.h)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [
        {
            "field": "prompt_tokens",
            "message": ("50,000,000 prompt + 100 completion tokens exceed gpt-4o's context window of 128,000 tokens"),
        }
    ]
    _nothing_charged(redis_client, wallet)


def test_the_window_counts_completion_too_and_its_edge_is_accepted(api, redis_client, wallet):
    r = api.post("/v1/turns", json={**TURN, "prompt_tokens": 127_000, "completion_tokens": 1_001}, headers=api.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "completion_tokens"
    batch = {
        "turns": [
            TURN,
            {
                **TURN,
                "turn_id": "t-2",
                "prompt_tokens": 128_000,
                "cached_prompt_tokens": 100_000,
                "completion_tokens": 1,
            },
        ]
    }
    r = api.post("/v1/turns/batch", json=batch, headers=api.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "turns.1.completion_tokens"
    _nothing_charged(redis_client, wallet)
    # exactly the window: 127,000 + 1,000 = 128,000 tokens
    ok = api.post("/v1/turns", json={**TURN, "prompt_tokens": 127_000, "completion_tokens": 1_000}, headers=api.h)
    assert ok.status_code == 200 and ok.json()["cost_nanos"] == 127_000 * 2_500 + 1_000 * 10_000


def test_an_override_file_may_give_the_context_window(db, redis_client, settings, tmp_path: Path):
    path = tmp_path / "prices.json"
    path.write_text('{"acme/small": {"input_mtok": "1.00", "output_mtok": "2.00", "context_window": 1000}}')
    gate = WalletGate(redis_client, settings=settings, price_book=PriceBook.from_file(path), kicker=lambda s: None)
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=WALLET, idempotency_key="open-w1")
    small = {**TURN, "model": "small", "provider": "acme"}
    with pytest.raises(TurnLimitExceeded) as exc:
        gate.record_turn(TurnIn(**{**small, "prompt_tokens": 1001, "completion_tokens": 0}))
    assert exc.value.field == "prompt_tokens" and isinstance(exc.value, ValueError)
    _nothing_charged(redis_client, gate)
    d = gate.record_turn(TurnIn(**{**small, "prompt_tokens": 900, "completion_tokens": 100}))
    assert d.accepted and d.cost_nanos == 900 * 1_000 + 100 * 2_000
    with pytest.raises(Exception, match="context_window must be an integer"):
        PriceBook({"acme/bad": {"input_mtok": "1", "context_window": "big"}})


# meters --------------------------------------------------------------------------------------------
def test_a_meter_quantity_above_its_maximum_is_refused_naming_quantity(api, redis_client, wallet):
    """The issue's instance: a meter turn with quantity 10^12 billed about $100M."""
    body = {**TURN, "meter": "emails", "quantity": 10**12}
    for key in ("model", "provider", "prompt_tokens", "completion_tokens"):
        body.pop(key)
    r = api.post("/v1/turns", json=body, headers=api.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "quantity", r.text
    r = api.post("/v1/turns", json={**body, "quantity": 1_000_001}, headers=api.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "quantity"
    _nothing_charged(redis_client, wallet)
    ok = api.post("/v1/turns", json={**body, "quantity": 400}, headers=api.h)  # 400 × 100,000 nanos
    assert ok.status_code == 200 and ok.json()["billed_nanos"] == 40_000_000


def test_meter_maxima_are_documented_per_meter():
    from worker.pricing.meters import METERS, meter_price

    assert {m: p.max_quantity for m, p in METERS.items()} == {
        "emails": 1_000_000,
        "storage_gb_month": 1_000_000_000,
        "function_calls": 1_000_000_000,
    }
    assert meter_price("function_calls", 1_000_000_000).cost_nanos == 200_000_000_000
    with pytest.raises(TurnLimitExceeded, match="^quantity: "):
        meter_price("storage_gb_month", 1_000_000_001)


# the app's max_turn_cost_nanos -------------------------------------------------------------------
def _set_limit(gate, nanos: int) -> None:
    from worker.billing.modes import configure_app

    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", max_turn_cost_nanos=nanos)


def test_a_turn_above_the_apps_max_turn_cost_is_refused_on_every_path(api, redis_client, wallet):
    from tasks import usage

    _set_limit(wallet, COST - 1)
    assert redis_client.hget(wallet.wallet_key("w1"), "max_turn_nanos") == str(COST - 1)
    message = f"the turn costs 3,500,000 nanos, above its app's max_turn_cost_nanos of {COST - 1:,}"
    # HTTP, one turn
    r = api.post("/v1/turns", json=TURN, headers=api.h)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "cost_nanos", "message": message}]
    # HTTP, a batch: refused whole
    cheap = {**TURN, "turn_id": "t-cheap", "prompt_tokens": 100, "completion_tokens": 10}
    r = api.post("/v1/turns/batch", json={"turns": [cheap, TURN]}, headers=api.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "turns.1.cost_nanos", r.text
    # in process
    with pytest.raises(TurnLimitExceeded, match=re.escape(f"cost_nanos: {message}")):
        wallet.record_turn(TurnIn(**TURN))
    # Celery task
    usage._gate = wallet
    try:
        with pytest.raises(usage.TurnRejected, match="max_turn_cost_nanos"):
            usage.record_turn(TURN)
    finally:
        usage._gate = None
    _nothing_charged(redis_client, wallet)
    # the dedupe key was not spent: with the limit raised the same turn_id is a new turn
    _set_limit(wallet, COST)
    d = wallet.record_turn(TurnIn(**TURN))
    assert (d.accepted, d.duplicate, d.billed_nanos, d.balance_nanos) == (True, False, COST, WALLET - COST)
    # a retry of a decided turn gets its first answer even after the limit is lowered
    _set_limit(wallet, 1)
    again = wallet.record_turn(TurnIn(**TURN))
    assert (again.accepted, again.duplicate, again.billed_nanos) == (True, True, COST)
    assert wallet.balance("w1") == WALLET - COST and _outbox_len(redis_client, wallet) == 1


def test_the_script_itself_refuses_a_costly_turn_and_the_batch_goes_on(wallet, redis_client, monkeypatch):
    """Even a caller that skipped the gate's pre-check (or a limit lowered between the pre-check and
    the script) cannot charge above the limit: record_turns.lua refuses that turn alone, nothing of
    it written, and decides the others."""
    _set_limit(wallet, COST - 1)
    original = WalletGate._check_wallets
    monkeypatch.setattr(WalletGate, "_check_wallets", lambda self, turns, quotes=(): original(self, turns))
    cheap = [
        TurnIn(**{**TURN, "turn_id": f"cheap-{i}", "prompt_tokens": 100, "completion_tokens": 10}) for i in range(3)
    ]
    with pytest.raises(GateBatchError) as exc:
        wallet.record_turns([cheap[0], TurnIn(**TURN), cheap[1], cheap[2]])
    decisions = exc.value.decisions
    assert [d is None for d in decisions] == [False, True, False, False]
    assert isinstance(exc.value.error, TurnLimitExceeded) and exc.value.error.index == 1
    assert [d.billed_nanos for d in decisions if d] == [350_000] * 3
    assert wallet.balance("w1") == WALLET - 3 * 350_000
    assert _outbox_len(redis_client, wallet) == 3
    assert wallet.remembered_answer(TURN["enterprise_id"], TURN["wallet_id"], TURN["turn_id"]) is None  # unspent


def test_the_default_limit_holds_for_a_wallet_loaded_without_one(wallet, redis_client, settings):
    """A wallet hash without max_turn_nanos (loaded before the limit existed) gets the default $50
    from the script: lib_turn.lua's constant equals models.wallet.DEFAULT_MAX_TURN_COST_NANOS."""
    lua = (Path(__file__).resolve().parents[2] / "worker" / "gate" / "lua" / "lib_turn.lua").read_text()
    assert re.search(r"local DEFAULT_MAX_TURN_NANOS = '(\d+)'", lua).group(1) == str(DEFAULT_MAX_TURN_COST_NANOS)
    assert DEFAULT_MAX_TURN_COST_NANOS == 50_000_000_000
    book = PriceBook({"acme/pricey": {"input_mtok": "60000"}})  # $0.06 a token
    gate = WalletGate(redis_client, settings=settings, price_book=book, kicker=lambda s: None)
    redis_client.hdel(gate.wallet_key("w1"), "max_turn_nanos")
    credit_wallet(gate, wallet_id="w1", amount_nanos=100 * 10**9, idempotency_key="big")
    pricey = {**TURN, "model": "pricey", "provider": "acme", "completion_tokens": 0}
    with pytest.raises(TurnLimitExceeded, match="50,000,000,000"):
        gate.record_turn(TurnIn(**{**pricey, "prompt_tokens": 834}))  # $50.04
    d = gate.record_turn(TurnIn(**{**pricey, "turn_id": "t-ok", "prompt_tokens": 833}))  # $49.98
    assert d.accepted and d.billed_nanos == 49_980_000_000


def test_the_limit_is_copied_at_open_configure_and_rebuild(db, redis_client, gate, cli):
    from worker.ledger.reconcile import reconcile

    r = cli("app", "configure", "acme", "--max-turn-usd", "2.50")
    assert r.returncode == 0 and "max turn 2500000000 nanos" in r.stdout, r.stderr
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id="p1", enterprise_id=None, owner_id="p", level="platform")
    assert redis_client.hget(gate.wallet_key("w1"), "max_turn_nanos") == "2500000000"
    assert redis_client.hget(gate.wallet_key("p1"), "max_turn_nanos") == str(DEFAULT_MAX_TURN_COST_NANOS)
    r = cli("app", "configure", "acme", "--max-turn-usd", "-1")
    assert r.returncode == 2 and "--max-turn-usd" in r.stderr
    redis_client.flushdb()
    reconcile(gate, rebuild=True)
    assert redis_client.hget(gate.wallet_key("w1"), "max_turn_nanos") == "2500000000"
    with db.connect() as conn:
        from sqlalchemy import text

        assert (
            conn.execute(text("SELECT max_turn_cost_nanos FROM enterprise WHERE id = 'acme'")).scalar_one()
            == 2_500_000_000
        )


def test_a_replay_row_above_the_window_stops_the_replay_before_anything_is_recorded(
    db, redis_client, gate, tmp_path: Path
):
    from sqlalchemy import text

    from worker.devtools.replay import replay
    from worker.devtools.traces import TraceError

    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1000,10\r\n"
        "2023-11-16 18:15:47.0000000,127995,6\r\n"
    )
    with pytest.raises(TraceError, match=r"row 2, field GeneratedTokens: ") as exc:
        replay(trace, fmt="azure", model="gpt-4o", provider="openai", start_worker=False, gate=gate)
    assert exc.value.row == 2 and exc.value.field == "GeneratedTokens"
    assert "context window of 128,000 tokens" in str(exc.value)
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM wallet")).scalar_one() == 0
    assert redis_client.dbsize() == 1  # the gate's shard-count key only
