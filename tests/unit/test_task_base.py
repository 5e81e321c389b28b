"""worker.celery_app.TollgateTask: a task marked ``quiet_when_unavailable`` (the drain) ends with a
warning instead of a failure when PostgreSQL or Redis is unavailable, and fails as before for any
other exception; every other task fails as before (issue 16: failed tasks left their pool process
about 25 MB more RSS for good)."""

from __future__ import annotations

import logging

import psycopg
import pytest
import redis
from celery import Celery
from sqlalchemy import exc as sa_exc

import tasks.usage  # noqa: F401  (registers the drain task on the app, as the worker's include does)
from worker.celery_app import DRAIN_OUTBOX_TASK, TollgateTask
from worker.celery_app import app as tollgate_app


def _app() -> Celery:
    app = Celery("t", task_cls=TollgateTask, broker="memory://", set_as_current=False)
    app.conf.update(task_annotations={"t.quiet": {"quiet_when_unavailable": True}}, task_always_eager=False)
    return app


def _raiser(app: Celery, name: str):
    @app.task(name=name, shared=False)
    def task(kind: str):
        if kind == "pg":
            raise sa_exc.OperationalError("INSERT ...", {}, psycopg.OperationalError("server closed the connection"))
        if kind == "redis":
            raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
        if kind == "data":
            raise ValueError("a bad row")
        return "done"

    return task


@pytest.mark.parametrize("kind", ["pg", "redis"])
def test_a_quiet_task_whose_service_is_unavailable_returns_none_with_one_warning(caplog, kind):
    task = _raiser(_app(), "t.quiet")
    with caplog.at_level(logging.WARNING, logger="worker.celery_app"):
        result = task.apply(args=(kind,))
    assert result.successful() and result.result is None
    service = "PostgreSQL" if kind == "pg" else "Redis"
    assert f"t.quiet: {service} unavailable for now" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_quiet_task_fails_as_before_for_any_other_exception():
    task = _raiser(_app(), "t.quiet")
    assert task.apply(args=("ok",)).result == "done"
    result = task.apply(args=("data",))
    assert result.failed() and isinstance(result.result, ValueError)


@pytest.mark.parametrize("kind", ["pg", "redis"])
def test_any_other_task_fails_as_before_when_a_service_is_unavailable(kind):
    result = _raiser(_app(), "t.loud").apply(args=(kind,))
    assert result.failed()


def test_the_drain_task_is_the_quiet_one():
    tollgate_app.loader.import_default_modules()
    assert tollgate_app.tasks[DRAIN_OUTBOX_TASK].quiet_when_unavailable is True
    assert not any(
        getattr(t, "quiet_when_unavailable", False)
        for name, t in tollgate_app.tasks.items()
        if name != DRAIN_OUTBOX_TASK
    )
