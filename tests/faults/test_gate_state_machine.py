"""Property test (hypothesis ``RuleBasedStateMachine``) of the gate's money rules, on fakeredis[lua]
and on a real Redis of our own, with the ledger in our own PostgreSQL.

Any interleaving of credit, reserve, settle (``record_turn`` with ``reservation_id``), release,
expire, post-hoc record, retried turns and drains:

- keeps the gate equal to an exact integer model of the Lua rules after every step;
- keeps ``debits ≤ credits`` (balance ≥ 0, and held ≤ balance) on the wallet that only spends
  through reservations settled while their hold is live;
- keeps the post-hoc wallet's overdraft below one turn's cost (a turn settling a hold that already
  expired or was released is post-hoc too: it may overdraw by itself);
- and, after a final drain, leaves the ledger equal to Redis to the nano (``worker.reconcile``).
"""

from __future__ import annotations

import time

import fakeredis
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

from tests.faults.conftest import ENTERPRISE, T0, _clean

pytestmark = pytest.mark.faults

UNIT = 1_000_000  # nanos per prompt token of the override model 'unit' ($1,000 / MTok)
RES, POST = "w-res", "w-post"
CTX: dict = {}


def _turn(turn_id: str, wallet: str, tokens: int, reservation_id: str | None = None):
    from models.schemas import TurnIn

    return TurnIn(turn_id=turn_id, wallet_id=wallet, enterprise_id=ENTERPRISE, chat_id=f"{wallet}-c",
                  model="unit", prompt_tokens=tokens, completion_tokens=0, occurred_at=T0,
                  reservation_id=reservation_id)


class GateMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    @initialize()
    def setup(self):
        from worker.ledger import open_wallet
        from worker.pricing import PriceBook
        from worker.wallet import WalletGate

        fe = CTX["fe"]
        if CTX["backend"] == "fakeredis":
            self.client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
            _clean(fe.pg, fe.redis_url)
        else:
            _clean(fe.pg, fe.redis_url)
            self.client = fe.client()
        self.gate = WalletGate(self.client, settings=fe.settings, kicker=lambda shard: None,
                               price_book=PriceBook({"/unit": {"input_mtok": "1000"}}))
        for w in (RES, POST):
            open_wallet(self.gate, wallet_id=w, enterprise_id=ENTERPRISE, owner_id=w)
        self.balance = {RES: 0, POST: 0}
        self.held = {RES: 0, POST: 0}
        self.live: dict[str, tuple[str, int, int]] = {}  # reservation -> (wallet, amount, expires_ms)
        self.accepted: dict[str, tuple[object, int]] = {}  # turn_id -> (turn, billed)
        self.credits = 0
        self.n = 0

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    # rules --------------------------------------------------------------------------------------
    @rule(wallet=st.sampled_from([RES, POST]), amount=st.integers(1, 60).map(lambda k: k * UNIT - k))
    def credit(self, wallet, amount):
        from worker.ledger import credit_wallet

        key = self._id("c")
        assert credit_wallet(self.gate, wallet_id=wallet, amount_nanos=amount, idempotency_key=key) == \
            self.balance[wallet] + amount
        self.balance[wallet] += amount
        # a retry of the same credit changes nothing
        assert credit_wallet(self.gate, wallet_id=wallet, amount_nanos=amount, idempotency_key=key) == self.balance[wallet]

    @rule(target=holds, wallet=st.sampled_from([RES, POST]), tokens=st.integers(0, 40), ttl=st.integers(1, 3))
    def reserve(self, wallet, tokens, ttl):
        rid = self._id("r")
        amount = tokens * UNIT
        r = self.gate.reserve(wallet, amount, ttl_s=ttl, reservation_id=rid)
        assert r.granted == (self.balance[wallet] - self.held[wallet] - amount >= 0)
        if r.granted:
            expires = int(self.client.hget(self.gate.wallet_key(wallet).replace(f":wallet:{wallet}", f":hold:{rid}"),
                                           "expires_ms"))
            self.live[rid] = (wallet, amount, expires)
            self.held[wallet] += amount
        assert (r.amount_nanos, r.held_nanos) == ((amount if r.granted else 0), self.held[wallet])
        return rid

    def _apply_turn(self, turn, covered: bool) -> None:
        """Record a turn and check the answer against the Lua rules: accepted if it settles a live
        hold, else only while balance > held (post-hoc); the chat pauses once balance <= held."""
        w, cost = turn.wallet_id, turn.prompt_tokens * UNIT
        d = self.gate.record_turn(turn)
        assert not d.duplicate and d.cost_nanos == cost
        if covered or self.balance[w] > self.held[w]:
            self.balance[w] -= cost
            self.accepted[turn.turn_id] = (turn, cost)
            assert (d.accepted, d.billed_nanos, d.balance_nanos) == (True, cost, self.balance[w])
            assert d.action == ("pause" if self.balance[w] <= self.held[w] else "continue")
        else:
            assert (d.accepted, d.billed_nanos, d.action) == (False, 0, "pause")

    @rule(rid=holds, fraction=st.integers(0, 100))
    def settle(self, rid, fraction):
        """A turn settles its hold; on the reservation wallet its cost never exceeds the hold."""
        hold = self.live.pop(rid, None)
        if hold is None:  # released or expired: the turn is post-hoc (only on the post-hoc wallet here)
            wallet = POST
            tokens = fraction % 30
        else:
            wallet, amount, _ = hold
            self.held[wallet] -= amount
            tokens = amount // UNIT * fraction // 100  # an estimate held is an upper bound of the cost
        self._apply_turn(_turn(self._id("s"), wallet, tokens, reservation_id=rid if hold else None), hold is not None)

    @rule(tokens=st.integers(0, 30))
    def record_post_hoc(self, tokens):
        self._apply_turn(_turn(self._id("p"), POST, tokens), covered=False)

    @rule(rid=holds)
    def release(self, rid):
        hold = self.live.pop(rid, None)
        wallet = hold[0] if hold else POST  # a hold already gone: release answers 0
        assert self.gate.release(wallet, rid) == (hold[1] if hold else 0)
        if hold:
            self.held[wallet] -= hold[1]

    @rule(advance_ms=st.integers(0, 4000))
    def expire(self, advance_ms):
        now = int(time.time() * 1000) + advance_ms
        due = [rid for rid, (_w, _a, exp) in self.live.items() if exp <= now]
        released = self.gate.expire_holds(now_ms=now)
        nonzero = 0
        for rid in due:
            wallet, amount, _ = self.live.pop(rid)
            self.held[wallet] -= amount
            nonzero += amount > 0
        # expire_holds counts holds that gave nanos back: a 0-nanos hold is deleted but not counted
        assert released == nonzero

    @precondition(lambda self: self.accepted)
    @rule(pick=st.integers(0, 10**6))
    def retry_a_turn(self, pick):
        turn, billed = list(self.accepted.values())[pick % len(self.accepted)]
        d = self.gate.record_turn(turn)
        assert (d.duplicate, d.accepted, d.billed_nanos) == (True, True, billed)

    @rule()
    def drain(self):
        from worker.drain import OutboxDrain

        OutboxDrain(self.client, settings=CTX["fe"].settings, consumer="sm").drain()

    # invariants ---------------------------------------------------------------------------------
    @invariant()
    def gate_matches_the_model(self):
        if not hasattr(self, "gate"):
            return
        for w in (RES, POST):
            assert self.gate.balance(w) == self.balance[w]
            assert int(self.client.hget(self.gate.wallet_key(w), "held") or 0) == self.held[w]
        # reservations only: debits never exceed credits, and holds never exceed the balance
        assert self.balance[RES] >= 0 and self.held[RES] <= self.balance[RES]
        # post-hoc: overdrawn by less than one turn (the largest post-hoc turn is 29 tokens)
        assert self.balance[POST] > -30 * UNIT

    def teardown(self):
        if not hasattr(self, "gate"):
            return
        from worker.db import engine_for
        from worker.drain import OutboxDrain
        from worker.reconcile import reconcile

        fe = CTX["fe"]
        OutboxDrain(self.client, settings=fe.settings, consumer="final").drain()
        report = reconcile(self.gate)
        assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs,
                report.ledger_mismatches) == (2, 0, 0, 0)
        with engine_for(fe.pg.url).connect() as conn:
            rows = dict(conn.execute(text("SELECT id, credits_nanos - debits_nanos FROM wallet")).all())
            count, billed = conn.execute(text(
                "SELECT count(*), coalesce(sum(billed_nanos), 0) FROM usage_event")).one()
        assert rows == self.balance
        assert (count, billed) == (len(self.accepted), sum(b for _t, b in self.accepted.values()))
        if CTX["backend"] == "fakeredis":
            self.client.close()


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_any_interleaving_keeps_money_exact(fault_env, backend):
    CTX.update(fe=fault_env, backend=backend)
    try:
        run_state_machine_as_test(GateMachine, settings=settings(
            max_examples=30, stateful_step_count=40, deadline=None, derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        CTX.clear()
