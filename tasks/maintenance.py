"""Database maintenance tasks (``tollgate.maintenance.*``, queue ``tollgate.jobs``)."""

from __future__ import annotations

from typing import Any

from worker.celery_app import PARTITIONS_TASK, app
from worker.db import session_scope
from worker.ledger.partitions import maintain


@app.task(name=PARTITIONS_TASK)
def partitions() -> dict[str, Any]:
    """Create the coming months' ``usage_event`` partitions and apply the retention setting
    (beat: daily).  Idempotent.  Returns what was created and dropped (see PartitionReport)."""
    with session_scope() as session:
        return maintain(session).as_dict()
