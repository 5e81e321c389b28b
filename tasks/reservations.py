"""Reservation tasks (``tollgate.reservations.*``)."""

from __future__ import annotations

from worker.celery_app import EXPIRE_HOLDS_TASK, app
from worker.gate.gate import WalletGate

_gate: WalletGate | None = None


@app.task(name=EXPIRE_HOLDS_TASK)
def expire() -> int:
    """Release every hold whose time is up (beat, every 10 s); returns how many were released."""
    global _gate
    if _gate is None:
        _gate = WalletGate(kicker=lambda shard: None)
    return _gate.expire_holds()
