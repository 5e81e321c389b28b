"""API keys: create (shown once), revoke.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
from typing import Optional

import typer

from worker.cli.common import AsJson, err, fail, print_rows, report

apikey_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


@apikey_app.command("create")
def apikey_create(
    role: str = typer.Option(..., "--role", help="owner, end_user or admin"),
    enterprise: Optional[str] = typer.Option(
        None, "--enterprise", help="the app (owner keys; end_user keys: default the wallet's app)"
    ),
    wallet: Optional[str] = typer.Option(
        None, "--wallet", help="the wallet (end_user keys; owner keys: the creator's plat: wallet)"
    ),
    name: str = typer.Option("", "--name", help="a label"),
    as_json: bool = typer.Option(False, "--json", help="print key, prefix and scope as one JSON object"),
) -> None:
    """Create an API key and print it once (only its SHA-256 is stored); its prefix, which
    `tollgate apikey revoke` takes, goes to stderr."""
    from models.enums import ApiRole
    from models.wallet import Wallet
    from worker.access.apikeys import create_key
    from worker.db import session_scope

    if role not in ApiRole.__members__:
        fail(f"--role: {role!r} is not one of {', '.join(ApiRole.__members__)}")
    with session_scope() as session:
        if role == ApiRole.end_user and enterprise is None and wallet is not None:
            row = session.get(Wallet, wallet)
            if row is None or row.enterprise_id is None:
                fail(f"--wallet: no app wallet {wallet!r} (an end_user key needs a wallet of an app)")
            enterprise = row.enterprise_id
        key = create_key(session, role=ApiRole(role), enterprise_id=enterprise, wallet_id=wallet, name=name)
    prefix = key_prefix(key)
    if as_json:
        print(
            json.dumps({"key": key, "prefix": prefix, "role": role, "enterprise_id": enterprise, "wallet_id": wallet})
        )
        return
    print(key)
    err.print(f"prefix {prefix} (revoke with: tollgate apikey revoke {prefix})", highlight=False)


def key_prefix(key: str) -> str:
    """The prefix of a key ``tg_<prefix>_<secret>`` (the prefix is hex; the secret may hold ``_``)."""
    return key.split("_", 2)[1]


@apikey_app.command("revoke")
def apikey_revoke(
    prefix: str = typer.Argument(..., help="the key's prefix (tg_<prefix>_…), or the whole key"),
    as_json: AsJson = False,
) -> None:
    """Revoke an API key at once."""
    from worker.access.apikeys import revoke_key
    from worker.db import session_scope

    if prefix.startswith("tg_") and prefix.count("_") >= 2:
        prefix = key_prefix(prefix)
    with session_scope() as session:
        if not revoke_key(session, prefix):
            fail(f"PREFIX: no active key {prefix!r}")
    report({"prefix": prefix, "revoked": True}, f"key {prefix} revoked", as_json=as_json)


@apikey_app.command("list")
def apikey_list(
    enterprise: Optional[str] = typer.Option(None, "--enterprise", help="only this app's keys"),
    revoked: bool = typer.Option(False, "--revoked", help="also revoked keys"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list"),
) -> None:
    """API keys: prefix (what `revoke` takes), role, app, wallet, name, created, revoked; never the
    key itself (only its SHA-256 is stored)."""
    from sqlalchemy import select
    from sqlmodel import col

    from models.access import ApiKey
    from worker.db import session_scope

    query = select(ApiKey).order_by(col(ApiKey.id))
    if enterprise is not None:
        query = query.where(col(ApiKey.enterprise_id) == enterprise)
    if not revoked:
        query = query.where(col(ApiKey.revoked_at).is_(None))
    with session_scope() as session:
        rows = [
            {
                "prefix": k.prefix,
                "role": k.role,
                "enterprise_id": k.enterprise_id,
                "wallet_id": k.wallet_id,
                "name": k.name,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
            }
            for k in session.execute(query).scalars()
        ]
    print_rows(rows, title="api keys", as_json=as_json)
