"""Usage adapters: real SDK response objects → token counts → the gate's charge, to the nano of
genai-prices' own ``calc_price``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP

import pytest
from anthropic.types import Message
from genai_prices import Usage, calc_price
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from worker.client.adapters import (
    AdapterError,
    TokenUsage,
    UnknownModel,
    cost_nanos,
    resolve_model,
    turn_fields,
    usage_from_response,
)

WHEN = datetime(2026, 11, 1, 12, tzinfo=UTC)


def genai_nanos(usage: Usage, model: str, provider: str) -> int:
    """genai-prices' own figure, converted to integer nanos as worker/pricing/prices.py does."""
    total = calc_price(usage, model, provider_id=provider, genai_request_timestamp=WHEN).total_price * 10**9
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


def chat_completion(model="gpt-4o-2024-08-06", prompt=1234, completion=567, cached=1024, reasoning=0):
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 1764590400,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
    )


def responses_response(model="o3-mini-2025-01-31"):
    return Response.model_validate(
        {
            "id": "resp_123",
            "object": "response",
            "created_at": 1764590400,
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 2000,
                "output_tokens": 900,
                "total_tokens": 2900,
                "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 640},
            },
        }
    )


def anthropic_message(reads=3000, writes=0, model="claude-sonnet-4-20250514"):
    return Message.model_validate(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 150,
                "output_tokens": 420,
                "cache_read_input_tokens": reads,
                "cache_creation_input_tokens": writes,
            },
        }
    )


def test_openai_chat_completion_counts_and_exact_charge(gate):
    resp = chat_completion()
    usage = usage_from_response(resp)
    assert usage == TokenUsage("gpt-4o-2024-08-06", 1234, 567, 1024, 0, 0, "openai", "chatcmpl-abc123")
    expected = genai_nanos(
        Usage(input_tokens=1234, cache_read_tokens=1024, output_tokens=567), "gpt-4o-2024-08-06", "openai"
    )
    # gpt-4o: 210 × 2,500 + 1,024 × 1,250 + 567 × 10,000 nanos per token
    assert expected == 210 * 2_500 + 1_024 * 1_250 + 567 * 10_000 == 7_475_000
    assert cost_nanos(usage, WHEN) == expected
    priced = gate.prices.price(when=WHEN, **{k: v for k, v in turn_fields(usage).items()})
    assert (priced.cost_nanos, priced.model, priced.provider) == (expected, "gpt-4o", "openai")


def test_openai_responses_api_counts_reasoning_inside_output_and_exact_charge(gate):
    usage = usage_from_response(responses_response())
    assert usage == TokenUsage("o3-mini-2025-01-31", 2000, 900, 512, 0, 640, "openai", "resp_123")
    expected = genai_nanos(Usage(input_tokens=2000, cache_read_tokens=512, output_tokens=900), "o3-mini", "openai")
    assert expected == 1488 * 1_100 + 512 * 550 + 900 * 4_400 == 5_878_400
    assert gate.prices.price(when=WHEN, **turn_fields(usage)).cost_nanos == expected


def test_anthropic_input_tokens_exclude_cache_reads_which_are_added_back(gate):
    usage = usage_from_response(anthropic_message(reads=3000))
    assert usage == TokenUsage("claude-sonnet-4-20250514", 3150, 420, 3000, 0, 0, "anthropic", "msg_01")
    expected = genai_nanos(
        Usage(input_tokens=3150, cache_read_tokens=3000, output_tokens=420), "claude-sonnet-4-20250514", "anthropic"
    )
    assert expected == 150 * 3_000 + 3000 * 300 + 420 * 15_000 == 7_650_000
    assert cost_nanos(usage, WHEN) == expected
    assert gate.prices.price(when=WHEN, **turn_fields(usage)).cost_nanos == expected


def test_anthropic_cache_writes_are_charged_at_the_cache_write_price(gate):
    usage = usage_from_response(anthropic_message(reads=0, writes=2000))
    assert (usage.prompt_tokens, usage.cached_prompt_tokens, usage.cache_write_tokens) == (2150, 0, 2000)
    exact = genai_nanos(
        Usage(input_tokens=2150, cache_write_tokens=2000, output_tokens=420), "claude-sonnet-4-20250514", "anthropic"
    )
    assert exact == 150 * 3_000 + 2000 * 3_750 + 420 * 15_000 == 14_250_000  # cache write: $3.75/MTok
    assert cost_nanos(usage, WHEN) == exact
    fields = turn_fields(usage)
    assert fields["cache_write_tokens"] == 2000 and usage.unbilled_cache_write_tokens == 0
    assert gate.prices.price(when=WHEN, **fields).cost_nanos == exact  # what the gate charges


def test_plain_dict_with_openai_style_usage_and_dated_snapshot_resolution():
    usage = usage_from_response(
        {"id": "x1", "model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    )
    assert usage == TokenUsage("gpt-4o-mini-2024-07-18", 10, 5, 0, 0, 0, None, "x1")
    assert resolve_model("gpt-4o-2024-08-06").model == "gpt-4o"
    assert resolve_model("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"
    assert (resolve_model("claude-sonnet-4-20250514").provider, resolve_model("claude-sonnet-4-20250514").model) == (
        "anthropic",
        "claude-sonnet-4-0",
    )


def test_unknown_model_and_bad_usage_are_clear_errors_naming_the_field():
    with pytest.raises(UnknownModel, match="model: 'acme-llm-9000'"):
        resolve_model("acme-llm-9000")
    with pytest.raises(AdapterError, match=r"^usage: the response carries no usage"):
        usage_from_response({"model": "gpt-4o"})
    with pytest.raises(AdapterError, match=r"usage\.prompt_tokens: must be an integer >= 0, got -3"):
        usage_from_response({"model": "gpt-4o", "usage": {"prompt_tokens": -3, "completion_tokens": 1}})
    with pytest.raises(AdapterError, match=r"usage\.completion_tokens: missing"):
        usage_from_response({"model": "gpt-4o", "usage": {"prompt_tokens": 3}})
    with pytest.raises(
        AdapterError,
        match=r"usage\.prompt_tokens_details\.cached_tokens: 9 \(\+ 0 cache writes\) exceeds prompt_tokens 3",
    ):
        usage_from_response(
            {
                "model": "gpt-4o",
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}},
            }
        )
