"""The drill-down's pure helpers: turn-list cursors, durations as displayed, the month picker's
months (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api_stub.routes.billing_drill import format_duration
from worker.chats.drill import TurnRow, parse_cursor
from worker.errors import InvalidInput
from worker.periods import periods_between


def _turn(at: datetime, id_: int) -> TurnRow:
    return TurnRow(id_, at, "a", "openai", "gpt-4o", "llm", 0, 1, 0, 1, 1, 1, 1, "continue", "production")


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2099, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_a_cursor_round_trips_to_the_microsecond(at):
    assert parse_cursor(_turn(at, 9_223_372_036_854_775_807).cursor) == (at, 9_223_372_036_854_775_807)


@pytest.mark.parametrize("raw", ["yesterday", "1.2.3", "-5.1", "1.", ".1", "1e5.3", " 1.2", "1.9999999999999999999"])
def test_a_bad_cursor_names_the_field(raw):
    with pytest.raises(InvalidInput) as err:
        parse_cursor(raw)
    assert err.value.field == "cursor"


def test_no_cursor_is_the_first_page():
    assert parse_cursor(None) is None and parse_cursor("") is None


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0.000 s"),
        (0.0004, "0.000 s"),
        (12.3456, "12.346 s"),
        (59.9994, "59.999 s"),
        (59.9996, "1 min 00 s"),
        (425, "7 min 05 s"),
        (3599.9, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (266_400, "74 h 00 min"),
        (36_000_061, "10,000 h 01 min"),
        (-3, "0.000 s"),
    ],
)
def test_durations_read_as_time(seconds, shown):
    assert format_duration(seconds) == shown


def test_the_month_picker_goes_back_to_the_first_month():
    assert periods_between("2025-11", "2026-02") == ["2026-02", "2026-01", "2025-12", "2025-11"]
    assert periods_between("2026-03", "2026-02") == ["2026-02"]
    assert len(periods_between("1900-01", "2026-12", most=12)) == 12
    with pytest.raises(ValueError):
        periods_between("2026-13", "2026-12")
