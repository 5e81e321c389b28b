"""Beat runs with a lock (celery-redbeat): two beat processes never schedule a job twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, _env
from worker.devtools.workers import stop_process_group

pytestmark = pytest.mark.integration


def _beat(tmp_path, name: str) -> tuple[subprocess.Popen, object]:
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=REPO,
        start_new_session=True,
    )
    return proc, log


def test_two_beat_processes_send_each_tick_once(redis_client, tmp_path):
    """With no worker consuming, count the drain-outbox messages beat sends to the broker in a fixed
    window: one beat sends about one per second; two unlocked beats would send about two."""
    from worker.celery_app import USAGE_QUEUE

    first, log1 = _beat(tmp_path, "beat-1")
    second, log2 = _beat(tmp_path, "beat-2")
    try:
        deadline = time.monotonic() + 30
        while redis_client.llen(USAGE_QUEUE) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert redis_client.llen(USAGE_QUEUE) > 0, "beat never sent a job"
        start = redis_client.llen(USAGE_QUEUE)
        time.sleep(8)
        sent = redis_client.llen(USAGE_QUEUE) - start
        assert first.poll() is None and second.poll() is None  # both alive: one holds the lock, one waits
        assert 5 <= sent <= 10, f"{sent} drain ticks in 8 s: expected about 8 from one beat, not 16"
        assert redis_client.exists("tollgate:redbeat::lock") == 1
    finally:
        for proc in (first, second):
            stop_process_group(proc)
        log1.close()
        log2.close()
