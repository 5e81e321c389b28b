"""A beat process and the worker running its rollup job, both SIGKILLed in the middle of a rollup
run: after a restart every enterprise × workflow × month rollup equals a fresh computation from the
usage events, and running the job again changes nothing (DESIGN.md invariant 5)."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.faults.conftest import ENTERPRISE, T0, open_wallets, wait_until

pytestmark = pytest.mark.faults

GROUPS = 600


def _count(fe, sql: str) -> int:
    from worker.db import engine_for

    try:
        with engine_for(fe.pg.url).connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    except Exception:
        return -1


def _beat(fe, name: str):
    return fe.start_process(["-m", "celery", "-A", "tests.faults.beat_app", "beat", "--loglevel", "INFO"], name)


def _kill(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_beat_and_its_worker_killed_mid_rollup_leave_no_stale_rollup(fault_env):
    from models.turn import TurnIn
    from worker.chats.rollups import build_document
    from worker.db import engine_for, session_scope
    from worker.devtools.workers import kill_process_group
    from worker.gate.gate import WalletGate
    from worker.ledger.drain import OutboxDrain

    fe = fault_env
    gate = WalletGate(fe.client(), settings=fe.settings, kicker=lambda shard: None)
    open_wallets(gate, ["rw"])
    turns = [
        TurnIn(
            turn_id=f"r-{j}",
            wallet_id="rw",
            enterprise_id=ENTERPRISE,
            chat_id=f"c-{j % 900}",
            workflow=f"wf{j % GROUPS:03d}",
            agent=f"a{j % 3}",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=500 + j % 101,
            completion_tokens=20 + j % 7,
            duration_ms=100 + j % 13,
            occurred_at=T0 + timedelta(seconds=j),
        )
        for j in range(GROUPS * 4)
    ]
    for i in range(0, len(turns), 500):
        assert all(d.accepted for d in gate.record_turns(turns[i : i + 500]))
    assert OutboxDrain(fe.client(), settings=fe.settings, consumer="pre").drain().inserted == len(turns)
    assert _count(fe, "SELECT count(*) FROM rollup_dirty") == GROUPS

    worker = fe.start_process(
        [
            "-m",
            "celery",
            "-A",
            "tests.faults.beat_app",
            "worker",
            "-Q",
            "tollgate.jobs",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "-n",
            "jobs-1@%h",
        ],
        "jobs-1",
    )
    beat = _beat(fe, "beat-1")
    wait_until(
        lambda: _count(fe, "SELECT count(*) FROM workflow_rollup") >= 30, 60, "the rollup run to start", interval=0.01
    )
    _kill(beat)
    kill_process_group(worker)  # SIGKILL the worker (main process and the child running the job)
    done = _count(fe, "SELECT count(*) FROM workflow_rollup")
    assert 0 < done < GROUPS, "the kill must land mid-rollup"

    worker_2 = fe.start_process(
        [
            "-m",
            "celery",
            "-A",
            "tests.faults.beat_app",
            "worker",
            "-Q",
            "tollgate.jobs",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "-n",
            "jobs-2@%h",
        ],
        "jobs-2",
    )
    beat_2 = _beat(fe, "beat-2")  # waits for the killed beat's lock to lapse (3 s here), then schedules

    def settled() -> bool:
        if _count(fe, "SELECT count(*) FROM rollup_dirty") != 0:
            return False
        first = _count(fe, "SELECT count(*) FROM workflow_rollup")
        time.sleep(2.5)  # two more beat ticks: nothing left to take
        return first == _count(fe, "SELECT count(*) FROM workflow_rollup")

    wait_until(settled, 60, "the restarted beat's rollup runs")
    with engine_for(fe.pg.url).connect() as conn:
        stored = {
            w: (doc, turns_, cost, at)
            for w, doc, turns_, cost, at in conn.execute(
                text("SELECT workflow, document, total_turns, cost_nanos, refreshed_at FROM workflow_rollup")
            )
        }
        per_group = dict(
            conn.execute(text("SELECT workflow, sum(cost_nanos) FROM usage_event GROUP BY workflow")).all()
        )
    missing = sorted(set(per_group) - set(stored))
    assert not missing, f"{len(missing)} group(s) never rolled up after the kill, e.g. {missing[:5]}"
    with session_scope() as session:
        for workflow, (doc, total_turns, cost, _at) in stored.items():
            assert doc == build_document(session, ENTERPRISE, workflow, "2026-11")
            assert (total_turns, cost) == (4, per_group[workflow])
    # idempotent: another run changes nothing, not even refreshed_at.  The restarted beat and worker
    # are stopped first (all settled): still running, they would refresh some of the marks below
    # before this run reads them, and this run would count fewer than all the groups
    _kill(beat_2)
    _kill(worker_2)
    from tasks.rollups import refresh_dirty

    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO rollup_dirty (enterprise_id, workflow, period, touched_at) "
                "SELECT enterprise_id, workflow, period, now() FROM workflow_rollup"
            )
        )
    assert refresh_dirty.run() == GROUPS
    with engine_for(fe.pg.url).connect() as conn:
        again = dict(conn.execute(text("SELECT workflow, refreshed_at FROM workflow_rollup")).all())
    assert again == {w: v[3] for w, v in stored.items()}


# ---------------------------------------------------------------------------------------------
# beat survives losing its lock and a Redis restart (issue 14, item 9), on a redis-server of its own

LOCK_KEY = "tollgate:redbeat::lock"
JOBS_QUEUE = "tollgate.jobs"  # where tests.faults.beat_app's only job (every second) goes


@pytest.fixture()
def own_beat(tmp_path):
    """A redis-server of this test's own (no persistence) and a beat process (tests.faults.beat_app:
    a 3 s lock, a job every second) on it; both stopped afterwards."""
    import subprocess
    import sys

    import redis

    from tests.conftest import REPO
    from worker.devtools.throwaway import RedisServer
    from worker.devtools.workers import stop_process_group

    server = RedisServer(aof=False)
    env = dict(os.environ, PYTHONPATH=str(REPO), TOLLGATE_REDIS_URL=server.url, TOLLGATE_BROKER_URL=server.url)
    log_path = tmp_path / "beat.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.faults.beat_app", "beat", "--loglevel", "INFO"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, proc, client, log_path
    finally:
        stop_process_group(proc, timeout_s=10)
        log.close()
        client.close()
        server.close()


def _queued(client) -> int:
    try:
        return client.llen(JOBS_QUEUE)
    except Exception:  # Redis restarting
        return -1


def _lock(client) -> str | None:
    try:
        return client.get(LOCK_KEY)
    except Exception:
        return None


def _alive(proc, log_path) -> bool:
    assert proc.poll() is None, f"beat exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
    return True


def test_beat_whose_lock_is_deleted_keeps_running_takes_it_again_and_goes_on_sending(own_beat):
    server, proc, client, log_path = own_beat
    wait_until(lambda: _alive(proc, log_path) and _queued(client) >= 2, 60, "beat to send its job")
    token = _lock(client)
    assert token
    client.delete(LOCK_KEY)  # as an expiry during a stall, or someone's FLUSHALL, would
    wait_until(lambda: _alive(proc, log_path) and _lock(client) not in (None, token), 30, "beat to take its lock again")
    sent = _queued(client)
    wait_until(lambda: _alive(proc, log_path) and _queued(client) >= sent + 3, 30, "beat to send again")
    time.sleep(4)  # more than the lock's 3 s: it is extended, not lost again
    assert _alive(proc, log_path) and _lock(client) not in (None, token)
    text_ = log_path.read_text()
    assert "beat: lost the lock tollgate:redbeat::lock" in text_
    assert "beat: acquired the lock tollgate:redbeat::lock again" in text_


def test_beat_whose_redis_restarts_empty_keeps_running_and_schedules_again(own_beat):
    server, proc, client, log_path = own_beat
    wait_until(lambda: _alive(proc, log_path) and _queued(client) >= 2, 60, "beat to send its job")
    server.restart()  # graceful, no persistence: the lock, the schedule and the queue are gone
    wait_until(lambda: _alive(proc, log_path) and _lock(client) is not None, 30, "beat to take its lock again")
    wait_until(lambda: _alive(proc, log_path) and _queued(client) >= 3, 30, "beat to send its job again")
    assert client.exists("tollgate:redbeat::schedule") == 1  # its entries were installed again
    text_ = log_path.read_text()
    assert "beat: lost the lock tollgate:redbeat::lock" in text_
    assert "beat: schedule entries installed again" in text_


# ---------------------------------------------------------------------------------------------
# beat started while Redis is down, then Redis killed and restarted from its AOF under it (issue 16)


def test_beat_started_while_redis_is_down_and_then_killed_under_it_keeps_its_jobs_running(aof_env):
    """The beat process never exits for an unavailable Redis: started while Redis is down it waits,
    installs its schedule once Redis answers, and after a SIGKILL of Redis and a restart that replays
    the AOF (BusyLoadingError while it loads) its job runs again on a worker."""
    fe = aof_env
    worker_args = ["-m", "celery", "-A", "tests.faults.beat_app", "worker", "-Q", JOBS_QUEUE, "--pool", "solo"]
    worker_args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO", "-n", "j@%h"]
    fe.redis_server.kill()
    beat = _beat(fe, "beat-down")
    wait_until(
        lambda: _alive(beat, beat.log_path) and "beat: Redis unavailable at start" in beat.log_path.read_text(),
        60,
        "beat to start against a Redis that is down",
    )
    time.sleep(2)  # two more ticks against a refused connection
    assert _alive(beat, beat.log_path)
    fe.redis_server.start()  # same port and AOF
    worker = fe.start_process(worker_args, "jobs-worker")

    def ran() -> int:
        lines = worker.log_path.read_text(errors="replace").splitlines()
        return sum("tollgate.rollups.refresh_dirty[" in line and "succeeded" in line for line in lines)

    wait_until(lambda: _alive(beat, beat.log_path) and ran() >= 2, 60, "the job to run after Redis came up")

    fe.redis_server.kill()  # SIGKILL: no shutdown, the AOF (everysec) is all that is left
    time.sleep(3)
    assert _alive(beat, beat.log_path)
    fe.redis_server.start()  # replays the AOF
    after_restart = ran()
    wait_until(
        lambda: _alive(beat, beat.log_path) and ran() >= after_restart + 3,
        60,
        "the job to run again after Redis was killed and restarted",
    )
    assert worker.poll() is None
