"""worker.beat's scheduler in isolation: a Redis that is restarting (BusyLoadingError while it loads
its AOF, ConnectionError while it is down, ReadOnlyError during a failover) makes a tick log and
wait, never raise (the real processes are tested in tests/faults/test_beat_faults.py)."""

from __future__ import annotations

import logging

import pytest
import redis
from redbeat import RedBeatScheduler

from worker.beat import ResilientRedBeatScheduler
from worker.celery_app import app


class _Lock:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self, blocking=None):
        self.acquired += 1
        return True


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    ],
)
def test_a_tick_while_redis_is_unavailable_logs_and_waits(monkeypatch, caplog, error):
    scheduler = ResilientRedBeatScheduler(app, lazy=True)
    scheduler.lock = _Lock()

    def unavailable(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(RedBeatScheduler, "tick", unavailable)
    with caplog.at_level(logging.WARNING, logger="worker.beat"):
        assert scheduler.tick() == scheduler.max_interval
    assert f"beat: Redis unavailable ({type(error).__name__}" in caplog.text
    assert (scheduler.lock_lost, scheduler.lock.acquired) == (False, 0)  # the lock is not given up for it


def test_a_lost_lock_is_taken_again_before_anything_is_sent(monkeypatch, caplog):
    scheduler = ResilientRedBeatScheduler(app, lazy=True)
    scheduler.lock = _Lock()
    calls = []

    def lost_then_fine(self, *args, **kwargs):
        calls.append("tick")
        if len(calls) == 1:
            raise redis.exceptions.LockNotOwnedError("Cannot extend a lock that's no longer owned")
        return 1.0

    monkeypatch.setattr(RedBeatScheduler, "tick", lost_then_fine)
    monkeypatch.setattr(ResilientRedBeatScheduler, "setup_schedule", lambda self: calls.append("setup"))
    with caplog.at_level(logging.INFO, logger="worker.beat"):
        assert scheduler.tick() == 0.0
        assert scheduler.lock_lost is True
        assert scheduler.tick() == 1.0
    assert calls == ["tick", "setup", "tick"] and scheduler.lock.acquired == 1
    assert "beat: lost the lock" in caplog.text and "beat: acquired the lock" in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ConnectionError("Connection refused"),
    ],
)
def test_a_beat_started_while_redis_is_unavailable_starts_and_installs_its_schedule_at_a_later_tick(
    monkeypatch, caplog, error
):
    calls = []

    def unavailable(self):
        calls.append("setup")
        if len(calls) == 1:
            raise error

    monkeypatch.setattr(RedBeatScheduler, "setup_schedule", unavailable)
    monkeypatch.setattr(RedBeatScheduler, "tick", lambda self, *a, **k: calls.append("tick") or 1.0)
    with caplog.at_level(logging.WARNING, logger="worker.beat"):
        scheduler = ResilientRedBeatScheduler(app)  # not lazy: the constructor installs the schedule
    assert f"beat: Redis unavailable at start ({type(error).__name__}" in caplog.text
    assert scheduler.schedule_stale is True
    scheduler.lock = _Lock()
    assert scheduler.tick() == 1.0
    assert calls == ["setup", "setup", "tick"] and scheduler.schedule_stale is False
