"""Displayed money on /billing and the PDF: largest-remainder rounding of integer nano-USD to cents
(parts add up to their displayed total), small amounts never shown as $0.00, stable provider colours."""

from __future__ import annotations

import random

import pytest

from worker.billing.report import (
    CENT_NANOS,
    PALETTE,
    PROVIDER_COLORS,
    format_cents,
    format_money,
    format_usd,
    largest_remainder,
    provider_color,
    round_cents,
)
from worker.billing.statement import transaction_source
from worker.errors import InputError

C = CENT_NANOS  # 1 cent in nanos


@pytest.mark.parametrize(
    "nanos, cents",
    [(0, 0), (4_999_999, 0), (5_000_000, 1), (-4_999_999, 0), (-5_000_000, -1), (15_000_000, 2), (-15_000_000, -2)],
)
def test_round_cents_is_half_away_from_zero_like_format_usd(nanos, cents):
    assert round_cents(nanos) == cents
    assert format_cents(cents) == format_usd(nanos)


def test_the_issue_s_cards_add_up():
    # LLM $3.796 + meters $0.076 = $3.872: rounded alone $3.80 + $0.08 = $3.88 ≠ $3.87
    parts = [3_796_000_000, 76_000_000]
    assert [round_cents(p) for p in parts] == [380, 8]
    assert round_cents(sum(parts)) == 387
    assert largest_remainder(parts) == [380, 7]


def test_three_thirds_of_a_cent_tie_goes_to_the_earlier_part():
    assert largest_remainder([3_334_000, 3_333_000, 3_333_000]) == [1, 0, 0]
    # an exact tie: the first listed part takes the cent
    assert largest_remainder([5_000_000, 5_000_000]) == [1, 0]  # $0.005 + $0.005 = $0.01
    assert largest_remainder([5_000_000, 5_000_000, 5_000_000]) == [1, 1, 0]  # $0.015 → $0.02


def test_negative_parts():
    # -$0.003 + $0.008 = $0.005 → $0.01 (half away from zero); floors -1, 0; remainders 0.7, 0.8 cent
    assert largest_remainder([-3_000_000, 8_000_000]) == [0, 1]
    # a refund larger than the spend: -$1.234 + $0.5 = -$0.734 → -$0.73
    assert largest_remainder([-1_234_000_000, 500_000_000]) == [-123, 50]
    # -$0.006 twice = -$0.012 → -$0.01: floors -1, -1 (remainders 0.4 cent each), one cent back to the first
    assert largest_remainder([-6_000_000, -6_000_000]) == [0, -1]


def test_a_given_total_is_met_exactly():
    # a parent already displayed as $3.80: its children must sum to 380 cents
    assert largest_remainder([1_899_000_000, 1_897_000_000], 380) == [190, 190]
    assert largest_remainder([1_899_000_000, 1_897_000_000], 379) == [190, 189]
    assert largest_remainder([], 0) == []
    with pytest.raises(InputError, match="total_cents"):
        largest_remainder([], 1)


def test_exact_cents_are_kept_and_zero_parts_get_nothing():
    assert largest_remainder([100 * C, 0, 250 * C, 0]) == [100, 0, 250, 0]
    assert largest_remainder([0, 0, 7_000_000]) == [0, 0, 1]


def test_random_parts_always_sum_to_the_rounded_total_and_stay_within_a_cent():
    rng = random.Random(18)
    for _ in range(2000):
        parts = [rng.randint(-3 * C, 40 * C) * rng.choice((1, 1, 1, 1000)) for _ in range(rng.randint(1, 9))]
        cents = largest_remainder(parts)
        assert sum(cents) == round_cents(sum(parts))
        for p, c in zip(parts, cents):
            assert p // C <= c <= p // C + 1  # floor or floor + 1: never more than a cent off


def test_small_amounts_never_read_zero():
    assert format_money(3_331_800) == "<$0.01"  # 16,659 function calls at 200 nanos
    assert format_money(-1) == "-<$0.01"
    assert format_money(0) == "$0.00"
    assert format_money(5_000_000) == "$0.01"
    assert format_cents(0, 3_331_800) == "<$0.01"
    assert format_cents(0, 0) == "$0.00"
    assert format_cents(123_456) == "$1,234.56"
    assert format_cents(-100, -1_000_000_000) == "-$1.00"


def test_provider_colours_are_fixed():
    assert provider_color("openai") == PROVIDER_COLORS["openai"]
    assert provider_color("tollgate") == "#94a3b8"
    # an unlisted provider: always the same palette entry (crc32, not Python's salted hash)
    assert provider_color("some-new-provider") == provider_color("some-new-provider") in PALETTE
    assert len(set(PROVIDER_COLORS.values())) == len(PROVIDER_COLORS)


@pytest.mark.parametrize(
    "kind, key, source",
    [
        ("credit", "stripe:cs_test_1", "stripe"),
        ("credit", "stripe:in_1", "stripe"),
        ("credit", "tollgate:allowance:w-1:2026-11", "allowance"),
        ("credit", "tollgate:allowance-restore:w-1:2026-11:5", "allowance"),
        ("debit", "tollgate:allowance-expiry:w-1:2026-10", "allowance_expiry"),
        ("debit", "tollgate:usage:0:1-0", "usage"),
        ("debit", "tollgate:flat-fee:acme:2026-11", "flat_fee"),
        ("credit", "tollgate:refund:0:5-0", "refund"),
        ("debit", "tollgate:deadletter:0:5-0", "dead_letter"),
        ("credit", "tollgate:deadletter-refund:0:5-0", "dead_letter"),
        ("credit", "goodwill-17", "operator"),
        ("credit", "stripe-like-but-not:1", "operator"),
    ],
)
def test_ledger_sources_from_idempotency_keys(kind, key, source):
    assert transaction_source(kind, key) == source
