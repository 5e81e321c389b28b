"""``tollgate replay``: a real LLM request trace through the gate, the outbox, Celery and PostgreSQL.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.validation import text_problem
from worker.cli.common import checked_id, err, fail, out, parse_usd
from worker.pricing.prices import PricingError

if TYPE_CHECKING:  # the CLI imports the engine lazily (start-up time); a name for a cast only
    from worker.devtools.traces import TraceFormat


def replay_cmd(
    path: Path = typer.Argument(..., help="trace file (Azure CSV or Mooncake JSONL)"),
    fmt: str = typer.Option(..., "--format", help="azure or mooncake"),
    model: str = typer.Option("gpt-4o", help="model every turn is priced as (genai-prices id or override)"),
    provider: str = typer.Option("openai", help="provider id (genai-prices)"),
    wallet_usd: Optional[str] = typer.Option(None, "--wallet-usd", help="opening balance; default unlimited"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="same id twice records nothing new"),
    no_worker: bool = typer.Option(False, "--no-worker", help="use already-running workers"),
    epoch: Optional[datetime] = typer.Option(None, help="start of a Mooncake trace's clock (UTC; default now)"),
    timeout: float = typer.Option(600.0, help="seconds without persistence progress before giving up"),
    policy: str = typer.Option("post-hoc", "--policy", help="post-hoc, or reserve: each row reserves its cost first"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
    enterprise: str = typer.Option(
        "replay", "--enterprise", help="the app the run's wallet and turns belong to (created if missing)"
    ),
    chats: int = typer.Option(1, "--chats", help="spread the rows over N chats (row i in chat i mod N)"),
    agents: int = typer.Option(1, "--agents", help="spread the rows over M agents (row i: agent i mod M)"),
) -> None:
    """Replay a real LLM request trace through the gate, the outbox, Celery and PostgreSQL."""
    from datetime import UTC

    from worker.devtools.replay import ReplayError, replay
    from worker.devtools.traces import TraceError
    from worker.gate.gate import UnknownWallet, process_gate

    if policy not in ("post-hoc", "reserve"):
        fail(f"--policy: {policy!r} is not one of post-hoc, reserve")
    if fmt not in ("azure", "mooncake"):
        fail(f"--format: {fmt!r} is not one of azure, mooncake")
    if run_id is not None and (not run_id or len(run_id) > 100 or text_problem(run_id)):
        fail("--run-id: 1 to 100 characters, no spaces or control characters")
    for flag, count in (("--chats", chats), ("--agents", agents)):
        if not 1 <= count <= 1_000_000:
            fail(f"{flag}: {count} is not between 1 and 1,000,000")
    checked_id(enterprise, "--enterprise")
    amount = parse_usd(wallet_usd, "--wallet-usd") if wallet_usd is not None else None
    if amount is not None and amount < 0:
        fail(f"--wallet-usd: {wallet_usd} is negative")
    if epoch is not None and epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=UTC)

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=not err.is_terminal,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task({"record": "gate   ", "persist": "persist"}[phase], total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            report = replay(
                path,
                fmt=cast("TraceFormat", fmt),  # one of the two: checked above
                model=model,
                provider=provider,
                wallet_usd=amount,
                run_id=run_id,
                start_worker=not no_worker,
                epoch=epoch,
                timeout_s=timeout,
                policy=policy,
                progress=progress,
                gate=process_gate(),
                enterprise_id=enterprise,
                chats=chats,
                agents=agents,
            )
        except (TraceError, PricingError, ReplayError, UnknownWallet, ValidationError, ValueError) as exc:
            bar.stop()
            fail(str(exc))

    data = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"replay {report.run_id}: {path.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in data.items():
        table.add_row(k, "—" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
    out.print(table)
