"""``tollgate analytics``: turns, tokens and money of one enterprise per period.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Optional, cast

import typer
from rich.table import Table

from worker.cli.common import out
from worker.pricing.prices import nanos_to_usd

if TYPE_CHECKING:  # the CLI imports the engine lazily (start-up time); these are names for casts only
    from worker.chats.analytics import Granularity, GroupKey


def analytics_cmd(
    enterprise: str = typer.Argument(..., help="enterprise_id"),
    by: str = typer.Option(..., "--by", help="bucket: day, week (ISO, from Monday) or month (UTC)"),
    group: str = typer.Option("", "--group", help="comma-separated: workflow,agent,model,provider"),
    start: Optional[datetime] = typer.Option(None, "--from", help="inclusive, UTC (default: this month's start)"),
    end: Optional[datetime] = typer.Option(None, "--to", help="exclusive, UTC (default: next month's start)"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as one JSON array"),
) -> None:
    """Turns, tokens and money of one enterprise per day, week or month, optionally grouped."""
    from datetime import UTC

    from worker.chats.analytics import usage_analytics
    from worker.db import session_scope
    from worker.periods import current_period, period_bounds

    default_start, default_end = period_bounds(current_period())
    lo = (start.replace(tzinfo=UTC) if start.tzinfo is None else start) if start else default_start
    hi = (end.replace(tzinfo=UTC) if end.tzinfo is None else end) if end else default_end
    keys = [k.strip() for k in group.split(",") if k.strip()]
    with session_scope() as session:  # InvalidInput naming --by, --group, --from, --to: worker.cli.common
        # unchecked text: usage_analytics checks both (InvalidInput naming granularity, group_by)
        rows = usage_analytics(
            session,
            enterprise_id=enterprise,
            granularity=cast("Granularity", by),
            group_by=cast("list[GroupKey]", keys),
            start=lo,
            end=hi,
        )
    if as_json:
        print(json.dumps([{**r, "bucket": r["bucket"].isoformat()} for r in rows]))
        return
    table = Table(title=f"usage of {enterprise} by {by}, {lo:%Y-%m-%d %H:%M} to {hi:%Y-%m-%d %H:%M} UTC (tokens)")
    columns = ["bucket", *keys, "turns", "prompt", "completion", "cached", "cost USD", "billed USD"]
    for column in columns:
        table.add_column(
            column,
            justify="left" if column == "bucket" or column in keys else "right",
            overflow="fold",
            min_width=10 if column == "bucket" else None,
        )
    for r in rows:
        table.add_row(
            r["bucket"].isoformat(),
            *(str(r[k]) for k in keys),
            *(f"{r[k]:,}" for k in ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens")),
            nanos_to_usd(r["cost_nanos"]),
            nanos_to_usd(r["billed_nanos"]),
        )
    out.print(table)
