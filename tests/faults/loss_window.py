"""Loss window of the gate's Redis on ``kill -9``: turns the gate *accepted* that never reach
PostgreSQL, with Redis run without persistence vs with AOF ``appendfsync everysec``.

Workload: 4 limited wallets, turns recorded in pipelined batches of 20 at about 2,000 turns/s for
2 s while a real Celery worker drains the outbox (kicked by the gate as in production); then Redis
is SIGKILLed and started again (empty without AOF: the wallets are rebuilt from PostgreSQL).  The
drain finishes what survived; *lost* = accepted turn_ids not in ``usage_event``; the *window* is
the time from the oldest lost turn's acceptance to the kill.  Finally reconciliation repairs the
gate (turns persisted whose Redis debit the AOF had not yet fsynced) and must then find no drift.

Run it repeatedly (own services, about 15 s per round)::

    .venv/bin/python -m tests.faults.loss_window [--rounds 3]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sqlalchemy import text

RATE_TURNS_PER_S = 2_000
BATCH = 20
RECORD_S = 2.0


@dataclass
class LossFigures:
    aof: bool
    accepted: int
    persisted: int
    lost: int
    window_ms: float
    outbox_at_kill: int
    drift_wallets_before_repair: int
    drift_nanos_before_repair: int
    drift_after_repair: int
    worker_restarts: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure(fe, *, aof: bool) -> LossFigures:
    """One round on the services of ``fe`` (a :class:`tests.faults.conftest.FaultEnv` whose Redis was
    started with ``aof``).  Leaves Redis running and reconciled."""
    from tests.faults.conftest import Accepted, make_turns, open_wallets, persisted_ids, spread_wallets, wait_until
    from worker.db import engine_for
    from worker.gate.gate import WalletGate
    from worker.gate.keys import outbox_key
    from worker.ledger.reconcile import reconcile

    app = fe.celery_app()
    shards = fe.settings.outbox_shards

    def kicker(shard: int) -> None:
        try:
            app.send_task("tollgate.usage.drain_outbox", kwargs={"shard": shard})
        except Exception:
            pass

    gate = WalletGate(fe.client(), settings=fe.settings, kicker=kicker)
    wallets = spread_wallets(shards)
    open_wallets(gate, wallets)
    supervisor = fe.supervised_worker(concurrency=2, TOLLGATE_RECLAIM_IDLE_MS="500")
    accepted = Accepted()
    turns = make_turns(wallets, int(RATE_TURNS_PER_S * RECORD_S * 1.5), prefix=f"loss-{int(aof)}")
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < RECORD_S:
        chunk = turns[i : i + BATCH]
        accepted.add(chunk, gate.record_turns(chunk))
        i += BATCH
        pause = start + i / RATE_TURNS_PER_S - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    probe = fe.client()
    outbox_at_kill = sum(probe.xlen(outbox_key(s)) for s in range(shards))
    probe.close()
    fe.redis_server.kill()
    killed_at = time.monotonic()
    fe.redis_server.start()
    gate = WalletGate(fe.client(), settings=fe.settings, kicker=kicker)
    if not aof:
        reconcile(gate, rebuild=True)  # Redis came back empty: wallets from PostgreSQL

    def drained() -> bool:
        r = fe.client()
        try:
            return all(r.xlen(outbox_key(s)) == 0 for s in range(shards))
        finally:
            r.close()

    restarted_at = time.monotonic()

    def kick() -> None:
        for s in range(shards):
            kicker(s)
        if time.monotonic() - restarted_at > 15:
            # a Celery worker whose broker (this Redis) was killed can hang without exiting (kombu
            # 5.7), so its supervisor never restarts it; the loss is measured either way: drain what
            # survived in-process, as a second consumer of the same group
            from worker.ledger.drain import OutboxDrain

            OutboxDrain(fe.client(), settings=fe.settings, consumer="loss-window-fallback").drain(max_seconds=5)

    wait_until(drained, 90, "the surviving outbox drained", every=kick)
    time.sleep(0.3)
    ids = persisted_ids(fe.pg)
    assert ids <= set(accepted.turns), "only accepted turns are ever persisted"
    with engine_for(fe.pg.url).connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one()
    assert count == len(ids), "no turn persisted twice"
    lost = set(accepted.turns) - ids
    window = (killed_at - min(accepted.at[t] for t in lost)) * 1000 if lost else 0.0
    before = reconcile(gate, repair=True)
    after = reconcile(gate)
    supervisor.stop()
    return LossFigures(
        worker_restarts=supervisor.restarts,
        aof=aof,
        accepted=len(accepted.turns),
        persisted=len(ids),
        lost=len(lost),
        window_ms=round(window, 1),
        outbox_at_kill=outbox_at_kill,
        drift_wallets_before_repair=before.wallets_drifted,
        drift_nanos_before_repair=before.drift_nanos_abs,
        drift_after_repair=after.wallets_drifted,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from tests.faults.conftest import fault_services
    from worker.devtools.throwaway import PostgresServer, RedisServer
    from worker.ledger.migrate import recreate_database

    parser = argparse.ArgumentParser(prog="python -m tests.faults.loss_window")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    pg = PostgresServer()
    try:
        recreate_database(pg.url)
        for n in range(args.rounds):
            for aof in (False, True):
                server = RedisServer(aof=aof)
                try:
                    with fault_services(pg, server, Path(tempfile.mkdtemp(prefix="tollgate-loss-"))) as fe:
                        print(json.dumps({"round": n + 1, **measure(fe, aof=aof).as_dict()}), flush=True)
                finally:
                    server.close()
    finally:
        pg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
