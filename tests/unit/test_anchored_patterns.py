"""Patterns that check a whole input end at the end of the text: ``$`` also matches before a
trailing newline, so ``re.match(r"^…$")`` let ``'p1\\n'`` through as a package id, ``'default\\n'``
as a service tier and ``'cs_abc\\n'`` as a Checkout session id (now ``\\Z``)."""

from __future__ import annotations

import pytest

from models.turn import TurnIn
from worker.billing.stripe import StripeBillingError, add_package
from worker.billing.topup import valid_session_id
from worker.client.adapters import AdapterError, from_openai_chat


def test_a_package_id_with_a_trailing_newline_is_refused_before_any_write():
    with pytest.raises(StripeBillingError) as refused:
        add_package(None, package_id="p1\n", name="P", price_cents=500, credit_nanos=10**9)  # type: ignore[arg-type]
    assert refused.value.field == "package_id"


def test_a_checkout_session_id_with_a_trailing_newline_is_not_one():
    assert valid_session_id("cs_test_abc") == "cs_test_abc"
    assert valid_session_id("cs_test_abc\n") is None


@pytest.mark.parametrize(("field", "value"), [("service_tier", "default\n"), ("id", "chatcmpl-1\n")])
def test_an_adapter_refuses_a_tier_or_response_id_with_a_trailing_newline(field, value):
    response = {
        "id": "chatcmpl-1",
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        "service_tier": "default",
    }
    from_openai_chat(response)  # the same response without the newline reads
    with pytest.raises(AdapterError) as refused:
        from_openai_chat({**response, field: value})
    assert refused.value.field == field


def test_the_turn_model_s_tier_pattern_ends_at_the_end_of_the_text():
    """pydantic's (Rust) pattern engine: ``$`` is the end of the text, so the model needs no change."""
    base = dict(turn_id="t", wallet_id="w", enterprise_id="e", chat_id="c", model="gpt-4o")
    assert TurnIn(**base, prompt_tokens=1, completion_tokens=1, service_tier="flex").service_tier == "flex"
    with pytest.raises(ValueError):
        TurnIn(**base, prompt_tokens=1, completion_tokens=1, service_tier="flex\n")
