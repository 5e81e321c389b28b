"""``tollgate reconcile``: the gate (Redis) against the ledger (PostgreSQL).

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from worker.cli.common import out


def reconcile_cmd(
    repair: bool = typer.Option(False, "--repair", help="set drifted gate balances to the ledger's figure"),
    rebuild: bool = typer.Option(False, "--rebuild", help="first load every wallet Redis lost from PostgreSQL"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object"),
) -> None:
    """Compare each wallet's gate balance (Redis) with the ledger (PostgreSQL) minus queued turns."""
    from worker.gate.gate import process_gate
    from worker.ledger.reconcile import reconcile

    report = reconcile(process_gate(), repair=repair, rebuild=rebuild)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(
        f"run {report.run_id}: {report.wallets_checked} wallet(s) checked, {report.wallets_busy} busy, "
        f"{report.wallets_drifted} drifted by {report.drift_nanos_abs:,} nanos in all, "
        f"{report.wallets_repaired} repaired, {report.ledger_mismatches} ledger mismatch(es)"
    )
    dead = report.dead_letters
    if dead["count"]:
        out.print(
            f"[bold red]{dead['count']} dead-lettered turn(s) holding {dead['nanos']:,} nanos[/] "
            f"(by shard {dead['by_shard']}; see tollgate deadletter list)",
            highlight=False,
        )
    if report.drifted:
        table = Table(title="drifted wallets (nano-USD)")
        for column in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos", "queued_nanos", "repaired"):
            table.add_column(column, justify="left" if column == "wallet_id" else "right")
        for d in report.drifted:
            table.add_row(
                *(
                    str(d[c])
                    for c in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos", "queued_nanos", "repaired")
                )
            )
        out.print(table)
