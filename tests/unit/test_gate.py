"""worker.gate.gate.WalletGate and its Lua scripts, on fakeredis and on real Redis."""

from __future__ import annotations

import json
import time
import zlib
from datetime import UTC, datetime, timedelta, timezone

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from models.turn import Decision, TurnIn
from worker.gate.gate import UnknownWallet, WalletGate
from worker.gate.keys import kick_key, outbox_key, shard_of
from worker.gate.outbox import parse_entry
from worker.pricing.prices import PriceBook, PricingError
from worker.settings import Settings

SHARDS = 4
TTL = 2 * 24 * 3600
WHEN = datetime(2025, 6, 1, 9, 30, 15, 123456, tzinfo=UTC)
# gpt-4o at openai: 2500 / 1250 / 10_000 nanos per prompt / cached / completion token
COST_DEFAULT = 800 * 2_500 + 200 * 1_250 + 100 * 10_000  # prompt 1000, cached 200, completion 100
assert COST_DEFAULT == 3_250_000
COST_BIG_TURN = 10_006 * 2_500 + 1050 * 10_000  # prompt 10_006, completion 1050
assert COST_BIG_TURN == 35_515_000


def make_settings(**kw) -> Settings:
    base = dict(outbox_shards=SHARDS, kick_interval_ms=60_000, dedupe_ttl_s=TTL, price_overrides_path=None)
    base.update(kw)
    return Settings(**base)


def fake_client():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture(params=["fakeredis", "redis"])
def client(request):
    if request.param == "fakeredis":
        c = fake_client()
        yield c
        c.close()
    else:
        yield request.getfixturevalue("redis_client")


@pytest.fixture()
def kicked() -> list[int]:
    return []


@pytest.fixture()
def wg(client, kicked) -> WalletGate:
    return WalletGate(client, settings=make_settings(), kicker=kicked.append)


def turn(turn_id: str, wallet_id: str = "w1", **kw) -> TurnIn:
    data = dict(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id="ent1",
        chat_id="chat1",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000,
        completion_tokens=100,
        cached_prompt_tokens=200,
        occurred_at=WHEN,
    )
    data.update(kw)
    return TurnIn(**data)


def big_turn(turn_id: str, wallet_id: str = "w1") -> TurnIn:
    return turn(turn_id, wallet_id, prompt_tokens=10_006, cached_prompt_tokens=0, completion_tokens=1050)


def outbox(client, wg: WalletGate, wallet_id: str = "w1") -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(outbox_key(wg.shard(wallet_id)))]


def xlen(client, wg: WalletGate, wallet_id: str = "w1") -> int:
    return client.xlen(outbox_key(wg.shard(wallet_id)))


def snapshot(client) -> dict:
    """Every key with its type and value (TTLs excluded): to prove nothing changed."""
    out = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "hash":
            out[key] = ("hash", client.hgetall(key))
        elif kind == "string":
            out[key] = ("string", client.get(key))
        elif kind == "stream":
            out[key] = ("stream", client.xrange(key))
        else:
            out[key] = (kind, None)
    return out


# --- production debit -------------------------------------------------------------------------


def test_production_debit_exact(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1_000_000_000)
    d = wg.record_turn(turn("t1"))
    assert d == Decision(
        turn_id="t1",
        accepted=True,
        action="continue",
        balance_nanos=996_750_000,
        cost_nanos=COST_DEFAULT,
        billed_nanos=COST_DEFAULT,
        duplicate=False,
    )
    assert type(d.balance_nanos) is int
    assert wg.balance("w1") == 1_000_000_000 - 3_250_000
    d2 = wg.record_turn(turn("t2", prompt_tokens=1, cached_prompt_tokens=0, completion_tokens=0))
    assert (d2.balance_nanos, d2.billed_nanos) == (996_750_000 - 2_500, 2_500)
    assert wg.balance("w1") == 996_747_500
    assert client.hget(wg.wallet_key("w1"), "accepted_turns") == "2"
    assert xlen(client, wg) == 2


def test_zero_cost_turn_in_production(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=5)
    d = wg.record_turn(turn("t0", prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=0))
    assert (d.accepted, d.action, d.balance_nanos, d.billed_nanos) == (True, "continue", 5, 0)
    assert wg.balance("w1") == 5


def test_load_wallet_twice_keeps_balance(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=100)
    wg.record_turn(turn("t1", prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=0))
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=100)
    assert wg.balance("w1") == 100 - 25_000
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=100, overwrite=True)
    assert wg.balance("w1") == 100


# --- idempotency ------------------------------------------------------------------------------


def test_same_turn_id_twice_is_one_turn(client, wg, kicked):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    first = wg.record_turn(turn("t1"))
    balance, length = wg.balance("w1"), xlen(client, wg)
    again = wg.record_turn(turn("t1"))
    assert again == first.model_copy(update={"duplicate": True})
    assert first.duplicate is False
    assert wg.balance("w1") == balance == 10_000_000 - COST_DEFAULT
    assert xlen(client, wg) == length == 1
    assert client.hget(wg.wallet_key("w1"), "accepted_turns") == "1"
    # the first answer is kept even if the retry reports other figures
    third = wg.record_turn(turn("t1", prompt_tokens=50_000, cached_prompt_tokens=0))
    assert (third.accepted, third.action, third.balance_nanos, third.billed_nanos, third.duplicate) == (
        True,
        "continue",
        10_000_000 - COST_DEFAULT,
        COST_DEFAULT,
        True,
    )
    assert wg.balance("w1") == balance and xlen(client, wg) == 1
    # the answer is remembered for dedupe_ttl_s to twice that: in the shard's bucket of width TTL,
    # which expires at the end of the next bucket (worker.gate.dedupe); no key per turn
    assert wg.remembered_answer("ent1", "w1", "t1") == again
    tag = f"tollgate:{{s{shard_of('w1', SHARDS)}}}"
    bucket = int(time.time()) // TTL
    seen = [f"{tag}:seen:{TTL}:{bucket}", f"{tag}:seen:{TTL}:{bucket}:0"]
    assert sorted(client.keys(f"{tag}:seen:*")) == seen
    assert client.hgetall(seen[0]) == {"n": "1", "c": "1"}
    assert len(client.hgetall(seen[1])) == 2  # the sentinel and t1's fingerprint
    for key in seen:
        assert TTL < client.ttl(key) <= 2 * TTL + 60
        assert client.expiretime(key) == (bucket + 2) * TTL + 60
    assert client.exists(wg.turn_key("ent1", "w1", "t1")) == 0
    assert kicked == [wg.shard("w1")]


def test_a_fingerprint_is_the_keyed_blake2b_of_the_scoped_turn_id():
    """worker.gate.dedupe writes the scoped id out for speed: it must stay keys.scoped_key's, or two
    scopes (ids holding ':') could share a fingerprint; 13 base64 characters of a 10-byte digest."""
    import base64
    from hashlib import blake2b

    from worker.gate.dedupe import fingerprint
    from worker.gate.keys import scoped_key

    for ent, wallet, turn_id in [("ent1", "w1", "t1"), ("app:x", "u1", "t"), ("app", "x:u1", "t"), ("é", "ü", "☃")]:
        digest = blake2b(scoped_key(ent, wallet, turn_id).encode(), digest_size=10, key=b"k").digest()
        assert fingerprint(b"k", ent, wallet, turn_id) == base64.b64encode(digest)[:13]
    assert fingerprint(b"k", "app:x", "u1", "t") != fingerprint(b"k", "app", "x:u1", "t")
    assert fingerprint(b"k", "a", "w", "t") != fingerprint(b"other", "a", "w", "t")


_ID_PART = st.text(alphabet=st.sampled_from("ab:1"), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.tuples(_ID_PART, _ID_PART, _ID_PART), st.tuples(_ID_PART, _ID_PART, _ID_PART))
def test_redis_keys_of_several_ids_never_collide(first, second):
    """Every key built from two or more ids joins them with scoped_key: ids may contain ':', so a
    plain ':' join gave app 'a:b' chat 'c' and app 'a' chat 'b:c' one pausing flag (one held the
    other's pause back for a minute).  Distinct id tuples, distinct keys."""
    from worker.gate.keys import pausing_key, scoped_key, turn_key

    builders = [
        lambda e, c, _t: pausing_key(e, c),
        lambda e, w, t: turn_key("tollgate:{s0}", e, w, t),
        lambda e, w, t: scoped_key(e, w, t),
    ]
    for build in builders:
        if first != second:
            assert build(*first) != build(*second) or first[:2] == second[:2] and build is builders[0]
    assert pausing_key("a:b", "c") != pausing_key("a", "b:c")


def test_a_turn_key_is_the_tag_then_the_scoped_turn_id():
    """worker.gate.keys.turn_key writes the scoped id out for speed: it must stay scoped_key's, or
    two scopes (ids holding ':') could share a key."""
    from worker.gate.keys import scoped_key, turn_key

    for ent, wallet, turn_id in [("ent1", "w1", "t1"), ("app:x", "u1", "t"), ("app", "x:u1", "t"), ("é", "ü", "☃")]:
        assert turn_key("tollgate:{s3}", ent, wallet, turn_id) == "tollgate:{s3}:turn:" + scoped_key(
            ent, wallet, turn_id
        )
    assert turn_key("t", "app:x", "u1", "t") != turn_key("t", "app", "x:u1", "t")


def test_duplicate_inside_one_batch(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    a, b = wg.record_turns([turn("t1"), turn("t1")])
    assert b == a.model_copy(update={"duplicate": True})
    assert wg.balance("w1") == 10_000_000 - COST_DEFAULT
    assert xlen(client, wg) == 1


# --- post-hoc policy --------------------------------------------------------------------------


def test_post_hoc_overdraw_then_pause_and_deny(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1)
    d1 = wg.record_turn(big_turn("t1"))
    assert d1 == Decision(
        turn_id="t1",
        accepted=True,
        action="pause",
        balance_nanos=-35_514_999,
        cost_nanos=35_515_000,
        billed_nanos=35_515_000,
    )
    assert wg.balance("w1") == -35_514_999
    d2 = wg.record_turn(turn("t2"))
    assert d2 == Decision(
        turn_id="t2", accepted=False, action="pause", balance_nanos=-35_514_999, cost_nanos=COST_DEFAULT, billed_nanos=0
    )
    assert wg.balance("w1") == -35_514_999
    entries = outbox(client, wg)
    assert len(entries) == 1
    assert [json.loads(e["t"])[1] for e in entries] == ["t1"]  # [version, turn_id, ...]
    assert client.hget(wg.wallet_key("w1"), "denied_turns") == "1"
    assert client.hget(wg.wallet_key("w1"), "accepted_turns") == "1"
    # the denial is the first answer for t2
    assert wg.record_turn(turn("t2")) == d2.model_copy(update={"duplicate": True})


def test_post_hoc_boundaries(client, wg):
    # balance exactly the cost: accepted, lands on 0, must pause; then denied at 0
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=COST_DEFAULT)
    d1 = wg.record_turn(turn("t1"))
    assert (d1.accepted, d1.action, d1.balance_nanos) == (True, "pause", 0)
    d2 = wg.record_turn(turn("t2"))
    assert (d2.accepted, d2.action, d2.balance_nanos, d2.billed_nanos) == (False, "pause", 0, 0)
    # one nano more than the cost: continue with 1 left
    wg.load_wallet("w2", mode="production", limited=True, balance_nanos=COST_DEFAULT + 1)
    d3 = wg.record_turn(turn("t3", "w2"))
    assert (d3.accepted, d3.action, d3.balance_nanos) == (True, "continue", 1)


def test_credit_after_pause_lets_turns_through(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1)
    wg.record_turn(big_turn("t1"))
    assert wg.record_turn(turn("t2")).accepted is False
    assert wg.credit("w1", 35_515_000, "topup-1") == 1
    d = wg.record_turn(turn("t3"))
    assert (d.accepted, d.action, d.balance_nanos) == (True, "pause", 1 - COST_DEFAULT)


# --- development mode -------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, -5, 10_000_000])
def test_development_never_debits_never_blocks(client, wg, start):
    wg.load_wallet("dev", mode="development", limited=True, balance_nanos=start)
    decisions = [wg.record_turn(turn(f"d{i}", "dev")) for i in range(3)]
    for i, d in enumerate(decisions):
        assert d == Decision(
            turn_id=f"d{i}",
            accepted=True,
            action="continue",
            balance_nanos=start,
            cost_nanos=COST_DEFAULT,
            billed_nanos=0,
        )
    assert wg.balance("dev") == start
    rows = [parse_entry(e) for e in outbox(client, wg, "dev")]
    assert [(r["turn_id"], r["billed_nanos"], r["mode"], r["cost_nanos"], r["action"]) for r in rows] == [
        (f"d{i}", 0, "development", COST_DEFAULT, "continue") for i in range(3)
    ]


# --- unlimited wallet -------------------------------------------------------------------------


def test_unlimited_wallet_never_denied(client, wg):
    wg.load_wallet("u", mode="production", limited=False, balance_nanos=0)
    decisions = [wg.record_turn(big_turn(f"u{i}", "u")) for i in range(3)]
    for i, d in enumerate(decisions):
        assert d == Decision(
            turn_id=f"u{i}",
            accepted=True,
            action="continue",
            balance_nanos=None,
            cost_nanos=COST_BIG_TURN,
            billed_nanos=COST_BIG_TURN,
        )
    # the spend is still tracked: balance = credits − billed
    assert wg.balance("u") == -3 * COST_BIG_TURN
    rows = [parse_entry(e) for e in outbox(client, wg, "u")]
    assert [(r["billed_nanos"], r["balance_after_nanos"], r["action"]) for r in rows] == [
        (COST_BIG_TURN, None, "continue")
    ] * 3
    # duplicate of an unlimited wallet's turn keeps balance None
    assert wg.record_turn(big_turn("u0", "u")) == decisions[0].model_copy(update={"duplicate": True})


# --- nothing written on rejected input ----------------------------------------------------------


def test_unknown_wallet_writes_nothing(client, wg, kicked):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    before, size = snapshot(client), client.dbsize()
    with pytest.raises(UnknownWallet) as info:
        wg.record_turn(turn("t1", "ghost"))
    assert info.value.wallet_id == "ghost" and "ghost" in str(info.value)
    # a batch with one unknown wallet rejects the whole batch
    with pytest.raises(UnknownWallet):
        wg.record_turns([turn("t2", "w1"), turn("t3", "ghost")])
    with pytest.raises(UnknownWallet):
        wg.credit("ghost", 100, "k-ghost")
    with pytest.raises(UnknownWallet):
        wg.balance("ghost")
    assert client.dbsize() == size == 2  # the wallet and the gate's shard-count config
    assert snapshot(client) == before
    assert kicked == []
    # the credit key was not burnt: the same key works once the wallet exists
    wg.load_wallet("ghost", mode="production", limited=True, balance_nanos=0)
    assert wg.credit("ghost", 100, "k-ghost") == 100


def test_unknown_model_writes_nothing(client, wg, kicked):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    wg.record_turn(turn("t0"))
    before, size, length = snapshot(client), client.dbsize(), xlen(client, wg)
    kicked.clear()
    with pytest.raises(PricingError, match="no-such-model"):
        wg.record_turn(turn("t1", model="no-such-model"))
    with pytest.raises(PricingError, match="no-such-model"):
        wg.record_turns([turn("t2"), turn("t3", model="no-such-model")])
    assert client.dbsize() == size
    assert xlen(client, wg) == length == 1
    assert snapshot(client) == before
    assert wg.balance("w1") == 10_000_000 - COST_DEFAULT
    assert kicked == []


# --- batch equals one by one ------------------------------------------------------------------


def _batch_scenario() -> list[TurnIn]:
    return [
        turn("a1", "alice"),
        big_turn("a2", "alice"),
        turn("a3", "alice"),  # overdraw, pause, deny
        turn("b1", "bob"),
        big_turn("b2", "bob"),  # unlimited
        turn("c1", "carol"),  # development
        turn("a1", "alice"),  # duplicate
        turn("b3", "bob", prompt_tokens=7, cached_prompt_tokens=3, completion_tokens=11),
        turn("c2", "carol", model="gpt-4o-mini"),
    ]


def _load(gate: WalletGate) -> None:
    gate.load_wallet("alice", mode="production", limited=True, balance_nanos=5_000_000)
    gate.load_wallet("bob", mode="production", limited=False, balance_nanos=0)
    gate.load_wallet("carol", mode="development", limited=True, balance_nanos=42)


def _state(client, gate: WalletGate):
    balances = {w: gate.balance(w) for w in ("alice", "bob", "carol")}
    entries = {w: [dict(e) for e in outbox(client, gate, w)] for w in ("alice", "bob", "carol")}
    return balances, entries


def test_batch_equals_one_by_one(client, wg):
    _load(wg)
    one_by_one = [wg.record_turn(t) for t in _batch_scenario()]
    state_one = _state(client, wg)
    client.flushdb()
    _load(wg)
    batch = wg.record_turns(_batch_scenario())
    assert batch == one_by_one
    assert _state(client, wg) == state_one
    # and the figures are the expected ones
    assert [(d.turn_id, d.accepted, d.action, d.billed_nanos, d.duplicate) for d in batch] == [
        ("a1", True, "continue", COST_DEFAULT, False),
        ("a2", True, "pause", COST_BIG_TURN, False),
        ("a3", False, "pause", 0, False),
        ("b1", True, "continue", COST_DEFAULT, False),
        ("b2", True, "continue", COST_BIG_TURN, False),
        ("c1", True, "continue", 0, False),
        ("a1", True, "continue", COST_DEFAULT, True),
        ("b3", True, "continue", 4 * 2_500 + 3 * 1_250 + 11 * 10_000, False),
        ("c2", True, "continue", 0, False),
    ]
    assert state_one[0] == {
        "alice": 5_000_000 - COST_DEFAULT - COST_BIG_TURN,
        "bob": -(COST_DEFAULT + COST_BIG_TURN + 123_750),
        "carol": 42,
    }
    assert wg.record_turns([]) == []


# --- outbox entry -----------------------------------------------------------------------------


def test_outbox_entry_parses_back_to_the_row(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=50_000_000, share_bps=7000)
    occurred = datetime(2025, 6, 1, 11, 30, 15, 654321, tzinfo=timezone(timedelta(hours=2)))
    t = turn(
        "turn-xyz",
        workflow="wf-build",
        agent="planner",
        chat_id="chat-9",
        enterprise_id="ent-7",
        duration_ms=1234,
        occurred_at=occurred,
    )
    d = wg.record_turn(t)
    (entry,) = outbox(client, wg)
    # two fields: the payload and the gate's decision (billed|balance|action mode level billable|share|trial|debt)
    assert set(entry) == {"t", "g"}
    assert entry["g"] == f"{COST_DEFAULT}|{50_000_000 - COST_DEFAULT}|cPa1|7000|0|0"
    ts = int((occurred - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    # version 5: the five rates in one string; an LLM turn's default meter fields left out
    assert json.loads(entry["t"]) == [
        5,
        "turn-xyz",
        "w1",
        "ent-7",
        "chat-9",
        "wf-build",
        "planner",
        "gpt-4o",
        "openai",
        1000,
        100,
        200,
        1234,
        "25e8,125e7,1e10,25e8,25e8",
        COST_DEFAULT,
        ts,
    ]
    row = parse_entry(entry, "0:1-0")
    assert row == {
        "turn_id": "turn-xyz",
        "outbox_id": "0:1-0",
        "wallet_id": "w1",
        "enterprise_id": "ent-7",
        "chat_id": "chat-9",
        "workflow": "wf-build",
        "agent": "planner",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cached_prompt_tokens": 200,
        "duration_ms": 1234,
        "input_nanos_per_mtok": 2_500_000_000,
        "cached_input_nanos_per_mtok": 1_250_000_000,
        "output_nanos_per_mtok": 10_000_000_000,
        "cost_nanos": COST_DEFAULT,
        "occurred_at": datetime(2025, 6, 1, 9, 30, 15, 654321, tzinfo=UTC),
        "billed_nanos": COST_DEFAULT,
        "action": "continue",
        "mode": "production",
        "balance_after_nanos": d.balance_nanos,
        "level": "app_usage",
        "billing_target": "ent-7",
        "billable": True,
        "creator_share_nanos": COST_DEFAULT * 7000 // 10_000,
        "platform_fee_nanos": COST_DEFAULT - COST_DEFAULT * 7000 // 10_000,
        "trial_tokens": 0,
        "meter": "llm",
        "quantity": 0,
        "cache_write_tokens": 0,
        "cache_write_nanos_per_mtok": 2_500_000_000,  # gpt-4o has no cache-write price: the input rate
        "cache_write_1h_tokens": 0,
        "cache_write_1h_nanos_per_mtok": 2_500_000_000,  # nor a 1-hour one: the cache-write rate
        "service_tier": None,
        "debt_nanos": 0,
    }
    assert row["occurred_at"] == occurred
    # an entry queued by a gate before version 5 (payload version 4, one field per figure) reads
    # into the same row
    payload = [
        4,
        *json.loads(entry["t"])[1:13],
        2_500_000_000,
        1_250_000_000,
        10_000_000_000,
        COST_DEFAULT,
        ts,
        "llm",
        0,
        0,
        2_500_000_000,
        0,
        2_500_000_000,
        None,
    ]
    entry = {
        "t": json.dumps(payload),
        "b": str(COST_DEFAULT),
        "a": "continue",
        "m": "production",
        "bal": str(50_000_000 - COST_DEFAULT),
        "lv": "app_usage",
        "sb": "7000",
        "tt": "0",
        "bl": "1",
    }
    assert parse_entry(entry, "0:1-0") == row
    # an entry queued before meters existed (payload version 1) still parses, as an LLM turn
    v1 = dict(entry, t=json.dumps([1, *payload[1:18]]))
    assert parse_entry(v1, "0:1-0") == {**row, "cache_write_nanos_per_mtok": 0, "cache_write_1h_nanos_per_mtok": 0}
    v2 = dict(entry, t=json.dumps([2, *payload[1:20]]))
    assert parse_entry(v2, "0:1-0") == {**row, "cache_write_nanos_per_mtok": 0, "cache_write_1h_nanos_per_mtok": 0}
    v3 = dict(entry, t=json.dumps([3, *payload[1:22]]))  # queued before 1-hour cache writes and tiers
    assert parse_entry(v3, "0:1-0") == {**row, "cache_write_1h_nanos_per_mtok": 0}
    assert payload[17] == int((occurred - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def test_outbox_entry_of_a_pausing_turn(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1)
    wg.record_turn(big_turn("t1"))
    (entry,) = outbox(client, wg)
    row = parse_entry(entry)
    assert (row["billed_nanos"], row["action"], row["mode"], row["balance_after_nanos"]) == (
        35_515_000,
        "pause",
        "production",
        -35_514_999,
    )


# --- credits ----------------------------------------------------------------------------------


def test_credit_idempotent_by_key(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1_000)
    assert wg.credit("w1", 500, "k1") == 1_500
    assert wg.credit("w1", 500, "k1") == 1_500
    assert wg.credit("w1", 999, "k1") == 1_500  # same key, any amount: applied once
    assert wg.balance("w1") == 1_500
    assert wg.credit("w1", 500, "k2") == 2_000
    assert type(wg.credit("w1", 1, "k3")) is int
    assert wg.balance("w1") == 2_001
    credit_key = f"tollgate:{{s{shard_of('w1', SHARDS)}}}:credit:2:w1:k1"
    assert TTL - 60 <= client.ttl(credit_key) <= TTL


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "100"])
def test_credit_rejects_non_positive_or_non_int(client, wg, amount):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=7)
    before = snapshot(client)
    with pytest.raises(ValueError):
        wg.credit("w1", amount, "k")
    assert snapshot(client) == before


def _wallets_on(shard_a_equals_b: bool) -> tuple[str, str]:
    ids = [f"wallet-{i}" for i in range(100)]
    a = ids[0]
    for b in ids[1:]:
        if (shard_of(a, SHARDS) == shard_of(b, SHARDS)) == shard_a_equals_b:
            return a, b
    raise AssertionError


def test_credit_key_semantics_do_not_depend_on_shard(client, wg):
    """One idempotency key used for two wallets must behave the same whether or not the two
    wallets happen to share an outbox shard (shards are an implementation detail)."""
    outcomes = []
    for same_shard in (True, False):
        client.flushdb()
        a, b = _wallets_on(same_shard)
        wg.load_wallet(a, mode="production", limited=True, balance_nanos=0)
        wg.load_wallet(b, mode="production", limited=True, balance_nanos=0)
        wg.credit(a, 100, "shared-key")
        wg.credit(b, 100, "shared-key")
        outcomes.append((wg.balance(a), wg.balance(b)))
    assert outcomes[0] == outcomes[1]


# --- hash tags --------------------------------------------------------------------------------


@pytest.mark.parametrize("wallet_id", ["alice", "bob", "carol", "dave", "w-{odd}"])
def test_keys_of_one_wallet_share_one_hash_tag(client, wg, wallet_id):
    wg.load_wallet(wallet_id, mode="production", limited=True, balance_nanos=10_000_000)
    wg.record_turn(turn("t1", wallet_id))
    wg.record_turn(turn("t2", wallet_id))
    wg.credit(wallet_id, 5, "k1")
    keys = [k for k in client.keys("*") if k != "tollgate:config:outbox_shards"]
    shard = zlib.crc32(wallet_id.encode()) % SHARDS
    tag = f"{{s{shard}}}"
    bucket = int(time.time()) // TTL
    assert sorted(keys) == sorted(
        [
            f"tollgate:{tag}:wallet:{wallet_id}",
            f"tollgate:{tag}:seen:{TTL}:{bucket}",  # t1 and t2 remembered in the shard's bucket
            f"tollgate:{tag}:seen:{TTL}:{bucket}:0",
            f"tollgate:{tag}:outbox",
            f"tollgate:{tag}:kick",
            f"tollgate:{tag}:credit:{len(wallet_id)}:{wallet_id}:k1",
        ]
    )
    assert {key_slot(k.encode()) for k in keys} == {key_slot(f"tollgate:{tag}".encode())}
    assert outbox_key(shard) == f"tollgate:{tag}:outbox" and kick_key(shard) == f"tollgate:{tag}:kick"


# --- drain kicks ------------------------------------------------------------------------------


def test_kick_once_per_interval(client, kicked):
    gate = WalletGate(client, settings=make_settings(kick_interval_ms=60_000), kicker=kicked.append)
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=10**12)
    for i in range(3):
        gate.record_turn(turn(f"t{i}"))
    gate.record_turns([turn("t3"), turn("t4")])
    assert kicked == [gate.shard("w1")]
    assert 0 < client.pttl(kick_key(gate.shard("w1"))) <= 60_000


def test_batch_kicks_each_shard_once_sorted(client, kicked):
    gate = WalletGate(client, settings=make_settings(), kicker=kicked.append)
    a, b = _wallets_on(False)
    for w in (a, b):
        gate.load_wallet(w, mode="production", limited=True, balance_nanos=10**12)
    gate.record_turns([turn("x1", b), turn("x2", a), turn("x3", b), turn("x4", a)])
    assert kicked == sorted({gate.shard(a), gate.shard(b)})


def test_kick_again_after_interval_not_for_duplicates_or_denials(client, kicked):
    gate = WalletGate(client, settings=make_settings(kick_interval_ms=50), kicker=kicked.append)
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=COST_DEFAULT)
    shard = gate.shard("w1")
    gate.record_turn(turn("t1"))  # accepted → kick
    gate.record_turn(turn("t1b"))  # denied (balance 0), inside the interval
    assert kicked == [shard]
    time.sleep(0.15)
    gate.record_turn(turn("t1"))  # duplicate: no kick
    gate.record_turn(turn("t2"))  # denied: nothing to drain, no kick
    assert kicked == [shard]
    gate.credit("w1", 10**9, "k")
    gate.record_turn(turn("t3"))  # accepted, interval passed → kick
    assert kicked == [shard, shard]


# --- big numbers ------------------------------------------------------------------------------


def test_big_balance_exact(client, wg):
    wg.load_wallet("rich", mode="production", limited=True, balance_nanos=2**62)
    d = wg.record_turn(turn("t1", "rich"))
    assert d.balance_nanos == 2**62 - COST_DEFAULT == 4_611_686_018_424_137_904
    assert wg.balance("rich") == 2**62 - COST_DEFAULT
    assert parse_entry(outbox(client, wg, "rich")[0])["balance_after_nanos"] == 2**62 - COST_DEFAULT
    assert wg.record_turn(turn("t1", "rich")).balance_nanos == 2**62 - COST_DEFAULT  # dedupe answer
    assert wg.credit("rich", 2**62 - 1, "big") == 2**63 - 1 - COST_DEFAULT
    assert wg.balance("rich") == 2**63 - 1 - COST_DEFAULT


def test_big_cost_exact(client, kicked):
    # one turn costing 2^53 + 1 nanos, a value a Lua double cannot hold
    book = PriceBook({"acme/huge": {"input_mtok": "9007199.254740993"}})
    gate = WalletGate(client, settings=make_settings(), price_book=book, kicker=kicked.append)
    # the app's per-turn cost limit (default $50) raised so that one turn may cost 2^53 + 1
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=2**62, max_turn_cost_nanos=2**62)
    d = gate.record_turn(
        turn("t1", model="huge", provider="acme", prompt_tokens=1_000_000, cached_prompt_tokens=0, completion_tokens=0)
    )
    assert d.cost_nanos == d.billed_nanos == 2**53 + 1
    assert d.balance_nanos == 2**62 - 2**53 - 1
    assert gate.balance("w1") == 2**62 - 2**53 - 1
    entry = outbox(client, gate)[0]
    assert entry["g"].split("|")[:2] == [str(2**53 + 1), str(2**62 - 2**53 - 1)]  # billed, balance
    assert parse_entry(entry)["cost_nanos"] == parse_entry(entry)["billed_nanos"] == 2**53 + 1


# --- property: balance == credits − billed; at <= 0 every production turn is denied --------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("credit"), st.integers(1, 60_000_000)),
        st.tuples(st.just("turn"), st.integers(0, 8_000), st.integers(0, 100), st.integers(0, 3_000)),
        st.tuples(st.just("retry"), st.integers(0, 10_000)),
    ),
    max_size=30,
)


def _gpt4o_cost(prompt: int, cached: int, completion: int) -> int:
    return (prompt - cached) * 2_500 + cached * 1_250 + completion * 10_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(-10_000_000, 60_000_000), ops=_ops)
def test_property_balance_is_credits_minus_billed(start, ops):
    client = fake_client()
    kicked: list[int] = []
    gate = WalletGate(client, settings=make_settings(), kicker=kicked.append)
    gate.load_wallet("w", mode="production", limited=True, balance_nanos=start)
    balance = start
    credits = billed_total = accepted = 0
    answers: list[tuple[TurnIn, Decision]] = []
    for n, op in enumerate(ops):
        if op[0] == "credit":
            credits += op[1]
            balance += op[1]
            assert gate.credit("w", op[1], f"c{n}") == balance
        elif op[0] == "turn":
            _, prompt, cached_pct, completion = op
            cached = prompt * cached_pct // 100
            cost = _gpt4o_cost(prompt, cached, completion)
            t = turn(f"t{n}", "w", prompt_tokens=prompt, cached_prompt_tokens=cached, completion_tokens=completion)
            d = gate.record_turn(t)
            if balance <= 0:
                assert (d.accepted, d.billed_nanos, d.action) == (False, 0, "pause")
            else:
                balance -= cost
                billed_total += cost
                accepted += 1
                assert (d.accepted, d.billed_nanos) == (True, cost)
                assert d.action == ("pause" if balance <= 0 else "continue")
            assert d.balance_nanos == balance and d.cost_nanos == cost and not d.duplicate
            answers.append((t, d))
        elif answers:
            t, first = answers[op[1] % len(answers)]
            assert gate.record_turn(t) == first.model_copy(update={"duplicate": True})
        assert gate.balance("w") == balance == start + credits - billed_total
    entries = [fields for _id, fields in client.xrange(outbox_key(gate.shard("w")))]
    assert len(entries) == accepted
    assert sum(parse_entry(e)["billed_nanos"] for e in entries) == billed_total
    client.close()


def test_batch_survives_redis_losing_its_script_cache(own_redis_client, settings):
    """After SCRIPT FLUSH (as after a Redis restart) a pipelined batch fails with NOSCRIPT before
    running anything; the gate loads the script and sends the batch once more: each turn counted
    once.  300 turns of 6 wallets: several EVALSHAs per shard, streamed, all refused, all resent."""
    from worker.gate.gate import WalletGate
    from worker.gate.pipeline import TURNS_PER_CALL

    wg = WalletGate(own_redis_client, settings=settings, kicker=lambda shard: None)
    wallets = [f"w{i}" for i in range(6)]
    for w in wallets:
        wg.load_wallet(w, mode="production", limited=True, balance_nanos=10**12)
    turns = [turn(f"t{i}", wallets[i % 6]) for i in range(300)]
    assert max(sum(wg.shard(t.wallet_id) == s for t in turns) for s in range(settings.outbox_shards)) > TURNS_PER_CALL
    own_redis_client.script_flush()
    decisions = wg.record_turns(turns)
    assert [d.duplicate for d in decisions] == [False] * 300
    assert [wg.balance(w) for w in wallets] == [10**12 - 50 * COST_DEFAULT] * 6
    assert sum(own_redis_client.xlen(outbox_key(s)) for s in range(settings.outbox_shards)) == 300
    assert [own_redis_client.hget(wg.wallet_key(w), "accepted_turns") for w in wallets] == ["50"] * 6
    own_redis_client.script_flush()
    assert [d.duplicate for d in wg.record_turns(turns[:7])] == [True] * 7
    assert wg.record_turn(turn("t0", "w0")).duplicate is True
    assert [wg.balance(w) for w in wallets] == [10**12 - 50 * COST_DEFAULT] * 6


# --- configuration and failure paths ------------------------------------------------------------


def test_a_gate_with_another_shard_count_refuses_to_start(client):
    from worker.gate.gate import GateConfigError

    WalletGate(client, settings=make_settings(), kicker=lambda s: None)
    with pytest.raises(GateConfigError, match="TOLLGATE_OUTBOX_SHARDS is 7"):
        WalletGate(client, settings=make_settings().model_copy(update={"outbox_shards": 7}))


def test_a_wallet_with_an_unknown_mode_in_redis_is_refused_not_free(client, wg):
    from worker.gate.gate import GateConfigError

    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    client.hset(wg.wallet_key("w1"), "mode", "Production")
    with pytest.raises(GateConfigError, match="w1"):
        wg.record_turn(turn("t1"))
    assert wg.balance("w1") == 10_000_000 and xlen(client, wg) == 0
    with pytest.raises(ValueError, match="mode"):
        wg.load_wallet("w2", mode="Production", limited=True, balance_nanos=0)


def test_a_failing_drain_kick_does_not_fail_an_accepted_turn(client, monkeypatch):
    from worker import celery_app
    from worker.gate import gate as wallet

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery_app.app, "send_task", broker_down)
    gate = WalletGate(client, settings=make_settings(), kicker=wallet.celery_kicker)
    gate.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    decision = gate.record_turn(turn("t1"))
    assert decision.accepted and decision.billed_nanos == COST_DEFAULT
    assert gate.balance("w1") == 10_000_000 - COST_DEFAULT and xlen(client, gate) == 1


def test_a_credit_that_would_overflow_changes_nothing_and_keeps_its_key_unspent(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=2**63 - 10)
    with pytest.raises(Exception, match="overflow"):
        wg.credit("w1", 100, "k-big")
    assert wg.balance("w1") == 2**63 - 10
    client.hset(wg.wallet_key("w1"), "balance", 0)
    assert wg.credit("w1", 100, "k-big") == 100  # the key was not burnt by the failed attempt


def test_a_duplicate_returns_the_first_cost_not_the_retry_s(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    first = wg.record_turn(turn("t1"))
    retry = wg.record_turn(turn("t1", prompt_tokens=50_000, cached_prompt_tokens=0))
    assert retry.duplicate and retry.cost_nanos == first.cost_nanos == COST_DEFAULT


def test_trusted_decision_equals_a_validated_one():
    """The gate builds decisions without validation; they must be indistinguishable from validated ones."""
    from models.turn import Decision, trusted_decision

    for values in (("t1", True, "continue", 5, 3, 3, False), ("t2", False, "pause", None, 7, 0, True)):
        fast = trusted_decision(*values)
        slow = Decision(
            **dict(
                zip(
                    ("turn_id", "accepted", "action", "balance_nanos", "cost_nanos", "billed_nanos", "duplicate"),
                    values,
                )
            )
        )
        assert fast == slow and fast.model_dump() == slow.model_dump()
        assert fast.model_dump_json() == slow.model_dump_json() and fast.model_fields_set == slow.model_fields_set
        assert fast.model_copy(update={"duplicate": True}).duplicate is True


def test_a_batch_with_another_apps_turn_is_refused_whole(client, wg):
    """Turns of several shards in one batch: one turn for another app's wallet refuses the batch
    before anything is sent; nothing is debited or queued."""
    from worker.gate.gate import WrongEnterprise

    wallets = [f"wb{i}" for i in range(6)]
    for w in wallets:
        wg.load_wallet(w, mode="production", limited=True, balance_nanos=100 * COST_DEFAULT, enterprise_id="ent1")
    wg.load_wallet("foreign", mode="production", limited=True, balance_nanos=10 * COST_DEFAULT, enterprise_id="ent2")
    turns = [turn(f"b{i}", wallet_id=wallets[i % 6]) for i in range(150)]
    turns.insert(77, turn("intruder", wallet_id="foreign"))
    with pytest.raises(WrongEnterprise):
        wg.record_turns(turns)
    assert [wg.balance(w) for w in wallets] == [100 * COST_DEFAULT] * 6 and outbox(client, wg) == []
    decisions = wg.record_turns(turns[:77] + turns[78:])  # without it: in order, per wallet
    for w in wallets:
        mine = [d for t, d in zip(turns[:77] + turns[78:], decisions) if t.wallet_id == w]
        assert [d.balance_nanos for d in mine] == [(100 - k) * COST_DEFAULT for k in range(1, 26)]


def test_a_runtime_error_in_one_turn_of_a_batch_fails_that_turn_alone(client, wg):
    """A debit that would overflow the 64-bit balance is a Redis error inside the script: that turn
    alone is reported not applied (GateBatchError), the others are decided and debited."""
    from worker.gate.gate import GateBatchError

    wg.load_wallet("deep", mode="production", limited=False, balance_nanos=-(2**63) + 10, enterprise_id="ent1")
    turns = [turn("ok-1"), turn("overflow", wallet_id="deep"), turn("ok-2")]
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=100 * COST_DEFAULT, enterprise_id="ent1")
    with pytest.raises(GateBatchError) as caught:
        wg.record_turns(turns)
    decisions = caught.value.decisions
    assert decisions[1] is None and "overflow" in str(caught.value.error)
    assert [(d.accepted, d.balance_nanos) for d in (decisions[0], decisions[2])] == [
        (True, 99 * COST_DEFAULT),
        (True, 98 * COST_DEFAULT),
    ]
    assert wg.balance("deep") == -(2**63) + 10


# --- one script run, many turns of one wallet -----------------------------------------------------


def _cache_scenario(gate: WalletGate) -> list[TurnIn]:
    """Wallets loaded and holds made; the turns then touch each wallet many times in one batch, so
    record_turns.lua decides them from its per-run copy of the wallet hash (balance, held and
    trial_left kept up to date by the script itself)."""
    gate.load_wallet(
        "tri", mode="trial", limited=True, balance_nanos=2 * COST_DEFAULT, trial_left=2_500, trial_then="bill"
    )
    gate.load_wallet("trp", mode="trial", limited=True, balance_nanos=10 * COST_DEFAULT, trial_left=1_000)
    gate.load_wallet("hold", mode="production", limited=True, balance_nanos=10 * COST_DEFAULT)
    gate.load_wallet("other", mode="production", limited=True, balance_nanos=10 * COST_DEFAULT)
    for rid in ("r1", "r2", "r3"):
        assert gate.reserve("hold", 3 * COST_DEFAULT, reservation_id=rid).granted
    assert gate.reserve("other", COST_DEFAULT, reservation_id="x1").granted
    return [
        *(
            turn(f"tri{i}", "tri", cached_prompt_tokens=0) for i in range(1, 7)
        ),  # 3 free, 2 billed (overdraws), 1 denied
        turn("trp1", "trp", cached_prompt_tokens=0),
        turn("trp2", "trp"),  # free and pause, then denied
        turn("h1", "hold", reservation_id="r1"),  # settles r1
        turn("h2", "hold"),  # sees balance − held with r2, r3 still held
        turn("h3", "hold", reservation_id="r2"),
        turn("h1", "hold", reservation_id="r3"),  # a retry of a settled turn gives r3 back
        turn("h4", "hold", reservation_id="x1"),  # another wallet's hold: not released
        *(turn(f"h{i}", "hold") for i in range(5, 12)),  # down to the pause and the denials
        turn("tri3", "tri"),
        turn("trp1", "trp"),  # duplicates: the first answers
    ]


def _full_state(client, gate: WalletGate) -> dict:
    """Every wallet hash field, hold (not its expiry time), holds index, dedupe answer and outbox
    entry's fields (not its id)."""
    state = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "hash":
            state[key] = {f: v for f, v in client.hgetall(key).items() if f != "expires_ms"}  # made at call time
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1)
        elif kind == "stream":
            state[key] = [fields for _id, fields in client.xrange(key)]
        elif ":turn:" in key:
            state[key] = client.get(key)
    return state


def test_a_batch_deciding_one_wallet_many_times_equals_one_by_one(client, wg):
    """Trial allowances crossing zero, holds settled, a retry releasing its new hold, another
    wallet's hold left alone, a wallet running dry: decided in one batch exactly as one call per
    turn, to every field (balance, held, trial_left, accepted/denied counts) and outbox entry."""
    turns = _cache_scenario(wg)
    one_by_one = [wg.record_turn(t) for t in turns]
    expected = _full_state(client, wg)
    client.flushdb()
    wg = WalletGate(client, settings=make_settings(), kicker=lambda s: None)
    batch = wg.record_turns(_cache_scenario(wg))
    assert batch == one_by_one
    assert _full_state(client, wg) == expected
    # and the figures are the expected ones
    tri = client.hgetall(wg.wallet_key("tri"))
    assert [(d.accepted, d.billed_nanos, d.action) for d in batch[:6]] == [
        (True, 0, "continue"),
        (True, 0, "continue"),
        (True, 0, "continue"),
        (True, COST_TRIAL, "continue"),
        (True, COST_TRIAL, "pause"),
        (False, 0, "pause"),
    ]  # 6.5M − 2 × 3.5M < 0
    assert (tri["trial_left"], tri["balance"]) == ("-800", str(2 * COST_DEFAULT - 2 * COST_TRIAL))
    assert (tri["accepted_turns"], tri["denied_turns"]) == ("5", "1")
    assert [(d.accepted, d.action) for d in batch[6:8]] == [(True, "pause"), (False, "pause")]
    hold = client.hgetall(wg.wallet_key("hold"))
    # 3 holds of 3 turns: r1 and r2 settled, r3 given back by the retry; x1 is other's, left held
    assert hold["held"] == "0" and client.hget(wg.wallet_key("other"), "held") == str(COST_DEFAULT)
    settled = [d for t, d in zip(turns, batch) if t.wallet_id == "hold" and d.accepted and not d.duplicate]
    assert int(hold["balance"]) == 10 * COST_DEFAULT - sum(d.billed_nanos for d in settled)
    assert int(hold["accepted_turns"]) == len(settled) and int(hold["denied_turns"]) == 11 - len(settled)
    assert [d.duplicate for d in batch[-2:]] == [True, True]


COST_TRIAL = 1000 * 2_500 + 100 * 10_000  # a turn with no cached tokens, once the trial bills


@pytest.mark.parametrize("batched", [False, True])
def test_deciding_before_writing_equals_deciding_with_the_writes(client, wg, batched):
    """record_one() has two paths: without a hold to settle and with figures below 10^15 it decides
    first and writes after one SET NX GET; else (here: a reservation_id naming no hold, which
    changes nothing else) it writes as it decides.  The same turns through either path leave the
    same answers and the same state, field by field."""

    def scenario(gate):
        gate.load_wallet("lim", mode="production", limited=True, balance_nanos=3 * COST_DEFAULT + 5)
        gate.load_wallet("unl", mode="production", limited=False, balance_nanos=0)
        gate.load_wallet("dev", mode="development", limited=True, balance_nanos=1)
        gate.load_wallet(
            "tri", mode="trial", limited=True, balance_nanos=COST_TRIAL, trial_left=2_000, trial_then="bill"
        )
        turns = [turn(f"l{i}", "lim") for i in range(6)] + [turn(f"u{i}", "unl") for i in range(3)]
        turns += [turn("d0", "dev"), turn("l1", "lim")]
        turns += [turn(f"t{i}", "tri", cached_prompt_tokens=0) for i in range(5)] + [turn("t0", "tri")]
        return turns

    def run(general: bool):
        client.flushdb()
        gate = WalletGate(client, settings=make_settings(), kicker=lambda s: None)
        turns = [
            t.model_copy(update={"reservation_id": f"no-hold-{t.turn_id}"}) if general else t for t in scenario(gate)
        ]
        decisions = gate.record_turns(turns) if batched else [gate.record_turn(t) for t in turns]
        return decisions, _full_state(client, gate)

    fast, general = run(False), run(True)
    assert fast == general
    decisions, _ = fast
    assert [(d.accepted, d.action, d.billed_nanos, d.duplicate) for d in decisions[:6]] == [
        (True, "continue", COST_DEFAULT, False),
        (True, "continue", COST_DEFAULT, False),
        (True, "continue", COST_DEFAULT, False),
        (True, "pause", COST_DEFAULT, False),
        (False, "pause", 0, False),
        (False, "pause", 0, False),
    ]
    assert decisions[10].duplicate and decisions[10].billed_nanos == COST_DEFAULT
    assert [(d.billed_nanos, d.action) for d in decisions[11:16]] == [
        (0, "continue"),
        (0, "continue"),
        (COST_TRIAL, "pause"),
        (0, "pause"),
        (0, "pause"),
    ]
    assert decisions[16].duplicate
