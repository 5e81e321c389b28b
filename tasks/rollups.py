"""Rollup tasks (``tollgate.rollups.*``): thin shells over :mod:`worker.chats.rollups`, one transaction each
(the beat job one per group it refreshes), on the ``tollgate.jobs`` queue."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from worker.celery_app import END_CHAT_TASK, REFRESH_DIRTY_ROLLUPS_TASK, REFRESH_ROLLUP_TASK, app
from worker.db import session_scope
from worker.chats.rollups import DEFAULT_DIRTY_LIMIT, pending_dirty, refresh_rollup
from worker.chats.rollups import end_chat as end_chat_service


@app.task(name=REFRESH_DIRTY_ROLLUPS_TASK)
def refresh_dirty(limit: int = DEFAULT_DIRTY_LIMIT, max_seconds: float = 50.0) -> int:
    """Beat (every 60 s): refresh the groups marked dirty since the last run, each in a transaction of
    its own that also deletes its mark, ``limit`` marks read at a time, until none is left or
    ``max_seconds`` have passed.  Marks are read, not taken: a run killed mid-way (SIGKILL, no
    handler) leaves every group it did not refresh marked for the next run.  A mark a drain is
    writing right now is left for the next run.  Returns the groups refreshed."""
    total = 0
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + max_seconds
    while True:
        with session_scope() as session:
            groups = [g for g in pending_dirty(session, limit) if g not in seen]
        for group in groups:  # a failure rolls back that group's mark deletion: it stays marked
            with session_scope() as session:
                refresh_rollup(session, *group)
        seen.update(groups)
        total += len(groups)
        if not groups or time.monotonic() >= deadline:
            return total


@app.task(name=REFRESH_ROLLUP_TASK)
def refresh(enterprise_id: str, workflow: str, period: str) -> dict[str, Any]:
    """Refresh one group's rollup now.  Returns its totals (``cost_nanos`` in nano-USD)."""
    with session_scope() as session:
        r = refresh_rollup(session, enterprise_id, workflow, period)
        return {"enterprise_id": r.enterprise_id, "workflow": r.workflow, "period": r.period,
                "total_sessions": r.total_sessions, "total_turns": r.total_turns, "cost_nanos": r.cost_nanos}


@app.task(name=END_CHAT_TASK, bind=True, ignore_result=False, max_retries=3)
def end_chat(self, enterprise_id: str, chat_id: str, ended_at: str | None = None) -> dict[str, Any]:
    """Mark a chat completed (``ended_at``: ISO 8601 with a zone; default the time the task first
    runs) and refresh its rollups at once.

    Retries a LookupError (the chat's turns may still be in the outbox) 3 times, 5 s apart, with
    the same ``ended_at``, then raises it.  Returns :meth:`worker.chats.rollups.EndedChat.as_dict`.
    """
    ended_at = ended_at or datetime.now(UTC).isoformat()
    try:
        with session_scope() as session:
            return end_chat_service(session, enterprise_id=enterprise_id, chat_id=chat_id,
                                    ended_at=datetime.fromisoformat(ended_at)).as_dict()
    except LookupError as exc:
        raise self.retry(exc=exc, countdown=5,
                         kwargs={"enterprise_id": enterprise_id, "chat_id": chat_id, "ended_at": ended_at})
