"""Usage tasks: persisting the outbox and recording turns for orchestrators that only speak Celery."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import current_process_index  # type: ignore[attr-defined]  # not in celery-types
from pydantic import ValidationError

from models.turn import TurnIn
from worker.celery_app import DRAIN_OUTBOX_TASK, RECORD_TURN_TASK, app
from worker.chats.lifecycle import announce_chat_changes
from worker.errors import InputError
from worker.gate.gate import UnknownWallet, WrongEnterprise, process_gate
from worker.ledger.drain import DrainLoop, DrainStats, OutboxDrain, consumer_name, drain_loop_serves
from worker.pricing.prices import PricingError, TurnLimitExceeded
from worker.settings import get_settings


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


_loop: DrainLoop | None = None


@worker_process_init.connect
def start_drain_loop(**_: Any) -> None:
    """When ``settings.drain_loop`` is on: in the first ``settings.drain_loops`` pool processes of
    a Celery worker (slots 0 … n − 1), start the long-lived drain consumer
    (:class:`~worker.ledger.drain.DrainLoop`, consumer ``<consumer_name()>-loop``); in the next
    ``settings.drain_backlog_loops``, one that drains only while the outbox holds at least
    ``settings.drain_backlog_entries`` entries (a backlog loop).  Outside a pool (slot None): a loop."""
    global _loop
    settings = get_settings()
    if not settings.drain_loop or _loop is not None:
        return
    slot = current_process_index(base=0)
    if slot is not None and slot >= settings.drain_loops + settings.drain_backlog_loops:
        return
    backlog = settings.drain_backlog_entries if slot is not None and slot >= settings.drain_loops else None
    drain = OutboxDrain(consumer=f"{consumer_name()}-loop", announce=announce_chat_changes)
    _loop = DrainLoop(drain, backlog=backlog)
    _loop.start()


@worker_process_shutdown.connect
def stop_drain_loop(**_: Any) -> None:
    """Let the drain loop finish its batch in flight before the process exits (up to 10 s; what
    it had read and not committed stays pending for the same consumer after a restart)."""
    if _loop is not None:
        _loop.stop(timeout=10.0)


@app.task(name=DRAIN_OUTBOX_TASK)
def drain_outbox(shard: int | None = None, max_seconds: float = 30.0) -> dict[str, int]:
    """Persist the outbox of ``shard`` (default: every shard) until empty or ``max_seconds`` pass.

    While a drain loop runs (``settings.drain_loop``: this process's, or any other's on the same
    Redis, :func:`~worker.ledger.drain.drain_loop_serves`), the task does nothing: a loop already
    serves every shard and reclaims dead consumers' entries, and one more consumer would only split
    its batches (the gate's kicks and beat's backstop keep coming whether or not a loop runs).

    Returns counts: read, inserted, duplicates, batches, reclaimed (all 0 when the loop serves).
    """
    drain = _get_drain()
    if (_loop is not None and _loop.alive()) or drain_loop_serves(drain.redis):
        return DrainStats().as_dict()
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
