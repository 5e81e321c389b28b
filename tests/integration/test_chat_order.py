"""A chat's state is ordered and its events are exactly once, against real Redis and PostgreSQL and
the real drain: turns persisted late, in separate batches or out of order never move a chat back;
one ``chat.paused`` per pause and one ``chat.resumable`` per resume, whoever resumes first (a
credit, the beat sweep, the orchestrator's resume, a newer turn)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.committed import open_wallet
from worker import (
    OutboxDrain,  # wired: announces chat.paused / chat.resumable
    credit_wallet,  # wired: resumes paused chats, announces wallet.credited
    resume_chat,  # the public API: its own transaction
)
from worker.chats.jobs import sweep_paused
from worker.client import BillingSession, InProcessTransport, WalletExhausted
from worker.db import session_scope
from worker.events import channel
from worker.gate.keys import outbox_key
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.drain import DrainStats

pytestmark = pytest.mark.integration

CHATS = 20


@pytest.fixture()
def app() -> str:
    """A fresh app id: pub/sub channels are shared by every Redis database of the server, so a
    common name would hear other suites' events."""
    return f"order-{uuid.uuid4().hex[:12]}"


def _rows(db, sql: str, **params):
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def _cost(gate, prompt: int = 1000, completion: int = 100) -> int:
    return gate.prices.price(
        model="gpt-4o", provider="openai", when=datetime.now(UTC), prompt_tokens=prompt, completion_tokens=completion
    ).cost_nanos


class Events:
    """Every event published on one app's channel, in order (a background subscriber)."""

    def __init__(self, redis_client, enterprise_id: str) -> None:
        self.redis, self.channel = redis_client, channel(enterprise_id)
        self.sub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe(self.channel)
        self.sub.get_message(timeout=1)
        self.seen: list[dict] = []

    def take(self) -> list[dict]:
        """All events published so far (a marker published last says when they are all in)."""
        self.redis.publish(self.channel, "__end__")
        while (m := self.sub.get_message(timeout=5)) is not None and m["data"] != "__end__":
            self.seen.append(json.loads(m["data"]))
        assert m is not None
        return list(self.seen)

    def count(self, type_: str) -> Counter:
        """How many events of ``type_`` each chat got."""
        return Counter(e["data"]["chat_id"] for e in self.take() if e["type"] == type_)


def _exhaust_chats(
    gate, app: str, *, pause_in_client: bool = True, parallel_agents: bool = False
) -> tuple[list[BillingSession], int]:
    """CHATS chats of ``app``, each on its own wallet worth 2 turns and 1 nano: turns 2–10 ms apart,
    interleaved across chats; each chat's 3rd turn answers ``pause`` (the client records the pause,
    as :class:`BillingSession` does, unless ``pause_in_client`` is False).  With ``parallel_agents``
    the 3rd turn finished 5 ms before the 2nd (two agents at once, recorded in the order their
    answers were handled): its ``occurred_at`` is older though the gate decided it last.
    Returns the sessions and the cost of one turn."""
    with session_scope() as s:
        ensure_enterprise(s, app)
    cost = _cost(gate)
    transport = InProcessTransport(gate)
    if not pause_in_client:
        transport.pause = lambda **kw: False  # a client that leaves the pause to the drain
    sessions = []
    for i in range(CHATS):
        wallet = f"app:{app}:u{i}"
        open_wallet(gate, wallet_id=wallet, enterprise_id=app, owner_id=f"u{i}")
        credit_wallet(gate, wallet_id=wallet, amount_nanos=2 * cost + 1, idempotency_key=f"seed-{i}")
        sessions.append(
            BillingSession.start(transport, level="app_usage", payer_id=f"u{i}", enterprise_id=app, chat_id=f"c{i:02d}")
        )
    rng = random.Random(14)
    last: dict[int, datetime] = {}
    for n in range(3):
        for i, session in enumerate(sessions):
            time.sleep(rng.uniform(0.002, 0.010))
            at = datetime.now(UTC)
            if parallel_agents and n == 2:
                at = last[i] - timedelta(milliseconds=5)
            last[i] = at
            try:
                session.record_turn(
                    agent="planner",
                    model="gpt-4o",
                    provider="openai",
                    prompt_tokens=1000,
                    completion_tokens=100,
                    turn_id=f"c{i:02d}:t{n}",
                    occurred_at=at,
                )
                assert n < 2
            except WalletExhausted:
                assert n == 2
    return sessions, cost


def _entries(redis_client, gate) -> list[tuple[int, tuple[str, dict]]]:
    return [
        (shard, entry)
        for shard in range(gate.settings.outbox_shards)
        for entry in redis_client.xrange(outbox_key(shard))
    ]


def _assert_each_chat_paused_once(db, events: Events, cost: int) -> None:
    assert events.count("chat.paused") == {f"c{i:02d}": 1 for i in range(CHATS)}
    assert events.count("chat.resumable") == {}
    assert _rows(
        db,
        "SELECT count(*), count(*) FILTER (WHERE resumed_at IS NULL), min(needed_nanos), "
        "max(needed_nanos) FROM paused_chat",
    ) == [(CHATS, CHATS, cost, cost)]
    assert _rows(
        db,
        "SELECT status, connection_state, can_resume, count(*), sum(turns), sum(billed_nanos) "
        "FROM chat_session GROUP BY 1, 2, 3",
    ) == [("paused", "paused", False, CHATS, 3 * CHATS, 3 * CHATS * cost)]


@pytest.mark.parametrize("order", ["one_turn_per_batch", "shuffled_batches"])
def test_turns_persisted_after_the_pause_never_reopen_it(app, db, gate, redis_client, settings, monkeypatch, order):
    """The client records the pause at the 3rd turn's answer; the drain then persists each chat's
    turns one per batch (in stream order, or shuffled across two drains).  Before the fix an older
    ``continue`` turn flipped the chat back to active, closed its record (resumed_by 'turn') and its
    pausing turn opened a second record with a second ``chat.paused``: 20 of 20 chats in stream order."""
    events = Events(redis_client, app)
    sessions, cost = _exhaust_chats(gate, app)
    assert events.count("chat.paused") == {f"c{i:02d}": 1 for i in range(CHATS)}  # the client's pauses
    if order == "one_turn_per_batch":
        monkeypatch.setattr(settings, "outbox_batch_size", 1)
        stats = OutboxDrain(redis_client, settings=settings).drain(max_seconds=60)
        assert (stats.inserted, stats.batches) == (3 * CHATS, 3 * CHATS)
    else:
        entries = _entries(redis_client, gate)
        random.Random(7).shuffle(entries)
        drains = [OutboxDrain(redis_client, settings=settings, consumer=name) for name in ("a", "b")]
        for n, (shard, entry) in enumerate(entries):
            drain = drains[n % 2]
            drain.ensure_group(outbox_key(shard))
            stats = DrainStats()
            drain._persist(shard, [entry], stats)
            assert stats.inserted == 1
    _assert_each_chat_paused_once(db, events, cost)
    assert _rows(db, "SELECT count(*) FROM paused_chat WHERE resumed_by IS NOT NULL") == [(0,)]


def test_the_gates_order_decides_not_the_callers_clock(app, db, gate, redis_client, settings):
    """No client pause: the drain alone pauses.  Each chat's pausing turn carries an ``occurred_at``
    5 ms older than the turn before it (parallel agents); turns persisted newest first, one per
    batch, then the whole outbox again (a re-delivery).  The gate decided the pausing turn last, so
    each chat ends paused: one record and one ``chat.paused``.  Before the fix the 2nd turn, newer
    by ``occurred_at``, flipped every chat back to active and closed its record (resumed_by 'turn')."""
    events = Events(redis_client, app)
    _sessions, cost = _exhaust_chats(gate, app, pause_in_client=False, parallel_agents=True)
    drain = OutboxDrain(redis_client, settings=settings)
    for shard, entry in reversed(_entries(redis_client, gate)):
        drain.ensure_group(outbox_key(shard))
        drain._persist(shard, [entry], DrainStats())
    for shard in range(gate.settings.outbox_shards):
        drain._persist(shard, [e for s, e in _entries(redis_client, gate) if s == shard], DrainStats())
    _assert_each_chat_paused_once(db, events, cost)
    assert _rows(db, "SELECT count(*) FROM paused_chat WHERE resumed_by IS NOT NULL") == [(0,)]


def test_a_pause_persisted_after_the_chat_resumed_does_not_pause_it_again(
    app, db, gate, redis_client, settings, monkeypatch
):
    """Pause (client), credit, resume (client), and only then the drain, one turn per batch: the chat
    stays active; one ``chat.paused``, one ``chat.resumable``, one record, closed by the credit.
    Before the fix the late pausing turn opened a second record and announced a second pause."""
    events = Events(redis_client, app)
    sessions, cost = _exhaust_chats(gate, app)
    for i, session in enumerate(sessions):
        credit_wallet(gate, wallet_id=session.wallet_id, amount_nanos=10 * cost, idempotency_key=f"topup-{i}")
        assert session.can_continue()  # marks the chat resumed (resume_chat)
    monkeypatch.setattr(settings, "outbox_batch_size", 1)
    OutboxDrain(redis_client, settings=settings).drain(max_seconds=60)
    assert events.count("chat.paused") == {f"c{i:02d}": 1 for i in range(CHATS)}
    assert events.count("chat.resumable") == {f"c{i:02d}": 1 for i in range(CHATS)}
    assert _rows(db, "SELECT count(*), count(*) FILTER (WHERE resumed_by LIKE 'topup-%') FROM paused_chat") == [
        (CHATS, CHATS)
    ]
    assert _rows(
        db, "SELECT status, connection_state, can_resume, count(*), sum(turns) FROM chat_session GROUP BY 1, 2, 3"
    ) == [("active", "connected", False, CHATS, 3 * CHATS)]


def test_a_newer_turn_that_resumes_a_chat_announces_it_once(app, db, gate, redis_client, settings, monkeypatch):
    """No client pause, a credit before the drain ran (so it finds no record to close), then a 4th turn:
    the drain opens the pause (3rd turn) and the 4th turn closes it, resumed_by 'turn': one
    ``chat.paused`` and one ``chat.resumable`` (cause 'turn') per chat.  Before, no chat.resumable."""
    events = Events(redis_client, app)
    sessions, cost = _exhaust_chats(gate, app, pause_in_client=False)
    for i, session in enumerate(sessions):
        credit_wallet(gate, wallet_id=session.wallet_id, amount_nanos=10 * cost, idempotency_key=f"topup-{i}")
        session.record_turn(
            agent="planner",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=1000,
            completion_tokens=100,
            turn_id=f"c{i:02d}:t3",
        )
    monkeypatch.setattr(settings, "outbox_batch_size", 1)
    OutboxDrain(redis_client, settings=settings).drain(max_seconds=60)
    assert events.count("chat.paused") == {f"c{i:02d}": 1 for i in range(CHATS)}
    resumed = [e for e in events.take() if e["type"] == "chat.resumable"]
    assert sorted((e["data"]["chat_id"], e["data"]["cause"], e["data"]["balance_nanos"]) for e in resumed) == [
        (f"c{i:02d}", "turn", 2 * cost + 1 - 4 * cost + 10 * cost) for i in range(CHATS)
    ]
    assert _rows(db, "SELECT count(*), count(*) FILTER (WHERE resumed_by = 'turn') FROM paused_chat") == [
        (CHATS, CHATS)
    ]
    assert _rows(db, "SELECT status, connection_state, count(*), sum(turns) FROM chat_session GROUP BY 1, 2") == [
        ("active", "connected", CHATS, 4 * CHATS)
    ]


def test_a_client_that_resumes_on_wallet_credited_does_not_swallow_chat_resumable(
    app, db, gate, redis_client, settings, monkeypatch
):
    """The fastest possible client: it resumes its chat the instant ``wallet.credited`` is published
    (called from the publish itself).  The credit has resumed the chats before it announces the
    credit, so each chat gets exactly one ``chat.resumable`` (cause: the credit's key).  Before the
    fix the client's resume closed the record silently and the credit found none: 0 events."""
    import worker.events

    events = Events(redis_client, app)
    sessions, cost = _exhaust_chats(gate, app)
    OutboxDrain(redis_client, settings=settings).drain(max_seconds=60)
    by_wallet = {s.wallet_id: s for s in sessions}
    emit = worker.events.emit

    def emit_and_react(client, event, **kw):
        emit(client, event, **kw)
        if event.type == "wallet.credited":
            s = by_wallet[event.data["wallet_id"]]
            resume_chat(gate, enterprise_id=app, chat_id=s.chat_id)

    monkeypatch.setattr(worker.events, "emit", emit_and_react)
    for i, session in enumerate(sessions):
        credit_wallet(gate, wallet_id=session.wallet_id, amount_nanos=10 * cost, idempotency_key=f"topup-{i}")
    resumed = [e for e in events.take() if e["type"] == "chat.resumable"]
    assert sorted((e["data"]["chat_id"], e["data"]["cause"]) for e in resumed) == [
        (f"c{i:02d}", f"topup-{i}") for i in range(CHATS)
    ]
    assert _rows(db, "SELECT count(*), count(*) FILTER (WHERE resumed_by LIKE 'topup-%') FROM paused_chat") == [
        (CHATS, CHATS)
    ]
    assert _rows(db, "SELECT status, connection_state, count(*) FROM chat_session GROUP BY 1, 2") == [
        ("active", "connected", CHATS)
    ]
    # order on the channel: each chat's chat.resumable before its wallet's wallet.credited
    seen = [
        (e["type"], e["data"].get("chat_id") or by_wallet[e["data"]["wallet_id"]].chat_id)
        for e in events.take()
        if e["type"] == "chat.resumable"
        or (e["type"] == "wallet.credited" and e["data"]["idempotency_key"].startswith("topup-"))
    ]
    for i in range(CHATS):
        chat = f"c{i:02d}"
        assert seen.index(("chat.resumable", chat)) < seen.index(("wallet.credited", chat))


def test_racing_resumers_announce_each_resume_once(app, db, gate, redis_client, settings):
    """Credits, a client resuming on ``wallet.credited``, the beat sweep and the orchestrator's resume
    (what ``POST /v1/chats/{id}/resume`` calls) all at once, in threads: each chat's record is closed
    once and each chat gets exactly one ``chat.resumable``."""
    from worker.gate.gate import WalletGate

    events = Events(redis_client, app)
    sessions, cost = _exhaust_chats(gate, app)
    OutboxDrain(redis_client, settings=settings).drain(max_seconds=60)
    by_wallet = {s.wallet_id: s for s in sessions}
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        return threading.Thread(target=run)

    def client():  # resumes a chat as soon as its wallet.credited arrives
        sub = redis_client.pubsub(ignore_subscribe_messages=True)
        sub.subscribe(channel(app))
        mine = WalletGate(redis_client, settings=settings, kicker=lambda shard: None)
        ready.set()
        while not stop.is_set():
            m = sub.get_message(timeout=0.05)
            if m and m["data"] != "__end__" and json.loads(m["data"])["type"] == "wallet.credited":
                wallet = json.loads(m["data"])["data"]["wallet_id"]
                resume_chat(mine, enterprise_id=app, chat_id=by_wallet[wallet].chat_id)
        sub.close()

    def beat():
        while not stop.is_set():
            sweep_paused(WalletGate(redis_client, settings=settings, kicker=lambda shard: None))

    def orchestrator():  # resumes every chat it can, over and over (PermissionError until credited)
        mine = WalletGate(redis_client, settings=settings, kicker=lambda shard: None)
        while not stop.is_set():
            for s in sessions:
                try:
                    resume_chat(mine, enterprise_id=app, chat_id=s.chat_id)
                except PermissionError:
                    pass

    def credits():
        for i, s in enumerate(sessions):
            credit_wallet(gate, wallet_id=s.wallet_id, amount_nanos=10 * cost, idempotency_key=f"topup-{i}")

    ready = threading.Event()
    threads = [guarded(client), guarded(beat), guarded(orchestrator)]
    threads[0].start()
    assert ready.wait(5)
    for t in threads[1:]:
        t.start()
    payer = guarded(credits)
    payer.start()
    payer.join(60)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert events.count("chat.resumable") == {f"c{i:02d}": 1 for i in range(CHATS)}
    assert events.count("chat.paused") == {f"c{i:02d}": 1 for i in range(CHATS)}
    assert _rows(db, "SELECT count(*), count(resumed_at) FROM paused_chat") == [(CHATS, CHATS)]
    assert _rows(db, "SELECT status, connection_state, count(*) FROM chat_session GROUP BY 1, 2") == [
        ("active", "connected", CHATS)
    ]
