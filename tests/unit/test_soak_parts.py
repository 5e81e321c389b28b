"""The soak benchmark's parts that decide its figures (benchmarks/soak): fault flags, the Procfile's
command lines, quantiles, and the outbox lag read from the streams (on the real test Redis)."""

from __future__ import annotations

import argparse
import sys

import pytest

from benchmarks.soak.run import parse_fault, pct
from benchmarks.soak.sampler import outbox_state
from benchmarks.soak.stack import procfile_command
from worker.gate.keys import outbox_key
from worker.ledger.drain import GROUP


def test_a_fault_flag_is_kind_at_seconds_and_a_bad_one_names_the_flag():
    f = parse_fault("pg-restart@180")
    assert (f.kind, f.at_s) == ("pg-restart", 180.0)
    for bad in ("pg-restart", "disk-full@10", "worker-kill@soon", "redis-restart@-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--fault"):
            parse_fault(bad)


def test_the_procfile_worker_runs_as_this_python_with_its_variables_expanded(tmp_path, monkeypatch):
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "web: uvicorn x\nworker: celery -A worker.celery_app worker --concurrency ${WORKER_CONCURRENCY:-2}\n"
    )
    assert procfile_command("worker", procfile)[:3] == [sys.executable, "-m", "celery"]
    assert procfile_command("worker", procfile)[-2:] == ["--concurrency", "2"]
    monkeypatch.setenv("WORKER_CONCURRENCY", "3")
    assert procfile_command("worker", procfile)[-1] == "3"
    with pytest.raises(KeyError, match="beat"):
        procfile_command("beat", procfile)


def test_leading_assignments_of_a_procfile_line_are_kept_through_env(tmp_path, monkeypatch):
    """The repository's own worker line starts with TOLLGATE_DRAIN_LOOP=…: a shell would set it for the
    command, so the soak runs it as ``env NAME=value python -m celery …``."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("worker: A=${A:-1} B_2=x celery -A worker.celery_app worker --concurrency 2\n")
    assert procfile_command("worker", procfile) == [
        "env",
        "A=1",
        "B_2=x",
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--concurrency",
        "2",
    ]
    monkeypatch.setenv("A", "0")
    assert procfile_command("worker", procfile)[1] == "A=0"
    assert procfile_command("worker")[:2] == ["env", "TOLLGATE_DRAIN_LOOP=1"]  # the repository's Procfile


def test_quantiles_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (pct(values, 0.5), pct(values, 0.99), pct(values, 1.0)) == (50.0, 99.0, 100.0)


def test_the_outbox_lag_is_the_age_of_the_oldest_entry_not_acknowledged(redis_client):
    r = redis_client
    now_s, now_us = r.time()
    now_ms = now_s * 1000 + now_us // 1000
    key = outbox_key(0)
    for age_ms in (9000, 7000, 5000, 3000):
        r.xadd(key, {"t": "x"}, id=f"{now_ms - age_ms}-0")
    r.xgroup_create(key, GROUP, id="0")
    delivered = r.xreadgroup(GROUP, "c", {key: ">"}, count=2)[0][1]  # the two oldest, not acknowledged
    state = outbox_state(r, 4)
    assert state["pending"] == 4 and state["outbox_len"] == 4
    assert 9.0 <= state["lag_s"] < 10.0
    r.xack(key, GROUP, *[entry_id for entry_id, _ in delivered])  # the oldest two acknowledged, not trimmed
    state = outbox_state(r, 4)
    assert state["pending"] == 2 and state["outbox_len"] == 4
    assert 5.0 <= state["lag_s"] < 6.0  # the oldest never delivered
    r.xreadgroup(GROUP, "c", {key: ">"}, count=2)
    r.xack(key, GROUP, f"{now_ms - 5000}-0")
    assert 3.0 <= outbox_state(r, 4)["lag_s"] < 4.0  # the delivered, unacknowledged one
    r.xack(key, GROUP, f"{now_ms - 3000}-0")
    assert outbox_state(r, 4) | {"outbox_bytes": 0} == {"lag_s": 0.0, "pending": 0, "outbox_len": 4, "outbox_bytes": 0}
