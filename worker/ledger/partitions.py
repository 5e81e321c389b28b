"""Monthly partitions of ``usage_event`` and their retention.

``usage_event`` (since migration 0019 a view over the table ``usage_row``, which holds the
partitions under the same names) is partitioned by range of ``occurred_at`` (migration 0006): one partition per UTC
month, ``usage_event_YYYY_MM``, plus ``usage_event_default`` for months without one (a replayed
trace from years ago lands there).  :func:`ensure_partitions` creates the current month and
``settings.usage_partitions_ahead`` months ahead before any turn can need them; it never creates a
month whose rows already sit in the default partition (PostgreSQL refuses that), it reports it
instead; for apps isolated in their own schema (``worker.ledger.isolation``) a new month is created
already split, their sub-partitions in their schemas.  :func:`apply_retention` drops whole partitions older than
``settings.usage_retention_months`` (a metadata operation, no row-by-row delete), deletes the same
months' rows from the default partition, and forgets the turn_ids of turns that old and recorded
that long ago in ``usage_turn_key``.  Ledger
entries (``wallet_transaction``), chat sessions and rollups are kept: balances never change.

The daily beat job ``tollgate.maintenance.partitions`` runs both; ``tollgate db partitions`` does it
by hand.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, text
from sqlmodel import Session

from worker.errors import InvalidInput
from worker.ledger.isolation import isolated_apps, split_partition
from worker.periods import current_period, period_bounds
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)
_NAME = re.compile(r"^usage_event_(\d{4})_(\d{2})\Z", re.ASCII)


def _shift(period: str, months: int) -> str:
    year, month = map(int, period.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def partition_name(period: str) -> str:
    """``usage_event_YYYY_MM`` for ``period`` ('YYYY-MM')."""
    return "usage_event_" + period.replace("-", "_")


def monthly_partitions(session: Session) -> list[str]:
    """The periods ('YYYY-MM') that have their own partition, sorted."""
    names = session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_row'::regclass"
        )
    ).scalars()
    return sorted(f"{m.group(1)}-{m.group(2)}" for n in names if (m := _NAME.match(n)))


@dataclass(slots=True)
class PartitionReport:
    """What one maintenance run did: partitions created, dropped, default-partition rows and turn
    keys deleted, and months that could not get a partition (rows already in the default one)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_rows_deleted: int = 0
    turn_keys_deleted: int = 0
    blocked: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain form."""
        return {
            "created": self.created,
            "dropped": self.dropped,
            "default_rows_deleted": self.default_rows_deleted,
            "turn_keys_deleted": self.turn_keys_deleted,
            "blocked": self.blocked,
        }


def ensure_partitions(
    session: Session, *, now: datetime | None = None, ahead: int | None = None, report: PartitionReport | None = None
) -> PartitionReport:
    """Create the partitions of the current UTC month and ``ahead`` months after it (default
    ``settings.usage_partitions_ahead``) that do not exist.  A month whose rows are already in the
    default partition is left there and listed in ``report.blocked`` (logged).  Does not commit."""
    report = report or PartitionReport()
    ahead = get_settings().usage_partitions_ahead if ahead is None else ahead
    first = current_period(now or datetime.now(UTC))
    have = set(monthly_partitions(session))
    apps = isolated_apps(session)
    for i in range(ahead + 1):
        period = _shift(first, i)
        if period in have:
            continue
        start, end = period_bounds(period)
        in_default = session.execute(
            text("SELECT EXISTS (SELECT 1 FROM usage_event_default WHERE occurred_at >= :s AND occurred_at < :e)"),
            {"s": start, "e": end},
        ).scalar_one()
        if in_default:
            log.warning("usage_event: %s has rows in the default partition; not partitioned", period)
            report.blocked.append(period)
            continue
        # DDL takes no bind parameters; the bounds are our own datetimes, never input
        bound = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        session.execute(text(f'CREATE TABLE IF NOT EXISTS "{partition_name(period)}" PARTITION OF usage_row {bound}'))
        if apps:  # isolated apps get their sub-partition of the new month in their schemas
            split_partition(session, partition_name(period), bound, apps)
        report.created.append(period)
    return report


def apply_retention(
    session: Session, *, months: int, now: datetime | None = None, report: PartitionReport | None = None
) -> PartitionReport:
    """Keep the last ``months`` UTC months of usage events (the current one included): drop older
    monthly partitions, delete older rows of the default partition, and delete the turn keys of
    turns older than that.  ``months`` 0 keeps everything.  Does not commit.

    Raises ValueError naming ``months`` when it is negative.
    """
    report = report or PartitionReport()
    if months < 0 or 0 < months < 3:
        raise InvalidInput("months", f"{months!r} must be 0 (keep all) or at least 3 (jobs read the months before)")
    if months == 0:
        return report
    oldest_kept = _shift(current_period(now or datetime.now(UTC)), -(months - 1))
    cutoff, _ = period_bounds(oldest_kept)
    for period in monthly_partitions(session):
        if period < oldest_kept:
            session.execute(text(f'DROP TABLE "{partition_name(period)}"'))
            report.dropped.append(period)
    # a DML statement's result is a CursorResult (Session.execute types it as a plain Result)
    report.default_rows_deleted = cast(
        CursorResult[Any],
        session.execute(text("DELETE FROM usage_event_default WHERE occurred_at < :c"), {"c": cutoff}),
    ).rowcount
    # a turn key goes when its turn is old *and* was recorded long ago: a late turn recorded today
    # for an old month keeps its key (and so its idempotency) for the retention period.  The cutoff
    # is a UTC midnight, so a key's retention_date (the later of the two UTC dates) decides; a key
    # persisted before migration 0021 has its turn's occurred_at and the date it was recorded
    # (models.turn.UsageTurnKey)
    report.turn_keys_deleted = cast(
        CursorResult[Any],
        session.execute(
            text("DELETE FROM usage_turn_key WHERE retention_date < :d AND (occurred_at IS NULL OR occurred_at < :c)"),
            {"c": cutoff, "d": cutoff.date()},  # cutoff: midnight UTC, the first day of a month
        ),
    ).rowcount
    return report


def maintain(session: Session, *, now: datetime | None = None, settings: Settings | None = None) -> PartitionReport:
    """The daily job: :func:`ensure_partitions`, then :func:`apply_retention` with the settings'
    ``usage_retention_months``.  Does not commit."""
    settings = settings or get_settings()
    report = ensure_partitions(session, now=now, ahead=settings.usage_partitions_ahead)
    return apply_retention(session, months=settings.usage_retention_months, now=now, report=report)
