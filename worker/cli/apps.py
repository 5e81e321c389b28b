"""Apps: configure, isolate, mode.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json

import typer

from worker.cli.common import AsJson, checked_id, out, parse_nanos, print_rows, report

app_app = typer.Typer(help="Apps: billing mode, revenue share, trial, flat fee, creator.", no_args_is_help=True)


@app_app.command("configure")
def app_configure(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id); created if new"),
    share_bps: int = typer.Option(None, "--share-bps", help="creator's share of level-2 charges, basis points"),
    trial_tokens: int = typer.Option(None, "--trial-tokens", help="trial allowance per wallet, tokens"),
    trial_then: str = typer.Option(None, "--trial-then", help="after the trial: bill | pause"),
    flat_fee_usd: str = typer.Option(None, "--flat-fee-usd", help="track_only flat monthly fee, USD"),
    fee_wallet: str = typer.Option(None, "--fee-wallet", help="wallet the flat fee is debited from"),
    creator: str = typer.Option(None, "--creator", help="the app creator's mozaiks_user_id"),
    max_turn_usd: str = typer.Option(
        None, "--max-turn-usd", help="the most one turn may cost, USD (default 50.00); a costlier turn is refused"
    ),
    reservations: bool = typer.Option(
        None,
        "--reservations-required/--reservations-optional",
        help="every charged turn needs a live reservation of its wallet",
    ),
    as_json: AsJson = False,
) -> None:
    """Change an app's billing settings (only those given); audit-logged."""
    from worker.billing.modes import configure_app
    from worker.db import session_scope
    from worker.gate.gate import process_gate
    from worker.ledger.accounts import ensure_enterprise

    checked_id(enterprise, "ENTERPRISE")
    fee = None if flat_fee_usd is None else parse_nanos(flat_fee_usd, "--flat-fee-usd", allow_zero=True)
    max_turn = None if max_turn_usd is None else parse_nanos(max_turn_usd, "--max-turn-usd", allow_zero=True)
    with session_scope() as session:
        ensure_enterprise(session, enterprise)
        row = configure_app(
            session,
            process_gate(),
            enterprise,
            actor="cli",
            creator_share_bps=share_bps,
            trial_token_allowance=trial_tokens,
            trial_then=trial_then,
            flat_fee_nanos=fee,
            fee_wallet_id=fee_wallet,
            creator_id=creator,
            max_turn_cost_nanos=max_turn,
            reservations_required=reservations,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "enterprise_id": row.id,
                    "mode": row.default_mode.value,
                    "creator_share_bps": row.creator_share_bps,
                    "trial_tokens": row.trial_token_allowance,
                    "trial_then": row.trial_then.value,
                    "flat_fee_nanos": row.flat_fee_nanos,
                    "fee_wallet_id": row.fee_wallet_id,
                    "creator_id": row.creator_id,
                    "max_turn_cost_nanos": row.max_turn_cost_nanos,
                    "reservations_required": row.reservations_required,
                }
            )
        )
        return
    out.print(
        f"{row.id}: mode {row.default_mode} · share {row.creator_share_bps} bps · trial "
        f"{row.trial_token_allowance} tokens then {row.trial_then} · flat fee {row.flat_fee_nanos} nanos "
        f"from {row.fee_wallet_id or '—'} · creator {row.creator_id or '—'} · max turn "
        f"{row.max_turn_cost_nanos} nanos · reservations "
        f"{'required' if row.reservations_required else 'optional'}",
        highlight=False,
        soft_wrap=True,
    )


@app_app.command("isolate")
def app_isolate(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id)"),
    schema: str = typer.Option(None, "--schema", help="PostgreSQL schema for its usage events (default app_<id>)"),
    as_json: AsJson = False,
) -> None:
    """Keep an app's usage events in its own PostgreSQL schema, moving the rows it has (audit-logged)."""
    from worker.db import session_scope
    from worker.ledger.audit import audit
    from worker.ledger.isolation import isolate_app

    with session_scope() as session:
        used = isolate_app(session, enterprise, schema)
        audit(session, actor="cli", action="app.isolate", enterprise_id=enterprise, schema=used)
    report(
        {"enterprise_id": enterprise, "usage_schema": used},
        f"{enterprise}: usage events in schema {used}",
        as_json=as_json,
    )


@app_app.command("mode")
def app_mode(
    enterprise: str = typer.Argument(..., help="the app (enterprise_id)"),
    mode: str = typer.Argument(..., help="production | development | trial | track_only"),
    as_json: AsJson = False,
) -> None:
    """Set an app's default mode; its wallets without their own mode follow (audit-logged)."""
    from worker.billing.modes import set_app_mode
    from worker.chats.wiring import resume_wallet_chats
    from worker.db import session_scope
    from worker.gate.gate import process_gate

    with session_scope() as session:
        changed = set_app_mode(session, process_gate(), enterprise, mode, actor="cli", resume=resume_wallet_chats)
    report(
        {"enterprise_id": enterprise, "mode": mode, "wallets_changed": len(changed)},
        f"{enterprise}: mode {mode} ({len(changed)} wallet(s) changed)",
        as_json=as_json,
    )


@app_app.command("list")
def app_list(as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
    """Every app (enterprise) with its billing settings: mode, revenue share (bps), trial allowance
    (tokens), flat fee and largest turn (nano-USD), creator, reservations, wallets."""
    from sqlalchemy import func, select
    from sqlmodel import col

    from models.wallet import Enterprise, Wallet
    from worker.db import session_scope

    wallets = select(col(Wallet.enterprise_id), func.count().label("n")).group_by(col(Wallet.enterprise_id)).subquery()
    with session_scope() as session:
        found = session.execute(
            select(Enterprise, func.coalesce(wallets.c.n, 0))
            .outerjoin(wallets, wallets.c.enterprise_id == Enterprise.id)
            .order_by(Enterprise.id)
        ).all()
        rows = [
            {
                "enterprise_id": e.id,
                "mode": e.default_mode,
                "creator_share_bps": e.creator_share_bps,
                "trial_tokens": e.trial_token_allowance,
                "trial_then": e.trial_then,
                "flat_fee_nanos": e.flat_fee_nanos,
                "fee_wallet_id": e.fee_wallet_id,
                "creator_id": e.creator_id,
                "max_turn_cost_nanos": e.max_turn_cost_nanos,
                "reservations_required": e.reservations_required,
                "usage_schema": e.usage_schema,
                "wallets": n,
                "created_at": e.created_at,
            }
            for e, n in found
        ]
    print_rows(rows, title="apps", as_json=as_json)
