"""Reservations that cannot be gamed, against real Redis and PostgreSQL: a hold is at least 1 nano;
the gate prices one from model, prompt tokens and max_tokens at the worst case; where an app or a
wallet requires reservations, a turn without a live hold of its own wallet is denied, and a cost
above its hold is charged from the hold plus the free balance only, the rest recorded as debt."""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.integration.test_api_v1 import USD, api  # noqa: F401  (the fixture)
from worker.billing.modes import configure_app, set_wallet_reservations
from worker.db import session_scope
from worker.gate.keys import outbox_key
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.drain import OutboxDrain
from worker.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration
IN, OUT = 2_500, 10_000  # gpt-4o at OpenAI, nanos per token


def _turn(
    turn_id: str,
    wallet_id: str,
    prompt: int = 1000,
    completion: int = 100,
    reservation_id: str | None = None,
    enterprise_id: str = "acme",
) -> TurnIn:
    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet_id,
        enterprise_id=enterprise_id,
        chat_id=f"chat-{wallet_id}",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=completion,
        occurred_at=datetime(2026, 11, 2, 9, tzinfo=UTC),
        reservation_id=reservation_id,
    )


def _required_app(gate, *wallets: str, credit: int = 10_000_000) -> None:
    with session_scope() as session:
        ensure_enterprise(session, "acme")
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", reservations_required=True)
    for w in wallets:
        open_wallet(gate, wallet_id=w, enterprise_id="acme", owner_id=w)
        if credit:
            credit_wallet(gate, wallet_id=w, amount_nanos=credit, idempotency_key=f"open-{w}")


def _outbox_len(gate, wallet_id: str) -> int:
    return gate.redis.xlen(outbox_key(gate.shard(wallet_id)))


# at least one nano -----------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [0, -1, -(2**62)])
def test_a_reservation_below_one_nano_is_refused_and_cannot_authorise_spend(db, gate, amount):
    """The reported case: balance 0, a 0-nano hold granted, then a turn of 10^9 prompt tokens
    settling it was accepted (−$2,500).  Now the hold is refused and the turn denied (here 100,000
    prompt tokens, $0.25: 10^9 tokens are above gpt-4o's context window and refused before the gate)."""
    open_wallet(gate, wallet_id="u0", enterprise_id="acme", owner_id="u0")
    with pytest.raises(ValueError, match="amount_nanos"):
        gate.reserve("u0", amount, reservation_id="r0")
    assert gate.available("u0") == (0, 0, "production")
    d = gate.record_turn(_turn("t0", "u0", prompt=100_000, completion=0, reservation_id="r0"))
    assert (d.accepted, d.billed_nanos, d.action, d.balance_nanos) == (False, 0, "pause", 0)
    assert gate.balance("u0") == 0 and _outbox_len(gate, "u0") == 0


def test_the_gate_prices_a_reservation_at_the_worst_case(db, gate):
    open_wallet(gate, wallet_id="u1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="u1", amount_nanos=USD, idempotency_key="open")
    hold = gate.reserve(
        "u1", model="gpt-4o", provider="openai", prompt_tokens=1000, max_tokens=500, reservation_id="m1"
    )
    assert (hold.granted, hold.amount_nanos, hold.held_nanos) == (True, 1000 * IN + 500 * OUT, 7_500_000)
    tiny = gate.reserve("u1", model="gpt-4o", provider="openai", prompt_tokens=0, max_tokens=0, reservation_id="m2")
    assert (tiny.amount_nanos, tiny.held_nanos) == (1, 7_500_001)  # never a 0-nano hold
    assert gate.quote_reservation("gpt-4o", "openai", 2_000, 4_096) == 2_000 * IN + 4_096 * OUT
    for kwargs, field in [
        ({}, "amount_nanos"),
        ({"amount_nanos": 5, "model": "gpt-4o", "max_tokens": 1}, "amount_nanos"),
        ({"model": "gpt-4o"}, "max_tokens"),
        ({"model": "gpt-4o", "max_tokens": -1}, "max_tokens"),
        ({"model": "gpt-4o", "max_tokens": 1, "prompt_tokens": 1.5}, "prompt_tokens"),
    ]:
        with pytest.raises(ValueError, match=field):
            gate.reserve("u1", **kwargs)
    assert gate.available("u1") == (USD, 7_500_001, "production")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_nanos": 0}, "amount_nanos"),
        ({"amount_nanos": -5}, "amount_nanos"),
        ({"amount_nanos": 5, "model": "gpt-4o", "max_tokens": 9}, "amount_nanos"),
        ({"model": "gpt-4o", "prompt_tokens": 10}, "max_tokens"),
        ({"model": "gpt-4o", "max_tokens": -1}, "max_tokens"),
        ({"model": "no-such-model-xyz", "max_tokens": 10}, "model"),
    ],
)
def test_the_api_refuses_bad_reservations_naming_the_field(api, gate, body, field):  # noqa: F811
    r = api.post("/v1/wallets/w1/reservations", json=body, headers=api.h["owner"])
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert gate.redis.hget(gate.wallet_key("w1"), "held") is None


def test_the_api_prices_a_reservation_from_the_model(api, gate):  # noqa: F811
    r = api.post(
        "/v1/wallets/w1/reservations",
        headers=api.h["owner"],
        json={
            "model": "gpt-4o",
            "provider": "openai",
            "prompt_tokens": 1000,
            "max_tokens": 500,
            "reservation_id": "rm",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "reservation_id": "rm",
        "wallet_id": "w1",
        "granted": True,
        "amount_nanos": 7_500_000,
        "balance_nanos": USD,
        "held_nanos": 7_500_000,
        "duplicate": False,
    }


def test_over_http_a_wallet_that_requires_reservations_denies_turns_without_one(api, gate):  # noqa: F811
    from tests.integration.test_api_v1 import COST, TURN

    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", reservations_required=True)
    h = api.h["owner"]
    bare = api.post("/v1/turns", json=TURN, headers=h)
    assert bare.status_code == 200, bare.text
    assert {k: bare.json()[k] for k in ("accepted", "action", "billed_nanos", "balance_nanos")} == {
        "accepted": False,
        "action": "pause",
        "billed_nanos": 0,
        "balance_nanos": USD,
    }
    r = api.post(
        "/v1/wallets/w1/reservations",
        headers=h,
        json={
            "model": "gpt-4o",
            "provider": "openai",
            "prompt_tokens": 1000,
            "max_tokens": 100,
            "reservation_id": "rh",
        },
    )
    assert (r.json()["granted"], r.json()["amount_nanos"]) == (True, 1000 * IN + 100 * OUT)
    # a batch (the many-turns script): one turn settles the hold, one names it again, one has none
    batch = api.post(
        "/v1/turns/batch",
        headers=h,
        json={
            "turns": [
                {**TURN, "turn_id": "b-1", "reservation_id": "rh"},
                {**TURN, "turn_id": "b-2", "reservation_id": "rh"},
                {**TURN, "turn_id": "b-3"},
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    assert [(d["accepted"], d["billed_nanos"], d["balance_nanos"]) for d in batch.json()["data"]] == [
        (True, COST, USD - COST),
        (False, 0, USD - COST),
        (False, 0, USD - COST),
    ]
    assert gate.available("w1") == (USD - COST, 0, "production")
    shown = api.get("/v1/wallets/w1", headers=h).json()
    assert (shown["reservations_required"], shown["debt_nanos"], shown["held_nanos"]) == (True, 0, 0)


# reservations required ------------------------------------------------------------------------
def test_a_turn_without_a_live_hold_of_its_own_wallet_is_denied(db, gate):
    _required_app(gate, "u1", "u2")
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "1"
    before = _outbox_len(gate, "u1")
    # none, unknown
    cases = [_turn("none", "u1"), _turn("unknown", "u1", reservation_id="nope")]
    # settled already: the first turn settles it, the second names it again
    assert gate.reserve("u1", 4_000_000, reservation_id="once").granted
    settled = gate.record_turn(_turn("first", "u1", reservation_id="once"))
    assert (settled.accepted, settled.billed_nanos, settled.balance_nanos) == (True, 3_500_000, 6_500_000)
    cases.append(_turn("again", "u1", reservation_id="once"))
    # released
    assert gate.reserve("u1", 4_000_000, reservation_id="given-back").granted
    assert gate.release("u1", "given-back") == 4_000_000
    cases.append(_turn("released", "u1", reservation_id="given-back"))
    # another wallet's hold
    assert gate.reserve("u2", 4_000_000, reservation_id="theirs").granted
    cases.append(_turn("stolen", "u1", reservation_id="theirs"))
    for t in cases:
        d = gate.record_turn(t)
        assert (t.turn_id, d.accepted, d.billed_nanos, d.action, d.balance_nanos) == (
            t.turn_id,
            False,
            0,
            "pause",
            6_500_000,
        )
    assert gate.available("u1") == (6_500_000, 0, "production")
    assert gate.available("u2") == (10_000_000, 4_000_000, "production")  # its hold is untouched
    assert _outbox_len(gate, "u1") == before + 1  # only the settled turn was queued


def test_an_expired_hold_covers_nothing_and_is_given_back(db, gate):
    _required_app(gate, "u1")
    assert gate.reserve("u1", 4_000_000, ttl_s=1, reservation_id="late").granted
    time.sleep(1.2)  # expired, not yet swept by the beat job
    d = gate.record_turn(_turn("late-turn", "u1", reservation_id="late"))
    assert (d.accepted, d.billed_nanos, d.action) == (False, 0, "pause")
    assert gate.available("u1") == (10_000_000, 0, "production")
    assert gate.expire_reservations() == 0  # nothing left to sweep


def test_a_cost_above_the_hold_is_charged_from_the_free_balance_only_and_the_rest_is_debt(
    db, redis_client, gate, settings
):
    _required_app(gate, "u1", credit=5_000_000)
    assert gate.reserve("u1", 2_000_000, reservation_id="other-call").granted
    assert gate.reserve("u1", 1_000_000, reservation_id="small").granted
    # 2,000 prompt + 200 completion = 7,000,000 nanos against a 1,000,000 hold; free after giving the
    # hold back: 5,000,000 − 2,000,000 (the other call's hold) = 3,000,000
    d = gate.record_turn(_turn("big", "u1", prompt=2_000, completion=200, reservation_id="small"))
    assert (d.accepted, d.cost_nanos, d.billed_nanos, d.action, d.balance_nanos) == (
        True,
        7_000_000,
        3_000_000,
        "pause",
        2_000_000,
    )
    assert gate.available("u1") == (2_000_000, 2_000_000, "production")
    assert redis_client.hget(gate.wallet_key("u1"), "debt") == "4000000"
    # the other call settles within its hold: charged in full, nothing owed
    ok = gate.record_turn(_turn("fits", "u1", prompt=400, completion=100, reservation_id="other-call"))
    assert (ok.accepted, ok.billed_nanos, ok.balance_nanos, ok.action) == (True, 2_000_000, 0, "pause")
    # the retry of the big turn is its first answer
    again = gate.record_turn(_turn("big", "u1", prompt=2_000, completion=200, reservation_id="small"))
    assert (again.duplicate, again.billed_nanos) == (True, 3_000_000)
    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT turn_id, cost_nanos, billed_nanos, debt_nanos, action FROM usage_event ORDER BY turn_id")
        ).all()
        wallet = conn.execute(text("SELECT credits_nanos, debits_nanos, debt_nanos FROM wallet WHERE id = 'u1'")).one()
    assert [tuple(r) for r in rows] == [
        ("big", 7_000_000, 3_000_000, 4_000_000, "pause"),
        ("fits", 2_000_000, 2_000_000, 0, "pause"),
    ]
    assert tuple(wallet) == (5_000_000, 5_000_000, 4_000_000)
    report = reconcile(gate)
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (1, 0, 0)


def test_without_the_setting_a_stale_reservation_is_post_hoc_as_before(db, gate):
    open_wallet(gate, wallet_id="u1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="u1", amount_nanos=10_000_000, idempotency_key="open")
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "0"
    d = gate.record_turn(_turn("t1", "u1", reservation_id="unknown"))
    assert (d.accepted, d.billed_nanos, d.balance_nanos) == (True, 3_500_000, 6_500_000)


def test_a_wallet_overrides_its_apps_setting_and_the_cli_sets_both(db, gate, cli):
    _required_app(gate, "u1")
    with session_scope() as s:  # the entry point's transaction
        assert set_wallet_reservations(s, gate, "u1", False) is False
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "0"
    assert gate.record_turn(_turn("free-to-go", "u1")).billed_nanos == 3_500_000
    with session_scope() as s:  # the entry point's transaction
        assert set_wallet_reservations(s, gate, "u1", None) is True  # follows the app again
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "1"
    assert gate.record_turn(_turn("held-back", "u1")).accepted is False

    r = cli("app", "configure", "acme", "--reservations-optional")
    assert r.returncode == 0 and "reservations optional" in r.stdout, r.stderr
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "0"
    r = cli("wallet", "reservations", "u1", "required")
    assert r.returncode == 0 and r.stdout.strip() == "u1: reservations required", r.stderr
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "1"
    shown = json.loads(cli("wallet", "show", "u1", "--json").stdout)
    assert (shown["reservations_required"], shown["debt_nanos"]) == (True, 0)
    r = cli("wallet", "reservations", "u1", "maybe")
    assert r.returncode == 2 and "SETTING" in r.stderr
    with db.connect() as conn:
        assert conn.execute(text("SELECT reservations_required FROM wallet WHERE id = 'u1'")).scalar_one() is True
        assert (
            conn.execute(text("SELECT reservations_required FROM enterprise WHERE id = 'acme'")).scalar_one() is False
        )
    # a rebuild from PostgreSQL keeps the setting
    gate.redis.delete(gate.wallet_key("u1"))
    reconcile(gate, rebuild=True)
    assert gate.redis.hget(gate.wallet_key("u1"), "require_hold") == "1"


# a race ----------------------------------------------------------------------------------------
def test_fifty_threads_reserving_and_settling_on_a_cent_never_go_below_zero(db, redis_client, gate, settings, race):
    """50 threads on one $0.01 wallet that requires reservations: they reserve by amount or by
    model, settle with turns costing up to 4× their hold, settle twice, name unknown holds and each
    other's, and send turns with no hold at all.  The balance never goes below zero and, to the
    nano, what was debited equals what was credited minus what is left."""
    credit = 10_000_000
    _required_app(gate, "pool", "side", credit=credit)
    for k in range(5):
        assert gate.reserve("side", 1_000_000, reservation_id=f"side-{k}").granted
    lock = threading.Lock()
    accepted: list = []  # (turn_id, cost, billed)
    bogus_accepted: list = []
    lowest = [credit]
    others: list[str] = []

    def racer(n: int) -> None:
        rng = random.Random(n)
        for i in range(6):
            rid = f"r-{n}-{i}"
            if rng.random() < 0.5:
                hold = gate.reserve("pool", rng.randint(1, 600_000), reservation_id=rid)
            else:
                hold = gate.reserve(
                    "pool",
                    model="gpt-4o",
                    provider="openai",
                    prompt_tokens=100,
                    max_tokens=rng.randint(1, 40),
                    reservation_id=rid,
                )
            with lock:
                others.append(rid)
            bogus = [
                _turn(f"none-{n}-{i}", "pool", 100, 10),
                _turn(f"unknown-{n}-{i}", "pool", 100, 10, reservation_id=f"nope-{n}-{i}"),
            ]
            if hold.granted:
                if rng.random() < 0.15:
                    gate.release("pool", rid)
                else:
                    t = _turn(f"t-{n}-{i}", "pool", 100, rng.randint(0, 120), reservation_id=rid)
                    d = gate.record_turn(t)
                    with lock:
                        if d.accepted:
                            accepted.append((t.turn_id, d.cost_nanos, d.billed_nanos))
                bogus.append(_turn(f"twice-{n}-{i}", "pool", 100, 10, reservation_id=rid))
            # another wallet's live hold: never ours to settle
            bogus.append(_turn(f"side-{n}-{i}", "pool", 100, 10, reservation_id=f"side-{n % 5}"))
            with lock:
                theirs = rng.choice(others)
            if theirs != rid:  # another thread's hold of this wallet: a live hold of its own wallet
                t = _turn(f"theirs-{n}-{i}", "pool", 100, rng.randint(0, 120), reservation_id=theirs)
                d = gate.record_turn(t)
                with lock:
                    if d.accepted:
                        accepted.append((t.turn_id, d.cost_nanos, d.billed_nanos))
            for b in bogus:
                d = gate.record_turn(b)
                if d.accepted:
                    with lock:
                        bogus_accepted.append(b.turn_id)
            balance = gate.balance("pool")
            with lock:
                lowest[0] = min(lowest[0], balance)

    race(*[functools.partial(racer, n) for n in range(50)], timeout=300)  # every racer ended, none raised
    for rid in others:  # give back what is still held
        gate.release("pool", rid)
    balance, held, _mode = gate.available("pool")
    billed = sum(b for _t, _c, b in accepted)
    debt = sum(c - b for _t, c, b in accepted)
    assert bogus_accepted == []
    assert lowest[0] >= 0 and balance >= 0 and held == 0
    assert billed == credit - balance and billed <= credit
    assert accepted  # some turns went through
    assert int(redis_client.hget(gate.wallet_key("pool"), "debt") or 0) == debt

    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    with db.connect() as conn:
        credits, debits, owed = conn.execute(
            text("SELECT credits_nanos, debits_nanos, debt_nanos FROM wallet WHERE id = 'pool'")
        ).one()
        count, persisted = conn.execute(
            text("SELECT count(*), coalesce(sum(billed_nanos), 0) FROM usage_event WHERE wallet_id = 'pool'")
        ).one()
    assert gate.available("side") == (credit, 5_000_000, "production")  # its holds untouched
    assert (credits, debits, owed) == (credit, billed, debt)
    assert debits <= credits and credits - debits == balance
    assert (count, persisted) == (len(accepted), billed)
