"""CPU per drained row: the drain's own process and its PostgreSQL backends, and raw COPY beside it.

Run from the repository root::

    .venv/bin/python -m benchmarks.drain_cpu [--turns 20000] [--runs 3] [--profile] [--copy]

Wall-clock rates move with whatever else runs on the machine; CPU time per row moves much less.
Each run fills the (flushed) outbox of the bench namespaces with ``--turns`` accepted turns of the
bench's synthetic spread (``benchmarks.bench_pipeline.make_turns``), then runs ``OutboxDrain.drain``
of every shard in this process and reports, per persisted row:

- ``worker_us``: this process's CPU (``getrusage(RUSAGE_SELF)``, user + system, every thread);
- ``pg_us``: the CPU of the bench database's client backends (``/proc/<pid>/stat`` utime + stime,
  the measuring connection left out);
- ``wall_rows_per_s``: rows / wall seconds (loaded machine: indicative only).

Before each drain the process's objects are frozen (``gc.freeze()``), as ``DrainLoop.start`` does in
a worker process (before that commit the drain here paid full collections of the benchmark's heap).

``--copy`` measures the benchmark's raw COPY baseline (``bench_pipeline.bench_raw_copy``: text COPY
of the same rows in ``usage_row``'s shape into a scratch table with its indexes, one transaction per
batch) the same way; ``--profile`` prints the drain's
top functions by cumulative and own time (cProfile; its overhead inflates ``worker_us``).
Namespaces: ``TOLLGATE_BENCH_REDIS_URL`` (flushed) and ``TOLLGATE_BENCH_DATABASE_URL`` (recreated),
as the other benchmarks.
"""

from __future__ import annotations

import os

from benchmarks.namespaces import BENCH_DB_URL, BENCH_REDIS_URL, use_bench_namespaces

use_bench_namespaces()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import redis  # noqa: E402
from sqlalchemy import create_engine, make_url, text  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


class Backends:
    """CPU seconds of the bench database's client backends, other than the measuring connection."""

    def __init__(self) -> None:
        url = make_url(BENCH_DB_URL)
        self.engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        self.conn = self.engine.connect()
        self.own = self.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        self.database = url.database

    def snapshot(self) -> dict[int, float]:
        """``{pid: cpu seconds}`` of every client backend of the bench database."""
        pids = self.conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND backend_type = 'client backend'"),
            {"d": self.database},
        ).scalars()
        return {pid: _proc_cpu(pid) for pid in pids if pid != self.own}

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def measure(backends: Backends, rows: int, work: Callable[[], Any]) -> dict[str, float]:
    """Run ``work()``, return CPU µs per row of this process and of the backends, and rows/s."""
    pg0, cpu0, t0 = backends.snapshot(), _self_cpu(), time.perf_counter()
    work()
    elapsed, cpu1, pg1 = time.perf_counter() - t0, _self_cpu(), backends.snapshot()
    return {
        "worker_us": (cpu1 - cpu0) / rows * 1e6,
        "pg_us": Backends.delta(pg0, pg1) / rows * 1e6,
        "wall_rows_per_s": rows / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drain_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20_000, help="turns per run (default 20,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the drain of the last run")
    parser.add_argument("--copy", action="store_true", help="also measure the raw COPY baseline each run")
    parser.add_argument("--persisters", type=int, default=None, help="OutboxDrain persisters (default its own)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")
    args = parser.parse_args(argv)

    from benchmarks import bench_pipeline as bp
    from worker.devtools.traces import read_trace
    from worker.gate.gate import WalletGate
    from worker.ledger.drain import OutboxDrain
    from worker.settings import get_settings

    settings = get_settings()
    assert settings.redis_url == BENCH_REDIS_URL and settings.database_url == BENCH_DB_URL
    r = redis.Redis.from_url(BENCH_REDIS_URL, decode_responses=True)
    r.flushdb()
    bp.reset_database()
    trace = bp.DEFAULT_TRACE if bp.DEFAULT_TRACE.is_file() else bp.BUNDLED_TRACE
    trace_rows = read_trace(trace, "azure")
    gate = WalletGate(r, settings=settings, kicker=lambda shard: None)
    bp.open_wallets(gate)
    backends = Backends()
    drain = (
        OutboxDrain(r, consumer="drain-cpu")
        if args.persisters is None
        else OutboxDrain(r, consumer="drain-cpu", persisters=args.persisters)
    )
    results: dict[str, list[dict[str, float]]] = {"drain": [], "copy": []}
    for run in range(args.runs):
        r.flushdb()
        bp.reload_wallets(gate)
        turns = bp.make_turns(f"cpu{run}", args.turns, trace_rows)
        for i in range(0, len(turns), bp.BATCH):
            if not all(d.accepted for d in gate.record_turns(turns[i : i + bp.BATCH])):
                raise RuntimeError("a bench turn was denied")
        drain._groups.clear()  # the streams were flushed
        if args.copy:
            results["copy"].append(
                measure(
                    backends,
                    args.turns,
                    lambda: bp.bench_raw_copy(r, gate, settings.outbox_batch_size, unindexed=False),
                )
            )
        profile = cProfile.Profile() if args.profile and run == args.runs - 1 else None
        stats_box: list[Any] = []

        def work() -> None:
            # as the worker's drain loop starts (DrainLoop.start): the process's objects frozen, so
            # the collector's full collections do not walk them (nor this benchmark's own turns)
            gc.freeze()
            if profile is not None:
                profile.enable()
            stats_box.append(drain.drain(max_seconds=3600))
            if profile is not None:
                profile.disable()

        figures = measure(backends, args.turns, work)
        stats = stats_box[0]
        if stats.inserted != args.turns:
            raise RuntimeError(f"drain inserted {stats.inserted}, expected {args.turns}: {stats}")
        figures["batches"] = stats.batches
        results["drain"].append(figures)
        print(f"run {run}: drain {figures}" + (f"  copy {results['copy'][-1]}" if args.copy else ""), flush=True)
        if profile is not None:
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats(key).print_stats(30)
                print(out.getvalue())
    summary = {
        f"{kind}_{k}_median": statistics.median(f[k] for f in runs)
        for kind, runs in results.items()
        if runs
        for k in ("worker_us", "pg_us", "wall_rows_per_s")
    }
    print(json.dumps(summary) if args.json else summary)
    backends.conn.close()
    backends.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
