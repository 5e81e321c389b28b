"""The ``tollgate`` command (Typer).

    tollgate db upgrade
    tollgate wallet create WALLET_ID --enterprise E [--owner O] [--unlimited] [--mode development]
    tollgate wallet credit WALLET_ID --usd 25.00 --key K
    tollgate wallet show WALLET_ID [--json]
    tollgate drain
    tollgate replay PATH --format azure|mooncake --model gpt-4o --provider openai [--wallet-usd X]
                         [--run-id ID] [--no-worker] [--json]

Errors are printed on stderr as one line naming the field or row; the exit status is then 2 and
nothing was recorded.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.tables import BillingMode, PayerLevel
from worker.pricing import PricingError, nanos_to_usd, usd_to_nanos

app = typer.Typer(help="tollgate: real-time token metering and billing for LLM agents.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
wallet_app = typer.Typer(help="Wallets: create, credit, show.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(wallet_app, name="wallet")

_ID = re.compile(r"^[^\s]{1,200}$")
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _usd(value: str, field: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        _fail(f"{field}: {value!r} is not a decimal amount of USD")
    if not amount.is_finite():
        _fail(f"{field}: {value!r} is not a finite amount")
    return amount


def sample_trace(name: str = "azure_llm_2023_conv_sample.csv") -> Path:
    """Path of a trace sample bundled with tollgate (``worker/data``)."""
    return Path(str(files("worker").joinpath("data", name)))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision")) -> None:
    """Create the database if missing and migrate it to REVISION (default: head)."""
    from worker.migrate import upgrade

    upgrade(revision=revision)
    out.print(f"database migrated to {revision}")


def _id(value: str, field: str) -> str:
    if not _ID.match(value):
        _fail(f"{field}: {value!r} must be 1 to 200 characters without spaces")
    return value


@wallet_app.command("create")
def wallet_create(
    wallet_id: str,
    enterprise: str = typer.Option(..., "--enterprise", help="the app (enterprise_id) the wallet belongs to"),
    owner: Optional[str] = typer.Option(None, help="payer id (default: the wallet id)"),
    level: PayerLevel = typer.Option(PayerLevel.app_usage.value, help="platform or app_usage"),
    mode: BillingMode = typer.Option(BillingMode.production.value, help="production or development"),
    unlimited: bool = typer.Option(False, help="never deny turns (tracks spend only)"),
) -> None:
    """Create a wallet (idempotent) and load it into the gate."""
    from worker.ledger import open_wallet
    from worker.wallet import WalletGate

    _id(wallet_id, "WALLET_ID")
    _id(enterprise, "--enterprise")
    w = open_wallet(WalletGate(), wallet_id=wallet_id, enterprise_id=enterprise,
                    owner_id=_id(owner, "--owner") if owner else wallet_id, level=level, mode=mode,
                    limited=not unlimited)
    out.print(f"wallet {w.id} ({w.level}, {w.mode}, {'limited' if w.limited else 'unlimited'})")


@wallet_app.command("credit")
def wallet_credit(
    wallet_id: str,
    usd: str = typer.Option(..., "--usd", help="amount in USD, e.g. 25.00"),
    key: str = typer.Option(..., "--key", help="idempotency key: the same key credits once (e.g. a payment id)"),
    description: str = typer.Option("manual credit", help="ledger description"),
) -> None:
    """Credit a wallet: a ledger entry (once per --key), then the gate's balance."""
    from worker.ledger import GatePending, LedgerError, credit_wallet
    from worker.wallet import UnknownWallet, WalletGate

    try:
        nanos = usd_to_nanos(_usd(usd, "--usd"))
    except PricingError as exc:
        _fail(f"--usd: {exc}")
    if nanos <= 0:
        _fail(f"--usd: {usd} is not a positive amount")
    try:
        balance = credit_wallet(WalletGate(), wallet_id=wallet_id, amount_nanos=nanos, idempotency_key=key,
                                description=description)
    except LedgerError as exc:
        field = "--usd" if "amount_nanos" in str(exc) else "--key" if "idempotency_key" in str(exc) else "WALLET_ID"
        _fail(f"{field}: {exc}")
    except UnknownWallet as exc:
        _fail(f"WALLET_ID: {exc} in the gate; nothing was credited")
    except GatePending as exc:
        _fail(str(exc))
    out.print(f"wallet {wallet_id}: balance {nanos_to_usd(balance)} USD ({balance} nanos)")


@wallet_app.command("show")
def wallet_show(wallet_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a wallet: gate balance (Redis), ledger balance and usage (PostgreSQL)."""
    from models.tables import Wallet
    from worker.db import session_scope
    from worker.ledger import ledger_balance, wallet_usage
    from worker.wallet import UnknownWallet, WalletGate

    with session_scope() as session:
        wallet = session.get(Wallet, wallet_id)
        if wallet is None:
            _fail(f"wallet_id: unknown wallet {wallet_id!r}")
        usage = wallet_usage(session, wallet_id)
        ledger = ledger_balance(session, wallet_id)
    try:
        gate_balance: int | None = WalletGate().balance(wallet_id)
    except UnknownWallet:
        gate_balance = None
    data = {"wallet_id": wallet_id, "mode": wallet.mode, "limited": wallet.limited,
            "gate_balance_nanos": gate_balance, "ledger_balance_nanos": ledger,
            "credits_nanos": wallet.credits_nanos, "debits_nanos": wallet.debits_nanos, **usage}
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"wallet {wallet_id}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in data.items():
        table.add_row(k, f"{v}  ({nanos_to_usd(v)} USD)" if k.endswith("_nanos") and v is not None else str(v))
    out.print(table)


@app.command("drain")
def drain_now() -> None:
    """Persist every outbox shard now, in this process (no Celery needed)."""
    from worker.drain import OutboxDrain

    stats = OutboxDrain().drain(max_seconds=300)
    out.print(stats.as_dict())


@app.command("replay")
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
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
) -> None:
    """Replay a real LLM request trace through the gate, the outbox, Celery and PostgreSQL."""
    from datetime import UTC

    from worker.replay import ReplayError, replay
    from worker.traces import TraceError
    from worker.wallet import UnknownWallet

    if fmt not in ("azure", "mooncake"):
        _fail(f"--format: {fmt!r} is not one of azure, mooncake")
    if run_id is not None and (not run_id or any(c.isspace() for c in run_id) or len(run_id) > 100):
        _fail("--run-id: 1 to 100 characters, no spaces")
    amount = _usd(wallet_usd, "--wallet-usd") if wallet_usd is not None else None
    if amount is not None and amount < 0:
        _fail(f"--wallet-usd: {wallet_usd} is negative")
    if epoch is not None and epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=UTC)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=not err.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task({"record": "gate   ", "persist": "persist"}[phase], total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            report = replay(path, fmt=fmt, model=model, provider=provider, wallet_usd=amount, run_id=run_id,
                            start_worker=not no_worker, epoch=epoch, timeout_s=timeout, progress=progress)
        except (TraceError, PricingError, ReplayError, UnknownWallet, ValidationError, ValueError) as exc:
            bar.stop()
            _fail(str(exc))

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





@app.command("reconcile")
def reconcile_cmd(
    repair: bool = typer.Option(False, "--repair", help="set drifted gate balances to the ledger's figure"),
    rebuild: bool = typer.Option(False, "--rebuild", help="first load every wallet Redis lost from PostgreSQL"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object"),
) -> None:
    """Compare each wallet's gate balance (Redis) with the ledger (PostgreSQL) minus queued turns."""
    from worker.reconcile import reconcile

    report = reconcile(repair=repair, rebuild=rebuild)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(f"run {report.run_id}: {report.wallets_checked} wallet(s) checked, {report.wallets_busy} busy, "
              f"{report.wallets_drifted} drifted by {report.drift_nanos_abs:,} nanos in all, "
              f"{report.wallets_repaired} repaired, {report.ledger_mismatches} ledger mismatch(es)")
    if report.drifted:
        table = Table(title="drifted wallets (nano-USD)")
        for column in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos", "queued_nanos", "repaired"):
            table.add_column(column, justify="left" if column == "wallet_id" else "right")
        for d in report.drifted:
            table.add_row(*(str(d[c]) for c in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos",
                                                 "queued_nanos", "repaired")))
        out.print(table)

if __name__ == "__main__":  # pragma: no cover
    app()
