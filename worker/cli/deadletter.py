"""Dead letters: list, retry, discard.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from worker.cli.common import AsJson, err, out

deadletter_app = typer.Typer(help="Dead letters: outbox entries the drain could not persist.", no_args_is_help=True)


@deadletter_app.command("list")
def deadletter_list(as_json: bool = typer.Option(False, "--json", help="print one JSON list ([] when none)")) -> None:
    """Every dead letter: shard, outbox id, turn_id, wallet, billed nanos, whether the ledger holds its
    charge, error.  Text is shown escaped (NUL as \\x00).  ``--json``: one JSON list of objects, as
    every list command (``[]`` when there is none)."""
    from rich.text import Text

    from worker.db import session_scope
    from worker.ledger.deadletter import list_dead_letters

    with session_scope() as session:
        dead = list_dead_letters(session)
    if as_json:
        print(json.dumps([{k: v for k, v in dl.as_dict().items() if k != "fields"} for dl in dead]))
        return
    table = Table(title=f"{len(dead)} dead letter(s)")
    for column in ("shard", "outbox_id", "turn_id", "wallet_id", "billed_nanos", "charged", "error"):
        table.add_column(column, justify="right" if column in ("shard", "billed_nanos") else "left")
    for dl in dead:  # stored text is not markup: Text cells, escaped
        table.add_row(
            str(dl.shard),
            dl.outbox_id,
            Text(ascii(dl.turn_id)),
            Text(ascii(dl.wallet_id)),
            f"{dl.billed_nanos:,}",
            str(dl.charged),
            Text(ascii(dl.error)[1:-1][:200]),
        )
    out.print(table)


@deadletter_app.command("retry")
def deadletter_retry(
    outbox_id: str = typer.Argument(..., help="SHARD:ENTRY_ID as `deadletter list` shows it"),
    as_json: AsJson = False,
) -> None:
    """Persist a dead letter now (after its cause was fixed), exactly once; its named debt is then
    settled by the turn's own usage debit.  Exit 1, the dead letter kept, if it still fails."""
    from worker.chats.lifecycle import announce_chat_changes
    from worker.ledger.deadletter import DeadLetterNotFound
    from worker.ledger.drain import OutboxDrain

    try:
        result = OutboxDrain(announce=announce_chat_changes).retry_dead_letter(outbox_id)
    except DeadLetterNotFound:
        raise  # not a failed retry: the top-level group answers it (exit 2 naming OUTBOX_ID)
    except Exception as exc:
        err.print(f"[bold red]retry failed, dead letter kept:[/] {ascii(str(exc))[1:-1]}", highlight=False)
        raise typer.Exit(code=1)
    if as_json:
        print(
            json.dumps(
                {
                    "outbox_id": outbox_id,
                    "inserted": result.inserted,
                    "duplicates": result.duplicates,
                    "refunded_second_acceptances": len(result.conflicts),
                }
            )
        )
        return
    out.print(
        f"{outbox_id}: {result.inserted} turn(s) persisted, {result.duplicates} already persisted, "
        f"{len(result.conflicts)} second acceptance(s) refunded",
        highlight=False,
    )


@deadletter_app.command("discard")
def deadletter_discard(
    outbox_id: str = typer.Argument(..., help="SHARD:ENTRY_ID as `deadletter list` shows it"),
    as_json: AsJson = False,
) -> None:
    """Drop a dead letter for good and refund its charge to its wallet (ledger credit, then gate)."""
    from worker.db import session_scope
    from worker.gate.gate import process_gate
    from worker.ledger.deadletter import discard

    with session_scope() as session:
        dl = discard(session, process_gate(), outbox_id)
    if as_json:
        print(json.dumps({"outbox_id": outbox_id, "wallet_id": dl.wallet_id, "refunded_nanos": dl.billed_nanos}))
        return
    out.print(
        f"{outbox_id}: discarded, {dl.billed_nanos:,} nanos refunded to {ascii(dl.wallet_id)}",
        highlight=False,
        markup=False,
    )
