"""Billing periods: calendar months in UTC, named ``'YYYY-MM'``.

A turn at 2026-11-30T23:59:59.999Z is in ``'2026-11'``; one at 2026-12-01T00:00:00Z in ``'2026-12'``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from worker.errors import InvalidInput

#: the years a period (and a date range of the /billing page) may fall in
FIRST_YEAR, LAST_YEAR = 1900, 2999
# ASCII digits only: ``\d`` alone also matches other scripts' digits ('2٠٢٦-11' read as 2026-11)
_PERIOD = re.compile(r"(19\d\d|2\d\d\d)-(0[1-9]|1[0-2])", re.ASCII)


def period_of(when: datetime) -> str:
    """The period (UTC month) of an aware datetime.  Raises ValueError for a naive one."""
    if when.tzinfo is None:
        raise ValueError("period_of needs an aware datetime (UTC)")
    return when.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a period as aware UTC datetimes.  Raises ValueError naming the period."""
    m = _PERIOD.fullmatch(period) if isinstance(period, str) else None
    if not m:
        raise InvalidInput("period", f"{period!r} is not 'YYYY-MM'")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def previous_period(period: str) -> str:
    """The month before ``period``."""
    start, _ = period_bounds(period)
    year, month = (start.year, start.month - 1) if start.month > 1 else (start.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def current_period(now: datetime | None = None) -> str:
    """The period of ``now`` (default: the current time, UTC)."""
    return period_of(now or datetime.now(UTC))


def periods_between(first: str, last: str, most: int = 600) -> list[str]:
    """The periods from ``last`` back to ``first``, newest first, both included (``[last]`` when
    ``first`` is after ``last``), at most ``most`` of them (the newest).  Raises ValueError naming
    the period for one that is not 'YYYY-MM'."""
    period_bounds(first)
    out = [last]
    while out[-1] > first and len(out) < most:
        out.append(previous_period(out[-1]))
    return out


def past_retention(period: str, months: int, now: datetime | None = None) -> bool:
    """Is ``period`` older than the last ``months`` periods ending with ``now``'s (its usage events
    dropped by retention)?  ``months`` 0 keeps everything: never.  Periods compare as 'YYYY-MM' strings."""
    if not months:
        return False
    year, month = map(int, current_period(now).split("-"))
    index = year * 12 + month - 1 - (months - 1)
    return period < f"{index // 12:04d}-{index % 12 + 1:02d}"
