"""The gate and the outbox on a real Redis Cluster: three masters started here on free loopback
ports (``redis-server --cluster-enabled yes``, ``redis-cli --cluster create``).  Every script's keys
share one hash tag, so each runs in one slot; the outbox shards spread over the nodes and drain in
parallel; the decisions, PostgreSQL rows and balances equal a single-node run of the same turns."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis import asyncio as aioredis
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.conftest import process_context
from worker.devtools.redis_cluster import redis_cluster
from worker.gate.aio import AsyncWalletGate
from worker.gate.gate import WalletGate
from worker.gate.keys import outbox_key
from worker.ledger.drain import OutboxDrain
from worker.ledger.reconcile import reconcile
from worker.settings import get_settings

pytestmark = pytest.mark.integration
SHARDS = 8
WALLETS = [f"cw{i}" for i in range(6)]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    """A 3-master Redis Cluster on loopback, torn down after the module."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as (url, _ports, _procs):
        yield url


def _settings(url: str, cluster: bool):
    return get_settings().model_copy(update={"redis_url": url, "redis_cluster": cluster, "outbox_shards": SHARDS})


def _turns() -> list[TurnIn]:
    start = datetime(2026, 11, 3, tzinfo=UTC)
    return [
        TurnIn(
            turn_id=f"ct{i}",
            wallet_id=WALLETS[i % len(WALLETS)],
            enterprise_id="acme",
            chat_id=f"chat-{i % 9}",
            agent=f"agent-{i % 3}",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=300 + (i * 37) % 2000,
            completion_tokens=20 + (i * 11) % 300,
            cached_prompt_tokens=(i * 13) % 200,
            occurred_at=start + timedelta(seconds=i),
        )
        for i in range(1200)
    ]


def _drain_process(url: str, cluster: bool, shards: list[int], out) -> None:
    drain = OutboxDrain(settings=_settings(url, cluster), consumer=f"drain-{shards[0]}")
    out.put(drain.drain(shards, max_seconds=60).inserted)


def _run(url: str, cluster: bool, flush) -> tuple[list, list, dict]:
    """Open wallets (one small enough to run dry), record every turn in batches of 100 and a
    retry of the first batch, drain the shards from two processes at once, and return the
    decisions, the PostgreSQL totals per wallet and the gate balances."""
    flush()
    settings = _settings(url, cluster)
    gate = WalletGate(settings=settings, kicker=lambda shard: None)
    for w in WALLETS:
        open_wallet(gate, wallet_id=w, enterprise_id="acme", owner_id=w)
        credit_wallet(gate, wallet_id=w, amount_nanos=60_000_000 if w == "cw5" else 10**12, idempotency_key=f"s-{w}")
    turns = _turns()
    decisions = []
    for i in range(0, len(turns), 100):
        decisions += gate.record_turns(turns[i : i + 100])
    retried = gate.record_turns(turns[:100])
    assert all(d.duplicate for d in retried)
    ctx = process_context()
    out = ctx.Queue()
    procs = [ctx.Process(target=_drain_process, args=(url, cluster, list(range(k, SHARDS, 2)), out)) for k in (0, 1)]
    for p in procs:
        p.start()
    inserted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert inserted == sum(d.accepted for d in decisions)
    with gate_db().connect() as conn:
        totals = [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT wallet_id, count(*), count(DISTINCT turn_id), sum(prompt_tokens), sum(cost_nanos), "
                    "sum(billed_nanos) FROM usage_event GROUP BY wallet_id ORDER BY wallet_id"
                )
            )
        ]
    rec = reconcile(gate)
    assert (rec.wallets_checked, rec.wallets_drifted) == (len(WALLETS), 0)
    balances = {w: gate.balance(w) for w in WALLETS}
    answers = [(d.turn_id, d.accepted, d.action, d.balance_nanos, d.billed_nanos) for d in decisions]
    return answers, totals, balances


def gate_db():
    from worker.db import engine_for

    return engine_for(get_settings().database_url)


def test_the_gate_and_outbox_on_a_redis_cluster_equal_a_single_node(db, redis_client, cluster_url):
    single = _run(get_settings().redis_url, False, redis_client.flushdb)

    def flush_cluster():
        with db.begin() as conn:
            from tests.conftest import TABLES

            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        cluster = redis.RedisCluster.from_url(cluster_url)
        cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        cluster.close()

    clustered = _run(cluster_url, True, flush_cluster)
    assert clustered == single
    answers, totals, balances = clustered
    assert sum(1 for a in answers if not a[1]) > 0  # the small wallet ran dry: denials were decided too
    assert balances["cw5"] <= 0 and all(b > 0 for w, b in balances.items() if w != "cw5")
    # the shards really are spread over the three masters
    cluster = redis.RedisCluster.from_url(cluster_url)
    nodes = {cluster.get_node_from_key(outbox_key(s)).port for s in range(SHARDS)}
    cluster.close()
    assert len(nodes) == 3


def _migrate_slot(cluster_url: str, slot: int) -> tuple[int, int]:
    """Move ``slot`` with its keys to another master, as ``redis-cli --cluster reshard`` does
    (IMPORTING / MIGRATING, MIGRATE the keys, SETSLOT NODE on every master).  Returns the ports
    (from, to)."""
    port0 = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
    nodes = {}
    for line in (
        redis.Redis(host="127.0.0.1", port=port0, decode_responses=True)
        .execute_command("CLUSTER", "NODES")
        .splitlines()
    ):
        (
            node_id,
            addr,
            flags,
            *_rest,
        ) = line.split()[:3]
        slots = line.split()[8:]
        port = int(addr.split("@")[0].rsplit(":", 1)[1])
        owns = any(int(r.split("-")[0]) <= slot <= int(r.split("-")[-1]) for r in slots if not r.startswith("["))
        nodes[port] = (node_id, owns)
    src = next(p for p, (_i, owns) in nodes.items() if owns)
    dst = next(p for p in nodes if p != src)
    source = redis.Redis(host="127.0.0.1", port=src, decode_responses=True)
    target = redis.Redis(host="127.0.0.1", port=dst, decode_responses=True)
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", nodes[src][0])
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", nodes[dst][0])
    while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
    for port in nodes:
        redis.Redis(host="127.0.0.1", port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", nodes[dst][0])
    return src, dst


def test_a_batch_sent_to_a_node_that_lost_its_slot_is_redirected_not_failed(db, cluster_url):
    """Resharding under a running gate: its slot map is stale, so the pipelined EVALSHA of one shard
    goes to the node that gave the slot away and is answered MOVED without running.  The gate sends
    those calls again through the cluster client (which follows MOVED): every turn is decided once,
    the balances are exact, nothing is reported failed."""
    from tests.conftest import TABLES

    with db.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    cluster = redis.RedisCluster.from_url(cluster_url)
    cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    gate = WalletGate(settings=_settings(cluster_url, True), kicker=lambda shard: None)
    for w in WALLETS:
        open_wallet(gate, wallet_id=w, enterprise_id="acme", owner_id=w)
        credit_wallet(gate, wallet_id=w, amount_nanos=10**12, idempotency_key=f"s-{w}")
    turns = _turns()[:600]
    first = gate.record_turns(turns[:300])  # the gate's client has its slot map now
    moved_wallet = WALLETS[0]
    slot = cluster.keyslot(gate.wallet_key(moved_wallet))
    check_wallets, moved = gate._check_wallets, []

    def check_then_reshard(*args):  # the slot moves after the batch's checks, before its scripts
        check_wallets(*args)
        moved.append(_migrate_slot(cluster_url, slot))

    gate._check_wallets = check_then_reshard
    second = gate.record_turns(turns[300:])
    ((src, dst),) = moved
    assert gate.redis.get_node_from_key(gate.wallet_key(moved_wallet)).port == dst  # refreshed by the redirect
    decisions = first + second
    assert all(d.accepted and not d.duplicate for d in decisions)
    billed = {w: sum(d.billed_nanos for t, d in zip(turns, decisions) if t.wallet_id == w) for w in WALLETS}
    assert {w: gate.balance(w) for w in WALLETS} == {w: 10**12 - billed[w] for w in WALLETS}
    assert sum(cluster.xlen(outbox_key(s)) for s in range(SHARDS)) == 600
    assert all(d.duplicate for d in gate.record_turns(turns[290:310]))  # retries on both sides of the move
    cluster.close()


def test_the_async_gate_on_a_redis_cluster_decides_as_the_blocking_gate(cluster_url):
    """AsyncWalletGate on redis.asyncio's RedisCluster (the API's gate with TOLLGATE_REDIS_CLUSTER):
    the same decisions, balances and outbox entries as WalletGate on the same cluster for the same
    turns, a batch over shards on all three masters and single turns."""
    cluster = redis.RedisCluster.from_url(cluster_url, decode_responses=True)
    settings = _settings(cluster_url, True)
    turns = _turns()

    def load(gate: WalletGate) -> None:
        cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        for i, w in enumerate(WALLETS):
            gate.load_wallet(
                w, mode="production", limited=True, balance_nanos=(i + 1) * 40_000_000, enterprise_id="acme"
            )

    def state(gate: WalletGate) -> dict:
        out = {w: cluster.hgetall(gate.wallet_key(w)) for w in WALLETS}
        for s in range(SHARDS):
            out[s] = [fields for _id, fields in cluster.xrange(outbox_key(s))]
        return out

    blocking = WalletGate(cluster, settings=settings, kicker=lambda shard: None)
    load(blocking)
    expected = blocking.record_turns(turns[:-5]) + [blocking.record_turn(t) for t in turns[-5:]]
    expected_state = state(blocking)
    assert any(not d.accepted for d in expected)  # the small wallets ran dry
    assert len({cluster.get_node_from_key(f"tollgate:{{s{s}}}").name for s in range(SHARDS)}) == 3

    load(blocking)

    async def run():
        gate = AsyncWalletGate(settings=settings, kicker=lambda shard: None)
        assert isinstance(gate.redis, aioredis.RedisCluster)
        try:
            return await gate.record_turns(turns[:-5]) + [await gate.record_turn(t) for t in turns[-5:]]
        finally:
            await gate.redis.aclose()

    assert asyncio.run(run()) == expected
    assert state(blocking) == expected_state
    cluster.close()
