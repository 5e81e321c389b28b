"""Usage tasks: persisting the outbox and recording turns for orchestrators that only speak Celery."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from models.turn import TurnIn
from worker.celery_app import DRAIN_OUTBOX_TASK, RECORD_TURN_TASK, app
from worker.chats.lifecycle import announce_chat_changes
from worker.errors import InputError
from worker.gate.gate import UnknownWallet, WrongEnterprise, process_gate
from worker.ledger.drain import OutboxDrain
from worker.pricing.prices import PricingError, TurnLimitExceeded


class TurnRejected(InputError, ValueError):
    """A turn sent over Celery was refused (bad field, unknown model or wallet, a per-turn limit); nothing changed.

    A plain ``ValueError`` subclass so that it crosses the result backend with its message.
    """


_drain: OutboxDrain | None = None


def _get_drain() -> OutboxDrain:
    global _drain
    if _drain is None:
        _drain = OutboxDrain(announce=announce_chat_changes)
    return _drain


@app.task(name=DRAIN_OUTBOX_TASK)
def drain_outbox(shard: int | None = None, max_seconds: float = 30.0) -> dict[str, int]:
    """Persist the outbox of ``shard`` (default: every shard) until empty or ``max_seconds`` pass.

    Returns counts: read, inserted, duplicates, batches, reclaimed.
    """
    drain = _get_drain()
    shards = None if shard is None else [shard]
    return drain.drain(shards, max_seconds=max_seconds).as_dict()


@app.task(name=RECORD_TURN_TASK, ignore_result=False)
def record_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """Record one turn through the same gate as the Python client.

    ``turn`` has the fields of :class:`models.turn.TurnIn`.  Returns the decision as a dict.
    Raises :class:`TurnRejected` naming the field (bad input), the model or the wallet; nothing changes then.
    """
    try:
        return process_gate().record_turn(TurnIn.model_validate(turn)).model_dump(mode="json")
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'turn'}: {e['msg']}" for e in exc.errors())
        raise TurnRejected(
            f"invalid turn: {fields}", field=".".join(map(str, exc.errors()[0]["loc"])) or None
        ) from None
    except (PricingError, TurnLimitExceeded, UnknownWallet, WrongEnterprise) as exc:
        raise TurnRejected(str(exc), field=exc.field) from None
