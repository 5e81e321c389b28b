"""The production Celery app with a beat schedule sped up for the fault suite: the rollup job every
second and a 3 s redbeat lock (production: 60 s and 30 s), so a killed beat's lock lapses quickly.

Used as ``celery -A tests.faults.beat_app beat`` / ``worker``; nothing else changes."""

from worker.celery_app import app

app.conf.update(
    redbeat_lock_timeout=3,
    beat_max_loop_interval=1,
    beat_schedule={
        "refresh-rollups": {"task": "tollgate.rollups.refresh_dirty", "schedule": 1.0, "options": {"expires": 5}},
    },
)
