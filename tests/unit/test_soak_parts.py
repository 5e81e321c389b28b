"""The soak benchmark's parts that decide its figures (benchmarks/soak): fault flags, the Procfile's
command lines, quantiles, the outbox lag read from the streams (on the real test Redis), and the
queued-turn probe's count of the entries it appended (on a Redis of its own, restarted from its AOF)."""

from __future__ import annotations

import argparse
import sys
import time

import pytest
import redis

from benchmarks.soak.driver import TurnMaker, build_turn
from benchmarks.soak.run import BUNDLED_TRACE, Step, cpu_per_1000, parse_fault, pct, queued_turn_bytes
from benchmarks.soak.sampler import measure_queued, outbox_state, queued_growth
from benchmarks.soak.stack import procfile_command
from worker.devtools.throwaway import RedisServer
from worker.devtools.traces import read_trace
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
    assert state["pending"] == 4 and state["outbox_len"] == 4 and state["outbox_unread"] == 2
    assert 9.0 <= state["lag_s"] < 10.0
    r.xack(key, GROUP, *[entry_id for entry_id, _ in delivered])  # the oldest two acknowledged, not trimmed
    state = outbox_state(r, 4)
    assert state["pending"] == 2 and state["outbox_len"] == 4
    assert 5.0 <= state["lag_s"] < 6.0  # the oldest never delivered
    r.xreadgroup(GROUP, "c", {key: ">"}, count=2)
    r.xack(key, GROUP, f"{now_ms - 5000}-0")
    assert 3.0 <= outbox_state(r, 4)["lag_s"] < 4.0  # the delivered, unacknowledged one
    r.xack(key, GROUP, f"{now_ms - 3000}-0")
    assert outbox_state(r, 4) | {"outbox_bytes": 0} == {
        "lag_s": 0.0,
        "pending": 0,
        "outbox_len": 4,
        "outbox_bytes": 0,
        "outbox_unread": 0,
    }


def test_the_driver_builds_each_turn_as_the_validated_turn_it_copies():
    """The driver's cheap turns (a validated row's copy with its own ids) equal, field for field,
    the turns built and validated in full."""
    rows = read_trace(BUNDLED_TRACE, "azure")
    wallets, dry = [f"soak-f{i:02d}" for i in range(40)], [f"soak-d{i:02d}" for i in range(10)]
    make = TurnMaker("s1", 2, rows, wallets, dry, 0.02)
    for n in [*range(60), *range(0, 300_000, 7919)]:
        built = build_turn("s1", 2, n, rows[n % len(rows)], wallets, dry, 0.02)
        made = make(n)
        assert made == built and made.model_dump() == built.model_dump() and hash(made) == hash(built)
    assert sum(make(n).wallet_id in dry for n in range(10_000)) == 200  # 2 % to the dry wallets


def test_the_queued_turn_figure_is_the_cost_of_unread_entries_when_the_samples_span_enough():
    samples = [
        {"outbox_len": u + r, "outbox_unread": u, "outbox_bytes": 40_000 + 250 * u + 420 * r}
        for u, r in ((0, 300), (2500, 900), (800, 1000), (4000, 200), (100, 100), (3100, 700))
    ]
    fig = queued_turn_bytes(samples)
    assert round(fig["redis_bytes_per_queued_turn"], 6) == 250
    assert round(fig["redis_bytes_per_read_entry"], 6) == 420
    assert round(fig["redis_stream_fixed_bytes"], 3) == 40_000
    assert fig["redis_bytes_per_queued_turn_at_peak"] == (40_000 + 250 * 4000 + 420 * 200) / 4200
    short = [s | {"outbox_unread": 0} for s in samples]  # a drain that keeps up: only the upper bound
    fig = queued_turn_bytes(short)
    assert fig["redis_queued_method"].startswith("ratio") and "redis_bytes_per_read_entry" not in fig
    assert fig["redis_bytes_per_queued_turn"] == fig["redis_bytes_per_queued_turn_at_peak"]


def test_cpu_seconds_per_1000_turns_add_each_interval_from_the_start_until_the_outbox_is_empty():
    step = Step(rate=1000, duration=2.0, start=100.0, end=102.0)
    samples = [
        {"t": t, "pending": p, "rss.worker": 1.0, "cpu.worker": c}
        for t, p, c in ((99.0, 0, 90.0), (100.5, 5, 40.0), (101.5, 9, 50.0), (102.5, 3, 20.0), (103.0, 0, 60.0))
        + ((104.0, 0, 99.0),)
    ]
    # from the start: (100.5 - 100) * 0.4 + (101.5 - 100.5) * 0.5 + (102.5 - 101.5) * 0.2 + (103.0 - 102.5) * 0.6
    # = 1.2 CPU s over 2,000 turns; the sample before the start and the one after the outbox emptied not counted
    assert cpu_per_1000(samples, step, 2000) == {"worker": pytest.approx(0.6)}


def _read_ack_trim(r: redis.Redis, key: str, count: int) -> None:
    """What the drain does to a stream: read ``count`` new entries, acknowledge them, XTRIM MINID
    above the group's last-delivered id (worker.ledger.drain.Drain.trim with nothing pending)."""
    reply = r.xreadgroup(GROUP, "c", {key: ">"}, count=count)
    ids = [entry_id for entry_id, _ in reply[0][1]] if reply else []
    if ids:
        r.xack(key, GROUP, *ids)
    last = next(g["last-delivered-id"] for g in r.xinfo_groups(key) if g["name"] == GROUP)
    ms, seq = last.split("-")
    r.xtrim(key, minid=f"{ms}-{int(seq) + 1}", approximate=False)


def test_the_probe_counts_the_entries_it_appended_after_a_redis_restart_replayed_reads_from_the_aof():
    """A Redis restarted from its AOF (the soak's redis-restart fault) replays the drain's reads as
    XCLAIM … LASTID, which (before Redis 7.2.4) does not advance the group's entries-read: its
    ``lag`` then counts every entry read since the last AOF rewrite as unread, for good.  The probe
    must count the 1,000 entries appended while nothing reads, whatever the group's counter says."""
    server = RedisServer(aof=True)
    try:
        r = redis.Redis(port=server.port, decode_responses=True)
        keys = [outbox_key(shard) for shard in range(2)]
        entry = {"t": "x" * 180, "g": "1200|98800|cpa0|7000|0|0"}  # about a turn's size
        for key in keys:
            r.xgroup_create(key, GROUP, id="0", mkstream=True)
            for _ in range(300):
                r.xadd(key, entry)
            _read_ack_trim(r, key, 300)
        r.bgrewriteaof()  # the AOF's base now holds the group's entries-read (300 per stream)
        while r.info("persistence")["aof_rewrite_in_progress"] or r.info("persistence")["aof_rewrite_scheduled"]:
            time.sleep(0.02)
        for key in keys:
            for _ in range(300):
                r.xadd(key, entry)
            _read_ack_trim(r, key, 200)  # replayed after a restart as XCLAIM … LASTID
        r.close()
        server.restart()  # graceful: everything in the AOF
        r = redis.Redis(port=server.port, decode_responses=True)
        for key in keys:
            _read_ack_trim(r, key, 1000)  # the backlog read: nothing unread, nothing held
        assert outbox_state(r, 2)["outbox_unread"] == 0 and outbox_state(r, 2)["outbox_len"] == 0

        def send() -> None:  # the probe's turns, with no drain reading
            for key in keys:
                for _ in range(500):
                    r.xadd(key, entry)

        sizes = [r.memory_usage(key, samples=0) for key in keys]
        measured = measure_queued(r, 2, send)
        grown = sum(r.memory_usage(key, samples=0) for key in keys) - sum(sizes)
        assert measured == {
            "queued_entries": 1000,
            "queued_bytes": grown,
            "bytes_per_queued_entry": grown / 1000,
            "problem": None,
        }
        assert 150 < measured["bytes_per_queued_entry"] < 400
        assert outbox_state(r, 2)["outbox_unread"] == 1000  # the sampler's count too (its lag check)
        r.close()
    finally:
        server.close()


def test_a_probe_during_which_entries_were_trimmed_gives_no_figure():
    before = {"entries_added": 5000, "outbox_len": 300, "outbox_bytes": 100_000}
    after = {"entries_added": 7000, "outbox_len": 2100, "outbox_bytes": 600_000}  # 200 trimmed meanwhile
    assert queued_growth(before, after) == {
        "queued_entries": 2000,
        "queued_bytes": 500_000,
        "bytes_per_queued_entry": None,
        "problem": "XLEN grew by 1,800 while 2,000 entries were appended: some were trimmed or deleted",
    }
    assert queued_growth(before, after | {"outbox_len": 2300})["bytes_per_queued_entry"] == 250
    assert queued_growth(before, before)["problem"] == "no entry was appended"


def test_relation_bytes_sums_partitions_under_their_table_and_the_summary_splits_the_growth(database_url):
    """The soak's PostgreSQL growth by table: a partitioned table's partitions are summed under its
    name (indexes included), and the per-turn split divides each table's growth by the persisted turns."""
    import psycopg

    from benchmarks.soak.run import relation_bytes, summarize

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS soak_relation_test CASCADE")
        conn.execute("CREATE SCHEMA soak_relation_test")
        try:
            conn.execute(
                "CREATE TABLE soak_relation_test.parted (k int, v text) PARTITION BY RANGE (k);"
                "CREATE TABLE soak_relation_test.parted_a PARTITION OF soak_relation_test.parted FOR VALUES FROM (0) TO (1000);"
                "CREATE TABLE soak_relation_test.parted_b PARTITION OF soak_relation_test.parted FOR VALUES FROM (1000) TO (2000);"
                "CREATE INDEX ON soak_relation_test.parted (k)"
            )
            before = relation_bytes(database_url)
            conn.execute(
                "INSERT INTO soak_relation_test.parted SELECT g, repeat('x', 100) FROM generate_series(0, 1999) g"
            )
            after = relation_bytes(database_url)
            parts = conn.execute(
                "SELECT sum(pg_total_relation_size(oid))::bigint FROM pg_class "
                "WHERE oid IN ('soak_relation_test.parted_a'::regclass, 'soak_relation_test.parted_b'::regclass)"
            ).fetchone()[0]
        finally:
            conn.execute("DROP SCHEMA soak_relation_test CASCADE")
    assert "parted_a" not in after and "parted_b" not in after
    assert after["parted"] == parts and parts > before["parted"]
    step = Step(100, 1.0)
    fig = summarize(
        step,
        [],
        {"redis_used_memory": 0, "pg_db_bytes": 0, "pg_relations": before},
        {"redis_used_memory": 0, "pg_db_bytes": 4000, "pg_relations": after},
        {"decided": 2000, "persisted": 2000},
    )
    assert fig["pg_bytes_per_turn"] == 2.0
    assert fig["pg_bytes_per_turn_by_table"]["parted"] == (parts - before["parted"]) / 2000


def test_an_upper_bound_over_the_queued_turn_target_is_not_a_failure_and_a_measured_figure_is():
    """Redis per queued turn: the ratio at the largest outbox only bounds it from above, so over the
    target it is N/A (None, failing nothing); within the target, or fitted or probed, it decides."""
    from benchmarks.soak.run import TARGET_REDIS_B_PER_QUEUED, UPPER_BOUND, verdict

    base = {"rate_asked": 1000, "rate_achieved": 1000.0, "lag_p99_s": 0.1, "lag_growing": False, "faults": []}

    def queued(value: float, method: str) -> tuple[str, bool | None, str]:
        fig = base | {"redis_bytes_per_queued_turn": value, "redis_queued_method": method}
        return next(line for line in verdict(fig, None) if "per queued turn" in line[0])

    over, within = TARGET_REDIS_B_PER_QUEUED + 301, TARGET_REDIS_B_PER_QUEUED - 1
    name, ok, measured = queued(over, UPPER_BOUND)
    assert (
        ok is None
        and measured == f"{over} B ({UPPER_BOUND}); not measured: too few unread entries to fit, run with the probe"
    )
    assert queued(within, UPPER_BOUND)[1] is True
    assert queued(over, "fit over 40 samples, unread entries")[1] is False
    assert queued(over, "probe: worker paused, 20,000 entries appended")[1] is False
    assert queued(within, "probe: worker paused, 20,000 entries appended")[1] is True


def test_a_fault_run_s_lag_p99_leaves_out_each_fault_s_window_and_keeps_every_sample_s_beside_it():
    """With faults, the lag target is judged outside each fault's window (the fault until the first
    sample with lag < 1 s after the service answers; the recovery target judges the window); the
    p99 over every sample is kept beside it."""
    from benchmarks.soak.run import Fault, summarize, verdict

    # 200 one-second samples at 0.2 s of lag; a fault at t=50 (answering at 53) lags up to 6 s
    # until t=58, when the lag is back under 1 s
    lags = {t: 0.2 for t in range(200)} | {t: float(t - 49) for t in range(50, 56)} | {56: 3.0, 57: 1.5}
    samples = [{"t": 1000.0 + t, "lag_s": lag, "pending": 0} for t, lag in sorted(lags.items())]
    step = Step(1000, 200.0, start=1000.0, end=1199.0)
    step.faults = [Fault("pg-restart", 50.0, started=1050.0, answering=1053.0)]
    fig = summarize(step, samples, {}, {}, None)
    (fault,) = fig["faults"]
    assert fault["window"] == (1050.0, 1058.0) and fault["recovery_s"] == 5.0 and fault["lag_peak_s"] == 6.0
    assert fig["lag_p99_s"] == 0.2 and fig["lag_p50_s"] == 0.2 and fig["lag_left_out_s"] == 8.0
    # every sample: 8 of 200 above 0.2 s, the nearest rank 198 is the third largest
    assert fig["lag_p99_all_s"] == 4.0 and fig["lag_max_s"] == 6.0
    lag_line = next(line for line in verdict(fig, None) if line[0].startswith("lag p99"))
    assert lag_line == ("lag p99 <= 1.0 s outside the faults' windows", True, "0.20 s")
    step.faults = []  # the same samples without a fault: every sample counts
    fig = summarize(step, samples, {}, {}, None)
    assert fig["lag_p99_s"] == fig["lag_p99_all_s"] == 4.0 and fig["lag_left_out_s"] == 0
    assert next(line for line in verdict(fig, None) if line[0].startswith("lag p99"))[1] is False
