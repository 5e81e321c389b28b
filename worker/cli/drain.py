"""``tollgate drain``: persist every outbox shard now, in this process.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

from worker.cli.common import out


def drain_now() -> None:
    """Persist every outbox shard now, in this process (no Celery needed)."""
    from worker.chats.lifecycle import announce_chat_changes
    from worker.ledger.drain import OutboxDrain

    stats = OutboxDrain(announce=announce_chat_changes).drain(max_seconds=300)
    out.print(stats.as_dict())
