"""The ``tollgate`` command (Typer).

    tollgate db upgrade
    tollgate wallet create WALLET_ID --enterprise E [--owner O] [--unlimited] [--mode development]
    tollgate wallet credit WALLET_ID --usd 25.00 --key K
    tollgate wallet show WALLET_ID [--json]
    tollgate drain
    tollgate replay PATH --format azure|mooncake --model gpt-4o --provider openai [--wallet-usd X]
                         [--run-id ID] [--no-worker] [--json]
    tollgate rollup refresh [--all-dirty | ENTERPRISE WORKFLOW PERIOD]
    tollgate rollup show ENTERPRISE WORKFLOW PERIOD [--json]
    tollgate chat end ENTERPRISE CHAT_ID [--at ISO] [--json]
    tollgate analytics ENTERPRISE --by day|week|month [--group workflow,agent] [--from D] [--to D] [--json]
    tollgate budget set --enterprise E (--wallet W | --workflow F) --usd X [--auto-pause]
    tollgate budget check [--json]
    tollgate allowance set WALLET_ID --usd X
    tollgate allowance reset [--period YYYY-MM] [--json]
    tollgate deadletter list [--json] | retry SHARD:ENTRY_ID | discard SHARD:ENTRY_ID

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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup
from typer._click.exceptions import UsageError  # typer vendors click: the class its main loop answers

from models.tables import BillingMode, PayerLevel
from models.validation import InvalidInput, check_text, text_problem
from worker.pricing.prices import PricingError, nanos_to_usd, usd_to_nanos

class _CheckedGroup(TyperGroup):
    """The top-level command group: every argument is checked against ``models.validation``'s text
    rules (no control characters but tab and newline, no lone surrogates, which is how Python
    presents bytes that are not UTF-8, no bidi overrides) before any command runs, so no command can
    write such text to Redis or PostgreSQL.  A refused argument exits 2 naming it (ids are checked
    more strictly by each command: :func:`_id`)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            problem = text_problem(arg, "text")
            if problem:
                before = args[i - 1] if i and args[i - 1].startswith("-") else None
                name = f"{before.split('=')[0]}" if before else f"argument {i + 1}"
                if arg.startswith("--") and "=" in arg:
                    name = arg.split("=")[0]
                raise UsageError(f"{name}: {problem}", ctx)
        return super().parse_args(ctx, args)


app = typer.Typer(help="tollgate: real-time token metering and billing for LLM agents.", no_args_is_help=True,
                  cls=_CheckedGroup)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
wallet_app = typer.Typer(help="Wallets: create, credit, show.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(wallet_app, name="wallet")

err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # input is not markup
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
    """Path of a trace sample bundled with tollgate (``worker/devtools/data``)."""
    return Path(str(files("worker.devtools").joinpath("data", name)))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision")) -> None:
    """Create the database if missing and migrate it to REVISION (default: head)."""
    from worker.ledger.migrate import upgrade

    upgrade(revision=revision)
    out.print(f"database migrated to {revision}")


@db_app.command("partitions")
def db_partitions(
    retention_months: int = typer.Option(None, "--retention-months", min=0,
                                         help="keep this many months (0: all); default: the setting"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Create the coming months' usage_event partitions and apply retention (the daily job)."""
    from worker.db import session_scope
    from worker.ledger.partitions import maintain
    from worker.settings import get_settings

    settings = get_settings()
    if retention_months is not None:
        settings = settings.model_copy(update={"usage_retention_months": retention_months})
    with session_scope() as session:
        report = maintain(session, settings=settings).as_dict()
    if as_json:
        print(json.dumps(report))
    else:
        out.print(f"created {report['created'] or 'none'} · dropped {report['dropped'] or 'none'} · "
                  f"default rows deleted {report['default_rows_deleted']} · turn keys deleted "
                  f"{report['turn_keys_deleted']} · blocked {report['blocked'] or 'none'}", highlight=False)


def _id(value: str, field: str) -> str:
    """``value`` if ``models.validation`` accepts it as an id; else exit 2 naming ``field``."""
    try:
        return check_text(value, field)
    except InvalidInput as exc:
        _fail(f"{field}: {value!r} must be 1 to 200 characters without spaces or control characters "
              f"({exc.message})")


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
    from worker.ledger.accounts import open_wallet
    from worker.gate.gate import WalletGate

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
    from worker.ledger.accounts import GatePending, LedgerError, credit_wallet
    from worker.gate.gate import UnknownWallet, WalletGate

    try:
        nanos = usd_to_nanos(_usd(usd, "--usd"))
    except PricingError as exc:
        _fail(f"--usd: {exc}")
    if nanos <= 0:
        _fail(f"--usd: {usd} is not a positive amount")
    try:
        balance = credit_wallet(WalletGate(), wallet_id=wallet_id, amount_nanos=nanos, idempotency_key=key,
                                description=description, actor="cli")
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
    from worker.ledger.accounts import ledger_balance
    from worker.ledger.turns import wallet_usage
    from worker.gate.gate import UnknownWallet, WalletGate

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
            "credits_nanos": wallet.credits_nanos, "debits_nanos": wallet.debits_nanos,
            "debt_nanos": wallet.debt_nanos, "reservations_required": wallet.reservations_required, **usage}
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
    from worker.ledger.drain import OutboxDrain

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
    policy: str = typer.Option("post-hoc", "--policy", help="post-hoc, or reserve: each row reserves its cost first"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
) -> None:
    """Replay a real LLM request trace through the gate, the outbox, Celery and PostgreSQL."""
    from datetime import UTC

    from worker.devtools.replay import ReplayError, replay
    from worker.devtools.traces import TraceError
    from worker.gate.gate import UnknownWallet

    if policy not in ("post-hoc", "reserve"):
        _fail(f"--policy: {policy!r} is not one of post-hoc, reserve")
    if fmt not in ("azure", "mooncake"):
        _fail(f"--format: {fmt!r} is not one of azure, mooncake")
    if run_id is not None and (not run_id or len(run_id) > 100 or text_problem(run_id)):
        _fail("--run-id: 1 to 100 characters, no spaces or control characters")
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
                            start_worker=not no_worker, epoch=epoch, timeout_s=timeout, policy=policy,
                            progress=progress)
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





apikey_app = typer.Typer(help="API keys: create (shown once), revoke.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(
    role: str = typer.Option(..., "--role", help="owner, end_user or admin"),
    enterprise: Optional[str] = typer.Option(None, "--enterprise", help="the app (owner, end_user keys)"),
    wallet: Optional[str] = typer.Option(
        None, "--wallet", help="the wallet (end_user keys; owner keys: the creator's plat: wallet)"),
    name: str = typer.Option("", "--name", help="a label"),
) -> None:
    """Create an API key and print it once (only its SHA-256 is stored)."""
    from models.tables import ApiRole
    from worker.access.apikeys import ApiKeyError, create_key
    from worker.db import session_scope

    if role not in ApiRole.__members__:
        _fail(f"--role: {role!r} is not one of {', '.join(ApiRole.__members__)}")
    try:
        with session_scope() as session:
            key = create_key(session, role=ApiRole(role), enterprise_id=enterprise, wallet_id=wallet, name=name)
    except ApiKeyError as exc:
        _fail(str(exc).replace("enterprise_id:", "--enterprise:").replace("wallet_id:", "--wallet:"))
    print(key)


@apikey_app.command("revoke")
def apikey_revoke(prefix: str = typer.Argument(..., help="the key's prefix: tg_<prefix>_…")) -> None:
    """Revoke an API key at once."""
    from worker.access.apikeys import revoke_key
    from worker.db import session_scope

    with session_scope() as session:
        if not revoke_key(session, prefix):
            _fail(f"PREFIX: no active key {prefix!r}")
    out.print(f"key {prefix} revoked")


@app.command("reconcile")
def reconcile_cmd(
    repair: bool = typer.Option(False, "--repair", help="set drifted gate balances to the ledger's figure"),
    rebuild: bool = typer.Option(False, "--rebuild", help="first load every wallet Redis lost from PostgreSQL"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object"),
) -> None:
    """Compare each wallet's gate balance (Redis) with the ledger (PostgreSQL) minus queued turns."""
    from worker.ledger.reconcile import reconcile

    report = reconcile(repair=repair, rebuild=rebuild)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(f"run {report.run_id}: {report.wallets_checked} wallet(s) checked, {report.wallets_busy} busy, "
              f"{report.wallets_drifted} drifted by {report.drift_nanos_abs:,} nanos in all, "
              f"{report.wallets_repaired} repaired, {report.ledger_mismatches} ledger mismatch(es)")
    dead = report.dead_letters
    if dead["count"]:
        out.print(f"[bold red]{dead['count']} dead-lettered turn(s) holding {dead['nanos']:,} nanos[/] "
                  f"(by shard {dead['by_shard']}; see tollgate deadletter list)", highlight=False)
    if report.drifted:
        table = Table(title="drifted wallets (nano-USD)")
        for column in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos", "queued_nanos", "repaired"):
            table.add_column(column, justify="left" if column == "wallet_id" else "right")
        for d in report.drifted:
            table.add_row(*(str(d[c]) for c in ("wallet_id", "gate_nanos", "expected_nanos", "drift_nanos",
                                                 "queued_nanos", "repaired")))
        out.print(table)

rollup_app = typer.Typer(help="Rollups: per enterprise × workflow × month (UTC) summaries.", no_args_is_help=True)
chat_app = typer.Typer(help="Chats: end a chat (marks it completed, refreshes its rollups).", no_args_is_help=True)
app.add_typer(rollup_app, name="rollup")
app.add_typer(chat_app, name="chat")


@rollup_app.command("refresh")
def rollup_refresh(
    enterprise: Optional[str] = typer.Argument(None, help="enterprise_id"),
    workflow: Optional[str] = typer.Argument(None, help="workflow"),
    period: Optional[str] = typer.Argument(None, help="period, YYYY-MM (UTC)"),
    all_dirty: bool = typer.Option(False, "--all-dirty", help="refresh every group marked dirty (the beat job)"),
) -> None:
    """Refresh one rollup (ENTERPRISE WORKFLOW PERIOD) or every dirty one (--all-dirty), now."""
    from worker.db import session_scope
    from worker.chats.rollups import DEFAULT_DIRTY_LIMIT, refresh_dirty, refresh_rollup

    given = [a for a in (enterprise, workflow, period) if a is not None]
    if all_dirty == bool(given) or (given and len(given) != 3):
        _fail("give either --all-dirty or ENTERPRISE WORKFLOW PERIOD")
    if all_dirty:
        total = 0
        while True:
            with session_scope() as session:
                done = refresh_dirty(session, limit=DEFAULT_DIRTY_LIMIT)
            total += done
            if done < DEFAULT_DIRTY_LIMIT:
                break
        out.print(f"refreshed {total} dirty rollup(s)")
        return
    try:
        with session_scope() as session:
            r = refresh_rollup(session, enterprise, workflow, period)
    except ValueError as exc:
        _fail(str(exc))
    out.print(f"rollup {enterprise}/{workflow}/{period}: {r.total_sessions} session(s), {r.total_turns} turn(s), "
              f"{nanos_to_usd(r.cost_nanos)} USD ({r.cost_nanos} nanos)")


@rollup_app.command("show")
def rollup_show(
    enterprise: str = typer.Argument(..., help="enterprise_id"),
    workflow: str = typer.Argument(..., help="workflow"),
    period: str = typer.Argument(..., help="period, YYYY-MM (UTC)"),
    as_json: bool = typer.Option(False, "--json", help="print the stored document as one JSON object"),
) -> None:
    """Print the stored rollup document (money in nanos; *_usd fields are display strings)."""
    from worker.db import session_scope
    from worker.chats.rollups import OVERALL_AVG_KEYS, get_rollup

    try:
        with session_scope() as session:
            rollup = get_rollup(session, enterprise, workflow, period)
    except ValueError as exc:
        _fail(str(exc))
    if rollup is None:
        _fail(f"no rollup for enterprise_id={enterprise!r} workflow={workflow!r} period={period!r}; "
              "run `tollgate rollup refresh` first")
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
        agents.add_row(name, *(str(a[c]) for c in ("turns", "avg_response_ms", "prompt_tokens",
                                                    "completion_tokens", "cost_usd")))
    out.print(agents)
    chats = Table(title=f"chat sessions ({len(doc['chat_sessions'])})")
    for column in ("chat_id", "status", "turns", "total_tokens", "cost_usd", "duration_sec"):
        chats.add_column(column, justify="left" if column in ("chat_id", "status") else "right")
    for chat_id, c in sorted(doc["chat_sessions"].items()):
        chats.add_row(chat_id, *(str(c[k]) for k in ("status", "turns", "total_tokens", "cost_usd", "duration_sec")))
    out.print(chats)


@chat_app.command("end")
def chat_end(
    enterprise: str = typer.Argument(..., help="enterprise_id"),
    chat_id: str = typer.Argument(..., help="chat_id"),
    at: Optional[datetime] = typer.Option(None, "--at", help="when the chat ended (UTC; default now)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Mark a chat completed and refresh its rollups at once."""
    from datetime import UTC

    from worker.db import session_scope
    from worker.chats.rollups import end_chat

    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:
        with session_scope() as session:
            ended = end_chat(session, enterprise_id=enterprise, chat_id=chat_id, ended_at=at)
    except (LookupError, ValueError) as exc:
        _fail(str(exc).strip("'\""))
    data = ended.as_dict()
    if as_json:
        print(json.dumps(data))
        return
    note = " (already completed)" if ended.already_completed else ""
    out.print(f"chat {enterprise}/{chat_id} completed at {data['ended_at']}{note}; refreshed "
              + (", ".join(f"{r['workflow']}/{r['period']}" for r in data["rollups"]) or "no rollup"))


@app.command("analytics")
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
    try:
        with session_scope() as session:
            rows = usage_analytics(session, enterprise_id=enterprise, granularity=by, group_by=keys,
                                   start=lo, end=hi)
    except ValueError as exc:
        field = {"granularity": "--by", "group_by": "--group", "start": "--from", "end": "--to"}
        name = str(exc).split(":", 1)[0]
        _fail(f"{field[name]}: {str(exc).split(':', 1)[1].strip()}" if name in field else str(exc))
    if as_json:
        print(json.dumps([{**r, "bucket": r["bucket"].isoformat()} for r in rows]))
        return
    table = Table(title=f"usage of {enterprise} by {by}, {lo:%Y-%m-%d %H:%M} to {hi:%Y-%m-%d %H:%M} UTC (tokens)")
    columns = ["bucket", *keys, "turns", "prompt", "completion", "cached", "cost USD", "billed USD"]
    for column in columns:
        table.add_column(column, justify="left" if column == "bucket" or column in keys else "right",
                         overflow="fold", min_width=10 if column == "bucket" else None)
    for r in rows:
        table.add_row(r["bucket"].isoformat(), *(str(r[k]) for k in keys),
                      *(f"{r[k]:,}" for k in ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens")),
                      nanos_to_usd(r["cost_nanos"]), nanos_to_usd(r["billed_nanos"]))
    out.print(table)


budget_app = typer.Typer(help="Budgets: monthly limits per wallet or workflow, alerts at 50/80/100 %.",
                         no_args_is_help=True)
allowance_app = typer.Typer(help="Monthly allowances: set the amount, run the reset.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
app.add_typer(allowance_app, name="allowance")

_FLAGS = {"amount_nanos": "--usd", "wallet_id": "--wallet", "workflow": "--workflow", "enterprise_id": "--enterprise"}


def _flagged(message: str, flags: dict[str, str]) -> str:
    """A service error ``field: …`` with the field named as the command's flag."""
    field, sep, rest = message.partition(":")
    return f"{flags.get(field, field)}:{rest}" if sep else message


def _nanos(usd: str, field: str, *, allow_zero: bool = False) -> int:
    try:
        nanos = usd_to_nanos(_usd(usd, field))
    except PricingError as exc:
        _fail(f"{field}: {exc}")
    if nanos < 0 or (nanos == 0 and not allow_zero):
        _fail(f"{field}: {usd} is not a {'non-negative' if allow_zero else 'positive'} amount")
    return nanos


@budget_app.command("set")
def budget_set(
    enterprise: str = typer.Option(..., "--enterprise", help="the app (enterprise_id)"),
    wallet: Optional[str] = typer.Option(None, "--wallet", help="budget one wallet's billed spend"),
    workflow: Optional[str] = typer.Option(None, "--workflow", help="budget one workflow's cost"),
    usd: str = typer.Option(..., "--usd", help="monthly amount in USD, e.g. 50.00"),
    auto_pause: bool = typer.Option(False, "--auto-pause", help="stop spending at 100 % (off unless given)"),
) -> None:
    """Create or update the monthly budget of one wallet or one workflow (one budget per scope)."""
    from worker.billing.budgets import BudgetError, set_budget
    from worker.db import session_scope

    if (wallet is None) == (workflow is None):
        _fail("--wallet/--workflow: give exactly one of them")
    nanos = _nanos(usd, "--usd")
    try:
        with session_scope() as session:
            b = set_budget(session, enterprise_id=enterprise, wallet_id=wallet, workflow=workflow,
                           amount_nanos=nanos, auto_pause=auto_pause)
            budget_id = b.id
    except BudgetError as exc:
        _fail(_flagged(str(exc), _FLAGS))
    scope = f"wallet {wallet}" if wallet else f"workflow {workflow}"
    out.print(f"budget {budget_id}: {enterprise} {scope}, {nanos_to_usd(nanos)} USD a month "
              f"({nanos} nanos), auto-pause {'on' if auto_pause else 'off'}", highlight=False)


@budget_app.command("check")
def budget_check(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Check every budget now (the beat job): new alerts, auto-pause, lifted pauses."""
    from worker.billing.budgets import check_budgets
    from worker.db import session_scope
    from worker.gate.gate import WalletGate

    with session_scope() as session:
        result = check_budgets(session, gate=WalletGate(kicker=lambda shard: None))
    data = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"budgets, period {result.period}")
    for column in ("budget", "enterprise", "scope", "spent USD", "budget USD", "%", "new alerts"):
        table.add_column(column, justify="right" if "USD" in column or column == "%" else "left")
    new = {}
    for a in result.alerts:
        new.setdefault(a.budget_id, []).append(f"{a.threshold_pct} %")
    for b in result.budgets:
        table.add_row(str(b.budget_id), b.enterprise_id, f"wallet {b.wallet_id}" if b.wallet_id else f"workflow {b.workflow}",
                      nanos_to_usd(b.spent_nanos), nanos_to_usd(b.amount_nanos),
                      str(b.spent_nanos * 100 // b.amount_nanos), ", ".join(new.get(b.budget_id, [])))
    out.print(table)
    for key in ("paused_wallets", "resumed_wallets", "paused_chats", "resumed_chats"):
        if data[key]:
            out.print(f"{key.replace('_', ' ')}: {data[key]}", highlight=False)


@allowance_app.command("set")
def allowance_set(
    wallet_id: str,
    usd: str = typer.Option(..., "--usd", help="allowance granted each UTC month, e.g. 20.00 (0 stops it)"),
) -> None:
    """Set a wallet's monthly allowance; the next reset (hourly, or `tollgate allowance reset`) grants it."""
    from worker.billing.allowances import AllowanceError, set_allowance
    from worker.db import session_scope

    nanos = _nanos(usd, "--usd", allow_zero=True)
    try:
        with session_scope() as session:
            set_allowance(session, wallet_id, nanos)
    except AllowanceError as exc:
        _fail(_flagged(str(exc), {"amount_nanos": "--usd", "wallet_id": "WALLET_ID"}))
    out.print(f"wallet {wallet_id}: monthly allowance {nanos_to_usd(nanos)} USD ({nanos} nanos)", highlight=False)


@allowance_app.command("reset")
def allowance_reset(
    period: Optional[str] = typer.Option(None, "--period", help="YYYY-MM to grant (default: current; "
                                         "an earlier one backfills a missed period)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Grant and expire monthly allowances now (the beat job); running it again changes nothing."""
    from worker.billing.allowances import AllowanceError, run_monthly_reset
    from worker.gate.gate import WalletGate

    try:
        report = run_monthly_reset(WalletGate(kicker=lambda shard: None), period=period)
    except AllowanceError as exc:
        _fail(_flagged(str(exc), {"period": "--period"}))
    data = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    out.print(f"period {report.period}: {data['wallets_checked']} wallet(s) checked, "
              f"{len(report.granted)} grant(s) of {nanos_to_usd(data['granted_nanos'])} USD, "
              f"{len(report.expired)} expiry entr{'y' if len(report.expired) == 1 else 'ies'} of "
              f"{nanos_to_usd(data['expired_nanos'])} USD, {len(report.restored)} restore(s) of "
              f"{nanos_to_usd(data['restored_nanos'])} USD", highlight=False)


stripe_app = typer.Typer(help="Stripe: token packages sold through Checkout.", no_args_is_help=True)
stripe_package_app = typer.Typer(help="Token packages: add or update, list, deactivate.", no_args_is_help=True)
app.add_typer(stripe_app, name="stripe")
stripe_app.add_typer(stripe_package_app, name="package")
_PACKAGE_FLAGS = {"package_id": "PACKAGE_ID", "name": "--name", "price_cents": "--price-usd",
                  "credit_nanos": "--credit-usd", "stripe_price_id": "--price-id", "monthly": "--monthly"}


@stripe_package_app.command("add")
def stripe_package_add(
    package_id: str,
    name: str = typer.Option(..., "--name", help="shown on Stripe's Checkout page"),
    price_usd: str = typer.Option(..., "--price-usd", help="what Stripe charges, whole cents, e.g. 10.00"),
    credit_usd: str = typer.Option(..., "--credit-usd", help="what the wallet receives (per paid invoice if --monthly)"),
    monthly: bool = typer.Option(False, "--monthly", help="a subscription (needs --price-id)"),
    price_id: Optional[str] = typer.Option(None, "--price-id", help="the Stripe price (price_…) it sells"),
) -> None:
    """Create or update a token package (sold through `POST /v1/checkout`)."""
    from worker.db import session_scope
    from worker.billing.stripe import StripeBillingError, add_package

    cents = _usd(price_usd, "--price-usd") * 100
    if cents != cents.to_integral_value():
        _fail(f"--price-usd: {price_usd} is not a whole number of cents")
    credit = _nanos(credit_usd, "--credit-usd")
    try:
        with session_scope() as session:
            add_package(session, package_id=package_id, name=name, price_cents=int(cents), credit_nanos=credit,
                        monthly=monthly, stripe_price_id=price_id)
    except StripeBillingError as exc:
        _fail(_flagged(str(exc), _PACKAGE_FLAGS))
    out.print(f"package {package_id}: {name}, {nanos_to_usd(credit)} USD of credit ({credit} nanos) for "
              f"{int(cents)} cents{' a month' if monthly else ''}", highlight=False)


@stripe_package_app.command("list")
def stripe_package_list(
    include_inactive: bool = typer.Option(False, "--all", help="also packages no longer sold"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON array"),
) -> None:
    """List token packages (money: price in USD cents, credit in nano-USD)."""
    from worker.db import session_scope
    from worker.billing.stripe import list_packages

    with session_scope() as session:
        rows = [{"id": p.id, "name": p.name, "price_cents": p.price_cents, "credit_nanos": p.credit_nanos,
                 "monthly": p.monthly, "stripe_price_id": p.stripe_price_id, "active": p.active}
                for p in list_packages(session, include_inactive=include_inactive)]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title="token packages")
    for column in ("id", "name", "price cents", "credit USD", "monthly", "Stripe price", "active"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["id"], r["name"], str(r["price_cents"]), nanos_to_usd(r["credit_nanos"]), str(r["monthly"]),
                      r["stripe_price_id"] or "", str(r["active"]))
    out.print(table)


@stripe_package_app.command("deactivate")
def stripe_package_deactivate(package_id: str) -> None:
    """Stop selling a package (sessions already started still credit it)."""
    from worker.db import session_scope
    from worker.billing.stripe import StripeBillingError, deactivate_package

    try:
        with session_scope() as session:
            was_active = deactivate_package(session, package_id)
    except StripeBillingError as exc:
        _fail(_flagged(str(exc), _PACKAGE_FLAGS))
    out.print(f"package {package_id}: {'deactivated' if was_active else 'already inactive'}", highlight=False)


app_app = typer.Typer(help="Apps: billing mode, revenue share, trial, flat fee, creator.", no_args_is_help=True)
app.add_typer(app_app, name="app")
_APP_FLAGS = {"creator_share_bps": "--share-bps", "trial_token_allowance": "--trial-tokens", "trial_then": "--trial-then",
              "flat_fee_nanos": "--flat-fee-usd", "fee_wallet_id": "--fee-wallet", "creator_id": "--creator",
              "enterprise_id": "ENTERPRISE", "mode": "MODE", "wallet_id": "WALLET_ID",
              "max_turn_cost_nanos": "--max-turn-usd", "reservations_required": "--reservations-required"}


@app_app.command("configure")
def app_configure(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id); created if new"),
    share_bps: int = typer.Option(None, "--share-bps", help="creator's share of level-2 charges, basis points"),
    trial_tokens: int = typer.Option(None, "--trial-tokens", help="trial allowance per wallet, tokens"),
    trial_then: str = typer.Option(None, "--trial-then", help="after the trial: bill | pause"),
    flat_fee_usd: str = typer.Option(None, "--flat-fee-usd", help="track_only flat monthly fee, USD"),
    fee_wallet: str = typer.Option(None, "--fee-wallet", help="wallet the flat fee is debited from"),
    creator: str = typer.Option(None, "--creator", help="the app creator's mozaiks_user_id"),
    max_turn_usd: str = typer.Option(None, "--max-turn-usd",
                                     help="the most one turn may cost, USD (default 50.00); a costlier turn is refused"),
    reservations: bool = typer.Option(None, "--reservations-required/--reservations-optional",
                                      help="every charged turn needs a live reservation of its wallet"),
) -> None:
    """Change an app's billing settings (only those given); audit-logged."""
    from worker.db import session_scope
    from worker.ledger.accounts import ensure_enterprise
    from worker.billing.modes import ModeError, configure_app
    from worker.gate.gate import WalletGate

    with session_scope() as session:
        ensure_enterprise(session, _id(enterprise, "ENTERPRISE"))
    fee = None if flat_fee_usd is None else _nanos(flat_fee_usd, "--flat-fee-usd", allow_zero=True)
    max_turn = None if max_turn_usd is None else _nanos(max_turn_usd, "--max-turn-usd", allow_zero=True)
    try:
        row = configure_app(WalletGate(), enterprise, actor="cli", creator_share_bps=share_bps,
                            trial_token_allowance=trial_tokens, trial_then=trial_then, flat_fee_nanos=fee,
                            fee_wallet_id=fee_wallet, creator_id=creator, max_turn_cost_nanos=max_turn,
                            reservations_required=reservations)
    except ModeError as exc:
        _fail(_flagged(str(exc), _APP_FLAGS))
    out.print(f"{row.id}: mode {row.default_mode} · share {row.creator_share_bps} bps · trial "
              f"{row.trial_token_allowance} tokens then {row.trial_then} · flat fee {row.flat_fee_nanos} nanos "
              f"from {row.fee_wallet_id or '—'} · creator {row.creator_id or '—'} · max turn "
              f"{row.max_turn_cost_nanos} nanos · reservations "
              f"{'required' if row.reservations_required else 'optional'}", highlight=False, soft_wrap=True)


@app_app.command("isolate")
def app_isolate(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id)"),
    schema: str = typer.Option(None, "--schema", help="PostgreSQL schema for its usage events (default app_<id>)"),
) -> None:
    """Keep an app's usage events in its own PostgreSQL schema, moving the rows it has (audit-logged)."""
    from worker.ledger.audit import audit
    from worker.db import session_scope
    from worker.ledger.isolation import IsolationError, isolate_app

    try:
        with session_scope() as session:
            used = isolate_app(session, enterprise, schema)
            audit(session, actor="cli", action="app.isolate", enterprise_id=enterprise, schema=used)
    except IsolationError as exc:
        _fail(_flagged(str(exc), {**_APP_FLAGS, "schema": "--schema"}))
    out.print(f"{enterprise}: usage events in schema {used}", highlight=False)


@app_app.command("mode")
def app_mode(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id)"),
    mode: str = typer.Argument(..., help="production | development | trial | track_only"),
) -> None:
    """Set an app's default mode; its wallets without their own mode follow (audit-logged)."""
    from worker.billing.modes import ModeError, set_app_mode
    from worker.gate.gate import WalletGate

    try:
        changed = set_app_mode(WalletGate(), enterprise, mode, actor="cli")
    except ModeError as exc:
        _fail(_flagged(str(exc), _APP_FLAGS))
    out.print(f"{enterprise}: mode {mode} ({len(changed)} wallet(s) changed)", highlight=False)


@wallet_app.command("mode")
def wallet_mode(
    wallet_id: str = typer.Argument(..., help="the wallet"),
    mode: str = typer.Argument(..., help="production | development | trial | track_only | inherit"),
) -> None:
    """Override one wallet's mode, or 'inherit' its app's again (audit-logged)."""
    from worker.billing.modes import ModeError, set_wallet_mode
    from worker.gate.gate import WalletGate

    try:
        after = set_wallet_mode(WalletGate(), wallet_id, None if mode == "inherit" else mode, actor="cli")
    except ModeError as exc:
        _fail(_flagged(str(exc), _APP_FLAGS))
    out.print(f"{wallet_id}: mode {after}", highlight=False)


@wallet_app.command("reservations")
def wallet_reservations(
    wallet_id: str = typer.Argument(..., help="the wallet"),
    setting: str = typer.Argument(..., help="required | optional | inherit (its app's setting)"),
) -> None:
    """Make reservations mandatory or optional for one wallet's charged turns (audit-logged)."""
    from worker.billing.modes import ModeError, set_wallet_reservations
    from worker.gate.gate import WalletGate

    choices = {"required": True, "optional": False, "inherit": None}
    if setting not in choices:
        _fail(f"SETTING: {setting!r} is not required, optional or inherit")
    try:
        effective = set_wallet_reservations(WalletGate(), wallet_id, choices[setting], actor="cli")
    except ModeError as exc:
        _fail(_flagged(str(exc), _APP_FLAGS))
    out.print(f"{wallet_id}: reservations {'required' if effective else 'optional'}", highlight=False)


deadletter_app = typer.Typer(help="Dead letters: outbox entries the drain could not persist.", no_args_is_help=True)
app.add_typer(deadletter_app, name="deadletter")


@deadletter_app.command("list")
def deadletter_list(as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Every dead letter: shard, outbox id, turn_id, wallet, billed nanos, whether the ledger holds its
    charge, error.  Text is shown escaped (NUL as \\x00)."""
    from rich.text import Text

    from worker.db import session_scope
    from worker.ledger.deadletter import list_dead_letters

    with session_scope() as session:
        dead = list_dead_letters(session)
    if as_json:
        for dl in dead:
            print(json.dumps({k: v for k, v in dl.as_dict().items() if k != "fields"}))
        return
    table = Table(title=f"{len(dead)} dead letter(s)")
    for column in ("shard", "outbox_id", "turn_id", "wallet_id", "billed_nanos", "charged", "error"):
        table.add_column(column, justify="right" if column in ("shard", "billed_nanos") else "left")
    for dl in dead:  # stored text is not markup: Text cells, escaped
        table.add_row(str(dl.shard), dl.outbox_id, Text(ascii(dl.turn_id)), Text(ascii(dl.wallet_id)),
                      f"{dl.billed_nanos:,}", str(dl.charged), Text(ascii(dl.error)[1:-1][:200]))
    out.print(table)


@deadletter_app.command("retry")
def deadletter_retry(
    outbox_id: str = typer.Argument(..., help="SHARD:ENTRY_ID as `deadletter list` shows it"),
) -> None:
    """Persist a dead letter now (after its cause was fixed), exactly once; its named debt is then
    settled by the turn's own usage debit.  Exit 1, the dead letter kept, if it still fails."""
    from worker.ledger.deadletter import DeadLetterNotFound
    from worker.ledger.drain import OutboxDrain

    try:
        result = OutboxDrain().retry_dead_letter(outbox_id)
    except DeadLetterNotFound as exc:
        _fail(str(exc).replace("outbox_id:", "OUTBOX_ID:"))
    except Exception as exc:
        err.print(f"[bold red]retry failed, dead letter kept:[/] {ascii(str(exc))[1:-1]}", highlight=False)
        raise typer.Exit(code=1)
    out.print(f"{outbox_id}: {result.inserted} turn(s) persisted, {result.duplicates} already persisted, "
              f"{len(result.conflicts)} second acceptance(s) refunded", highlight=False)


@deadletter_app.command("discard")
def deadletter_discard(
    outbox_id: str = typer.Argument(..., help="SHARD:ENTRY_ID as `deadletter list` shows it"),
) -> None:
    """Drop a dead letter for good and refund its charge to its wallet (ledger credit, then gate)."""
    from worker.ledger.deadletter import DeadLetterNotFound, discard
    from worker.gate.gate import WalletGate

    try:
        dl = discard(WalletGate(kicker=lambda shard: None), outbox_id)
    except DeadLetterNotFound as exc:
        _fail(str(exc).replace("outbox_id:", "OUTBOX_ID:"))
    out.print(f"{outbox_id}: discarded, {dl.billed_nanos:,} nanos refunded to {ascii(dl.wallet_id)}",
              highlight=False, markup=False)


if __name__ == "__main__":  # pragma: no cover
    app()
