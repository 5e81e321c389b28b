"""Database schema (Alembic): upgrade, partitions.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json

import typer

from worker.cli.common import AsJson, out

db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Alembic revision"),
    as_json: AsJson = False,
) -> None:
    """Create the database if missing and migrate it to REVISION (default: head)."""
    from worker.ledger.migrate import upgrade

    upgrade(revision=revision)
    if as_json:
        print(json.dumps({"migrated_to": revision}))
        return
    out.print(f"database migrated to {revision}")


@db_app.command("partitions")
def db_partitions(
    retention_months: int = typer.Option(
        None, "--retention-months", min=0, help="keep this many months (0: all); default: the setting"
    ),
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
        out.print(
            f"created {report['created'] or 'none'} · dropped {report['dropped'] or 'none'} · "
            f"default rows deleted {report['default_rows_deleted']} · turn keys deleted "
            f"{report['turn_keys_deleted']} · blocked {report['blocked'] or 'none'}",
            highlight=False,
        )
