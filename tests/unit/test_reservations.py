"""Reservations (two-phase holds) in the gate, on fakeredis and on real Redis: a hold is granted only
from the available balance (balance − held), compared exactly; a turn settles it; release and expiry
give it back; retries change nothing."""

from __future__ import annotations

import pytest

from tests.unit.test_gate import COST_DEFAULT, client, kicked, turn, wg  # noqa: F401  (fixtures)
from worker.gate.gate import UnknownWallet


def held(client, wg, wallet_id="w1") -> int:
    return int(client.hget(wg.wallet_key(wallet_id), "held") or 0)


def test_a_hold_is_granted_from_the_available_balance_only(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    first = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert (first.granted, first.amount_nanos, first.balance_nanos, first.held_nanos) == (
        True,
        6_000_000,
        10_000_000,
        6_000_000,
    )
    refused = wg.reserve("w1", 4_000_001, reservation_id="r2")
    assert (refused.granted, refused.amount_nanos, refused.held_nanos) == (False, 0, 6_000_000)
    exact = wg.reserve("w1", 4_000_000, reservation_id="r3")
    assert exact.granted and exact.held_nanos == 10_000_000
    again = wg.reserve("w1", 4_000_000, reservation_id="r3")
    assert (again.duplicate, again.held_nanos) == (True, 10_000_000)
    assert wg.balance("w1") == 10_000_000 and held(client, wg) == 10_000_000
    # a post-hoc turn sees the available balance: 0 here, so it is denied and not debited
    d = wg.record_turn(turn("t-posthoc"))
    assert (d.accepted, d.action, wg.balance("w1")) == (False, "pause", 10_000_000)


def test_settling_releases_the_hold_and_debits_the_actual_cost(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    wg.reserve("w1", 5_000_000, reservation_id="r1")
    d = wg.record_turn(turn("t1", reservation_id="r1"))
    assert (d.accepted, d.billed_nanos, d.balance_nanos, d.action) == (
        True,
        COST_DEFAULT,
        10_000_000 - COST_DEFAULT,
        "continue",
    )
    assert held(client, wg) == 0
    assert not client.exists(wg.wallet_key("w1").replace(":wallet:w1", ":hold:r1"))
    # a retry of the settled turn is a duplicate; a new hold made by the retry's reserve is given back
    wg.reserve("w1", 5_000_000, reservation_id="r1")
    retry = wg.record_turn(turn("t1", reservation_id="r1"))
    assert retry.duplicate and held(client, wg) == 0 and wg.balance("w1") == 10_000_000 - COST_DEFAULT


def test_an_actual_cost_above_the_hold_becomes_debt_and_pauses(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=COST_DEFAULT - 1)
    assert wg.reserve("w1", 1_000, reservation_id="r1").granted
    d = wg.record_turn(turn("t1", reservation_id="r1"))
    assert (d.accepted, d.balance_nanos, d.action) == (True, -1, "pause")


def test_release_and_expiry_give_holds_back_once(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    wg.reserve("w1", 3_000_000, reservation_id="r1")
    wg.reserve("w1", 2_000_000, reservation_id="r2", ttl_s=5)
    assert wg.release("w1", "r1") == 3_000_000
    assert wg.release("w1", "r1") == 0
    assert held(client, wg) == 2_000_000
    import time

    now_ms = int(time.time() * 1000)
    assert wg.expire_reservations(now_ms=now_ms) == 0  # not due yet
    assert wg.expire_reservations(now_ms=now_ms + 6_000) == 1
    assert wg.expire_reservations(now_ms=now_ms + 6_000) == 0
    assert held(client, wg) == 0 and wg.balance("w1") == 10_000_000
    # a turn whose hold expired is an ordinary post-hoc turn
    d = wg.record_turn(turn("t1", reservation_id="r2"))
    assert d.accepted and d.balance_nanos == 10_000_000 - COST_DEFAULT


def test_development_holds_nothing_and_blocked_wallets_are_refused(client, wg):
    wg.load_wallet("dev", mode="development", limited=True, balance_nanos=0)
    r = wg.reserve("dev", 9_000_000, reservation_id="r1")
    assert (r.granted, r.amount_nanos) == (True, 0)
    assert wg.record_turn(turn("t1", "dev", reservation_id="r1")).billed_nanos == 0
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000, blocked_reason="budget_exceeded")
    assert not wg.reserve("w1", 1, reservation_id="r2").granted
    with pytest.raises(UnknownWallet):
        wg.reserve("ghost", 1)
    with pytest.raises(ValueError, match="amount_nanos"):
        wg.reserve("w1", -1)


def test_holds_compare_exactly_beyond_two_to_the_53(client, wg):
    big = 2**62 + 1
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=big)
    with pytest.raises(ValueError, match="amount_nanos"):
        wg.reserve("w1", 2**62 + 1)
    assert wg.reserve("w1", 2**62, reservation_id="r1").granted
    assert not wg.reserve("w1", 2, reservation_id="r2").granted  # 2^62 + 2 > 2^62 + 1: doubles can't tell
    assert wg.reserve("w1", 1, reservation_id="r3").granted
    assert held(client, wg) == big


def test_reserve_exact_batch_denies_what_it_cannot_cover_and_goes_on(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=2 * COST_DEFAULT + 10)
    turns = [turn("a"), turn("b"), turn("big", prompt_tokens=100_000, cached_prompt_tokens=0), turn("c")]
    decisions = wg.record_turns(turns, reserve_exact=True)
    assert [d.accepted for d in decisions] == [True, True, False, False]
    assert wg.balance("w1") == 10 and held(client, wg) == 0
    small = wg.record_turns(
        [turn("tiny", prompt_tokens=1, cached_prompt_tokens=0, completion_tokens=0)], reserve_exact=True
    )
    assert (small[0].accepted, small[0].cost_nanos) == (False, 2_500)  # one token costs 2,500 > 10 available
    free = wg.record_turns(
        [turn("zero", prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=0)], reserve_exact=True
    )
    assert free[0].accepted and wg.balance("w1") == 10


def test_another_wallets_hold_can_be_neither_settled_released_nor_reused(client, wg):
    """Two wallets on one shard: naming the other's reservation changes nothing of it."""
    mine = "w1"
    theirs = next(f"w-{i}" for i in range(100) if wg.shard(f"w-{i}") == wg.shard(mine) and f"w-{i}" != mine)
    wg.load_wallet(mine, mode="production", limited=True, balance_nanos=10 * COST_DEFAULT)
    wg.load_wallet(theirs, mode="production", limited=True, balance_nanos=10 * COST_DEFAULT)
    hold = wg.reserve(theirs, 3 * COST_DEFAULT, reservation_id="r-theirs")
    assert hold.granted and held(client, wg, theirs) == 3 * COST_DEFAULT
    assert wg.release(mine, "r-theirs") == 0
    assert not wg.reserve(mine, COST_DEFAULT, reservation_id="r-theirs").granted
    d = wg.record_turn(turn("t-x", wallet_id=mine, reservation_id="r-theirs"))
    # settled against nothing: an ordinary post-hoc debit of my wallet; their hold is intact
    assert (d.accepted, d.billed_nanos, d.balance_nanos) == (True, COST_DEFAULT, 9 * COST_DEFAULT)
    assert (held(client, wg, mine), held(client, wg, theirs)) == (0, 3 * COST_DEFAULT)
    assert wg.release(theirs, "r-theirs") == 3 * COST_DEFAULT and held(client, wg, theirs) == 0
