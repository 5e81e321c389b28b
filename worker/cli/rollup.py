"""Rollups: refresh, show.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from worker.cli.common import AsJson, fail, out
from worker.pricing.prices import nanos_to_usd

rollup_app = typer.Typer(help="Rollups: per enterprise × workflow × month (UTC) summaries.", no_args_is_help=True)


@rollup_app.command("refresh")
def rollup_refresh(
    enterprise: Optional[str] = typer.Argument(None, help="enterprise_id"),
    workflow: Optional[str] = typer.Argument(None, help="workflow"),
    period: Optional[str] = typer.Argument(None, help="period, YYYY-MM (UTC)"),
    all_dirty: bool = typer.Option(False, "--all-dirty", help="refresh every group marked dirty (the beat job)"),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="first recompute the group's drain-kept sums (billing, chat, agent rollups) from its usage events: "
        "after events were written or deleted other than by the drain (makes the group's drains wait meanwhile)",
    ),
    as_json: AsJson = False,
) -> None:
    """Refresh one rollup (ENTERPRISE WORKFLOW PERIOD) or every dirty one (--all-dirty), now."""
    from worker.chats.jobs import refresh_dirty_groups
    from worker.chats.rollups import refresh_billing_rollups, refresh_rollup
    from worker.db import session_scope

    if all_dirty:
        if (enterprise, workflow, period) != (None, None, None) or repair:
            fail("give either --all-dirty or ENTERPRISE WORKFLOW PERIOD [--repair]")
        total = refresh_dirty_groups()
        if as_json:
            print(json.dumps({"refreshed": total}))
            return
        out.print(f"refreshed {total} dirty rollup(s)")
        return
    if enterprise is None or workflow is None or period is None:
        fail("give either --all-dirty or ENTERPRISE WORKFLOW PERIOD [--repair]")
    try:
        with session_scope() as session:
            if repair:
                refresh_billing_rollups(session, enterprise, workflow, period)
            r = refresh_rollup(session, enterprise, workflow, period)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {
                    "enterprise_id": enterprise,
                    "workflow": workflow,
                    "period": period,
                    "sessions": r.total_sessions,
                    "turns": r.total_turns,
                    "cost_nanos": r.cost_nanos,
                }
            )
        )
        return
    out.print(
        f"rollup {enterprise}/{workflow}/{period}: {r.total_sessions} session(s), {r.total_turns} turn(s), "
        f"{nanos_to_usd(r.cost_nanos)} USD ({r.cost_nanos} nanos)"
    )


@rollup_app.command("show")
def rollup_show(
    enterprise: str = typer.Argument(..., help="enterprise_id"),
    workflow: str = typer.Argument(..., help="workflow"),
    period: str = typer.Argument(..., help="period, YYYY-MM (UTC)"),
    as_json: bool = typer.Option(False, "--json", help="print the stored document as one JSON object"),
) -> None:
    """Print the stored rollup document (money in nanos; *_usd fields are display strings)."""
    from worker.chats.rollups import OVERALL_AVG_KEYS, get_rollup
    from worker.db import session_scope

    try:
        with session_scope() as session:
            rollup = get_rollup(session, enterprise, workflow, period)
    except ValueError as exc:
        fail(str(exc))
    if rollup is None:
        fail(
            f"no rollup for enterprise_id={enterprise!r} workflow={workflow!r} period={period!r}; "
            "run `tollgate rollup refresh` first"
        )
    doc = rollup.document
    if as_json:
        print(json.dumps(doc, sort_keys=True))
        return
    from datetime import UTC

    refreshed = rollup.refreshed_at.astimezone(UTC)
    overall = Table(title=f"{doc['_id']} {doc['period']} (refreshed {refreshed:%Y-%m-%d %H:%M:%S} UTC)")
    overall.add_column("overall_avg")
    overall.add_column("value", justify="right")
    for k in OVERALL_AVG_KEYS:
        v = doc["overall_avg"][k]
        overall.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    out.print(overall)
    agents = Table(title="agents")
    for column in ("agent", "turns", "avg_response_ms", "prompt_tokens", "completion_tokens", "cost_usd"):
        agents.add_column(column, justify="left" if column == "agent" else "right")
    for name, a in sorted(doc["agents"].items()):
        agents.add_row(
            name, *(str(a[c]) for c in ("turns", "avg_response_ms", "prompt_tokens", "completion_tokens", "cost_usd"))
        )
    out.print(agents)
    chats = Table(title=f"chat sessions ({len(doc['chat_sessions'])})")
    for column in ("chat_id", "status", "turns", "total_tokens", "cost_usd", "duration_sec"):
        chats.add_column(column, justify="left" if column in ("chat_id", "status") else "right")
    for chat_id, c in sorted(doc["chat_sessions"].items()):
        chats.add_row(chat_id, *(str(c[k]) for k in ("status", "turns", "total_tokens", "cost_usd", "duration_sec")))
    out.print(chats)
