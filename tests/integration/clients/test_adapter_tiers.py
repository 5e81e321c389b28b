"""Issue 14, item 8: Anthropic 1-hour cache writes and OpenAI service tiers are charged as genai-prices
prices them, from the SDK's own response objects through the gate to the persisted row, to the nano."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP

import pytest
from anthropic.types import Message
from genai_prices import Usage, calc_price
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from sqlalchemy import text

from models.turn import TurnIn
from worker.client.adapters import AdapterError, cost_nanos, turn_fields, usage_from_response
from worker.pricing.prices import PriceBook, PricingError

WHEN = datetime(2026, 11, 1, 12, tzinfo=UTC)  # after genai-prices' tier prices start (2026-10-12)


def genai_nanos(usage: Usage, model: str, provider: str, tier: str | None = None, when: datetime = WHEN) -> int:
    """genai-prices' own figure (with the tier as its price context), to integer nanos, half-up."""
    total = (
        calc_price(
            usage,
            model,
            provider_id=provider,
            genai_request_timestamp=when,
            price_context={"service_tier": tier} if tier else None,
        ).total_price
        * 10**9
    )
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


def anthropic_message(
    *,
    writes_5m=0,
    writes_1h=0,
    reads=0,
    uncached=150,
    output=420,
    model="claude-sonnet-4-20250514",
    tier="standard",
    total=None,
):
    return Message.model_validate(
        {
            "id": "msg_1h",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": uncached,
                "output_tokens": output,
                "cache_read_input_tokens": reads,
                "cache_creation_input_tokens": writes_5m + writes_1h if total is None else total,
                "cache_creation": {"ephemeral_5m_input_tokens": writes_5m, "ephemeral_1h_input_tokens": writes_1h},
                "service_tier": tier,
            },
        }
    )


def chat_completion(*, tier, model="gpt-5-2025-08-07", prompt=20_000, completion=3_000, cached=4_096):
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-tier",
            "object": "chat.completion",
            "created": 1764590400,
            "model": model,
            "service_tier": tier,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
    )


def responses_response(*, tier, model="o3-2025-04-16"):
    return Response.model_validate(
        {
            "id": "resp_tier",
            "object": "response",
            "created_at": 1764590400,
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "service_tier": tier,
            "usage": {
                "input_tokens": 2000,
                "output_tokens": 900,
                "total_tokens": 2900,
                "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 640},
            },
        }
    )


def _turn(usage, turn_id: str, wallet: str = "w-tier") -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet,
        enterprise_id="acme",
        chat_id="c-tier",
        occurred_at=WHEN,
        **turn_fields(usage),
    )


# --- Anthropic 1-hour cache writes ---------------------------------------------------------------


def test_anthropic_1h_cache_writes_are_charged_at_the_1h_price_and_persisted(gate, db, redis_client, settings):
    from tests.committed import open_wallet
    from worker import (
        OutboxDrain,  # wired: announces chat.paused / chat.resumable
        credit_wallet,  # wired: resumes paused chats, announces wallet.credited
    )

    usage = usage_from_response(anthropic_message(writes_5m=2_000, writes_1h=1_000))
    assert (usage.prompt_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (3_150, 3_000, 1_000)
    exact = genai_nanos(
        Usage(input_tokens=3_150, cache_write_tokens=3_000, cache_write_1h_tokens=1_000, output_tokens=420),
        "claude-sonnet-4-20250514",
        "anthropic",
    )
    # $3 input, $3.75 5-minute writes, $6 1-hour writes, $15 output per MTok
    assert exact == 150 * 3_000 + 2_000 * 3_750 + 1_000 * 6_000 + 420 * 15_000 == 20_250_000
    assert cost_nanos(usage, WHEN) == exact
    open_wallet(gate, wallet_id="w-tier", enterprise_id="acme", owner_id="o")
    credit_wallet(gate, wallet_id="w-tier", amount_nanos=10**9, idempotency_key="buy-tier")
    decision = gate.record_turn(_turn(usage, "anthropic-1h"))
    assert (decision.accepted, decision.cost_nanos, decision.billed_nanos) == (True, exact, exact)
    assert OutboxDrain(redis_client, settings=settings, consumer="tiers").drain().inserted == 1
    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT cache_write_tokens, cache_write_nanos_per_mtok, cache_write_1h_tokens, "
                "cache_write_1h_nanos_per_mtok, service_tier, cost_nanos FROM usage_event"
            )
        ).one()
    assert tuple(row) == (3_000, 3_750_000_000, 1_000, 6_000_000_000, None, exact)
    assert gate.balance("w-tier") == 10**9 - exact


@pytest.mark.parametrize(
    ("model", "provider"),
    [("claude-sonnet-4-5", "anthropic"), ("claude-opus-4-1", "anthropic"), ("claude-3-5-haiku-latest", "anthropic")],
)
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_1h_cache_writes_cost_what_genai_prices_says(model, provider, data):
    prompt = data.draw(
        st.one_of(st.integers(0, 5_000), st.integers(0, 400_000), st.sampled_from([199_999, 200_000, 200_001]))
    )
    writes = data.draw(st.integers(0, prompt))
    writes_1h = data.draw(st.integers(0, writes))
    reads = data.draw(st.integers(0, prompt - writes))
    completion = data.draw(st.integers(0, 50_000))
    ours = (
        PriceBook()
        .price(
            model=model,
            provider=provider,
            when=WHEN,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_prompt_tokens=reads,
            cache_write_tokens=writes,
            cache_write_1h_tokens=writes_1h,
        )
        .cost_nanos
    )
    assert ours == genai_nanos(
        Usage(
            input_tokens=prompt,
            cache_read_tokens=reads,
            cache_write_tokens=writes,
            cache_write_1h_tokens=writes_1h,
            output_tokens=completion,
        ),
        model,
        provider,
    )


def test_1h_writes_of_a_model_without_a_1h_price_cost_the_cache_write_price():
    book = PriceBook({"acme/m1": {"input_mtok": "1", "cache_write_mtok": "1.5", "output_mtok": "2"}})
    tp = book.price(
        model="m1",
        provider="acme",
        when=WHEN,
        prompt_tokens=1_000_000,
        completion_tokens=0,
        cache_write_tokens=400_000,
        cache_write_1h_tokens=100_000,
    )
    assert (tp.cost_nanos, tp.cache_write_nanos_per_mtok, tp.cache_write_1h_nanos_per_mtok) == (
        600_000 * 1_000 + 400_000 * 1_500,
        1_500_000_000,
        1_500_000_000,
    )
    with_1h = PriceBook(
        {"acme/m1": {"input_mtok": "1", "cache_write_mtok": "1.5", "cache_write_1h_mtok": "2", "output_mtok": "2"}}
    )
    assert with_1h.price(
        model="m1",
        provider="acme",
        when=WHEN,
        prompt_tokens=1_000_000,
        completion_tokens=0,
        cache_write_tokens=400_000,
        cache_write_1h_tokens=100_000,
    ).cost_nanos == (600_000 * 1_000 + 300_000 * 1_500 + 100_000 * 2_000)


def test_a_1h_breakdown_that_does_not_add_up_and_1h_writes_beyond_the_writes_are_refused():
    with pytest.raises(
        AdapterError,
        match=r"^usage\.cache_creation: ephemeral_5m \(2000\) \+ ephemeral_1h \(1000\) "
        r"input tokens must add up to cache_creation_input_tokens \(2500\)",
    ):
        usage_from_response(anthropic_message(writes_5m=2_000, writes_1h=1_000, total=2_500))
    with pytest.raises(ValueError, match="cache_write_1h_tokens \\(5\\) exceeds cache_write_tokens \\(4\\)"):
        TurnIn(
            turn_id="t",
            wallet_id="w",
            enterprise_id="e",
            chat_id="c",
            model="claude-sonnet-4-0",
            prompt_tokens=10,
            completion_tokens=0,
            cache_write_tokens=4,
            cache_write_1h_tokens=5,
        )


# --- OpenAI service tiers ----------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_openai_service_tier_is_charged_at_genai_prices_tier_price_and_persisted(
    gate, db, redis_client, settings, tier
):
    from tests.committed import open_wallet
    from worker import (
        OutboxDrain,  # wired: announces chat.paused / chat.resumable
        credit_wallet,  # wired: resumes paused chats, announces wallet.credited
    )

    usage = usage_from_response(chat_completion(tier=tier))
    assert usage.service_tier == tier
    genai_usage = Usage(input_tokens=20_000, cache_read_tokens=4_096, output_tokens=3_000)
    exact = genai_nanos(genai_usage, "gpt-5", "openai", tier)
    standard = genai_nanos(genai_usage, "gpt-5", "openai")
    # gpt-5: $1.25 / $0.125 / $10 per MTok standard; flex half of it, priority twice
    assert standard == 15_904 * 1_250 + 4_096 * 125 + 3_000 * 10_000 == 50_392_000
    assert exact == {"flex": standard // 2, "priority": standard * 2}[tier]
    assert cost_nanos(usage, WHEN) == exact
    open_wallet(gate, wallet_id="w-tier", enterprise_id="acme", owner_id="o")
    credit_wallet(gate, wallet_id="w-tier", amount_nanos=10**9, idempotency_key="buy-tier")
    decision = gate.record_turn(_turn(usage, f"openai-{tier}"))
    assert (decision.accepted, decision.cost_nanos, decision.billed_nanos) == (True, exact, exact)
    OutboxDrain(redis_client, settings=settings, consumer="tiers").drain()
    with db.connect() as conn:
        row = conn.execute(
            text("SELECT service_tier, input_nanos_per_mtok, output_nanos_per_mtok, cost_nanos FROM usage_event")
        ).one()
    rates = {"flex": (625_000_000, 5_000_000_000), "priority": (2_500_000_000, 20_000_000_000)}[tier]
    assert tuple(row) == (tier, *rates, exact)


def test_responses_api_tier_and_the_standard_tiers():
    usage = usage_from_response(responses_response(tier="flex"))
    genai_usage = Usage(input_tokens=2000, cache_read_tokens=512, output_tokens=900)
    book = PriceBook()
    assert (
        book.price(
            model=usage.model,
            provider="openai",
            when=WHEN,
            prompt_tokens=2000,
            completion_tokens=900,
            cached_prompt_tokens=512,
            service_tier="flex",
        ).cost_nanos
        == genai_nanos(genai_usage, "o3", "openai", "flex")
        == 1488 * 1_000 + 512 * 250 + 900 * 4_000
    )
    for standard in (None, "default", "auto", "standard"):
        assert (
            book.price(
                model="o3",
                provider="openai",
                when=WHEN,
                prompt_tokens=2000,
                completion_tokens=900,
                cached_prompt_tokens=512,
                service_tier=standard,
            ).cost_nanos
            == genai_nanos(genai_usage, "o3", "openai")
            == 1488 * 2_000 + 512 * 500 + 900 * 8_000
        )
    # before genai-prices' tier prices start, a tier costs the standard price (as genai-prices says)
    early = datetime(2026, 9, 1, tzinfo=UTC)
    assert (
        book.price(
            model="o3",
            provider="openai",
            when=early,
            prompt_tokens=2000,
            completion_tokens=900,
            cached_prompt_tokens=512,
            service_tier="priority",
        ).cost_nanos
        == genai_nanos(genai_usage, "o3", "openai", "priority", early)
        == genai_nanos(genai_usage, "o3", "openai", None, early)
    )


def test_a_tier_genai_prices_has_no_price_for_is_refused_and_charges_nothing(gate, db):
    from tests.committed import open_wallet
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited

    open_wallet(gate, wallet_id="w-tier", enterprise_id="acme", owner_id="o")
    credit_wallet(gate, wallet_id="w-tier", amount_nanos=10**9, idempotency_key="buy-tier")
    scale = usage_from_response(chat_completion(tier="scale"))
    with pytest.raises(PricingError, match=r"^service_tier: 'scale' has no price for model 'gpt-5-2025-08-07'"):
        gate.record_turn(_turn(scale, "scale-1"))
    flex_4o = usage_from_response(chat_completion(tier="flex", model="gpt-4o"))  # gpt-4o has no flex price
    with pytest.raises(PricingError, match=r"^service_tier: 'flex' has no price for model 'gpt-4o'"):
        gate.record_turn(_turn(flex_4o, "flex-4o"))
    anthropic_priority = usage_from_response(anthropic_message(tier="priority"))
    with pytest.raises(PricingError, match=r"^service_tier: 'priority'"):
        gate.record_turn(_turn(anthropic_priority, "anthropic-priority"))
    with pytest.raises(PricingError, match=r"^service_tier: 'flex' has no price for model 'm1'"):
        PriceBook({"acme/m1": {"input_mtok": "1"}}).price(
            model="m1", provider="acme", when=WHEN, prompt_tokens=1, completion_tokens=1, service_tier="flex"
        )
    assert gate.balance("w-tier") == 10**9  # nothing charged
    # Anthropic's "standard" is the standard price: passed as no tier
    assert usage_from_response(anthropic_message(tier="standard")).service_tier is None


def test_http_a_tier_without_a_price_is_a_422_naming_service_tier_and_a_known_one_is_charged(api, app_id, open_payer):
    wallet_id = open_payer("app_usage", app_id, "u-tier", 10**9)
    headers = {"Authorization": f"Bearer {api.owner_key(app_id)}"}
    turn = {
        "wallet_id": wallet_id,
        "enterprise_id": app_id,
        "chat_id": "c-http",
        "model": "gpt-5",
        "provider": "openai",
        "prompt_tokens": 20_000,
        "completion_tokens": 3_000,
        "cached_prompt_tokens": 4_096,
        "occurred_at": WHEN.isoformat(),
    }
    refused = api.post("/v1/turns", json={**turn, "turn_id": "h-scale", "service_tier": "scale"}, headers=headers)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "service_tier"
    flex = api.post("/v1/turns", json={**turn, "turn_id": "h-flex", "service_tier": "flex"}, headers=headers)
    assert flex.status_code == 200, flex.text
    assert flex.json()["cost_nanos"] == 50_392_000 // 2
    one_hour = api.post(
        "/v1/turns",
        json={
            **turn,
            "turn_id": "h-1h",
            "model": "claude-sonnet-4-0",
            "provider": "anthropic",
            "cached_prompt_tokens": 0,
            "cache_write_tokens": 3_000,
            "cache_write_1h_tokens": 1_000,
        },
        headers=headers,
    )
    assert one_hour.status_code == 200, one_hour.text
    assert one_hour.json()["cost_nanos"] == 17_000 * 3_000 + 2_000 * 3_750 + 1_000 * 6_000 + 3_000 * 15_000
