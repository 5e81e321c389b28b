"""Billing periods (UTC calendar months): boundaries to the millisecond, year rollover, bad input,
and "now" frozen with time-machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import time_machine

from worker.periods import current_period, period_bounds, period_of, previous_period

LAST_MS_OF_NOVEMBER = datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC)
FIRST_OF_DECEMBER = datetime(2026, 12, 1, tzinfo=UTC)


def test_last_millisecond_of_a_month_and_the_next_midnight_are_in_different_periods():
    assert period_of(LAST_MS_OF_NOVEMBER) == "2026-11"
    assert period_of(FIRST_OF_DECEMBER) == "2026-12"
    assert period_of(FIRST_OF_DECEMBER - timedelta(microseconds=1)) == "2026-11"


def test_period_of_converts_other_zones_to_utc():
    # 2026-12-01 01:30 in UTC+02:00 is still 2026-11-30 23:30 UTC
    plus_two = timezone(timedelta(hours=2))
    assert period_of(datetime(2026, 12, 1, 1, 30, tzinfo=plus_two)) == "2026-11"
    minus_five = timezone(timedelta(hours=-5))
    assert period_of(datetime(2026, 11, 30, 19, 0, tzinfo=minus_five)) == "2026-12"


def test_period_of_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="aware"):
        period_of(datetime(2026, 11, 30, 12))


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2028-02", datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    ],
)
def test_period_bounds_are_half_open_utc_months(period, start, end):
    assert period_bounds(period) == (start, end)
    assert period_of(start) == period
    assert period_of(end - timedelta(microseconds=1)) == period
    assert period_of(end) != period


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "", "2026-11-01"])
def test_period_bounds_refuses_malformed_periods_naming_the_field(bad):
    with pytest.raises(ValueError, match="period"):
        period_bounds(bad)


def test_previous_period_crosses_the_year():
    assert previous_period("2027-01") == "2026-12"
    assert previous_period("2026-12") == "2026-11"


def test_current_period_follows_the_frozen_clock_across_midnight():
    with time_machine.travel(LAST_MS_OF_NOVEMBER, tick=False):
        assert current_period() == "2026-11"
    with time_machine.travel(FIRST_OF_DECEMBER, tick=False):
        assert current_period() == "2026-12"
    # an explicit "now" wins over the clock
    with time_machine.travel(FIRST_OF_DECEMBER, tick=False):
        assert current_period(LAST_MS_OF_NOVEMBER) == "2026-11"
