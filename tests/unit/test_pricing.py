"""worker.pricing.prices: the cost of a turn in integer nano-USD, exact to the nano, equal to genai-prices."""

from __future__ import annotations

import ast
import inspect
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices
from genai_prices.types import Tier as pricing_types_tier  # noqa: N813
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.pricing import prices as pricing
from worker.pricing.prices import (
    PriceBook,
    PriceSheet,
    PricingError,
    Tiered,
    TurnPrice,
    nanos_to_usd,
    usd_to_nanos,
)

WHEN = datetime(2025, 6, 1, 12, tzinfo=UTC)


def _price(
    book: PriceBook, model: str, provider: str | None, prompt: int, cached: int, completion: int, when: datetime = WHEN
) -> TurnPrice:
    return book.price(
        model=model,
        provider=provider,
        when=when,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
    )


def _genai_nanos(model: str, provider: str, prompt: int, cached: int, completion: int, when: datetime = WHEN) -> int:
    """genai-prices' own figure, rounded half-up to the nano (the reference)."""
    calc = calc_price(
        Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion),
        model,
        provider_id=provider,
        genai_request_timestamp=when,
    )
    total = calc.total_price
    assert isinstance(total, Decimal)
    return int((total * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


# --- exact, hand-computed figures -------------------------------------------------------------


def test_gpt4o_exact_cost_and_rates(book):
    # gpt-4o at openai: $2.50 input, $1.25 cache read, $10 output per MTok.
    # uncached 800 × 2500 nanos + cached 200 × 1250 nanos + completion 100 × 10_000 nanos
    price = _price(book, "gpt-4o", "openai", prompt=1000, cached=200, completion=100)
    assert price.cost_nanos == 800 * 2_500 + 200 * 1_250 + 100 * 10_000 == 3_250_000
    assert type(price.cost_nanos) is int
    assert price.input_nanos_per_mtok == 2_500_000_000
    assert price.cached_input_nanos_per_mtok == 1_250_000_000
    assert price.output_nanos_per_mtok == 10_000_000_000
    assert (price.model, price.provider) == ("gpt-4o", "openai")


def test_gpt4o_post_hoc_example_turn(book):
    # the turn the gate tests use: 10_006 × 2500 + 1050 × 10_000
    assert _price(book, "gpt-4o", "openai", prompt=10_006, cached=0, completion=1050).cost_nanos == 35_515_000


def test_zero_tokens_cost_nothing(book):
    assert _price(book, "gpt-4o", "openai", prompt=0, cached=0, completion=0).cost_nanos == 0


def test_all_prompt_cached(book):
    assert _price(book, "gpt-4o", "openai", prompt=4000, cached=4000, completion=0).cost_nanos == 4000 * 1_250


def test_cached_tokens_at_input_price_when_model_has_no_cache_read_price(book):
    # claude-2 at anthropic: $8 in / $24 out, no cache-read price → cached tokens bill at $8.
    sheet = book.sheet("claude-2", "anthropic", WHEN)
    assert sheet.exotic is None
    price = _price(book, "claude-2", "anthropic", prompt=1000, cached=200, completion=100)
    assert price.cached_input_nanos_per_mtok == price.input_nanos_per_mtok == 8_000_000_000
    assert price.cost_nanos == 1000 * 8_000 + 100 * 24_000 == 10_400_000
    assert price.cost_nanos == _genai_nanos("claude-2", "anthropic", 1000, 200, 100)


def test_tiered_model_switches_every_token_above_threshold(book):
    # gemini-2.5-pro at google: $1.25/$0.125/$10 up to 200k prompt tokens, $2.50/$0.25/$15 above.
    sheet = book.sheet("gemini-2.5-pro", "google", WHEN)
    assert sheet.exotic is None
    assert isinstance(sheet.input, Tiered)
    at = _price(book, "gemini-2.5-pro", "google", prompt=200_000, cached=0, completion=1000)
    assert at.cost_nanos == 200_000 * 1_250 + 1000 * 10_000 == 260_000_000
    assert at.input_nanos_per_mtok == 1_250_000_000
    above = _price(book, "gemini-2.5-pro", "google", prompt=200_001, cached=1, completion=1000)
    assert above.cost_nanos == 200_000 * 2_500 + 1 * 250 + 1000 * 15_000 == 515_000_250
    assert (above.input_nanos_per_mtok, above.cached_input_nanos_per_mtok, above.output_nanos_per_mtok) == (
        2_500_000_000,
        250_000_000,
        15_000_000_000,
    )


def test_exotic_model_includes_request_fee(book):
    # perplexity sonar: $1 in, $1 out per MTok plus $12 per thousand requests ($0.012 a request).
    sheet = book.sheet("sonar", "perplexity", WHEN)
    assert sheet.exotic is not None
    price = _price(book, "sonar", "perplexity", prompt=1000, cached=200, completion=100)
    assert price.cost_nanos == 1100 * 1_000 + 12_000_000 == 13_100_000


def test_sub_nano_rate_falls_back_to_genai_prices(book):
    # huggingface_together Qwen3-VL-8B: $0.18000000000000002 per MTok is finer than a nano per MTok.
    sheet = book.sheet("Qwen/Qwen3-VL-8B-Instruct", "huggingface_together", WHEN)
    assert sheet.exotic is not None
    price = _price(book, "Qwen/Qwen3-VL-8B-Instruct", "huggingface_together", 1000, 200, 100)
    assert price.cost_nanos == 248_000
    assert price.cost_nanos == _genai_nanos("Qwen/Qwen3-VL-8B-Instruct", "huggingface_together", 1000, 200, 100)


def test_rounding_is_half_up_once_per_turn():
    # $0.0005 per MTok = half a nano per token.
    b = PriceBook({"acme/half": {"input_mtok": "0.0005", "output_mtok": "0.0015"}})
    assert _price(b, "half", "acme", prompt=1, cached=0, completion=0).cost_nanos == 1  # 0.5 → 1
    assert _price(b, "half", "acme", prompt=3, cached=0, completion=0).cost_nanos == 2  # 1.5 → 2
    assert _price(b, "half", "acme", prompt=2, cached=0, completion=0).cost_nanos == 1
    # one rounding per turn, not per component: 0.5 + 1.5 = 2 (per component it would be 1 + 2 = 3)
    assert _price(b, "half", "acme", prompt=1, cached=0, completion=1).cost_nanos == 2
    # 0.4999995 → 0 : just below the half
    b2 = PriceBook({"acme/tiny": {"input_mtok": "0.000499999"}})
    assert _price(b2, "tiny", "acme", prompt=1, cached=0, completion=0).cost_nanos == 0


def test_huge_turn_is_exact_integer():
    # 10^12 tokens at $75/MTok = $75,000,000 = 75 × 10^15 nanos, beyond 2^53: must stay exact.
    b = PriceBook({"acme/big": {"input_mtok": "75.000000001", "output_mtok": "0"}})
    price = _price(b, "big", "acme", prompt=10**12, cached=0, completion=0)
    assert price.cost_nanos == 75_000_000_001 * 10**12 // 10**6 == 75_000_000_001_000_000
    assert price.cost_nanos > 2**53


def test_tiered_rate_selection_unit():
    t = Tiered(base=10, tiers=((100, 20), (1000, 30)))
    assert [t.at(n) for n in (0, 100, 101, 1000, 1001)] == [10, 10, 20, 20, 30]


# --- cross-check with genai-prices ------------------------------------------------------------


def _tiered_sheets():
    """``(model_id, provider_id, our price sheet)`` of every genai-prices model with a TieredPrices
    input price that our PriceBook finds, in snapshot order."""
    book = PriceBook()
    for prov in get_snapshot().providers:
        for model in prov.models:
            prices = model.prices
            if isinstance(prices, ModelPrice) and isinstance(prices.input_mtok, TieredPrices):
                try:
                    sheet = book.sheet(model.id, prov.id, WHEN)
                except PricingError:  # an id its own match logic does not find
                    continue
                yield model.id, prov.id, sheet


def _find_tiered_plain_model() -> tuple[str, str]:
    """A genai-prices model with a TieredPrices input price that we price ourselves (not exotic)."""
    for model_id, prov_id, sheet in _tiered_sheets():
        if sheet.exotic is None and isinstance(sheet.input, Tiered):
            return model_id, prov_id
    raise AssertionError("genai-prices snapshot has no tiered token-only model")


def _find_exotic_tiered_model() -> tuple[str, str]:
    """A genai-prices model that is both tiered and exotic (priced through genai-prices); since
    1-hour cache-write prices are priced in integers (issue 14) the snapshot may have none: then a
    tiered model with a 1-hour cache-write price (the models that used to be exotic)."""
    for model_id, prov_id, sheet in _tiered_sheets():
        if sheet.exotic is not None:
            return model_id, prov_id
    for model_id, prov_id, sheet in _tiered_sheets():
        if sheet.cache_write_1h is not None and model_id != "claude-sonnet-4-5":
            return model_id, prov_id
    raise AssertionError("no tiered exotic model")


CROSS_CHECK_MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-2", "anthropic"),  # no cache-read price
    ("gemini-2.5-pro", "google"),  # tiered at 200k, token-only
    _find_tiered_plain_model(),
    ("claude-sonnet-4-5", "anthropic"),  # tiered, with 5-minute and 1-hour cache-write prices
    _find_exotic_tiered_model(),
    ("sonar", "perplexity"),  # exotic: per-request fee
    ("Qwen/Qwen3-VL-8B-Instruct", "huggingface_together"),  # sub-nano rate
    ("gemini-flash-1.5-8b", "google"),  # $0.0375/MTok: fractional nanos per token
]


def test_cross_check_models_cover_tiered_and_exotic():
    book = PriceBook()
    sheets = [book.sheet(m, p, WHEN) for m, p in CROSS_CHECK_MODELS]
    assert any(s.exotic is None and isinstance(s.input, Tiered) for s in sheets)
    assert any(s.exotic is not None for s in sheets)
    # a tiered exotic price: from genai-prices if its snapshot has one, else a synthetic one (below)
    assert any(
        s.exotic is not None and isinstance(s.exotic.input_mtok, TieredPrices)
        for s in [*sheets, _SYNTHETIC_EXOTIC_TIERED]
    )


#: tiered input and a per-request fee: exotic (priced through genai-prices' own calc_price)
_SYNTHETIC_EXOTIC_TIERED = pricing._sheet_from_model_price(
    "synthetic",
    "test",
    ModelPrice(
        input_mtok=TieredPrices(base=Decimal("3"), tiers=[pricing_types_tier(200_000, Decimal("6"))]),
        cache_read_mtok=Decimal("0.3"),
        output_mtok=Decimal("15"),
        requests_kcount=Decimal("5"),
    ),
)


@pytest.mark.parametrize("prompt", [0, 1_000, 200_000, 200_001, 500_000])
def test_a_synthetic_tiered_exotic_price_equals_genai_prices(prompt):
    sheet = _SYNTHETIC_EXOTIC_TIERED
    assert sheet.exotic is not None
    got = sheet.price(prompt, 700, prompt // 3).cost_nanos
    ref = sheet.exotic.calc_price(Usage(input_tokens=prompt, cache_read_tokens=prompt // 3, output_tokens=700))
    assert got == int((ref["total_price"] * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


@st.composite
def _usage(draw):
    prompt = draw(
        st.one_of(
            st.integers(0, 5_000),
            st.integers(0, 400_000),
            st.sampled_from([127_999, 128_000, 128_001, 199_999, 200_000, 200_001, 271_999, 272_000, 272_001]),
        )
    )
    cached = draw(st.integers(0, prompt))
    completion = draw(st.integers(0, 100_000))
    return prompt, cached, completion


@pytest.mark.parametrize(("model", "provider"), CROSS_CHECK_MODELS, ids=lambda v: str(v))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=_usage())
def test_cost_equals_genai_prices(book, model, provider, usage):
    prompt, cached, completion = usage
    ours = _price(book, model, provider, prompt, cached, completion).cost_nanos
    assert type(ours) is int
    assert ours == _genai_nanos(model, provider, prompt, cached, completion)


def test_cost_equals_genai_prices_on_another_date(book):
    when = datetime(2024, 3, 1, 12, tzinfo=UTC)
    for model, provider in (("gpt-4o", "openai"), ("claude-2", "anthropic")):
        assert _price(book, model, provider, 12_345, 2_345, 678, when).cost_nanos == _genai_nanos(
            model, provider, 12_345, 2_345, 678, when
        )


def test_provider_none_lets_genai_prices_choose(book):
    price = _price(book, "gpt-4o", None, 1000, 200, 100)
    assert price.provider == "openai"
    assert price.cost_nanos == 3_250_000


def test_aware_non_utc_time_uses_the_utc_date():
    sheet_a = PriceBook().sheet("gpt-4o", "openai", datetime(2025, 6, 2, 1, 0, tzinfo=timezone(timedelta(hours=5))))
    sheet_b = PriceBook().sheet("gpt-4o", "openai", datetime(2025, 6, 1, 20, 0, tzinfo=UTC))
    assert sheet_a == sheet_b


# --- unknown models ---------------------------------------------------------------------------


def test_unknown_model_raises_pricing_error_naming_it(book):
    with pytest.raises(PricingError) as info:
        _price(book, "no-such-model-xyz", "openai", 10, 0, 10)
    assert "no-such-model-xyz" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_provider_raises_pricing_error(book):
    with pytest.raises(PricingError) as info:
        _price(book, "gpt-4o", "no-such-provider", 10, 0, 10)
    assert "gpt-4o" in str(info.value)
    assert "no-such-provider" in str(info.value)


def test_unknown_model_without_provider(book):
    with pytest.raises(PricingError, match="totally-unknown-model-123"):
        _price(book, "totally-unknown-model-123", None, 1, 0, 1)


# --- overrides --------------------------------------------------------------------------------


def test_override_prices_a_custom_model():
    b = PriceBook({"acme/my-model": {"input_mtok": "1.00", "output_mtok": "4.00"}})
    price = _price(b, "my-model", "acme", prompt=1000, cached=200, completion=100)
    # no cache-read price: cached tokens at the input price
    assert price.cost_nanos == 1000 * 1_000 + 100 * 4_000 == 1_400_000
    assert (price.input_nanos_per_mtok, price.cached_input_nanos_per_mtok, price.output_nanos_per_mtok) == (
        1_000_000_000,
        1_000_000_000,
        4_000_000_000,
    )
    assert (price.model, price.provider) == ("my-model", "acme")


def test_override_with_cache_read_price():
    b = PriceBook({"acme/my-model": {"input_mtok": "1.00", "cache_read_mtok": "0.25", "output_mtok": "4.00"}})
    assert _price(b, "my-model", "acme", 1000, 200, 100).cost_nanos == 800 * 1_000 + 200 * 250 + 100 * 4_000


def test_override_is_case_insensitive():
    b = PriceBook({"ACME/My-Model": {"input_mtok": "1"}})
    assert _price(b, "my-model", "acme", 1000, 0, 0).cost_nanos == 1_000_000


def test_override_for_other_provider_does_not_apply():
    b = PriceBook({"acme/my-model": {"input_mtok": "1.00"}})
    with pytest.raises(PricingError, match="my-model"):
        _price(b, "my-model", "other", 1, 0, 1)


def test_override_with_empty_provider_matches_any_provider():
    b = PriceBook({"/my-model": {"input_mtok": "2", "output_mtok": "3"}})
    for provider in ("acme", "zeta", None):
        price = _price(b, "my-model", provider, 1000, 0, 1000)
        assert price.cost_nanos == 2_000_000 + 3_000_000
        assert price.provider == "custom"


def test_override_wins_over_genai_prices():
    b = PriceBook({"openai/gpt-4o": {"input_mtok": "1.00", "cache_read_mtok": "0.50", "output_mtok": "2.00"}})
    price = _price(b, "gpt-4o", "openai", 1000, 200, 100)
    assert price.cost_nanos == 800 * 1_000 + 200 * 500 + 100 * 2_000 == 1_100_000
    assert price.cost_nanos != _genai_nanos("gpt-4o", "openai", 1000, 200, 100)
    # other models still come from genai-prices
    assert _price(b, "gpt-4o-mini", "openai", 1000, 0, 0).cost_nanos == _genai_nanos(
        "gpt-4o-mini", "openai", 1000, 0, 0
    )


def test_override_model_with_slash():
    b = PriceBook({"openrouter/meta/llama-x": {"input_mtok": "0.5"}})
    assert _price(b, "meta/llama-x", "openrouter", 2000, 0, 0).cost_nanos == 1_000_000


def test_override_from_file(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text('{"acme/my-model": {"input_mtok": "1.00", "output_mtok": "4.00"}}')
    b = PriceBook.from_file(f)
    assert _price(b, "my-model", "acme", 1000, 0, 100).cost_nanos == 1_400_000
    assert PriceBook.from_file(None)._overrides == {}


def test_override_file_malformed(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text("{not json")
    with pytest.raises(PricingError, match="prices.json"):
        PriceBook.from_file(f)
    with pytest.raises(PricingError, match="missing.json"):
        PriceBook.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize("key", ["my-model", "acme/", ""])
def test_malformed_override_key(key):
    with pytest.raises(PricingError) as info:
        PriceBook({key: {"input_mtok": "1.00"}})
    assert repr(key) in str(info.value)


def test_override_unknown_field_names_key_and_field():
    with pytest.raises(PricingError) as info:
        PriceBook({"acme/my-model": {"input_mtok": "1.00", "outptu_mtok": "4.00"}})
    assert "'acme/my-model'" in str(info.value)
    assert "outptu_mtok" in str(info.value)


@pytest.mark.parametrize("value", ["abc", "", "1.0000000001", "-1.00", "1,00", "NaN"])
def test_override_bad_value_names_key(value):
    with pytest.raises(PricingError) as info:
        PriceBook({"acme/my-model": {"input_mtok": "1.00", "output_mtok": value}})
    assert "'acme/my-model'" in str(info.value)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity"])
def test_override_infinite_value_is_a_pricing_error(value):
    # 'Infinity' parses as a Decimal; it must still be rejected as a PricingError naming the key
    # (not escape as OverflowError), since a malformed override file is a user error.
    with pytest.raises(PricingError) as info:
        PriceBook({"acme/my-model": {"input_mtok": value}})
    assert "'acme/my-model'" in str(info.value)


@pytest.mark.parametrize("entry", [None, "1.00"])
def test_override_entry_not_a_mapping_names_key(entry):
    # e.g. {"acme/my-model": null} in the JSON overrides file
    with pytest.raises(PricingError) as info:
        PriceBook({"acme/my-model": entry})
    assert "'acme/my-model'" in str(info.value)


def test_bad_override_leaves_nothing_half_built():
    with pytest.raises(PricingError):
        PriceBook({"acme/good": {"input_mtok": "1"}, "acme/bad": {"input_mtok": "x"}})


# --- usd_to_nanos / nanos_to_usd --------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "nanos"),
    [
        ("2.50", 2_500_000_000),
        ("0.000000001", 1),
        ("-0.000000001", -1),
        ("0", 0),
        (Decimal("1.25"), 1_250_000_000),
        (3, 3_000_000_000),
        ("9223372036.854775807", 2**63 - 1),
        ("123456789012345678.123456789", 123456789012345678123456789),
        ("1E-9", 1),
        ("0.1000000000000", 100_000_000),
    ],
)
def test_usd_to_nanos_exact(usd, nanos):
    got = usd_to_nanos(usd)
    assert got == nanos
    assert type(got) is int


@pytest.mark.parametrize("usd", ["0.0000000001", "1.0000000005", "abc", "", "1.2.3", "Infinity"])
def test_usd_to_nanos_rejects(usd):
    with pytest.raises(PricingError):
        usd_to_nanos(usd)


#: amounts ``Decimal`` reads that no one types as money: other scripts' digits, digit separators,
#: superscripts, full-width digits, a thousands comma
_NOT_ASCII_DECIMAL = ["\u0661\u0662", "\u0967.5", "1_000", "1_000.5", "\uff11\uff12", "1,000", "\u00b2", "5\u066b5"]


@pytest.mark.parametrize("usd", _NOT_ASCII_DECIMAL)
def test_usd_to_nanos_reads_ascii_decimal_text_only(usd):
    """``Decimal('١٢')`` is 12 and ``Decimal('1_000')`` 1000: a CLI credit of ``--usd ١٢`` added
    $12.  Text must be ASCII decimal syntax; the CLI's parse_usd shares the rule, naming the flag."""
    with pytest.raises(PricingError, match="ASCII"):
        usd_to_nanos(usd)
    import typer

    from worker.cli.common import parse_usd

    with pytest.raises(typer.Exit) as refused:
        parse_usd(usd, "--usd")
    assert refused.value.exit_code == 2


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(categories=("Nd", "No", "Nl", "Pc", "Po")), min_size=1, max_size=6))
def test_only_ascii_digits_make_an_amount(text):
    from worker.pricing.prices import decimal_text_problem

    ascii_number = all(c in "0123456789." for c in text) and text.count(".") <= 1 and text != "."
    assert (decimal_text_problem(text) is None) is ascii_number, text


@pytest.mark.parametrize(
    ("nanos", "usd"),
    [
        (0, "0.000000000"),
        (1, "0.000000001"),
        (-1, "-0.000000001"),
        (1_500_000_000, "1.500000000"),
        (-1_500_000_000, "-1.500000000"),
        (999_999_999, "0.999999999"),
        (-35_514_999, "-0.035514999"),
        (2**62, "4611686018.427387904"),
        (2**63 - 1, "9223372036.854775807"),
        (10**30 + 7, "1000000000000000000000.000000007"),
    ],
)
def test_nanos_to_usd_exact(nanos, usd):
    assert nanos_to_usd(nanos) == usd


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63))
def test_nanos_round_trip(nanos):
    text = nanos_to_usd(nanos)
    assert usd_to_nanos(text) == nanos
    sign = "-" if nanos < 0 else ""
    assert text == f"{sign}{abs(nanos) // 10**9}.{abs(nanos) % 10**9:09d}"


def test_usd_to_nanos_exact_beyond_28_digits():
    nanos = 10**28 + 1
    # Exact means exact at any size: the default decimal context (28 digits) must not round.
    assert usd_to_nanos(nanos_to_usd(nanos)) == nanos


def test_usd_to_nanos_rejects_sub_nano_digit_beyond_28_digits():
    # 1 USD and 10^-28 USD is not a whole number of nanos; rounding it to 28 digits hides that.
    with pytest.raises(PricingError):
        usd_to_nanos("1.0000000000000000000000000001")


def test_no_float_in_pricing_module():
    """No float literal and no float() call in worker/pricing/prices.py (money is integers and Decimal)."""
    tree = ast.parse(inspect.getsource(pricing))
    floats = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, float)]
    calls = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "float"
    ]
    divisions = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)]
    assert floats == [] and calls == [] and divisions == []


def test_sheet_price_direct():
    sheet = PriceSheet(model="m", provider="p", input=3_000, cache_read=1_000, output=7_000)
    # (10×3000 + 5×1000 + 7×7000) / 10^6 = 84_000 / 10^6 = 0.084 → 0
    assert sheet.price(15, 7, 5).cost_nanos == 0
    # (999_995×3000 + 5×1000) / 10^6 = 2999.99 → 3000
    assert sheet.price(1_000_000, 0, 5).cost_nanos == 3000
    # 500 × 3000 / 10^6 = 1.5 → 2 ; 166 × 3000 / 10^6 = 0.498 → 0 ; 167 × 3000 / 10^6 = 0.501 → 1
    assert [sheet.price(n, 0, 0).cost_nanos for n in (500, 166, 167)] == [2, 0, 1]


@pytest.mark.parametrize("hour", [3, 12, 16, 17, 20, 23])
def test_off_peak_prices_follow_the_turn_s_time_of_day(hour):
    """genai-prices prices DeepSeek lower off-peak (a TimeOfDateConstraint): the same turn costs
    what genai-prices says at that hour, to the nano."""
    when = datetime(2026, 11, 1, hour, 45, tzinfo=UTC)
    book = PriceBook()
    ours = book.price(
        model="deepseek-chat",
        provider="deepseek",
        when=when,
        prompt_tokens=1_000_000,
        completion_tokens=100_000,
        cached_prompt_tokens=200_000,
    ).cost_nanos
    ref = calc_price(
        Usage(input_tokens=1_000_000, cache_read_tokens=200_000, output_tokens=100_000),
        "deepseek-chat",
        provider_id="deepseek",
        genai_request_timestamp=when,
    ).total_price
    assert ours == int((ref * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("model", ["claude-sonnet-4-20250514", "claude-3-5-haiku", "claude-opus-4-1"])
def test_cache_write_tokens_cost_the_cache_write_price_as_genai_prices_says(book, model):
    """Anthropic's cache creation tokens are part of the prompt and cost more than input tokens."""
    tp = book.price(
        model=model,
        provider="anthropic",
        when=WHEN,
        prompt_tokens=10_000,
        completion_tokens=500,
        cached_prompt_tokens=3_000,
        cache_write_tokens=2_000,
    )
    ref = calc_price(
        Usage(input_tokens=10_000, cache_read_tokens=3_000, cache_write_tokens=2_000, output_tokens=500),
        model_ref=model,
        provider_id="anthropic",
        genai_request_timestamp=WHEN,
    )
    assert tp.cost_nanos == int((ref.total_price * 10**9).to_integral_value(rounding=ROUND_HALF_UP))
    assert tp.cache_write_nanos_per_mtok == tp.input_nanos_per_mtok * 5 // 4  # Anthropic: 1.25 × input
    without = book.price(
        model=model,
        provider="anthropic",
        when=WHEN,
        prompt_tokens=10_000,
        completion_tokens=500,
        cached_prompt_tokens=3_000,
    )
    assert (
        tp.cost_nanos - without.cost_nanos == 2_000 * (tp.cache_write_nanos_per_mtok - tp.input_nanos_per_mtok) // 10**6
    )


def test_cache_write_without_a_cache_write_price_costs_the_input_price(book):
    tp = book.price(
        model="gpt-4o", provider="openai", when=WHEN, prompt_tokens=1_000, completion_tokens=0, cache_write_tokens=400
    )
    assert (tp.cost_nanos, tp.cache_write_nanos_per_mtok) == (2_500_000, 2_500_000_000)


def test_override_with_cache_write_price():
    book = PriceBook({"acme/m1": {"input_mtok": "1", "cache_write_mtok": "1.5", "output_mtok": "2"}})
    tp = book.price(
        model="m1", provider="acme", when=WHEN, prompt_tokens=1_000_000, completion_tokens=0, cache_write_tokens=200_000
    )
    assert tp.cost_nanos == 800_000_000 + 300_000_000
