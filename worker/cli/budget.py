"""Budgets: set, check.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table

from worker.cli.common import AsJson, fail, out, parse_nanos
from worker.pricing.prices import nanos_to_usd

budget_app = typer.Typer(
    help="Budgets: monthly limits per wallet or workflow, alerts at 50/80/100 %.", no_args_is_help=True
)


_FLAGS = {"amount_nanos": "--usd", "wallet_id": "--wallet", "workflow": "--workflow", "enterprise_id": "--enterprise"}


@budget_app.command("set")
def budget_set(
    enterprise: str = typer.Option(..., "--enterprise", help="the app (enterprise_id)"),
    wallet: Optional[str] = typer.Option(None, "--wallet", help="budget one wallet's billed spend"),
    workflow: Optional[str] = typer.Option(None, "--workflow", help="budget one workflow's cost"),
    usd: str = typer.Option(..., "--usd", help="monthly amount in USD, e.g. 50.00"),
    auto_pause: bool = typer.Option(False, "--auto-pause", help="stop spending at 100 % (off unless given)"),
    as_json: AsJson = False,
) -> None:
    """Create or update the monthly budget of one wallet or one workflow (one budget per scope)."""
    from worker.billing.budgets import set_budget
    from worker.db import session_scope

    if (wallet is None) == (workflow is None):
        fail("--wallet/--workflow: give exactly one of them")
    nanos = parse_nanos(usd, "--usd")
    with session_scope() as session:
        b = set_budget(
            session,
            enterprise_id=enterprise,
            wallet_id=wallet,
            workflow=workflow,
            amount_nanos=nanos,
            auto_pause=auto_pause,
        )
        budget_id = b.id
    scope = f"wallet {wallet}" if wallet else f"workflow {workflow}"
    if as_json:
        print(
            json.dumps(
                {
                    "budget_id": budget_id,
                    "enterprise_id": enterprise,
                    "wallet_id": wallet,
                    "workflow": workflow,
                    "amount_nanos": nanos,
                    "auto_pause": auto_pause,
                }
            )
        )
        return
    out.print(
        f"budget {budget_id}: {enterprise} {scope}, {nanos_to_usd(nanos)} USD a month "
        f"({nanos} nanos), auto-pause {'on' if auto_pause else 'off'}",
        highlight=False,
    )


@budget_app.command("check")
def budget_check(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Check every budget now (the beat job): new alerts, auto-pause, lifted pauses."""
    from worker.billing.budgets import check_budgets
    from worker.db import session_scope
    from worker.gate.gate import process_gate

    with session_scope() as session:
        result = check_budgets(session, gate=process_gate())
    data = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"budgets, period {result.period}")
    for column in ("budget", "enterprise", "scope", "spent USD", "budget USD", "%", "new alerts"):
        table.add_column(column, justify="right" if "USD" in column or column == "%" else "left")
    new: dict[int, list[str]] = {}  # budget id -> thresholds crossed now
    for a in result.alerts:
        new.setdefault(a.budget_id, []).append(f"{a.threshold_pct} %")
    for b in result.budgets:
        table.add_row(
            str(b.budget_id),
            b.enterprise_id,
            f"wallet {b.wallet_id}" if b.wallet_id else f"workflow {b.workflow}",
            nanos_to_usd(b.spent_nanos),
            nanos_to_usd(b.amount_nanos),
            str(b.spent_nanos * 100 // b.amount_nanos),
            ", ".join(new.get(b.budget_id, [])),
        )
    out.print(table)
    for key in ("paused_wallets", "resumed_wallets", "paused_chats", "resumed_chats"):
        if data[key]:
            out.print(f"{key.replace('_', ' ')}: {data[key]}", highlight=False)
