"""Capacity per unit, for sizing past one machine (issue 16 item 7): turns/s per Redis master and per
drain worker process, each with the CPU it took, so that masters, workers and PostgreSQL cores for a
target rate can be worked out on paper (``benchmarks/RESULTS.md``).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_scale [--turns 100000] [--drain 50000] [--json]

- **Redis master**: a 3-master Redis Cluster on loopback (:func:`worker.devtools.redis_cluster.
  redis_cluster`, as the cluster tests start it); ``WalletGate.record_turns`` in batches of 500 on a
  ``RedisCluster`` client, every wallet's shard on the first master, so one master takes every
  turn.  Measured: turns/s seen by this (single) client process, and the master's CPU seconds per
  turn (``/proc/<pid>/stat``), whose inverse is what one master core can take when enough clients
  feed it (Redis runs scripts on one thread).
- **Drain worker**: ``OutboxDrain.drain`` of a pre-filled outbox in this process (as
  ``bench_pipeline``'s ``drain_rows_per_s``), with this process's CPU per row and the CPU per row
  of the PostgreSQL backends serving it (their ``/proc`` times; WAL writer and checkpointer not
  counted).

Namespaces: ``TOLLGATE_BENCH_REDIS_URL`` / ``TOLLGATE_BENCH_DATABASE_URL`` as ``bench_pipeline``
(flushed, recreated), plus the cluster's own ports and a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from benchmarks import bench_pipeline as bp  # sets the bench namespaces before any worker import

BATCH = 500


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_master(turns: int, trace_rows) -> dict[str, float]:
    """``record_turns`` pipelined on a 3-master cluster, every turn on the first master."""
    from models.turn import TurnIn
    from worker.devtools.redis_cluster import redis_cluster
    from worker.gate.gate import WalletGate
    from worker.gate.keys import shard_tag
    from worker.settings import get_settings

    with tempfile.TemporaryDirectory() as root, redis_cluster(Path(root)) as (url, ports, procs):
        settings = get_settings().model_copy(update={"redis_url": url, "redis_cluster": True})
        client = redis.RedisCluster.from_url(url, decode_responses=True)
        gate = WalletGate(client, settings=settings, kicker=lambda shard: None)
        first = client.get_node(host="127.0.0.1", port=ports[0])
        on_first = [s for s in range(settings.outbox_shards) if client.get_node_from_key(shard_tag(s)) == first]
        wallets = []
        i = 0
        while len(wallets) < 16:  # wallets whose shard lives on the first master
            if gate.shard(f"scale-w{i}") in on_first:
                wallets.append(f"scale-w{i}")
            i += 1
        for w in wallets:
            gate.load_wallet(w, mode="production", limited=True, balance_nanos=10**17, enterprise_id="scale")
        m = len(trace_rows)
        batch = [
            TurnIn(
                turn_id=f"s:{i}",
                wallet_id=wallets[i % len(wallets)],
                enterprise_id="scale",
                chat_id=f"chat-{i % 64}",
                agent=f"agent-{i % 4}",
                model=bp.MODEL,
                provider=bp.PROVIDER,
                prompt_tokens=trace_rows[i % m].prompt_tokens,
                completion_tokens=trace_rows[i % m].completion_tokens,
                occurred_at=trace_rows[i % m].occurred_at,
            )
            for i in range(turns)
        ]
        gate.record_turns(batch[:BATCH])  # scripts loaded, connections made
        c0, p0, w0 = cpu_s(procs[0].pid), time.process_time(), time.perf_counter()
        for j in range(BATCH, turns, BATCH):
            for d in gate.record_turns(batch[j : j + BATCH]):
                if not d.accepted:
                    raise RuntimeError(f"scale turn denied: {d}")
        wall, n = time.perf_counter() - w0, turns - BATCH
        master_cpu, client_cpu = cpu_s(procs[0].pid) - c0, time.process_time() - p0
        others = [redis.Redis(host="127.0.0.1", port=p).dbsize() for p in ports[1:]]
        client.close()
    return {
        "turns": n,
        "client_turns_per_s": n / wall,
        "master_cpu_us_per_turn": master_cpu / n * 1e6,
        "master_turns_per_core_s": n / master_cpu if master_cpu else float("inf"),
        "client_cpu_us_per_turn": client_cpu / n * 1e6,
        "master_busy": master_cpu / wall,
        "keys_on_other_masters": sum(others),
    }


def backend_pids(database_url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to the bench database (on this host)."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        name = conn.execute(text("select current_database()")).scalar_one()
        pids = conn.execute(text("select pid from pg_stat_activity where datname = :d"), {"d": name}).scalars().all()
    engine.dispose()
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def bench_worker(n: int, trace_rows) -> dict[str, float]:
    """``OutboxDrain.drain`` of ``n`` queued turns in this process: rows/s, CPU per row here and in
    the PostgreSQL backends that served it."""
    from worker.gate.gate import WalletGate
    from worker.ledger.drain import OutboxDrain
    from worker.settings import get_settings

    r = redis.Redis.from_url(bp.BENCH_REDIS_URL, decode_responses=True)
    r.flushdb()
    bp.reset_database()
    gate = WalletGate(r, settings=get_settings(), kicker=lambda shard: None)
    bp.open_wallets(gate)
    bp.prefill_outbox(gate, r, trace_rows, n)
    drain = OutboxDrain(r, consumer="bench-scale")
    pg0 = {p: cpu_s(p) for p in backend_pids(bp.BENCH_DB_URL)}
    p0, w0 = time.process_time(), time.perf_counter()
    stats = drain.drain(max_seconds=3600)
    wall, here = time.perf_counter() - w0, time.process_time() - p0
    pids = backend_pids(bp.BENCH_DB_URL)  # a backend opened by the drain started at ~0 CPU
    pg = sum(cpu_s(p) - pg0.get(p, 0.0) for p in pids)
    done = stats.inserted
    r.flushdb()
    return {
        "rows": done,
        "rows_per_s": done / wall,
        "worker_cpu_us_per_row": here / done * 1e6,
        "postgres_cpu_us_per_row": pg / done * 1e6,
        "postgres_backends": len(pids),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=100_000, help="turns sent to one master (default 100,000)")
    parser.add_argument("--drain", type=int, default=50_000, help="turns drained by one worker (default 50,000)")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object on the last line")
    args = parser.parse_args(argv)
    from worker.devtools.traces import read_trace

    trace_rows = read_trace(bp.DEFAULT_TRACE if bp.DEFAULT_TRACE.is_file() else bp.BUNDLED_TRACE, "azure")
    results = {"master": bench_master(args.turns, trace_rows), "worker": bench_worker(args.drain, trace_rows)}
    m, w = results["master"], results["worker"]
    print(
        f"Redis master: {m['client_turns_per_s']:,.0f} turns/s from one client process "
        f"(client {m['client_cpu_us_per_turn']:.1f} µs CPU/turn); master {m['master_cpu_us_per_turn']:.2f} µs "
        f"CPU/turn = {m['master_turns_per_core_s']:,.0f} turns/s per master core (busy {m['master_busy']:.0%})"
    )
    print(
        f"drain worker: {w['rows_per_s']:,.0f} rows/s; worker {w['worker_cpu_us_per_row']:.1f} µs CPU/row, "
        f"PostgreSQL backends {w['postgres_cpu_us_per_row']:.1f} µs CPU/row"
    )
    print(f"(one {os.cpu_count()}-core host, shared; 1-min load {os.getloadavg()[0]:.2f})")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
