"""Wallets: create, credit, show, mode, reservations.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.table import Table

from models.enums import BillingMode, PayerLevel
from worker.cli.common import AsJson, checked_id, fail, out, parse_usd, print_rows, report
from worker.pricing.prices import PricingError, nanos_to_usd, usd_to_nanos

wallet_app = typer.Typer(help="Wallets: create, list, show, credit, mode, reservations.", no_args_is_help=True)


@wallet_app.command("create")
def wallet_create(
    wallet_id: str,
    enterprise: Optional[str] = typer.Option(
        None, "--enterprise", help="the app (enterprise_id) the wallet belongs to; none for a platform wallet"
    ),
    owner: Optional[str] = typer.Option(None, help="payer id (default: the wallet id)"),
    level: PayerLevel = typer.Option(
        PayerLevel.app_usage.value, help="app_usage (an app's end user pays) or platform (level 1: an app creator)"
    ),
    mode: Optional[BillingMode] = typer.Option(
        None, help="override the app's mode for this wallet (default: follow the app, now and later)"
    ),
    unlimited: bool = typer.Option(False, help="never deny turns (tracks spend only)"),
    as_json: bool = typer.Option(False, "--json", help="print the wallet as one JSON object"),
) -> None:
    """Create a wallet (idempotent) and load it into the gate.

    An app_usage wallet needs --enterprise; a platform (level-1) wallet, e.g. plat:<creator>, has no
    app and takes none.  Without --mode the wallet follows its app's mode (`tollgate app mode`)."""
    from worker.db import session_scope
    from worker.gate.gate import process_gate
    from worker.ledger.accounts import open_wallet

    checked_id(wallet_id, "WALLET_ID")
    if level is PayerLevel.platform and enterprise is not None:
        fail("--enterprise: a platform (level 1) wallet belongs to no app; leave --enterprise out")
    if level is PayerLevel.app_usage and enterprise is None:
        fail("--enterprise: an app_usage wallet needs its app (or give --level platform)")
    if enterprise is not None:
        checked_id(enterprise, "--enterprise")
    with session_scope() as session:
        w = open_wallet(
            session,
            process_gate(),
            wallet_id=wallet_id,
            enterprise_id=enterprise,
            owner_id=checked_id(owner, "--owner") if owner else wallet_id,
            level=level,
            mode=mode,
            limited=not unlimited,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "wallet_id": w.id,
                    "enterprise_id": w.enterprise_id,
                    "owner_id": w.owner_id,
                    "level": str(w.level),
                    "mode": str(w.mode),
                    "mode_override": w.mode_override,
                    "limited": w.limited,
                }
            )
        )
        return
    follows = "its own mode" if w.mode_override else ("the app's mode" if w.enterprise_id else "the default mode")
    out.print(
        f"wallet {w.id} ({w.level}, {w.mode}: {follows}, {'limited' if w.limited else 'unlimited'})", highlight=False
    )


@wallet_app.command("credit")
def wallet_credit(
    wallet_id: str,
    usd: str = typer.Option(..., "--usd", help="amount in USD, e.g. 25.00"),
    key: str = typer.Option(..., "--key", help="idempotency key: the same key credits once (e.g. a payment id)"),
    description: str = typer.Option("manual credit", help="ledger description"),
    as_json: AsJson = False,
) -> None:
    """Credit a wallet: a ledger entry (once per --key), then the gate's balance."""
    from worker.chats.wiring import after_credit
    from worker.db import session_scope
    from worker.gate.gate import UnknownWallet, process_gate
    from worker.ledger.accounts import GatePending, LedgerError, credit_wallet

    try:
        nanos = usd_to_nanos(parse_usd(usd, "--usd"))
    except PricingError as exc:
        fail(f"--usd: {exc}")
    if nanos <= 0:
        fail(f"--usd: {usd} is not a positive amount")
    try:
        with session_scope() as session:
            pending = credit_wallet(
                session,
                process_gate(),
                wallet_id=wallet_id,
                amount_nanos=nanos,
                idempotency_key=key,
                description=description,
                actor="cli",
                on_credited=after_credit,
            )
        balance = pending.balance_nanos
        assert balance is not None  # set by the commit, or GatePending was raised
    except LedgerError as exc:
        flag = {"amount_nanos": "--usd", "idempotency_key": "--key"}.get(exc.field or "", "WALLET_ID")
        fail(f"{flag}: {exc}")
    except UnknownWallet as exc:
        fail(f"WALLET_ID: {exc} in the gate; nothing was credited")
    except GatePending as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"wallet_id": wallet_id, "credited_nanos": nanos, "key": key, "balance_nanos": balance}))
        return
    out.print(f"wallet {wallet_id}: balance {nanos_to_usd(balance)} USD ({balance} nanos)")


@wallet_app.command("show")
def wallet_show(wallet_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a wallet: gate balance (Redis), ledger balance and usage (PostgreSQL)."""
    from models.wallet import Wallet
    from worker.db import session_scope
    from worker.gate.gate import UnknownWallet, process_gate
    from worker.ledger.accounts import ledger_balance
    from worker.ledger.turns import wallet_usage

    with session_scope() as session:
        wallet = session.get(Wallet, wallet_id)
        if wallet is None:
            fail(f"wallet_id: unknown wallet {wallet_id!r}")
        usage = wallet_usage(session, wallet_id)
        ledger = ledger_balance(session, wallet_id)
    try:
        gate_balance: int | None = process_gate().balance(wallet_id)
    except UnknownWallet:
        gate_balance = None
    data: dict[str, Any] = {  # one JSON object: ids, flags and integer nanos
        "wallet_id": wallet_id,
        "mode": wallet.mode,
        "limited": wallet.limited,
        "gate_balance_nanos": gate_balance,
        "ledger_balance_nanos": ledger,
        "credits_nanos": wallet.credits_nanos,
        "debits_nanos": wallet.debits_nanos,
        "debt_nanos": wallet.debt_nanos,
        "reservations_required": wallet.reservations_required,
        **usage,
    }
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"wallet {wallet_id}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in data.items():
        table.add_row(k, f"{v}  ({nanos_to_usd(v)} USD)" if k.endswith("_nanos") and v is not None else str(v))
    out.print(table)


@wallet_app.command("mode")
def wallet_mode(
    wallet_id: str = typer.Argument(..., help="the wallet"),
    mode: str = typer.Argument(..., help="production | development | trial | track_only | inherit"),
    as_json: AsJson = False,
) -> None:
    """Override one wallet's mode, or 'inherit' its app's again (audit-logged)."""
    from worker.billing.modes import set_wallet_mode
    from worker.chats.wiring import resume_wallet_chats
    from worker.db import session_scope
    from worker.gate.gate import process_gate

    with session_scope() as session:
        after = set_wallet_mode(
            session,
            process_gate(),
            wallet_id,
            None if mode == "inherit" else mode,
            actor="cli",
            resume=resume_wallet_chats,
        )
    report(
        {"wallet_id": wallet_id, "mode": str(after), "follows_app": mode == "inherit"},
        f"{wallet_id}: mode {after}",
        as_json=as_json,
    )


@wallet_app.command("reservations")
def wallet_reservations(
    wallet_id: str = typer.Argument(..., help="the wallet"),
    setting: str = typer.Argument(..., help="required | optional | inherit (its app's setting)"),
    as_json: AsJson = False,
) -> None:
    """Make reservations mandatory or optional for one wallet's charged turns (audit-logged)."""
    from worker.billing.modes import set_wallet_reservations
    from worker.db import session_scope
    from worker.gate.gate import process_gate

    choices = {"required": True, "optional": False, "inherit": None}
    if setting not in choices:
        fail(f"SETTING: {setting!r} is not required, optional or inherit")
    with session_scope() as session:
        effective = set_wallet_reservations(session, process_gate(), wallet_id, choices[setting], actor="cli")
    report(
        {"wallet_id": wallet_id, "reservations_required": bool(effective), "setting": setting},
        f"{wallet_id}: reservations {'required' if effective else 'optional'}",
        as_json=as_json,
    )


@wallet_app.command("list")
def wallet_list(
    enterprise: Optional[str] = typer.Option(None, "--enterprise", help="only this app's wallets"),
    level: Optional[PayerLevel] = typer.Option(None, "--level", help="only platform or app_usage wallets"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list"),
) -> None:
    """Wallets (PostgreSQL) with their app, level, mode (and whether it is the wallet's own), limit,
    credits, debits and debt in nano-USD; the gate's live balance is `tollgate wallet show`."""
    from sqlalchemy import select
    from sqlmodel import col

    from models.wallet import Wallet
    from worker.db import session_scope

    query = select(Wallet).order_by(col(Wallet.enterprise_id).nulls_first(), col(Wallet.id))
    if enterprise is not None:
        query = query.where(col(Wallet.enterprise_id) == checked_id(enterprise, "--enterprise"))
    if level is not None:
        query = query.where(col(Wallet.level) == level)
    with session_scope() as session:
        rows = [
            {
                "wallet_id": w.id,
                "enterprise_id": w.enterprise_id,
                "owner_id": w.owner_id,
                "level": w.level,
                "mode": w.mode,
                "mode_override": w.mode_override,
                "limited": w.limited,
                "credits_nanos": w.credits_nanos,
                "debits_nanos": w.debits_nanos,
                "debt_nanos": w.debt_nanos,
            }
            for w in session.execute(query).scalars()
        ]
    print_rows(rows, title="wallets", as_json=as_json)
