"""Usage tasks: persisting the outbox and recording turns for orchestrators that only speak Celery."""

from __future__ import annotations

from typing import Any

from models.schemas import TurnIn
from worker.celery_app import app
from worker.drain import OutboxDrain
from worker.wallet import WalletGate

_drain: OutboxDrain | None = None
_gate: WalletGate | None = None


def _get_drain() -> OutboxDrain:
    global _drain
    if _drain is None:
        _drain = OutboxDrain()
    return _drain


def _get_gate() -> WalletGate:
    global _gate
    if _gate is None:
        _gate = WalletGate()
    return _gate


@app.task(name="tollgate.usage.drain_outbox")
def drain_outbox(shard: int | None = None, max_seconds: float = 30.0) -> dict[str, int]:
    """Persist the outbox of ``shard`` (default: every shard) until empty or ``max_seconds`` pass.

    Returns counts: read, inserted, duplicates, batches, reclaimed.
    """
    drain = _get_drain()
    shards = None if shard is None else [shard]
    return drain.drain(shards, max_seconds=max_seconds).as_dict()


@app.task(name="tollgate.usage.record_turn", ignore_result=False)
def record_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """Record one turn through the same gate as the Python client.

    ``turn`` has the fields of :class:`models.schemas.TurnIn`.  Returns the decision as a dict.
    Raises pydantic.ValidationError (naming the field), PricingError or UnknownWallet; nothing changes then.
    """
    return _get_gate().record_turn(TurnIn.model_validate(turn)).model_dump(mode="json")
