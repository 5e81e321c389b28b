"""Reservation tasks (``tollgate.reservations.*``)."""

from __future__ import annotations

from worker.celery_app import EXPIRE_RESERVATIONS_TASK, app
from worker.gate.gate import process_gate


@app.task(name=EXPIRE_RESERVATIONS_TASK)
def expire() -> int:
    """Release every reservation whose time is up (beat, every 10 s), through the worker's one gate
    (:func:`worker.gate.gate.process_gate`); returns how many were released."""
    return process_gate().expire_reservations()
