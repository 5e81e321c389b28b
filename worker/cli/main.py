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
    tollgate services up [--test] | down | status [--json] | run [--test] -- CMD ...

Errors are printed on stderr as one line naming the field or row; the exit status is then 2 and
nothing was recorded.
"""

from __future__ import annotations

import inspect

import typer
from typer._click.exceptions import UsageError  # typer vendors click: the class its main loop answers
from typer.core import TyperGroup

from models.validation import text_problem
from worker.cli import (
    allowance,
    analytics,
    apikey,
    apps,
    budget,
    chat,
    db,
    deadletter,
    drain,
    reconcile,
    replay,
    rollup,
    services,
    stripe,
    wallet,
)
from worker.cli.common import fail_error
from worker.errors import TollgateError


class _CheckedGroup(TyperGroup):
    """The top-level command group: every argument is checked against ``models.validation``'s text
    rules (no control characters but tab and newline, no lone surrogates, which is how Python
    presents bytes that are not UTF-8, no bidi overrides) before any command runs, so no command can
    write such text to Redis or PostgreSQL.  A refused argument exits 2 naming it (ids are checked
    more strictly by each command: :func:`checked_id`).

    It is also the one place a domain error becomes an exit code: a
    :class:`~worker.errors.TollgateError` a command lets through exits ``exc.exit_code`` with its
    field named as the command group's flag (:func:`worker.cli.common.fail_error`)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TollgateError as exc:
            fail_error(exc, ctx.invoked_subcommand)

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


app = typer.Typer(
    help="tollgate: real-time token metering and billing for LLM agents.", no_args_is_help=True, cls=_CheckedGroup
)


# the command groups and top-level commands, in the order `tollgate --help` has always listed them
app.add_typer(db.db_app, name="db")
app.add_typer(wallet.wallet_app, name="wallet")
app.command("drain")(drain.drain_now)
app.command("replay")(replay.replay_cmd)
app.add_typer(apikey.apikey_app, name="apikey")
app.command("reconcile")(reconcile.reconcile_cmd)
app.add_typer(rollup.rollup_app, name="rollup")
app.add_typer(chat.chat_app, name="chat")
app.command("analytics")(analytics.analytics_cmd)
app.add_typer(budget.budget_app, name="budget")
app.add_typer(allowance.allowance_app, name="allowance")
app.add_typer(stripe.stripe_app, name="stripe")
app.add_typer(apps.app_app, name="app")
app.add_typer(deadletter.deadletter_app, name="deadletter")
app.add_typer(services.services_app, name="services")


def _one_line_summaries(group: typer.Typer) -> None:
    """Give each command of ``group`` (and of its subgroups) without a ``short_help`` its docstring's
    first paragraph on one line: in ``--help``'s command list, Typer's rich mode keeps a docstring's
    line breaks, which cut a summary mid-sentence at the source's 100th column.  A command's own
    ``--help`` page is unchanged (Typer joins the lines there)."""
    for info in group.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            first = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0]
            info.short_help = " ".join(first.split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_one_line_summaries(app)


if __name__ == "__main__":  # pragma: no cover
    app()
