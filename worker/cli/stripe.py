"""Stripe token packages: add, list, deactivate.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.table import Table

from worker.cli.common import AsJson, fail, out, parse_nanos, parse_usd, report
from worker.pricing.prices import nanos_to_usd

stripe_app = typer.Typer(help="Stripe: token packages sold through Checkout.", no_args_is_help=True)


stripe_package_app = typer.Typer(help="Token packages: add or update, list, deactivate.", no_args_is_help=True)


stripe_app.add_typer(stripe_package_app, name="package")


@stripe_package_app.command("add")
def stripe_package_add(
    package_id: str,
    name: str = typer.Option(..., "--name", help="shown on Stripe's Checkout page"),
    price_usd: str = typer.Option(..., "--price-usd", help="what Stripe charges, whole cents, e.g. 10.00"),
    credit_usd: str = typer.Option(
        ..., "--credit-usd", help="what the wallet receives (per paid invoice if --monthly)"
    ),
    monthly: bool = typer.Option(False, "--monthly", help="a subscription (needs --price-id)"),
    price_id: Optional[str] = typer.Option(None, "--price-id", help="the Stripe price (price_…) it sells"),
    as_json: AsJson = False,
) -> None:
    """Create or update a token package (sold through `POST /v1/checkout`)."""
    from worker.billing.stripe import add_package
    from worker.db import session_scope

    cents = parse_usd(price_usd, "--price-usd") * 100
    if cents != cents.to_integral_value():
        fail(f"--price-usd: {price_usd} is not a whole number of cents")
    credit = parse_nanos(credit_usd, "--credit-usd")
    with session_scope() as session:
        add_package(
            session,
            package_id=package_id,
            name=name,
            price_cents=int(cents),
            credit_nanos=credit,
            monthly=monthly,
            stripe_price_id=price_id,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "id": package_id,
                    "name": name,
                    "price_cents": int(cents),
                    "credit_nanos": credit,
                    "monthly": monthly,
                    "stripe_price_id": price_id,
                }
            )
        )
        return
    out.print(
        f"package {package_id}: {name}, {nanos_to_usd(credit)} USD of credit ({credit} nanos) for "
        f"{int(cents)} cents{' a month' if monthly else ''}",
        highlight=False,
    )


@stripe_package_app.command("list")
def stripe_package_list(
    include_inactive: bool = typer.Option(False, "--all", help="also packages no longer sold"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON array"),
) -> None:
    """List token packages (money: price in USD cents, credit in nano-USD)."""
    from worker.billing.stripe import list_packages
    from worker.db import session_scope

    with session_scope() as session:
        rows: list[dict[str, Any]] = [  # JSON objects: ids, names, integer cents and nanos
            {
                "id": p.id,
                "name": p.name,
                "price_cents": p.price_cents,
                "credit_nanos": p.credit_nanos,
                "monthly": p.monthly,
                "stripe_price_id": p.stripe_price_id,
                "active": p.active,
            }
            for p in list_packages(session, include_inactive=include_inactive)
        ]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title="token packages")
    for column in ("id", "name", "price cents", "credit USD", "monthly", "Stripe price", "active"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["id"],
            r["name"],
            str(r["price_cents"]),
            nanos_to_usd(r["credit_nanos"]),
            str(r["monthly"]),
            r["stripe_price_id"] or "",
            str(r["active"]),
        )
    out.print(table)


@stripe_package_app.command("deactivate")
def stripe_package_deactivate(
    package_id: str,
    as_json: AsJson = False,
) -> None:
    """Stop selling a package (sessions already started still credit it)."""
    from worker.billing.stripe import deactivate_package
    from worker.db import session_scope

    with session_scope() as session:
        was_active = deactivate_package(session, package_id)
    report(
        {"id": package_id, "deactivated": bool(was_active)},
        f"package {package_id}: {'deactivated' if was_active else 'already inactive'}",
        as_json=as_json,
    )
