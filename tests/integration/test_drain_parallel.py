"""A drain persisting two batches at once (``OutboxDrain(persisters=2)``), against real Redis and
PostgreSQL: batches of different shards overlap, never two of one shard; every accepted turn is
persisted once with every ledger figure exact, chats shared by wallets of different shards
included; a failure of one batch while another is in flight leaves both pending and the next drain
persists them once.  Groups of one batch (``outbox_group_size`` = ``outbox_batch_size``), so each
transaction is one shard's batch; groups of several shards: tests/integration/test_drain_groups.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from worker.gate.keys import outbox_key
from worker.ledger import drain as drain_module
from worker.ledger.drain import GROUP, OutboxDrain

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
CREDIT = 10**15


def _wallets_on_shards(gate, n: int) -> list[str]:
    """``n`` wallet ids, each on another outbox shard."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(gate.shard(f"pw{i}"), f"pw{i}")
        if len(found) == n:
            return list(found.values())
    raise AssertionError(f"fewer than {n} shards")


def _fill(gate, wallets: list[str], per_wallet: int) -> tuple[list[TurnIn], int]:
    turns = []
    for w in wallets:
        open_wallet(gate, wallet_id=w, enterprise_id="acme", owner_id="u1")
        credit_wallet(gate, wallet_id=w, amount_nanos=CREDIT, idempotency_key=f"open-{w}")
        # chats shared by every wallet (one chat, several shards): their rows are locked by batches
        # of different shards at once
        turns += [
            TurnIn(
                turn_id=f"{w}-{i}",
                wallet_id=w,
                enterprise_id="acme",
                chat_id=f"chat-{i % 5}",
                workflow="wf",
                agent=f"agent-{i % 3}",
                model="gpt-4o",
                provider="openai",
                prompt_tokens=1000 + i % 97,
                completion_tokens=50 + i % 13,
                cached_prompt_tokens=(i % 5) * 100,
                duration_ms=200 + i % 7,
                occurred_at=T0 + timedelta(milliseconds=i),
            )
            for i in range(per_wallet)
        ]
    decisions = gate.record_turns(turns)
    assert all(d.accepted for d in decisions)
    return turns, sum(d.billed_nanos for d in decisions)


def _assert_exact(db, gate, turns: list[TurnIn], billed: int, wallets: list[str]) -> None:
    with db.connect() as conn:
        count, distinct, billed_db, prompt = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (wallet_id, turn_id)), sum(billed_nanos), sum(prompt_tokens) FROM usage_event"
            )
        ).one()
        assert (count, distinct, billed_db, prompt) == (
            len(turns),
            len(turns),
            billed,
            sum(t.prompt_tokens for t in turns),
        )
        for w in wallets:
            debits, credits, usage, ledger = conn.execute(
                text(
                    "SELECT debits_nanos, credits_nanos, "
                    "(SELECT sum(billed_nanos) FROM usage_event WHERE wallet_id = :w), "
                    "(SELECT sum(amount_nanos) FROM wallet_transaction WHERE wallet_id = :w AND kind = 'debit') "
                    "FROM wallet WHERE id = :w"
                ),
                {"w": w},
            ).one()
            assert debits == usage == ledger and credits == CREDIT
            assert gate.balance(w) == credits - debits
        chats = conn.execute(
            text("SELECT sum(turns), sum(prompt_tokens), sum(billed_nanos), count(*) FROM chat_session")
        ).one()
        agents = conn.execute(text("SELECT sum(turns), sum(prompt_tokens), count(*) FROM chat_agent_usage")).one()
        assert tuple(chats) == (len(turns), sum(t.prompt_tokens for t in turns), billed, 5)
        assert tuple(agents) == (len(turns), sum(t.prompt_tokens for t in turns), 15)
        # each chat's state is its newest turn's (the greatest outbox position of its rows)
        stale = conn.execute(
            text(
                "SELECT count(*) FROM chat_session c WHERE c.last_turn_at <> "
                "(SELECT max(occurred_at) FROM usage_event u WHERE u.chat_id = c.chat_id)"
            )
        ).scalar_one()
        assert stale == 0


class Overlap:
    """Wraps ``OutboxDrain._persist``: the most batches in flight at once, and whether two batches of
    one shard ever overlapped."""

    def __init__(self, monkeypatch, fail_first_of: int | None = None) -> None:
        self.lock = threading.Lock()
        self.active: list[int] = []
        self.most = 0
        self.same_shard = False
        self.fail_first_of = fail_first_of
        #: set once two batches were in flight together: the first batch waits for it (so the
        #: overlap does not depend on how fast the machine reads the next batch)
        self.paired = threading.Event()
        real = OutboxDrain._persist

        def persist(drain, shard, entries, stats, rows=None):
            with self.lock:
                self.same_shard |= shard in self.active
                self.active.append(shard)
                self.most = max(self.most, len(self.active))
                if len(self.active) >= 2:
                    self.paired.set()
                fail = shard == self.fail_first_of
                if fail:
                    self.fail_first_of = None
            try:
                self.paired.wait(30)
                if fail:
                    raise redis.ConnectionError("injected: Redis went away mid-batch")
                return real(drain, shard, entries, stats, rows)
            finally:
                with self.lock:
                    self.active.remove(shard)

        monkeypatch.setattr(OutboxDrain, "_persist", persist)


def test_two_persisters_overlap_batches_of_different_shards_and_persist_every_turn_once(
    db, redis_client, gate, settings, monkeypatch
):
    wallets = _wallets_on_shards(gate, 3)
    turns, billed = _fill(gate, wallets, 240)
    overlap = Overlap(monkeypatch)
    drain = OutboxDrain(
        redis_client,
        settings=settings.model_copy(update={"outbox_batch_size": 40, "outbox_group_size": 40}),
        consumer="par",
        persisters=2,
    )
    stats = drain.drain(max_seconds=120)
    assert (stats.read, stats.inserted, stats.duplicates, stats.batches) == (720, 720, 0, 18)
    assert overlap.most == 2 and not overlap.same_shard
    _assert_exact(db, gate, turns, billed, wallets)
    assert sum(redis_client.xlen(outbox_key(s)) for s in range(settings.outbox_shards)) == 0


def test_one_persister_failing_while_another_is_in_flight_leaves_both_pending_then_all_persist_once(
    db, redis_client, gate, settings, monkeypatch
):
    wallets = _wallets_on_shards(gate, 2)
    turns, billed = _fill(gate, wallets, 200)
    failing = gate.shard(wallets[1])
    overlap = Overlap(monkeypatch, fail_first_of=failing)
    small = settings.model_copy(update={"outbox_batch_size": 50, "outbox_group_size": 50})
    drain = OutboxDrain(redis_client, settings=small, consumer="par", persisters=2)
    with pytest.raises(redis.ConnectionError, match="injected"):
        drain.drain(max_seconds=120)
    assert overlap.most == 2 and not overlap.same_shard
    with db.connect() as conn:
        persisted = conn.execute(text("SELECT count(*) FROM usage_event")).scalar_one()
    pending = sum(
        redis_client.xpending(outbox_key(gate.shard(w)), GROUP)["pending"] for w in wallets
    )  # the failed batch and whatever was read meanwhile, still this consumer's
    assert pending >= 50 and persisted + pending <= len(turns) and persisted < len(turns)
    stats = OutboxDrain(redis_client, settings=small, consumer="par", persisters=2).drain(max_seconds=120)
    assert stats.inserted == len(turns) - persisted and stats.duplicates == 0
    _assert_exact(db, gate, turns, billed, wallets)
    assert drain_module.PERSISTERS == 2
