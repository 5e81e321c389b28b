"""A reservation priced from the model at the turn's service tier (OpenAI's ``priority``, ``flex``):
the hold is the worst case at that tier's prices, so a priority turn settles inside its hold; a tier
the model has no price for is refused naming ``service_tier``, as a turn of that tier is."""

from __future__ import annotations

import pytest

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.integration.test_api_v1 import USD, api  # noqa: F401  (the fixture)
from worker.billing.modes import configure_app
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise
from worker.pricing.prices import PricingError

pytestmark = pytest.mark.integration
# gpt-5 at OpenAI, nanos per token (genai-prices): standard $1.25 / $10 per MTok, priority twice, flex half
STANDARD, PRIORITY, FLEX = (1_250, 10_000), (2_500, 20_000), (625, 5_000)
PROMPT, MAX_TOKENS = 1_000, 500


def _worst(rates: tuple[int, int]) -> int:
    return PROMPT * rates[0] + MAX_TOKENS * rates[1]


def test_a_priority_hold_is_priced_at_the_priority_tier_and_covers_its_turn(db, gate):
    with session_scope() as session:
        ensure_enterprise(session, "acme")
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", reservations_required=True)
    open_wallet(gate, wallet_id="u1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="u1", amount_nanos=_worst(PRIORITY), idempotency_key="open-u1")
    assert [
        gate.quote_reservation("gpt-5", "openai", PROMPT, MAX_TOKENS, tier)
        for tier in (None, "default", "auto", "standard", "flex", "priority")
    ] == [6_250_000, 6_250_000, 6_250_000, 6_250_000, 3_125_000, 12_500_000]
    assert _worst(STANDARD) == 6_250_000 and _worst(FLEX) == 3_125_000 and _worst(PRIORITY) == 12_500_000

    hold = gate.reserve(
        "u1",
        model="gpt-5",
        provider="openai",
        prompt_tokens=PROMPT,
        max_tokens=MAX_TOKENS,
        service_tier="priority",
        reservation_id="r-priority",
    )
    assert (hold.granted, hold.amount_nanos, hold.held_nanos, hold.balance_nanos) == (
        True,
        12_500_000,
        12_500_000,
        12_500_000,
    )
    d = gate.record_turn(
        TurnIn(
            turn_id="t1",
            wallet_id="u1",
            enterprise_id="acme",
            chat_id="c1",
            model="gpt-5",
            provider="openai",
            prompt_tokens=PROMPT,
            completion_tokens=MAX_TOKENS,
            service_tier="priority",
            reservation_id="r-priority",
        )
    )
    # the whole cost came out of the hold: nothing charged beyond it, no debt (the wallet is now at 0,
    # hence the pause); a standard-priced hold (6,250,000) would have left 6,250,000 as debt
    assert (d.accepted, d.cost_nanos, d.billed_nanos, d.balance_nanos, d.action) == (
        True,
        12_500_000,
        12_500_000,
        0,
        "pause",
    )
    assert gate.available("u1") == (0, 0, "production")
    assert int(gate.redis.hget(gate.wallet_key("u1"), "debt") or 0) == 0


def test_the_python_api_refuses_a_tier_without_a_price_or_without_a_model(db, gate):
    open_wallet(gate, wallet_id="u2", enterprise_id="acme", owner_id="u2")
    credit_wallet(gate, wallet_id="u2", amount_nanos=USD, idempotency_key="open-u2")
    with pytest.raises(PricingError, match=r"^service_tier: 'flex' has no price for model 'gpt-4o'"):
        gate.reserve("u2", model="gpt-4o", provider="openai", prompt_tokens=10, max_tokens=10, service_tier="flex")
    for kwargs in (
        {"amount_nanos": 5, "service_tier": "priority"},
        {"model": "gpt-5", "provider": "openai", "max_tokens": 1, "service_tier": "Priority"},
        {"model": "gpt-5", "provider": "openai", "max_tokens": 1, "service_tier": ""},
    ):
        with pytest.raises(ValueError, match=r"^service_tier: "):
            gate.reserve("u2", **kwargs)
    assert gate.available("u2") == (USD, 0, "production")


def test_the_api_prices_a_reservation_at_its_tier(api, gate):  # noqa: F811
    r = api.post(
        "/v1/wallets/w1/reservations",
        headers=api.h["owner"],
        json={
            "model": "gpt-5",
            "provider": "openai",
            "prompt_tokens": PROMPT,
            "max_tokens": MAX_TOKENS,
            "service_tier": "priority",
            "reservation_id": "rp",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "reservation_id": "rp",
        "wallet_id": "w1",
        "granted": True,
        "amount_nanos": 12_500_000,
        "balance_nanos": USD,
        "held_nanos": 12_500_000,
        "duplicate": False,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o", "provider": "openai", "max_tokens": 10, "service_tier": "flex"},  # no flex price for gpt-4o
        {"model": "gpt-5", "provider": "openai", "max_tokens": 10, "service_tier": "scale"},
        {"amount_nanos": 5, "service_tier": "priority"},  # a tier prices nothing without a model
        {"model": "gpt-5", "provider": "openai", "max_tokens": 10, "service_tier": "Priority!"},
    ],
)
def test_the_api_refuses_an_unpriced_tier_naming_service_tier(api, gate, body):  # noqa: F811
    r = api.post("/v1/wallets/w1/reservations", json=body, headers=api.h["owner"])
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["service_tier"]
    assert gate.redis.hget(gate.wallet_key("w1"), "held") is None
