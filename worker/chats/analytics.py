"""Usage analytics: turns, tokens and money per day, ISO week or month, grouped by workflow, agent,
model and/or provider, for one enterprise, computed in PostgreSQL from ``usage_event``.

Meters: only LLM turns exist today (``usage_event``).  Non-LLM meters (emails, storage GB-month,
function calls; DESIGN.md "Money and prices") are not recorded anywhere yet, so they do not appear
here; when they exist they belong in this module as further sources, not as fake rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any, Iterable, Literal, get_args

from sqlalchemy import Date, cast, func, literal_column, select
from sqlmodel import Session, col

from models.turn import UsageEvent
from worker.errors import InvalidInput

Granularity = Literal["day", "week", "month"]
GroupKey = Literal["workflow", "agent", "model", "provider"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
GROUP_KEYS: tuple[str, ...] = get_args(GroupKey)
#: figures of every row, in this order (tokens and nano-USD, all integers)
FIGURES = ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos", "billed_nanos")


def _bound(value: Any, name: str) -> datetime:
    """A ``date`` (midnight UTC) or an aware ``datetime`` → aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(name, f"must be an aware datetime (UTC) or a date, got naive {value.isoformat()}")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    raise InvalidInput(name, f"must be a date or an aware datetime, got {value!r}")


def validate_group_by(group_by: Iterable[str] | str | None) -> tuple[str, ...]:
    """``group_by`` as a tuple of distinct keys of :data:`GROUP_KEYS` (order kept; ``None`` → ``()``).

    Raises: ValueError naming ``group_by`` for an unknown or repeated key, or a bare string.
    """
    if group_by is None:
        return ()
    if isinstance(group_by, str):
        raise InvalidInput(
            "group_by", f"must be a list of keys among {', '.join(GROUP_KEYS)}, not the string {group_by!r}"
        )
    keys = tuple(group_by)
    for key in keys:
        if key not in GROUP_KEYS:
            raise InvalidInput("group_by", f"{key!r} is not one of {', '.join(GROUP_KEYS)}")
    if len(set(keys)) != len(keys):
        raise InvalidInput("group_by", f"repeated key in {list(keys)!r}")
    return keys


def usage_analytics(
    session: Session,
    *,
    enterprise_id: str,
    granularity: Granularity,
    group_by: Iterable[GroupKey] | None = (),
    start: date | datetime,
    end: date | datetime,
) -> list[dict[str, Any]]:
    """Usage of one enterprise per time bucket (and per group), from ``usage_event`` in SQL.

    Args:
        enterprise_id: the app; every figure is scoped to it.
        granularity: ``'day'`` (UTC calendar day), ``'week'`` (ISO week, starting Monday 00:00 UTC)
            or ``'month'`` (UTC calendar month): ``date_trunc(granularity, occurred_at AT TIME ZONE
            'UTC')``, whatever the database session's time zone.
        group_by: any of ``'workflow'``, ``'agent'``, ``'model'``, ``'provider'`` (each once);
            empty: one row per bucket.
        start, end: the half-open range ``[start, end)`` of ``occurred_at``; a ``date`` means
            midnight UTC, a ``datetime`` must be aware.  A bucket cut by the range counts only the
            turns inside it (its ``bucket`` is still the start of the whole day/week/month).

    Returns rows sorted by bucket, then group values; buckets without turns are absent::

        {"bucket": date,                       # first day of the day/ISO week/month, UTC
         "workflow": str, ...,                 # one key per group_by entry, in its order
         "turns": int, "prompt_tokens": int, "completion_tokens": int, "cached_prompt_tokens": int,
         "cost_nanos": int,                    # cost at the prices charged, nano-USD
         "billed_nanos": int}                  # what was debited (0 in development mode), nano-USD

    Only LLM turns are metered so far (see the module docstring).

    Raises: ValueError naming the field: ``enterprise_id`` (empty), ``granularity`` (not day, week or
    month), ``group_by`` (unknown or repeated key), ``start``/``end`` (naive or not a date) or
    ``end`` (not after ``start``).
    """
    if not isinstance(enterprise_id, str) or not enterprise_id or len(enterprise_id) > 200:
        raise InvalidInput(
            "enterprise_id", f"must be a non-empty string of at most 200 characters, got {enterprise_id!r}"
        )
    if granularity not in GRANULARITIES:
        raise InvalidInput("granularity", f"{granularity!r} is not one of {', '.join(GRANULARITIES)}")
    keys = validate_group_by(group_by)
    lo, hi = _bound(start, "start"), _bound(end, "end")
    if hi <= lo:
        raise InvalidInput("end", f"{hi.isoformat()} must be after start {lo.isoformat()}")

    ue = UsageEvent
    # the unit is a validated constant inlined as SQL text: a bound parameter would be a different
    # placeholder in SELECT and GROUP BY, which PostgreSQL cannot match
    utc = func.timezone(literal_column("'UTC'"), ue.occurred_at)  # occurred_at AT TIME ZONE 'UTC'
    bucket = cast(func.date_trunc(literal_column(f"'{granularity}'"), utc), Date)
    group_cols = [getattr(ue, key) for key in keys]
    stmt = (
        select(
            bucket.label("bucket"),
            *group_cols,
            func.count().label("turns"),
            func.sum(ue.prompt_tokens),
            func.sum(ue.completion_tokens),
            func.sum(ue.cached_prompt_tokens),
            func.sum(ue.cost_nanos),
            func.sum(ue.billed_nanos),
        )
        .where(col(ue.enterprise_id) == enterprise_id, col(ue.occurred_at) >= lo, col(ue.occurred_at) < hi)
        .group_by(bucket, *group_cols)
        .order_by(bucket, *group_cols)
    )
    rows = []
    for row in session.execute(stmt):
        values = tuple(row)
        out: dict[str, Any] = {"bucket": values[0]}
        out.update(zip(keys, values[1 : 1 + len(keys)]))
        out.update((name, int(v)) for name, v in zip(FIGURES, values[1 + len(keys) :]))
        rows.append(out)
    return rows
