"""Reconciliation tasks (``tollgate.reconcile.*``)."""

from __future__ import annotations

from worker.celery_app import COMPLETE_CREDITS_TASK, RECONCILE_TASK, app
from worker.chats.wiring import after_credit
from worker.db import session_scope
from worker.gate.gate import process_gate
from worker.ledger.accounts import complete_credit, unapplied_credits
from worker.ledger.reconcile import reconcile


@app.task(name=RECONCILE_TASK)
def run(repair: bool = False) -> dict:
    """Compare every wallet's gate balance with the ledger (beat: report only); returns the report."""
    report = reconcile(process_gate(), repair=repair)
    return {k: v for k, v in report.as_dict().items() if k != "drifted"}


@app.task(name=COMPLETE_CREDITS_TASK)
def complete_credits(older_than_s: int = 60, limit: int = 1000) -> dict[str, int]:
    """Apply in the gate the credits the ledger committed more than ``older_than_s`` seconds ago
    whose gate step was lost (:func:`worker.ledger.accounts.unapplied_credits`; beat: every
    minute), once each (the gate dedupes the key), resuming the wallets' paused chats.  Returns
    ``{"completed": n}``.  Raises GatePending when the gate still fails (the next run tries again)."""
    gate = process_gate()
    with session_scope() as session:
        keys = unapplied_credits(session, gate, older_than_s=older_than_s, limit=limit)
        for key in keys:
            complete_credit(session, gate, key, on_credited=after_credit)
    return {"completed": len(keys)}
