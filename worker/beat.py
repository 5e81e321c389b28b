"""Celery beat's scheduler: celery-redbeat's, made to survive losing its lock and Redis restarts.

celery-redbeat (2.4) extends its lock in Redis at every tick; when the lock key is gone (deleted,
expired while beat was stalled, or lost with Redis' data) the extension raises redis-py's
``LockNotOwnedError``, and a Redis that is restarting raises ``ConnectionError`` /
``BusyLoadingError``.  Either escapes ``tick`` and the beat process exits, so nothing is scheduled
until someone restarts it; and a beat *started* while Redis is down or still loading its AOF (a
supervisor restarting it beside a restarting Redis) exits at once, because redbeat installs the static
schedule in the scheduler's constructor.  :class:`ResilientRedBeatScheduler` instead:

- on a lost lock, logs a warning, sends nothing, and tries to take the lock again (``SET NX``, not
  blocking) at every tick: it goes on once it holds it, or waits as a standby while another beat
  holds it (so two beats still never both send the schedule);
- on a Redis error, logs a warning and tries again after ``max_interval`` seconds;
- after taking the lock again, re-installs the static schedule entries (Redis may have lost them
  with the lock; entries still there keep their ``last_run_at``);
- when Redis is unavailable at start, logs a warning and starts anyway: the lock is taken and the
  schedule installed at the first tick that reaches Redis.

Selected by ``beat_scheduler`` in :mod:`worker.celery_app`.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

#: Redis errors a restart or failover produces (BusyLoadingError is a ConnectionError)
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


class ResilientRedBeatScheduler(RedBeatScheduler):
    """``redbeat.RedBeatScheduler`` that survives a lost lock and a Redis restart (module doc).

    ``tick()`` returns the seconds until the next tick, as Celery expects; it raises nothing for
    a lost lock or an unreachable Redis."""

    #: redbeat's lock (a redis-py ``Lock``, None until taken); declared here as redbeat ships no types
    lock: Any

    def __init__(self, app, **kwargs) -> None:
        # set before super().__init__, which installs the schedule (setup_schedule below)
        #: the lock must be (re)taken before anything is sent
        self.lock_lost = False
        #: the static entries must be installed again (after the lock, and maybe the data, was lost)
        self.schedule_stale = False
        self._starting = True
        super().__init__(app, **kwargs)
        self._starting = False

    def setup_schedule(self) -> None:
        """Install the static schedule in Redis (redbeat's).  In the constructor, when Redis is
        unavailable (down, loading its AOF, read-only), log a warning and leave it to the first tick
        that reaches Redis instead of raising (which would end the beat process); later (from
        ``tick``) the Redis error is raised to ``tick``, which tries again after ``max_interval``."""
        try:
            super().setup_schedule()
        except REDIS_UNAVAILABLE as exc:
            if not self._starting:
                raise
            log.warning(
                "beat: Redis unavailable at start (%s: %s); the schedule is installed once it answers",
                type(exc).__name__,
                exc,
            )
            self.schedule_stale = True

    def tick(self, min=min, **kwargs) -> float:
        try:
            if self.lock_key and (self.lock is None or self.lock_lost):
                if not self._take_lock():
                    return self.max_interval
            if self.schedule_stale:
                self.setup_schedule()
                self.schedule_stale = False
                log.info("beat: schedule entries installed again")
            return super().tick(min=min, **kwargs)
        except LockError as exc:  # LockNotOwnedError: the key is gone or holds another beat's token
            log.warning("beat: lost the lock %s (%s); taking it again before sending anything", self.lock_key, exc)
            self.lock_lost = True
            return 0.0
        except REDIS_UNAVAILABLE as exc:
            log.warning(
                "beat: Redis unavailable (%s: %s); trying again in %s s", type(exc).__name__, exc, self.max_interval
            )
            return self.max_interval

    def _take_lock(self) -> bool:
        """Try once to take the lock (not blocking).  True if this beat now holds it."""
        if self.lock is None:  # the startup acquisition failed (Redis was down): make the lock as redbeat does
            client = get_redis(self.app)
            lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
            lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
            self.lock = lock
        if not self.lock.acquire(blocking=False):
            log.info("beat: the lock %s is held by another beat; standing by", self.lock_key)
            return False
        log.warning("beat: acquired the lock %s again", self.lock_key)
        self.lock_lost = False
        self.schedule_stale = True
        return True
