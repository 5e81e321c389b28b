"""Reconciliation tasks (``tollgate.reconcile.*``)."""

from __future__ import annotations

from worker.celery_app import RECONCILE_TASK, app
from worker.gate.gate import process_gate
from worker.ledger.reconcile import reconcile


@app.task(name=RECONCILE_TASK)
def run(repair: bool = False) -> dict:
    """Compare every wallet's gate balance with the ledger (beat: report only); returns the report."""
    report = reconcile(process_gate(), repair=repair)
    return {k: v for k, v in report.as_dict().items() if k != "drifted"}
