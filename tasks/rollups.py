"""Rollup tasks (``tollgate.rollups.*``): thin shells over :mod:`worker.chats.rollups`, one transaction each
(the beat job one per group it refreshes), on the ``tollgate.jobs`` queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.celery_app import END_CHAT_TASK, REFRESH_DIRTY_ROLLUPS_TASK, REFRESH_ROLLUP_TASK, app
from worker.chats.jobs import refresh_dirty_groups
from worker.chats.rollups import DEFAULT_DIRTY_LIMIT, refresh_rollup
from worker.chats.rollups import end_chat as end_chat_service
from worker.db import session_scope


@app.task(name=REFRESH_DIRTY_ROLLUPS_TASK)
def refresh_dirty(limit: int = DEFAULT_DIRTY_LIMIT, max_seconds: float = 50.0) -> int:
    """Beat (every 60 s): :func:`worker.chats.jobs.refresh_dirty_groups` for at most ``max_seconds``.
    Returns the groups refreshed."""
    return refresh_dirty_groups(limit, max_seconds)


@app.task(name=REFRESH_ROLLUP_TASK)
def refresh(enterprise_id: str, workflow: str, period: str) -> dict[str, Any]:
    """Refresh one group's rollup now.  Returns its totals (``cost_nanos`` in nano-USD)."""
    with session_scope() as session:
        r = refresh_rollup(session, enterprise_id, workflow, period)
        return {
            "enterprise_id": r.enterprise_id,
            "workflow": r.workflow,
            "period": r.period,
            "total_sessions": r.total_sessions,
            "total_turns": r.total_turns,
            "cost_nanos": r.cost_nanos,
        }


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
            return end_chat_service(
                session, enterprise_id=enterprise_id, chat_id=chat_id, ended_at=datetime.fromisoformat(ended_at)
            ).as_dict()
    except LookupError as exc:
        raise self.retry(
            exc=exc, countdown=5, kwargs={"enterprise_id": enterprise_id, "chat_id": chat_id, "ended_at": ended_at}
        )
