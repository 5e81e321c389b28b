"""Stripe tasks (``tollgate.stripe.*``): a thin shell over :func:`worker.billing.stripe.process_event`,
on the ``tollgate.jobs`` queue.

Retry policy: transient failures (the gate could not apply a committed credit, the wallet is not in
the gate yet, Redis or PostgreSQL unreachable) are retried up to :data:`MAX_RETRIES` times after
``min(2^n, 300)`` seconds; the event stays unprocessed meanwhile (its ``outcome`` says
``retrying: …``).  Processing is idempotent, so a re-delivery (``acks_late``) changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy.exc import OperationalError

from worker.billing.stripe import note_retry, unprocessed_events
from worker.billing.stripe import process_event as process_event_service
from worker.celery_app import STRIPE_PROCESS_EVENT_TASK, STRIPE_SWEEP_TASK, app
from worker.chats.wiring import after_credit
from worker.db import session_scope
from worker.gate.gate import UnknownWallet, process_gate
from worker.ledger.accounts import GatePending

log = logging.getLogger(__name__)

#: retries of one event before the task gives up (about 40 minutes in all)
MAX_RETRIES = 12
RETRIABLE = (GatePending, UnknownWallet, OperationalError, redis.ConnectionError, redis.TimeoutError)


@app.task(name=STRIPE_PROCESS_EVENT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def process_event(self, event_id: str) -> dict[str, Any]:
    """Apply the stored Stripe event ``event_id`` (``evt_…``) once, in one transaction (its gate
    steps after the commit).  Returns :meth:`worker.billing.stripe.ProcessResult.as_dict`
    (``credited_nanos`` in nano-USD).  A failure before the commit is noted on the event
    (``retrying: …``, a transaction of its own) and, when transient, retried."""
    try:
        with session_scope() as session:
            result = process_event_service(session, event_id, gate=process_gate(), on_credited=after_credit)
        return result.as_dict()
    except Exception as exc:
        try:
            with session_scope() as session:
                note_retry(session, event_id, exc)
        except Exception:  # the database itself may be what failed
            log.warning("could not record the failure of stripe event %s", event_id, exc_info=True)
        if isinstance(exc, RETRIABLE):
            raise self.retry(exc=exc, countdown=min(2**self.request.retries, 300), max_retries=MAX_RETRIES)
        raise


@app.task(name=STRIPE_SWEEP_TASK)
def sweep(older_than_s: int = 120) -> dict[str, int]:
    """Send ``process_event`` again for every stored Stripe event still unprocessed after
    ``older_than_s`` seconds (beat: every 5 min): a task lost with its worker, one that gave up on
    its retries, or one whose wallet or package was fixed since.  Processing is idempotent, so an
    event sent twice credits once.  Returns ``{"resent": n}``."""
    with session_scope() as session:
        ids = unprocessed_events(session, older_than_s=older_than_s)
    for event_id in ids:
        process_event.apply_async(args=(event_id,))
    return {"resent": len(ids)}
