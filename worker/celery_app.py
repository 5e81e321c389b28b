"""The Celery app: broker, queues, task policy and the beat schedule.

Tasks live in ``tasks/`` and are named ``tollgate.<area>.<verb>``; all of ``tollgate.usage.*`` runs
on the ``tollgate.usage`` queue.  Tasks that move money are idempotent and acknowledged late, so a
worker killed mid-task has its message re-delivered (``acks_late``, ``reject_on_worker_lost``);
persistence itself does not depend on that: the outbox stream keeps every accepted turn until a
drain has committed it.

Run: ``celery -A worker.celery_app worker -Q tollgate.usage`` and ``celery -A worker.celery_app beat``.

Layout note: ``include=["tasks.usage"]`` names the task modules as strings so the worker process
imports them; nothing in ``worker/`` imports ``tasks/`` code.
"""

from __future__ import annotations

import logging
import os

from celery import Celery, Task, signals
from celery.schedules import crontab

from worker.gate.keys import REDBEAT_PREFIX
from worker.settings import get_settings
from worker.transient import is_transient

log = logging.getLogger(__name__)

USAGE_QUEUE = "tollgate.usage"
#: scheduled jobs and webhooks: kept off the drain's queue so a slow job never delays persistence
JOBS_QUEUE = "tollgate.jobs"

#: every task name, here only (tasks, beat and senders use these; the names are the tasks' public API)
DRAIN_OUTBOX_TASK = "tollgate.usage.drain_outbox"
RECORD_TURN_TASK = "tollgate.usage.record_turn"
STRIPE_PROCESS_EVENT_TASK = "tollgate.stripe.process_event"
STRIPE_SWEEP_TASK = "tollgate.stripe.sweep"
PARTITIONS_TASK = "tollgate.maintenance.partitions"
REFRESH_DIRTY_ROLLUPS_TASK = "tollgate.rollups.refresh_dirty"
REFRESH_ROLLUP_TASK = "tollgate.rollups.refresh"
END_CHAT_TASK = "tollgate.rollups.end_chat"
RECONCILE_TASK = "tollgate.reconcile.run"
EXPIRE_RESERVATIONS_TASK = "tollgate.reservations.expire"
COMPLETE_CREDITS_TASK = "tollgate.reconcile.complete_credits"
CHECK_BUDGETS_TASK = "tollgate.billing.check_budgets"
MONTHLY_RESET_TASK = "tollgate.billing.monthly_reset"
RESUME_PAUSED_TASK = "tollgate.billing.resume_paused"
PAUSE_CHAT_TASK = "tollgate.billing.pause_chat"
DELIVER_WEBHOOK_TASK = "tollgate.webhooks.deliver"


class TollgateTask(Task):
    """The base of every tollgate task.

    ``quiet_when_unavailable`` (False by default; set per task in ``task_annotations`` below) is for
    tasks that only kick work whose state lives elsewhere, such as the drain (the outbox keeps its
    entries pending until a drain commits them): when PostgreSQL or Redis is unavailable
    (:func:`worker.transient.is_transient`) such a task logs one warning line and returns None
    instead of failing.  A failed task costs Celery a formatted traceback and a pickled copy of every
    frame's code positions, and the source lines it reads stay in ``linecache`` for the life of the
    process: during a PostgreSQL restart the drain failed several times a second, and each pool
    process kept about 25 MB more RSS for good (issue 16, measured with tracemalloc).  Any other
    exception fails the task as before."""

    quiet_when_unavailable = False

    def __call__(self, *args, **kwargs):
        if not self.quiet_when_unavailable:
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning(
                "%s: %s unavailable for now (%s); the next run goes on", self.name, _service(exc), _first_line(exc)
            )
            return None


def _service(exc: BaseException) -> str:
    return "Redis" if "redis" in type(exc).__module__ else "PostgreSQL"


def _first_line(exc: BaseException) -> str:
    """The exception's class and first line (SQLAlchemy's message goes on with the SQL and its parameters)."""
    return f"{type(exc).__name__}: {str(exc).partition(chr(10))[0][:300]}"


def make_app() -> Celery[TollgateTask]:
    """Build the Celery app from :class:`worker.settings.Settings`."""
    settings = get_settings()
    celery = Celery(
        "tollgate",
        task_cls=TollgateTask,
        broker=settings.broker_url,
        include=[
            "tasks.usage",
            "tasks.rollups",
            "tasks.billing",
            "tasks.reconcile",
            "tasks.reservations",
            "tasks.stripe",
            "tasks.maintenance",
        ],
    )
    celery.conf.update(
        task_default_queue=USAGE_QUEUE,
        task_routes={"tollgate.usage.*": {"queue": USAGE_QUEUE}, "tollgate.*": {"queue": JOBS_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        # the drain only kicks: the outbox keeps its entries while PostgreSQL or Redis is down (TollgateTask)
        task_annotations={DRAIN_OUTBOX_TASK: {"quiet_when_unavailable": True}},
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        result_backend=settings.redis_url,
        result_expires=3600,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # beat keeps its schedule in Redis and holds a lock there: a second beat process waits
        # instead of sending every job twice (celery-redbeat); worker.beat's subclass survives losing
        # the lock or Redis (logs, takes the lock again, goes on)
        beat_scheduler="worker.beat:ResilientRedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=REDBEAT_PREFIX,
        redbeat_lock_timeout=30,
        beat_max_loop_interval=5,
        # a drain stops itself after 30 s; the limits only catch a hung one
        task_soft_time_limit=120,
        task_time_limit=180,
        beat_schedule={
            # backstop: kicks from the gate drain at once; this catches anything a kick missed
            "drain-outbox": {"task": DRAIN_OUTBOX_TASK, "schedule": 1.0, "options": {"expires": 5}},
            # budget alerts (once per threshold per period) and auto-pause; idempotent
            "check-budgets": {"task": CHECK_BUDGETS_TASK, "schedule": 60.0, "options": {"expires": 55}},
            # monthly allowances: hourly on the hour, so a period's grant comes at 00:00 UTC and the
            # previous one expires an hour later (after the grace); idempotent per (wallet, period)
            "monthly-reset": {"task": MONTHLY_RESET_TASK, "schedule": crontab(minute=0), "options": {"expires": 3000}},
            # incremental rollups: only the enterprise × workflow × month groups the drain marked dirty
            "refresh-rollups": {"task": REFRESH_DIRTY_ROLLUPS_TASK, "schedule": 60.0, "options": {"expires": 55}},
            # paused chats whose wallet can pay again (a credit resumes them at once; this catches the rest)
            "resume-paused": {"task": RESUME_PAUSED_TASK, "schedule": 30.0, "options": {"expires": 25}},
            # Stripe events whose processing was lost or gave up are sent again (idempotent)
            "stripe-sweep": {"task": STRIPE_SWEEP_TASK, "schedule": 300.0, "options": {"expires": 240}},
            # usage_event partitions for the coming months, and retention (drops whole old months)
            "usage-partitions": {
                "task": PARTITIONS_TASK,
                "schedule": crontab(minute=30, hour=0),
                "options": {"expires": 3000},
            },
            # abandoned reservations give their nanos back (the entry keeps its stored name)
            "expire-holds": {"task": EXPIRE_RESERVATIONS_TASK, "schedule": 10.0, "options": {"expires": 9}},
            # report drift between the gate (Redis) and the ledger; `tollgate reconcile --repair` mends it
            "reconcile": {"task": RECONCILE_TASK, "schedule": 300.0, "options": {"expires": 240}},
            # credits committed in the ledger whose gate step was lost (a crash after the commit) reach the gate
            "complete-credits": {"task": COMPLETE_CREDITS_TASK, "schedule": 60.0, "options": {"expires": 55}},
        },
    )
    return celery


app = make_app()


#: tasks beat sends every few seconds: their routine INFO lines (received, succeeded, sent by beat)
#: are dropped, so an idle worker or beat logs nothing each second; failures and retries are
#: WARNING/ERROR and stay.  ``TOLLGATE_LOG_EVERY_TASK=1`` keeps every line.
QUIET_TASKS = frozenset({DRAIN_OUTBOX_TASK, EXPIRE_RESERVATIONS_TASK, RESUME_PAUSED_TASK})
#: the loggers of those routine lines: a task received (worker), succeeded (trace), sent (beat)
_ROUTINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


class QuietRoutineTasks(logging.Filter):
    """Drops INFO (and lower) records of :data:`_ROUTINE_LOGGERS` that name a task of
    :data:`QUIET_TASKS`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or record.name not in _ROUTINE_LOGGERS:
            return True
        args = record.args
        names = [args.get("name")] if isinstance(args, dict) else list(args or ())
        return not any(isinstance(n, str) and n in QUIET_TASKS for n in names)


def quiet_routine_tasks(**_: object) -> None:
    """Install :class:`QuietRoutineTasks` on the routine loggers (Celery's ``after_setup_logger``
    signal, so the worker and beat get it whatever their ``--loglevel``)."""
    if os.environ.get("TOLLGATE_LOG_EVERY_TASK") == "1":
        return
    for name in _ROUTINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietRoutineTasks) for f in logger.filters):
            logger.addFilter(QuietRoutineTasks())


signals.after_setup_logger.connect(quiet_routine_tasks, weak=False)
