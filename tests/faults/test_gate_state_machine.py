"""Property test (hypothesis ``RuleBasedStateMachine``) of the gate's money rules, on fakeredis[lua]
and on a real Redis of our own, with the ledger in our own PostgreSQL.

Any interleaving of credit, reserve (by amount, by model, and refused below 1 nano), settle
(``record_turn`` with ``reservation_id``), settle twice, settle a hold that lapsed, an unknown one
or another wallet's, turns without a hold, turns costing more than their hold, release, expire,
post-hoc record, retried turns and drains:

- keeps the gate equal to an exact integer model of the Lua rules after every step;
- keeps ``debits ≤ credits`` (balance ≥ 0, and held ≤ balance) on the wallet that only spends
  through reservations settled while their hold is live;
- keeps a hold-mandatory wallet (``reservations_required``) at balance ≥ 0 and held ≤ balance
  whatever the client sends: a turn without a live hold of its own is denied, a cost above the
  hold is debited the free balance only and the rest is recorded as debt;
- keeps the post-hoc wallet's overdraft below one turn's cost (a turn settling a hold that already
  expired or was released is post-hoc too: it may overdraw by itself);
- and, after a final drain, leaves the ledger equal to Redis to the nano (``worker.ledger.reconcile``),
  the debt included.
"""

from __future__ import annotations

import time

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from tests.faults.conftest import ENTERPRISE, T0, _clean

pytestmark = pytest.mark.faults

UNIT = 1_000_000  # nanos per prompt token of the override model 'unit' ($1,000 / MTok)
RES, POST, REQ = "w-res", "w-post", "w-req"
WALLETS = (RES, POST, REQ)
HOUR_MS = 3_600_000  # holds live for hours: only the expire and lapse rules end them, never the test's clock
CTX: dict = {}


def _turn(turn_id: str, wallet: str, tokens: int, reservation_id: str | None = None):
    from models.turn import TurnIn

    return TurnIn(
        turn_id=turn_id,
        wallet_id=wallet,
        enterprise_id=ENTERPRISE,
        chat_id=f"{wallet}-c",
        model="unit",
        prompt_tokens=tokens,
        completion_tokens=0,
        occurred_at=T0,
        reservation_id=reservation_id,
    )


class GateMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    @initialize()
    def setup(self):
        from tests.committed import open_wallet
        from worker.gate.gate import WalletGate
        from worker.pricing.prices import PriceBook

        fe = CTX["fe"]
        if CTX["backend"] == "fakeredis":
            self.client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
            _clean(fe.pg, fe.redis_url)
        else:
            _clean(fe.pg, fe.redis_url)
            self.client = fe.client()
        self.gate = WalletGate(
            self.client,
            settings=fe.settings,
            kicker=lambda shard: None,
            price_book=PriceBook({"/unit": {"input_mtok": "1000"}}),
        )
        from worker.billing.modes import set_wallet_reservations
        from worker.db import session_scope

        for w in WALLETS:
            open_wallet(self.gate, wallet_id=w, enterprise_id=ENTERPRISE, owner_id=w)
        with session_scope() as s:  # the entry point's transaction
            assert set_wallet_reservations(s, self.gate, REQ, True) is True
        from tests.committed import credit_wallet

        for w in (RES, REQ):  # some money to reserve from at once (the credit rule adds more)
            credit_wallet(self.gate, wallet_id=w, amount_nanos=50 * UNIT, idempotency_key=f"init-{w}")
        self.balance = {RES: 50 * UNIT, POST: 0, REQ: 50 * UNIT}
        self.held = dict.fromkeys(WALLETS, 0)
        self.debt = dict.fromkeys(WALLETS, 0)
        self.live: dict[str, tuple[str, int, int]] = {}  # reservation -> (wallet, amount, expires_ms)
        self.lapsed: dict[str, tuple[str, int]] = {}  # expired in Redis, not yet swept -> (wallet, amount)
        self.accepted: dict[str, tuple[object, int]] = {}  # turn_id -> (turn, billed)
        self.credits = 0
        self.n = 0

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    # rules --------------------------------------------------------------------------------------
    @rule(wallet=st.sampled_from(WALLETS), amount=st.integers(1, 60).map(lambda k: k * UNIT - k))
    def credit(self, wallet, amount):
        from tests.committed import credit_wallet

        key = self._id("c")
        assert (
            credit_wallet(self.gate, wallet_id=wallet, amount_nanos=amount, idempotency_key=key)
            == self.balance[wallet] + amount
        )
        self.balance[wallet] += amount
        # a retry of the same credit changes nothing
        assert (
            credit_wallet(self.gate, wallet_id=wallet, amount_nanos=amount, idempotency_key=key) == self.balance[wallet]
        )

    def _hold_key(self, wallet: str, rid: str) -> str:
        return self.gate.wallet_key(wallet).replace(f":wallet:{wallet}", f":hold:{rid}")

    @rule(
        target=holds,
        wallet=st.sampled_from([RES, POST, REQ, REQ]),
        tokens=st.integers(1, 40),
        ttl=st.integers(1, 3),
        by_model=st.booleans(),
        max_tokens=st.integers(0, 100),
    )
    def reserve(self, wallet, tokens, ttl, by_model, max_tokens):
        """By amount, or by model: the gate prices prompt_tokens at the input price (the 'unit'
        model has no output price, so max_tokens adds nothing)."""
        rid = self._id("r")
        amount = tokens * UNIT
        if by_model:
            r = self.gate.reserve(
                wallet,
                model="unit",
                prompt_tokens=tokens,
                max_tokens=max_tokens,
                ttl_s=ttl * HOUR_MS // 1000,
                reservation_id=rid,
            )
        else:
            r = self.gate.reserve(wallet, amount, ttl_s=ttl * HOUR_MS // 1000, reservation_id=rid)
        assert r.granted == (self.balance[wallet] - self.held[wallet] - amount >= 0)
        if r.granted:
            expires = int(self.client.hget(self._hold_key(wallet, rid), "expires_ms"))
            self.live[rid] = (wallet, amount, expires)
            self.held[wallet] += amount
        assert (r.amount_nanos, r.held_nanos) == ((amount if r.granted else 0), self.held[wallet])
        return rid

    @rule(wallet=st.sampled_from(WALLETS), amount=st.integers(-(2**62), 0))
    def reserve_nothing(self, wallet, amount):
        """A hold below 1 nano is refused, naming amount_nanos; nothing changes."""
        with pytest.raises(ValueError, match="amount_nanos"):
            self.gate.reserve(wallet, amount, reservation_id=self._id("z"))

    def _apply_turn(self, turn, covered: bool | None = None) -> None:
        """Record a turn and check the answer against the Lua rules.  A turn naming a hold gives it
        back when the hold is its own wallet's (live or lapsed) and is covered only by a live one.
        Covered, it is accepted; uncovered, a hold-mandatory wallet denies it, any other accepts it
        only while balance > held (post-hoc).  On the hold-mandatory wallet a covered turn is
        debited at most balance − held (never below zero): the rest is debt.  The chat pauses
        once balance <= held."""
        w, cost, rid = turn.wallet_id, turn.prompt_tokens * UNIT, turn.reservation_id
        mine = rid is not None and (self.live.get(rid, (None,))[0] == w or self.lapsed.get(rid, (None,))[0] == w)
        if mine:
            live = rid in self.live
            amount = self.live.pop(rid)[1] if live else self.lapsed.pop(rid)[1]
            self.held[w] -= amount
            assert covered in (None, live)
            covered = live
        else:
            assert not covered
            covered = False
        d = self.gate.record_turn(turn)
        assert not d.duplicate and d.cost_nanos == cost
        if w == REQ and not covered:
            assert (d.accepted, d.billed_nanos, d.action) == (False, 0, "pause")
        elif w == REQ or covered or self.balance[w] > self.held[w]:
            billed = min(cost, max(0, self.balance[w] - self.held[w])) if w == REQ else cost
            self.balance[w] -= billed
            self.debt[w] += cost - billed
            self.accepted[turn.turn_id] = (turn, billed)
            assert (d.accepted, d.billed_nanos, d.balance_nanos) == (True, billed, self.balance[w])
            assert d.action == ("pause" if self.balance[w] <= self.held[w] or billed < cost else "continue")
        else:
            assert (d.accepted, d.billed_nanos, d.action) == (False, 0, "pause")

    @rule(rid=holds, fraction=st.integers(0, 100))
    def settle(self, rid, fraction):
        """A turn settles its hold; on the reservation wallet its cost never exceeds the hold."""
        hold = self.live.get(rid)
        if hold is None:  # released, expired or settled: the turn is post-hoc (only on the post-hoc wallet here)
            wallet = POST
            tokens = fraction % 30
        else:
            wallet, amount, _ = hold
            tokens = amount // UNIT * fraction // 100  # an estimate held is an upper bound of the cost
        self._apply_turn(_turn(self._id("s"), wallet, tokens, reservation_id=rid if hold else None), hold is not None)

    @precondition(lambda self: self.live)
    @rule(
        pick=st.integers(0, 10**6),
        required_first=st.booleans(),
        percent=st.one_of(st.sampled_from([0, 100, 101, 400, 1000]), st.integers(0, 1000)),
    )
    def settle_a_live_hold(self, pick, percent, required_first):
        """A turn settles one of the live holds (the hold-mandatory wallet's first, if asked): on
        that wallet it may cost up to 10× its hold (charged from the hold plus the free balance, the
        rest debt); elsewhere at most its hold."""
        pool = sorted(r for r, h in self.live.items() if h[0] == REQ) if required_first else []
        pool = pool or sorted(self.live)
        rid = pool[pick % len(pool)]
        wallet, amount, _ = self.live[rid]
        tokens = amount // UNIT * (percent if wallet == REQ else percent % 101) // 100
        self._apply_turn(_turn(self._id("l"), wallet, tokens, reservation_id=rid), True)

    @precondition(lambda self: any(h[0] == REQ for h in self.live.values()))
    @rule(pick=st.integers(0, 10**6), extra=st.integers(1, 20))
    def overspend_a_required_hold(self, pick, extra):
        """A turn on the hold-mandatory wallet costing more than its hold plus the free balance:
        debited what there is, never below zero; the rest is debt and the chat pauses."""
        pool = sorted(r for r, h in self.live.items() if h[0] == REQ)
        rid = pool[pick % len(pool)]
        amount = self.live[rid][1]
        free = self.balance[REQ] - self.held[REQ] + amount  # once its own hold is given back
        self._apply_turn(_turn(self._id("o"), REQ, max(free, 0) // UNIT + extra, reservation_id=rid), True)

    @rule(rid=holds, wallet=st.sampled_from([POST, REQ]), tokens=st.integers(0, 60))
    def settle_any(self, rid, wallet, tokens):
        """A turn naming a hold whatever its state: its own live one (maybe costing more than it
        holds), one already settled or released (settle twice), one that lapsed, or another
        wallet's.  Post-hoc turns stay below 30 tokens (the post-hoc wallet's overdraft bound)."""
        tokens = tokens if wallet == REQ else tokens % 30
        self._apply_turn(_turn(self._id("a"), wallet, tokens, reservation_id=rid))

    @rule(wallet=st.sampled_from([POST, REQ]), tokens=st.integers(0, 30), named=st.booleans())
    def turn_without_a_live_hold(self, wallet, tokens, named):
        """No hold at all, or one nobody ever made."""
        self._apply_turn(_turn(self._id("n"), wallet, tokens, reservation_id=self._id("unknown") if named else None))

    @rule(rid=holds)
    def lapse(self, rid):
        """Time passes for one hold: it expired in Redis, and the sweeper has not run yet."""
        hold = self.live.pop(rid, None)
        if hold is None:
            return
        wallet, amount, _ = hold
        past = int(time.time() * 1000) - 1000
        self.client.hset(self._hold_key(wallet, rid), "expires_ms", past)
        self.client.zadd(self.gate.wallet_key(wallet).replace(f":wallet:{wallet}", ":holds"), {rid: past})
        self.lapsed[rid] = (wallet, amount)

    @rule(tokens=st.integers(0, 30))
    def record_post_hoc(self, tokens):
        self._apply_turn(_turn(self._id("p"), POST, tokens), covered=False)

    @rule(rid=holds)
    def release(self, rid):
        hold = self.live.pop(rid, None) or self.lapsed.pop(rid, None)
        wallet = hold[0] if hold else POST  # a hold already gone: release answers 0
        assert self.gate.release(wallet, rid) == (hold[1] if hold else 0)
        if hold:
            self.held[wallet] -= hold[1]

    @rule(advance_ms=st.integers(0, 4 * HOUR_MS))
    def expire(self, advance_ms):
        now = int(time.time() * 1000) + advance_ms
        due = [rid for rid, (_w, _a, exp) in self.live.items() if exp <= now]
        released = self.gate.expire_reservations(now_ms=now)
        nonzero = 0
        for rid in due:
            wallet, amount, _ = self.live.pop(rid)
            self.held[wallet] -= amount
            nonzero += amount > 0
        for wallet, amount in self.lapsed.values():  # lapsed holds are due whatever the clock
            self.held[wallet] -= amount
            nonzero += amount > 0
        self.lapsed.clear()
        # expire_reservations counts reservations that gave nanos back: a 0-nanos one is deleted but not counted
        assert released == nonzero

    @precondition(lambda self: self.accepted)
    @rule(pick=st.integers(0, 10**6))
    def retry_a_turn(self, pick):
        turn, billed = list(self.accepted.values())[pick % len(self.accepted)]
        d = self.gate.record_turn(turn)
        assert (d.duplicate, d.accepted, d.billed_nanos) == (True, True, billed)

    @rule()
    def drain(self):
        from worker.ledger.drain import OutboxDrain

        OutboxDrain(self.client, settings=CTX["fe"].settings, consumer="sm").drain()

    # invariants ---------------------------------------------------------------------------------
    @invariant()
    def gate_matches_the_model(self):
        if not hasattr(self, "gate"):
            return
        for w in WALLETS:
            assert self.gate.balance(w) == self.balance[w]
            assert int(self.client.hget(self.gate.wallet_key(w), "held") or 0) == self.held[w]
            assert int(self.client.hget(self.gate.wallet_key(w), "debt") or 0) == self.debt[w]
        # reservations only: debits never exceed credits, and holds never exceed the balance
        assert self.balance[RES] >= 0 and self.held[RES] <= self.balance[RES]
        # reservations required: the same, whatever the client sends
        assert self.balance[REQ] >= 0 and self.held[REQ] <= self.balance[REQ]
        # post-hoc: overdrawn by less than one turn (the largest post-hoc turn is 29 tokens)
        assert self.balance[POST] > -30 * UNIT

    def teardown(self):
        if not hasattr(self, "gate"):
            return
        from worker.db import engine_for
        from worker.ledger.drain import OutboxDrain
        from worker.ledger.reconcile import reconcile

        fe = CTX["fe"]
        OutboxDrain(self.client, settings=fe.settings, consumer="final").drain()
        report = reconcile(self.gate)
        assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs, report.ledger_mismatches) == (
            3,
            0,
            0,
            0,
        )
        with engine_for(fe.pg.url).connect() as conn:
            rows = dict(conn.execute(text("SELECT id, credits_nanos - debits_nanos FROM wallet")).all())
            debts = dict(conn.execute(text("SELECT id, debt_nanos FROM wallet")).all())
            event_debt = conn.execute(text("SELECT coalesce(sum(debt_nanos), 0) FROM usage_event")).scalar_one()
            count, billed = conn.execute(text("SELECT count(*), coalesce(sum(billed_nanos), 0) FROM usage_event")).one()
        assert rows == self.balance
        assert debts == self.debt and event_debt == sum(self.debt.values())
        assert (count, billed) == (len(self.accepted), sum(b for _t, b in self.accepted.values()))
        if CTX["backend"] == "fakeredis":
            self.client.close()


#: examples per backend.  The real Redis (the production server) gets the full 60.  fakeredis[lua]
#: runs the same Lua scripts against the same model; each of its examples costs as much as a real
#: one (40 steps, then a drain, a reconcile and the PostgreSQL checks), and at 60 both together
#: were the costliest test of the suite (about 90 s of a 12.5 min run), so it gets 30.
EXAMPLES = {"fakeredis": 30, "redis": 60}


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_any_interleaving_keeps_money_exact(fault_env, backend):
    CTX.update(fe=fault_env, backend=backend)
    try:
        run_state_machine_as_test(
            GateMachine,
            settings=settings(
                max_examples=EXAMPLES[backend],
                stateful_step_count=40,
                deadline=None,
                derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        CTX.clear()
