"""Reservations required, in the gate's scripts, on fakeredis and on real Redis: exact integer
arithmetic for balances past 2^53 and for a wallet already below zero."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_gate import COST_DEFAULT, client, kicked, turn, wg  # noqa: F401  (fixtures)
from worker.gate.keys import outbox_key
from worker.gate.scripts import lua_source


def test_debt_is_exact_for_balances_past_two_to_the_53(client, wg):
    big = 2**53 + 1  # 9,007,199,254,740,993 nanos: past what a Lua double holds exactly
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=big, reservations_required=True)
    assert wg.reserve("w1", big - 1_000, reservation_id="other").granted
    assert wg.reserve("w1", 500, reservation_id="mine").granted
    d = wg.record_turn(turn("t1", reservation_id="mine"))
    # free once its own hold is given back: big − (big − 1,000) = 1,000
    assert (d.accepted, d.cost_nanos, d.billed_nanos, d.balance_nanos, d.action) == (
        True,
        COST_DEFAULT,
        1_000,
        big - 1_000,
        "pause",
    )
    assert client.hget(wg.wallet_key("w1"), "debt") == str(COST_DEFAULT - 1_000)
    assert client.hget(wg.wallet_key("w1"), "balance") == "9007199254739993"
    (entry,) = [f for _id, f in client.xrange(outbox_key(wg.shard("w1")))]
    billed, _balance, codes, _share, _trial, debt = entry["g"].split("|")
    assert (billed, debt, codes[0]) == ("1000", str(COST_DEFAULT - 1_000), "p")  # action pause


def test_a_wallet_already_below_zero_is_not_debited_further(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1_000)
    assert wg.reserve("w1", 500, reservation_id="r1").granted
    post_hoc = wg.record_turn(turn("t0"))  # before the setting: post-hoc, overdraws by itself
    assert (post_hoc.accepted, post_hoc.balance_nanos) == (True, 1_000 - COST_DEFAULT)
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=0, reservations_required=True)
    d = wg.record_turn(turn("t1", reservation_id="r1"))
    assert (d.accepted, d.billed_nanos, d.balance_nanos, d.action) == (True, 0, 1_000 - COST_DEFAULT, "pause")
    assert client.hget(wg.wallet_key("w1"), "debt") == str(COST_DEFAULT)
    assert wg.available("w1") == (1_000 - COST_DEFAULT, 0, "production")


LIMIT = 2**62  # every balance, hold and cost the gate keeps is within ±2^62


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.integers(-LIMIT, LIMIT), b=st.integers(-LIMIT, LIMIT))
def test_int_sub_is_exact_over_the_whole_range(client, a, b):
    """lib_int.lua's int_sub (free balance, debt) against Python's integers."""
    script = client.register_script(lua_source("lib_int.lua") + "\nreturn int_sub(ARGV[1], ARGV[2])")
    assert script(args=[str(a), str(b)]) == str(a - b)


def test_a_credit_applied_under_the_key_before_the_upgrade_is_not_applied_again(client, wg):
    """A credit retried across the upgrade that length-prefixed the ids in the gate's keys: the
    key it left in the old form still marks it applied (for the rest of its TTL)."""
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=1_000)
    tag = wg.wallet_key("w1").removesuffix(":wallet:w1")
    client.set(f"{tag}:credit:w1:topup-1", "1", ex=3600)  # applied by the gate before the upgrade
    assert wg.credit("w1", 500, "topup-1") == 1_000
    assert wg.credit("w1", 500, "topup-2") == 1_500
    assert client.exists(f"{tag}:credit:2:w1:topup-2") == 1 and client.exists(f"{tag}:credit:w1:topup-2") == 0


def test_reserving_an_expired_id_again_makes_a_new_live_hold(client, wg):
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000, reservations_required=True)
    assert wg.reserve("w1", 4_000_000, reservation_id="r1").granted
    hold_key = wg.wallet_key("w1").replace(":wallet:w1", ":hold:r1")
    client.hset(hold_key, "expires_ms", 1)  # its time is up; the sweeper has not run
    again = wg.reserve("w1", 5_000_000, reservation_id="r1")
    assert (again.granted, again.duplicate, again.amount_nanos, again.held_nanos) == (True, False, 5_000_000, 5_000_000)
    d = wg.record_turn(turn("t1", reservation_id="r1"))
    assert (d.accepted, d.billed_nanos, d.balance_nanos) == (True, COST_DEFAULT, 10_000_000 - COST_DEFAULT)
    assert wg.available("w1") == (10_000_000 - COST_DEFAULT, 0, "production")
