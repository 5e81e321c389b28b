"""Start and stop Celery worker processes for a job that needs its own (``tollgate replay``),
benchmarks and tests.  Each worker runs in its own process group, so stopping it stops its pool."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.celery_app import JOBS_QUEUE, USAGE_QUEUE

ALL_QUEUES = (USAGE_QUEUE, JOBS_QUEUE)


def start_celery_worker(
    name: str,
    log_path: Path,
    *,
    concurrency: int = 2,
    loglevel: str = "INFO",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    queues: tuple[str, ...] = (USAGE_QUEUE,),
) -> subprocess.Popen:
    """Start ``celery worker`` (prefork, ``queues``: default the drain's) named ``<name>@<host>``,
    logging to ``log_path``.  It inherits this process's ``TOLLGATE_*`` settings unless ``env`` is given."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        loglevel,
    ]
    with log_path.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def wait_ready(proc: subprocess.Popen, log_path: Path, timeout_s: float = 60.0) -> float:
    """Wait for the worker's ``ready.`` log line (needs loglevel INFO); returns the seconds waited.

    Raises RuntimeError with the log's tail if the worker exits or is not ready in time.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(rb"ready\.", log_path.read_bytes()):
            return time.perf_counter() - started
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    stop_process_group(proc)
    raise RuntimeError(f"celery worker not ready after {timeout_s:.0f} s: {log_path.read_text()[-2000:]}")


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the worker's process group (a warm shutdown), SIGKILL it after ``timeout_s``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group at once (main process and pool children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
