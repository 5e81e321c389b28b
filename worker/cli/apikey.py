"""API keys: create (shown once), revoke.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

from typing import Optional

import typer

from worker.cli.common import fail, out

apikey_app = typer.Typer(help="API keys: create (shown once), revoke.", no_args_is_help=True)


@apikey_app.command("create")
def apikey_create(
    role: str = typer.Option(..., "--role", help="owner, end_user or admin"),
    enterprise: Optional[str] = typer.Option(None, "--enterprise", help="the app (owner, end_user keys)"),
    wallet: Optional[str] = typer.Option(
        None, "--wallet", help="the wallet (end_user keys; owner keys: the creator's plat: wallet)"
    ),
    name: str = typer.Option("", "--name", help="a label"),
) -> None:
    """Create an API key and print it once (only its SHA-256 is stored)."""
    from models.enums import ApiRole
    from worker.access.apikeys import create_key
    from worker.db import session_scope

    if role not in ApiRole.__members__:
        fail(f"--role: {role!r} is not one of {', '.join(ApiRole.__members__)}")
    with session_scope() as session:
        key = create_key(session, role=ApiRole(role), enterprise_id=enterprise, wallet_id=wallet, name=name)
    print(key)


@apikey_app.command("revoke")
def apikey_revoke(prefix: str = typer.Argument(..., help="the key's prefix: tg_<prefix>_…")) -> None:
    """Revoke an API key at once."""
    from worker.access.apikeys import revoke_key
    from worker.db import session_scope

    with session_scope() as session:
        if not revoke_key(session, prefix):
            fail(f"PREFIX: no active key {prefix!r}")
    out.print(f"key {prefix} revoked")
