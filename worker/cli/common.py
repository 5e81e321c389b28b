"""Helpers shared by the command modules: console output, failing with exit code 2, parsing USD and
ids, and the one place a domain error becomes an exit code and a message naming the flag
(:func:`fail_error`, :data:`FLAGS`; the top-level group calls it for any error a command lets through)."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.errors import TollgateError
from worker.pricing.prices import PricingError, decimal_text_problem, usd_to_nanos
from worker.validation import InvalidInput, check_text

#: width of output that is not a terminal (a pipe, a file, a test): wide enough that rich never cuts a
#: table cell or wraps a line; a terminal keeps its own width
PIPE_WIDTH = 10_000


def _console(stream) -> Console:
    """A rich Console on ``sys.stdout`` / ``sys.stderr`` (looked up when printing): a terminal's width,
    else :data:`PIPE_WIDTH` (``COLUMNS`` still wins when set)."""
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stream is sys.stderr, width=PIPE_WIDTH if piped else None)


err = _console(sys.stderr)
out = _console(sys.stdout)


#: the ``--json`` flag of a command that prints one result: ``as_json: AsJson = False``
AsJson = Annotated[bool, typer.Option("--json", help="print the result as one JSON object")]


def report(result: object, message: str, *, as_json: bool) -> None:
    """Print a command's one result: ``result`` as one line of JSON (``as_json``), else ``message``
    on stdout (rich markup, no automatic highlighting)."""
    if as_json:
        print(json.dumps(result))
    else:
        out.print(message, highlight=False)


def fail(message: str) -> NoReturn:
    """Print ``message`` (plain text, never markup) on stderr and exit with code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # input is not markup
    raise typer.Exit(code=2)


def parse_usd(value: str, field: str) -> Decimal:
    """``value`` as a finite decimal amount of USD in ASCII digits
    (:func:`worker.pricing.prices.decimal_text_problem`: ``1_000`` and ``١٢`` are refused, which
    ``Decimal`` alone reads as 1000 and 12); else exit 2 naming ``field``."""
    problem = decimal_text_problem(value)
    if problem and value.strip().lower().lstrip("+-") not in ("nan", "snan", "inf", "infinity"):
        fail(f"{field}: {problem}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        fail(f"{field}: {value!r} is not a decimal amount of USD")
    if not amount.is_finite():
        fail(f"{field}: {value!r} is not a finite amount")
    return amount


def sample_trace(name: str = "azure_llm_2023_conv_sample.csv") -> Path:
    """Path of a trace sample bundled with tollgate (``worker/devtools/data``)."""
    return Path(str(files("worker.devtools").joinpath("data", name)))


def checked_id(value: str, field: str) -> str:
    """``value`` if ``models.validation`` accepts it as an id; else exit 2 naming ``field``."""
    try:
        return check_text(value, field)
    except InvalidInput as exc:
        fail(f"{field}: {value!r} must be 1 to 200 characters without spaces or control characters ({exc.message})")


def flag_message(exc: TollgateError, flags: dict[str, str]) -> str:
    """The message of ``exc`` with its field (``exc.field``, never parsed from the text) named as the
    command's flag or ARGUMENT from ``flags``; the message itself when the error names no field or
    the text does not start with it."""
    text = str(exc)
    if exc.field and text.startswith(f"{exc.field}:"):
        return flags.get(exc.field, exc.field) + text[len(exc.field) :]
    return text


def flags_of(group: str | None) -> dict[str, str]:
    """The field → flag table of command group ``group`` (``"wallet"``, ``"apikey"`` …): :data:`FLAGS`
    with the group's own names (:data:`GROUP_FLAGS`) over it."""
    return {**FLAGS, **GROUP_FLAGS.get(group or "", {})}


def fail_error(exc: TollgateError, group: str | None = None) -> NoReturn:
    """Print ``exc`` (its field named as group ``group``'s flag, :func:`flags_of`) on stderr and exit
    with ``exc.exit_code`` (2 for bad input, unknown ids and conflicts; 1 otherwise)."""
    err.print(f"[bold red]error:[/] {escape(flag_message(exc, flags_of(group)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=exc.exit_code)


def parse_nanos(usd: str, field: str, *, allow_zero: bool = False) -> int:
    """A USD amount as integer nano-USD, positive (or zero with ``allow_zero``); else exit 2 naming ``field``."""
    try:
        nanos = usd_to_nanos(parse_usd(usd, field))
    except PricingError as exc:
        fail(f"{field}: {exc}")
    if nanos < 0 or (nanos == 0 and not allow_zero):
        fail(f"{field}: {usd} is not a {'non-negative' if allow_zero else 'positive'} amount")
    return nanos


#: service field -> the flag or argument of ``tollgate app …`` / ``tollgate wallet mode`` that sets it
APP_FLAGS = {
    "creator_share_bps": "--share-bps",
    "trial_token_allowance": "--trial-tokens",
    "trial_then": "--trial-then",
    "flat_fee_nanos": "--flat-fee-usd",
    "fee_wallet_id": "--fee-wallet",
    "creator_id": "--creator",
    "enterprise_id": "ENTERPRISE",
    "mode": "MODE",
    "wallet_id": "WALLET_ID",
    "max_turn_cost_nanos": "--max-turn-usd",
    "reservations_required": "--reservations-required",
}

#: the one table: service field -> the flag or ARGUMENT that sets it, for every command group
#: (GROUP_FLAGS below names the few fields a group sets under another name)
FLAGS = {**APP_FLAGS, "schema": "--schema", "period": "--period", "outbox_id": "OUTBOX_ID"}
#: command group -> the fields it names otherwise than :data:`FLAGS`
GROUP_FLAGS: dict[str, dict[str, str]] = {
    "allowance": {"amount_nanos": "--usd"},
    "analytics": {"granularity": "--by", "group_by": "--group", "start": "--from", "end": "--to"},
    "apikey": {
        "enterprise_id": "--enterprise",
        "wallet_id": "--wallet",
        "enterprise_id/wallet_id": "enterprise_id/--wallet",
    },
    "budget": {
        "amount_nanos": "--usd",
        "wallet_id": "--wallet",
        "workflow": "--workflow",
        "enterprise_id": "--enterprise",
    },
    "stripe": {
        "package_id": "PACKAGE_ID",
        "name": "--name",
        "price_cents": "--price-usd",
        "credit_nanos": "--credit-usd",
        "stripe_price_id": "--price-id",
        "monthly": "--monthly",
    },
}


def print_rows(rows: list[dict], *, title: str, as_json: bool) -> None:
    """Print ``rows`` (dicts with the same keys) as a JSON list (``as_json``; datetimes in ISO 8601,
    enums as their values) or as a rich table titled ``title`` (``-`` for None)."""

    def plain(value):
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Enum):
            return value.value
        return value

    rows = [{k: plain(v) for k, v in row.items()} for row in rows]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"{title} ({len(rows)})")
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column, justify="right" if column.endswith(("_nanos", "_bps", "_tokens")) else "left")
    for row in rows:
        table.add_row(*("-" if v is None else escape(str(v)) for v in row.values()))
    out.print(table)
