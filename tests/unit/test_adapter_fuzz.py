"""Issue 14, item 8: whatever an SDK response's usage holds, the adapters and a billing session's
``record_response`` either record a valid turn or raise the documented ``AdapterError`` naming the
field: never pydantic's ValidationError, a KeyError, a TypeError or anything else.  No services:
the transport records the turns it is given."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.turn import Decision, TurnIn
from worker.client.adapters import MAX_TOKENS, AdapterError, TokenUsage, usage_from_response
from worker.client.session import BillingSession


class RecordingTransport:
    """Accepts every turn (a balance that never runs out) and keeps it."""

    events_url = None

    def __init__(self) -> None:
        self.turns: list[TurnIn] = []

    def record(self, turn: TurnIn) -> Decision:
        self.turns.append(turn)
        return Decision(
            turn_id=turn.turn_id, accepted=True, action="continue", balance_nanos=10**15, cost_nanos=0, billed_nanos=0
        )


def session() -> BillingSession:
    return BillingSession(
        RecordingTransport(),
        level="app_usage",
        payer_id="u1",
        enterprise_id="app-1",
        workflow="wf",
        chat_id="chat-1",
        cost_threshold_nanos=None,
        warn_at_bps=8_000,
        events_url=None,
    )


class Hostile:
    """An SDK object whose every attribute read raises (a broken property, a lazy proxy)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"cannot compute {name}")

    def __repr__(self) -> str:
        return "Hostile()"


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.decimals(allow_nan=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(-(2**70), 2**70),
    st.just(Hostile()),
)
COUNT = st.one_of(st.integers(0, 5_000), st.integers(MAX_TOKENS - 2, MAX_TOKENS + 2), st.integers(-5, -1), JUNK)


def container(fields: dict) -> st.SearchStrategy:
    """The same fields as a dict, or as an object's attributes (as the SDKs' pydantic models)."""
    optional = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(optional, optional.map(lambda d: SimpleNamespace(**d)), JUNK)


DETAILS_IN = container({"cached_tokens": COUNT, "cache_write_tokens": COUNT})
DETAILS_OUT = container({"reasoning_tokens": COUNT})
CREATION = container({"ephemeral_5m_input_tokens": COUNT, "ephemeral_1h_input_tokens": COUNT})
TIER = st.one_of(
    st.sampled_from(["default", "flex", "priority", "scale", "auto", "standard", "batch"]), JUNK, st.text(max_size=40)
)
USAGE = container(
    {
        "prompt_tokens": COUNT,
        "completion_tokens": COUNT,
        "input_tokens": COUNT,
        "output_tokens": COUNT,
        "cache_read_input_tokens": COUNT,
        "cache_creation_input_tokens": COUNT,
        "cache_creation": CREATION,
        "prompt_tokens_details": DETAILS_IN,
        "input_tokens_details": DETAILS_IN,
        "completion_tokens_details": DETAILS_OUT,
        "output_tokens_details": DETAILS_OUT,
        "service_tier": TIER,
    }
)
RESPONSE = container(
    {
        "model": st.one_of(st.sampled_from(["gpt-4o", "claude-sonnet-4-0", "gpt-5"]), JUNK, st.text(max_size=300)),
        "id": st.one_of(st.none(), st.sampled_from(["chatcmpl-1", "msg_1", "resp_1"]), st.text(max_size=260), JUNK),
        "type": st.sampled_from(["message", "response", None]),
        "service_tier": TIER,
        "usage": USAGE,
    }
)


@settings(max_examples=600, deadline=None)
@given(response=RESPONSE)
def test_any_response_records_a_valid_turn_or_raises_adapter_error(response):
    s = session()
    try:
        s.record_response(response, agent="planner", duration_ms=5)
    except AdapterError as exc:
        assert str(exc)  # names the field
        assert s.transport.turns == []
        return
    (turn,) = s.transport.turns
    assert 0 <= turn.cached_prompt_tokens + turn.cache_write_tokens <= turn.prompt_tokens <= MAX_TOKENS
    assert 0 <= turn.cache_write_1h_tokens <= turn.cache_write_tokens


@settings(max_examples=300, deadline=None)
@given(response=RESPONSE)
def test_usage_from_response_raises_nothing_but_adapter_error(response):
    try:
        usage = usage_from_response(response)
    except AdapterError:
        return
    assert isinstance(usage, TokenUsage)


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 1}, r"usage\.prompt_tokens: must be at most"),
        (
            {"prompt_tokens": 10, "completion_tokens": 1.5},
            r"usage\.completion_tokens: must be an integer >= 0, got 1\.5",
        ),
        ({"prompt_tokens": "10", "completion_tokens": 1}, r"usage\.prompt_tokens: must be an integer >= 0, got '10'"),
        (
            {"input_tokens": MAX_TOKENS, "output_tokens": 1, "cache_read_input_tokens": 5},
            r"usage\.input_tokens: with cache reads and writes, 1000000005 prompt tokens exceed",
        ),
        ({"prompt_tokens": Hostile(), "completion_tokens": 1}, r"usage\.prompt_tokens: must be an integer >= 0"),
        (Hostile(), r"usage\.prompt_tokens: cannot be read \(RuntimeError: cannot compute prompt_tokens\)"),
    ],
)
def test_bad_counts_name_their_field(usage, field):
    with pytest.raises(AdapterError, match=f"^{field}"):
        session().record_response({"model": "gpt-4o", "usage": usage}, agent="a")


def test_what_the_turn_refuses_of_a_response_is_an_adapter_error_too():
    """A model name or response id the turn cannot carry: AdapterError naming it, not ValidationError;
    the caller's own bad argument (agent) stays pydantic's ValidationError, as documented."""
    from pydantic import ValidationError

    with pytest.raises(AdapterError, match=r"^usage\.model: "):
        session().record_response(
            {"model": "m" * 201, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, agent="a"
        )
    with pytest.raises(AdapterError, match=r"^id: the response id must be"):
        session().record_response(
            {"id": "chatcmpl 1", "model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, agent="a"
        )
    with pytest.raises(AdapterError, match=r"^usage\.turn_id: "):  # <chat_id>:<response id> over 300 characters
        BillingSession(
            RecordingTransport(),
            level="app_usage",
            payer_id="u1",
            enterprise_id="app-1",
            workflow="wf",
            chat_id="c" * 200,
            cost_threshold_nanos=None,
            warn_at_bps=8_000,
            events_url=None,
        ).record_response(
            {"id": "x" * 150, "model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, agent="a"
        )
    with pytest.raises(ValidationError):
        session().record_response(
            {"model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, agent="has space"
        )
    with pytest.raises(AdapterError, match=r"^usage\.prompt_tokens: "):  # a TokenUsage built by hand
        session().record_response(TokenUsage("gpt-4o", MAX_TOKENS + 1, 0), agent="a")
