"""DrainLoop's wait between failed rounds: 0.1 s doubling, capped at LOOP_MAX_BACKOFF_S (1 s), so a
drain loop is at most a second late once PostgreSQL or Redis answers again (issue 16: recovery within
5 s), and back to 0.1 s after a round that succeeds."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg

from worker.ledger.drain import LOOP_MAX_BACKOFF_S, DrainLoop, DrainStats


class _Drain:
    """An OutboxDrain stand-in whose rounds fail ``failures`` times, then succeed; the loop stops after
    ``rounds`` rounds."""

    consumer = "test-loop"

    def __init__(self, failures: int, rounds: int, loop_box: list) -> None:
        self.settings = SimpleNamespace(drain_idle_ms=0, outbox_shards=2)
        # the loop holds the shards' kick flags and the loop key each round (DrainLoop.hold_kicks): a
        # pipeline that does nothing; on stop it reads the loop key (nobody's here) and leaves it
        self.redis = SimpleNamespace(
            pipeline=lambda transaction: SimpleNamespace(set=lambda *args, **kwargs: None, execute=lambda: []),
            get=lambda key: None,
            delete=lambda *keys: 0,
        )
        self.failures, self.rounds, self.calls, self.loop_box = failures, rounds, 0, loop_box

    def drain(self, shards=None, *, max_seconds: float, stats: DrainStats) -> DrainStats:
        self.calls += 1
        if self.calls >= self.rounds:
            self.loop_box[0]._stop.set()
        if self.calls <= self.failures:
            raise psycopg.OperationalError("connection refused")
        stats.read += 1
        return stats


def test_failed_rounds_back_off_from_a_tenth_of_a_second_to_one_second_then_reset():
    box: list = []
    drain = _Drain(failures=7, rounds=9, loop_box=box)
    loop = DrainLoop(drain, idle_ms=0)  # type: ignore[arg-type]
    box.append(loop)
    waits: list[float] = []
    loop._stop.wait = lambda timeout=None: waits.append(timeout) or loop._stop.is_set()  # type: ignore[method-assign]
    loop.run()
    assert LOOP_MAX_BACKOFF_S == 1.0
    assert waits[:7] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert drain.calls == 9
    assert loop.stats.read == 2  # the two rounds after the outage ran


def test_start_moves_the_process_heap_out_of_the_collectors_sight():
    """The drain loop's start freezes what the process holds (gc.freeze()), so the cyclic collector's
    full collections during drains walk only what the batches left behind."""
    import gc

    gc.unfreeze()
    box: list = []
    loop = DrainLoop(_Drain(failures=0, rounds=1, loop_box=box), idle_ms=0)  # type: ignore[arg-type]
    box.append(loop)
    try:
        assert gc.get_freeze_count() == 0
        loop.start().join(5)
        assert gc.get_freeze_count() > 1000
    finally:
        loop.stop()
        gc.unfreeze()
