"""Quiet by default (issue 17): the routine INFO lines of the tasks beat sends every few seconds
(drain_outbox every second) are dropped from the worker's and beat's logs; other tasks' lines,
and every warning or error, stay.  The records are made with Celery's own message formats."""

from __future__ import annotations

import logging

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from worker.celery_app import DRAIN_OUTBOX_TASK, MONTHLY_RESET_TASK, quiet_routine_tasks


@pytest.fixture
def captured(monkeypatch):
    monkeypatch.delenv("TOLLGATE_LOG_EVERY_TASK", raising=False)
    quiet_routine_tasks()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("celery.worker.strategy", "celery.app.trace", "celery.beat")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def _lines(task: str) -> None:
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, {"id": "1", "name": task, "args": "", "kwargs": ""})
    logging.getLogger("celery.app.trace").info(
        LOG_SUCCESS, {"id": "1", "name": task, "return_value": {}, "runtime": 0.001, "args": "", "kwargs": ""}
    )
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "drain", task)


def test_the_drain_every_second_logs_nothing_at_info(captured):
    _lines(DRAIN_OUTBOX_TASK)
    assert captured == []
    logging.getLogger("celery.app.trace").error("Task %(name)s[%(id)s] raised", {"name": DRAIN_OUTBOX_TASK, "id": "1"})
    assert [r.levelno for r in captured] == [logging.ERROR]


def test_other_tasks_keep_their_lines(captured):
    _lines(MONTHLY_RESET_TASK)
    assert [r.name for r in captured] == ["celery.worker.strategy", "celery.app.trace", "celery.beat"]
    assert all(MONTHLY_RESET_TASK in r.getMessage() for r in captured)


def test_every_line_when_asked(monkeypatch, captured):
    for name in ("celery.worker.strategy", "celery.app.trace", "celery.beat"):
        logger = logging.getLogger(name)
        for f in list(logger.filters):
            logger.removeFilter(f)
    monkeypatch.setenv("TOLLGATE_LOG_EVERY_TASK", "1")
    quiet_routine_tasks()
    _lines(DRAIN_OUTBOX_TASK)
    assert len(captured) == 3
    monkeypatch.delenv("TOLLGATE_LOG_EVERY_TASK")
    quiet_routine_tasks()  # as the other tests found them
