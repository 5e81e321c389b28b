"""Monthly allowances: set, reset.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from worker.cli.common import AsJson, out, parse_nanos, report
from worker.pricing.prices import nanos_to_usd

allowance_app = typer.Typer(help="Monthly allowances: set the amount, run the reset.", no_args_is_help=True)


@allowance_app.command("set")
def allowance_set(
    wallet_id: str,
    usd: str = typer.Option(..., "--usd", help="allowance granted each UTC month, e.g. 20.00 (0 stops it)"),
    as_json: AsJson = False,
) -> None:
    """Set a wallet's monthly allowance; the next reset (hourly, or `tollgate allowance reset`) grants it."""
    from worker.billing.allowances import set_allowance
    from worker.db import session_scope

    nanos = parse_nanos(usd, "--usd", allow_zero=True)
    with session_scope() as session:
        set_allowance(session, wallet_id, nanos)
    report(
        {"wallet_id": wallet_id, "monthly_allowance_nanos": nanos},
        f"wallet {wallet_id}: monthly allowance {nanos_to_usd(nanos)} USD ({nanos} nanos)",
        as_json=as_json,
    )


@allowance_app.command("reset")
def allowance_reset(
    period: Optional[str] = typer.Option(
        None, "--period", help="YYYY-MM to grant (default: current; an earlier one backfills a missed period)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Grant and expire monthly allowances and charge track_only apps' flat fees now: the beat job's
    own code path (tollgate.billing.monthly_reset); running it again changes nothing."""
    from worker.billing.jobs import run_monthly_jobs
    from worker.chats.wiring import resume_wallet_chats
    from worker.gate.gate import process_gate

    run = run_monthly_jobs(process_gate(), period=period, resume=resume_wallet_chats)
    report = run.reset
    data = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data | {"flat_fees": run.fees.as_dict()}) + "\n")
        return
    fees = run.fees.as_dict()
    out.print(
        f"period {report.period}: {data['wallets_checked']} wallet(s) checked, "
        f"{len(report.granted)} grant(s) of {nanos_to_usd(data['granted_nanos'])} USD, "
        f"{len(report.expired)} expiry entr{'y' if len(report.expired) == 1 else 'ies'} of "
        f"{nanos_to_usd(data['expired_nanos'])} USD, {len(report.restored)} restore(s) of "
        f"{nanos_to_usd(data['restored_nanos'])} USD, {len(fees['charged'])} flat fee(s) of "
        f"{nanos_to_usd(fees['charged_nanos'])} USD",
        highlight=False,
    )
