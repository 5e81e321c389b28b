"""Budget alert, allowance reset and webhook tasks (``tollgate.billing.*``, ``tollgate.webhooks.*``).

Thin shells over :mod:`worker.billing.budgets`, :mod:`worker.billing.allowances` and :mod:`worker.events`; all run
on the ``tollgate.jobs`` queue.  Every one is idempotent, so a re-delivery (``acks_late``) or a
second beat changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from worker.billing.budgets import check_budgets as check_budgets_service
from worker.billing.jobs import run_monthly_jobs
from worker.celery_app import (
    CHECK_BUDGETS_TASK,
    DELIVER_WEBHOOK_TASK,
    MONTHLY_RESET_TASK,
    PAUSE_CHAT_TASK,
    RESUME_PAUSED_TASK,
    app,
)
from worker.chats.jobs import sweep_paused
from worker.chats.lifecycle import pause_chat as pause_chat_service
from worker.chats.wiring import resume_wallet_chats
from worker.db import session_scope
from worker.events import WebhookRejected, WebhookRetryable, backoff_s, callback_of
from worker.events import deliver as deliver_event
from worker.gate.gate import process_gate
from worker.settings import get_settings

log = logging.getLogger(__name__)


@app.task(name=CHECK_BUDGETS_TASK)
def check_budgets() -> dict[str, Any]:
    """Check every budget in the current period (beat: every 60 s): new threshold alerts, auto-pause
    and its lifting.  Returns what changed (see :meth:`worker.billing.budgets.BudgetCheck.as_dict`)."""
    with session_scope() as session:
        result = check_budgets_service(session, gate=process_gate())
    data = result.as_dict()
    data.pop("budgets")  # the figures of every budget are too many for a task result
    return data


@app.task(name=MONTHLY_RESET_TASK)
def monthly_reset(period: str | None = None) -> dict[str, Any]:
    """Grant and expire monthly allowances up to ``period`` ('YYYY-MM'; default: the current one) and
    charge the flat fees of track_only apps (:func:`worker.billing.jobs.run_monthly_jobs`, the
    code path of ``tollgate allowance reset`` too).  Beat runs it hourly; a run that finds nothing to
    do writes nothing.  Returns counts, nano-USD (:meth:`MonthlyRun.summary`)."""
    return run_monthly_jobs(process_gate(), period=period, resume=resume_wallet_chats).summary()


@app.task(name=RESUME_PAUSED_TASK)
def resume_paused(limit: int = 1000) -> dict[str, Any]:
    """Sweep (beat: every 30 s): resume the paused chats of wallets that can pay again but whose
    credit did not resume them (a crash after the credit, a budget or mode change, a rebuild).
    Idempotent.  One transaction per wallet (its chats' rows are locked in the drain's order
    within it).  Returns ``{"wallets", "resumed"}``."""
    return sweep_paused(process_gate(), limit=limit)


@app.task(name=PAUSE_CHAT_TASK, acks_late=True)
def pause_chat(
    enterprise_id: str, chat_id: str, wallet_id: str, reason: str = "wallet_exhausted", position: str | None = None
) -> bool:
    """Record a chat paused by a denied turn (the API sends this when the gate answers ``pause``
    without accepting).  ``position``: the denial's place in the gate's order
    (``worker.ledger.turns.transition_position`` when the API got the answer; None, from a task queued
    before it was carried: the pause happens when the task runs).  Idempotent: an open pause is
    kept, and a pause the chat moved past (a credit's or the orchestrator's resume, a newer turn)
    changes nothing.  Returns True if this call paused it.  Raises InvalidInput naming a bad field."""
    with session_scope() as session:
        return pause_chat_service(
            session,
            process_gate(),
            enterprise_id=enterprise_id,
            chat_id=chat_id,
            wallet_id=wallet_id,
            reason=reason,
            position=position,
        )


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True)
def deliver(self, enterprise_id: str, event_id: str, event_type: str, body: str) -> dict[str, Any]:
    """POST one event (``body``: its JSON text) to its app's callback, signed, with the header
    ``Tollgate-Event-Id: event_id`` on every attempt (receivers deduplicate on it).

    Retry policy: a connection error, a timeout or a 5xx is retried up to
    ``settings.webhook_max_retries`` times, waiting ``webhook_backoff_base_s × 2^n`` seconds (capped
    by ``webhook_backoff_max_s``); after the last one the task fails with that error.  A 4xx (or 3xx)
    is final: logged and returned as ``rejected``, never retried.  An app without a callback is
    ``skipped``.  Returns ``{"outcome", "status", "event_id", "attempts"}``.
    """
    settings = get_settings()
    attempts = self.request.retries + 1
    with session_scope() as session:  # read, and ended before the POST
        callback = callback_of(session, enterprise_id)
    try:
        result = deliver_event(
            callback,
            enterprise_id=enterprise_id,
            event_id=event_id,
            event_type=event_type,
            body=body,
            settings=settings,
        )
    except WebhookRetryable as exc:
        if self.request.retries >= settings.webhook_max_retries:
            log.error(
                "webhook %s (%s) to %s failed after %d attempts: %s", event_id, event_type, enterprise_id, attempts, exc
            )
        raise self.retry(
            exc=exc, countdown=backoff_s(self.request.retries, settings), max_retries=settings.webhook_max_retries
        )
    except WebhookRejected as exc:
        log.warning("webhook %s (%s) to %s rejected: %s", event_id, event_type, enterprise_id, exc)
        return {"outcome": "rejected", "status": exc.status, "event_id": event_id, "attempts": attempts}
    return {"outcome": result.outcome, "status": result.status, "event_id": event_id, "attempts": attempts}
