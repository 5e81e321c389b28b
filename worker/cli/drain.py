"""``tollgate drain``: persist every outbox shard now, in this process.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import typer

from worker.cli.common import report


def drain_now(
    as_json: bool = typer.Option(False, "--json", help="print the counts as one JSON object"),
) -> None:
    """Persist every outbox shard now, in this process (no Celery needed): counts of batches,
    entries read, usage events inserted, duplicates dropped, entries dead-lettered."""
    from worker.chats.lifecycle import announce_chat_changes
    from worker.ledger.drain import OutboxDrain

    stats = OutboxDrain(announce=announce_chat_changes).drain(max_seconds=300)
    data = stats.as_dict()
    report(
        data, " · ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in data.items()), as_json=as_json
    )
