"""Budgets against real PostgreSQL and Redis: alerts at exactly 50/80/100 %, once per threshold per
period even from concurrent workers, auto-pause through the gate and its lifting at the next period,
workflow pauses, and the signed webhook delivered by a real Celery worker."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from models.turn import TurnIn
from tests.conftest import seed_wallet
from tests.receiver import start_receiver
from worker.billing.budgets import BUDGET_EXCEEDED, BudgetError, check_budgets, set_budget
from worker.db import session_scope
from worker.events import channel, verify
from worker.gate.gate import WalletGate
from worker.ledger.drain import OutboxDrain
from worker.pricing.prices import PriceBook

pytestmark = pytest.mark.integration

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)  # turns happen here
NOW = datetime(2026, 11, 20, tzinfo=UTC)  # and the job runs here (period 2026-11)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
TOKEN_NANOS = 2_500  # gpt-4o: $2.50 per million prompt tokens
USD = 10**9
SECRET = "whsec_budget_test"


class Spender:
    """Records gpt-4o turns of ``tokens`` prompt tokens through the gate and persists them."""

    def __init__(self, gate, redis_client, settings):
        # gpt-4o's prompt price as an override without a context window: these tests spend whole
        # dollars in single turns of millions of tokens, above gpt-4o's real window (128,000)
        self.gate = WalletGate(
            redis_client,
            settings=settings,
            kicker=gate.kicker,
            price_book=PriceBook({"openai/gpt-4o": {"input_mtok": "2.50"}}),
        )
        self.drain = OutboxDrain(redis_client, settings=settings, consumer="test")
        self.n = 0

    def turn(
        self,
        wallet_id: str,
        tokens: int,
        *,
        at: datetime = NOV,
        workflow: str = "wf",
        chat: str = "c1",
        enterprise: str = "acme",
    ):
        self.n += 1
        return self.gate.record_turn(
            TurnIn(
                turn_id=f"t{self.n}",
                wallet_id=wallet_id,
                enterprise_id=enterprise,
                chat_id=chat,
                workflow=workflow,
                model="gpt-4o",
                provider="openai",
                prompt_tokens=tokens,
                completion_tokens=0,
                occurred_at=at,
            )
        )

    def spend(self, wallet_id: str, tokens: int, **kw) -> None:
        decision = self.turn(wallet_id, tokens, **kw)
        assert decision.accepted and decision.billed_nanos == tokens * TOKEN_NANOS
        self.drain.drain()


@pytest.fixture()
def spender(db, gate, redis_client, settings):
    return Spender(gate, redis_client, settings)


def _wallet(gate, wallet_id="w1", enterprise="acme", usd=100):
    seed_wallet(gate, wallet_id, enterprise, f"owner-{wallet_id}", usd * USD)


def _budget(**kw) -> int:
    with session_scope() as session:
        return set_budget(session, **kw).id


def _check(gate, now=NOW, send_task=None):
    with session_scope() as session:
        return check_budgets(session, now, gate=gate, send_task=send_task)


def _alerts(db) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT budget_id, period, threshold_pct, spent_nanos, amount_nanos FROM budget_alert "
                    "ORDER BY budget_id, period, threshold_pct"
                )
            )
        ]


class Listener:
    """A redis-py pub/sub subscriber on an app's event channel."""

    END = "--end-of-test-batch--"

    def __init__(self, redis_client, enterprise="acme"):
        self.redis = redis_client
        self.channel = channel(enterprise)
        self.sub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe(self.channel)
        self.sub.get_message(timeout=1)  # consume the subscribe confirmation

    def drain(self) -> list[dict]:
        """Every budget event published so far: publishes a marker and reads up to it (pub/sub keeps
        order); other events (the drain's ``chat.paused``) are not this test's subject."""
        self.redis.publish(self.channel, self.END)
        out = []
        while (message := self.sub.get_message(timeout=5)) is not None and message["data"] != self.END:
            event = json.loads(message["data"])
            if event["type"].startswith("budget."):
                out.append(event)
        assert message is not None, "the end marker never arrived"
        return out


def test_alerts_fire_at_exact_thresholds_once_per_period(db, gate, redis_client, spender):
    _wallet(gate)
    budget = _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=10 * USD)
    listen = Listener(redis_client)
    steps = [  # (prompt tokens, thresholds newly crossed)
        (1_999_999, []),  # 4,999,997,500 nanos = 49.999975 %
        (1, [50]),  # 5,000,000,000 = exactly 50 %
        (1_199_999, []),  # 79.999975 %
        (1, [80]),
        (799_999, []),  # 99.999975 %
        (1, [100]),
        (400_000, []),  # 110 %: nothing is left to cross
    ]
    spent = 0
    for tokens, expected in steps:
        spender.spend("w1", tokens)
        spent += tokens * TOKEN_NANOS
        result = _check(gate)
        assert [a.threshold_pct for a in result.alerts] == expected, tokens
        assert [a.spent_nanos for a in result.alerts] == [spent] * len(expected)
        messages = listen.drain()
        assert [m["data"]["threshold_pct"] for m in messages] == expected
        assert _check(gate).alerts == [] and listen.drain() == []  # a second run emits nothing
    assert _alerts(db) == [
        (budget, "2026-11", 50, 5 * USD, 10 * USD),
        (budget, "2026-11", 80, 8 * USD, 10 * USD),
        (budget, "2026-11", 100, 10 * USD, 10 * USD),
    ]
    status = _check(gate).budgets[0]
    assert (status.spent_nanos, status.exceeded) == (11 * USD, True)

    # the next period starts from zero: nothing until its own spend crosses again
    assert _check(gate, DEC).alerts == []
    spender.spend("w1", 2_000_000, at=DEC + timedelta(hours=1))
    result = _check(gate, DEC + timedelta(days=1))
    assert [(a.period, a.threshold_pct, a.spent_nanos) for a in result.alerts] == [("2026-12", 50, 5 * USD)]
    [message] = listen.drain()
    assert message["id"] == f"evt_budget_alert_{result.alerts[0].alert_id}"
    assert message["data"] == {
        "alert_id": result.alerts[0].alert_id,
        "budget_id": budget,
        "scope": "wallet",
        "wallet_id": "w1",
        "workflow": None,
        "period": "2026-12",
        "threshold_pct": 50,
        "spent_nanos": 5 * USD,
        "amount_nanos": 10 * USD,
        "auto_pause": False,
    }
    assert len(_alerts(db)) == 4


def test_a_late_first_run_sends_every_threshold_crossed_once(db, gate, redis_client, spender):
    _wallet(gate)
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=10 * USD)
    spender.spend("w1", 3_600_000)  # 90 %
    listen = Listener(redis_client)
    assert [a.threshold_pct for a in _check(gate).alerts] == [50, 80]
    assert [m["data"]["threshold_pct"] for m in listen.drain()] == [50, 80]


def test_concurrent_checks_emit_each_alert_exactly_once(db, gate, redis_client, spender, race):
    _wallet(gate)
    with db.begin() as conn:
        conn.execute(text("UPDATE enterprise SET callback_url = 'http://127.0.0.1:9/x', webhook_secret = 's'"))
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=10 * USD)
    _budget(enterprise_id="acme", workflow="wf", amount_nanos=20 * USD)
    spender.spend("w1", 4_000_000)  # 10 USD: 100 % of the wallet budget, 50 % of the workflow budget
    listen = Listener(redis_client)
    sent, lock = [], threading.Lock()

    def send_task(name, kwargs):
        with lock:
            sent.append((name, kwargs["event_id"]))

    results = race(*[lambda: _check(gate, send_task=send_task)] * 4)  # fails on any racer's exception
    assert sorted(len(r.alerts) for r in results) == [0, 0, 0, 4]
    rows = _alerts(db)
    assert [(r[2], r[3]) for r in rows] == [(50, 10 * USD), (80, 10 * USD), (100, 10 * USD), (50, 10 * USD)]
    messages = listen.drain()
    assert sorted((m["data"]["scope"], m["data"]["threshold_pct"]) for m in messages) == [
        ("wallet", 50),
        ("wallet", 80),
        ("wallet", 100),
        ("workflow", 50),
    ]
    assert len({m["id"] for m in messages}) == 4
    assert sorted(e for _, e in sent) == sorted(m["id"] for m in messages)  # one webhook per alert
    assert {n for n, _ in sent} == {"tollgate.webhooks.deliver"}


def test_auto_pause_blocks_the_wallet_in_the_gate_until_the_next_period(db, gate, redis_client, spender):
    _wallet(gate)
    _wallet(gate, "w2")
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    listen = Listener(redis_client)
    spender.spend("w1", 399_999)  # 99.99975 %
    result = _check(gate)
    assert (result.paused_wallets, [a.threshold_pct for a in result.alerts]) == ([], [50, 80])
    assert spender.turn("w1", 1).accepted  # exactly 100 % now (not yet persisted)
    spender.drain.drain()
    result = _check(gate)
    assert result.paused_wallets == ["w1"]
    assert [e.type for e in result.events] == ["budget.threshold_crossed", "budget.wallet_paused"]
    with db.connect() as conn:
        assert conn.execute(text("SELECT blocked_reason FROM wallet WHERE id = 'w1'")).scalar_one() == BUDGET_EXCEEDED
    denied = spender.turn("w1", 1_000)
    assert (denied.accepted, denied.action, denied.billed_nanos) == (False, "pause", 0)
    assert spender.turn("w2", 1_000).accepted  # other wallets are not affected
    listen.drain()
    again = _check(gate)  # still exceeded: nothing new, still blocked
    assert (again.paused_wallets, again.events) == ([], [])
    assert listen.drain() == []
    assert not spender.turn("w1", 1_000).accepted

    # the next period lifts the block, in PostgreSQL and in the gate, once
    nxt = _check(gate, DEC)
    assert nxt.resumed_wallets == ["w1"]
    assert [m["type"] for m in listen.drain()] == ["budget.wallet_resumed"]
    with db.connect() as conn:
        assert conn.execute(text("SELECT blocked_reason FROM wallet WHERE id = 'w1'")).scalar_one() is None
    assert spender.turn("w1", 1_000, at=DEC + timedelta(minutes=5)).accepted
    assert _check(gate, DEC).resumed_wallets == [] and listen.drain() == []


def test_raising_the_budget_lifts_the_pause_and_other_block_reasons_are_left_alone(db, gate, spender):
    _wallet(gate)
    _wallet(gate, "w2")
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    _budget(enterprise_id="acme", wallet_id="w2", amount_nanos=1 * USD, auto_pause=True)
    spender.spend("w1", 400_000)
    spender.spend("w2", 400_000)
    with session_scope() as session:  # an operator blocked w2 for another reason first
        session.execute(text("UPDATE wallet SET blocked_reason = 'fraud_review' WHERE id = 'w2'"))
    gate.set_blocked("w2", "fraud_review")
    assert _check(gate).paused_wallets == ["w1"]
    assert gate.blocked_reasons(["w1", "w2"]) == {"w1": BUDGET_EXCEEDED, "w2": "fraud_review"}

    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=2 * USD, auto_pause=True)
    result = _check(gate)
    assert result.resumed_wallets == ["w1"]
    assert _check(gate, DEC).resumed_wallets == []  # w2's own reason is not the budget's to lift
    assert gate.blocked_reasons(["w1", "w2"]) == {"w1": None, "w2": "fraud_review"}


def test_a_gate_that_missed_the_block_is_repaired_by_the_next_run(db, gate, spender):
    _wallet(gate)
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    spender.spend("w1", 400_000)
    _check(gate)
    gate.set_blocked("w1", None)  # as if the process died between COMMIT and Redis
    assert spender.turn("w1", 1).accepted
    spender.drain.drain()
    result = _check(gate)
    assert (result.paused_wallets, result.events) == ([], [])  # nothing new to announce ...
    assert not spender.turn("w1", 1).accepted  # ... but the gate denies again


def test_a_rolled_back_check_changes_and_emits_nothing(db, gate, redis_client, spender):
    _wallet(gate)
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    spender.spend("w1", 400_000)
    listen = Listener(redis_client)
    sent = []
    with pytest.raises(RuntimeError):
        with session_scope() as session:
            result = check_budgets(session, NOW, gate=gate, send_task=lambda *a, **k: sent.append(a))
            assert len(result.alerts) == 3
            raise RuntimeError("the caller's transaction fails after the check")
    assert _alerts(db) == [] and listen.drain() == [] and sent == []
    assert gate.blocked_reasons(["w1"]) == {"w1": None}
    assert len(_check(gate).alerts) == 3  # the next run sends them


def test_workflow_budget_pauses_its_chats_and_resumes_them_next_period(db, gate, redis_client, spender):
    _wallet(gate)
    _budget(enterprise_id="acme", workflow="research", amount_nanos=2 * USD, auto_pause=True)
    spender.spend("w1", 200_000, workflow="research", chat="r1")  # 0.5 USD
    spender.spend("w1", 600_000, workflow="research", chat="r2")  # 1.5 USD: 100 %
    spender.spend("w1", 800_000, workflow="support", chat="s1")  # another workflow: not counted
    listen = Listener(redis_client)
    result = _check(gate)
    assert result.budgets[0].spent_nanos == 2 * USD
    assert result.paused_chats == [("acme", "r1"), ("acme", "r2")]
    messages = listen.drain()
    assert [m["type"] for m in messages] == ["budget.threshold_crossed"] * 3 + ["budget.chats_paused"]
    assert messages[-1]["data"] == {
        "workflow": "research",
        "chat_ids": ["r1", "r2"],
        "reason": BUDGET_EXCEEDED,
        "period": "2026-11",
    }
    with db.connect() as conn:
        rows = dict(
            conn.execute(text("SELECT chat_id, status || '/' || coalesce(pause_reason, '') FROM chat_session")).all()
        )
    assert rows == {"r1": "paused/budget_exceeded", "r2": "paused/budget_exceeded", "s1": "active/"}
    # the gate cannot see workflows: it still accepts the wallet's turns; the app must stop the chats
    assert spender.turn("w1", 10, workflow="research", chat="r3").accepted
    spender.drain.drain()
    assert _check(gate).paused_chats == [("acme", "r3")]  # a new chat of the workflow is paused too

    nxt = _check(gate, DEC)
    assert nxt.resumed_chats == [("acme", "r1"), ("acme", "r2"), ("acme", "r3")]
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM chat_session WHERE status = 'active'")).scalar_one() == 4
    assert _check(gate, DEC).resumed_chats == []


def test_set_budget_validates_and_names_the_field(db, gate):
    _wallet(gate)
    _wallet(gate, "other-w", enterprise="other")
    cases = [
        (dict(enterprise_id="acme", wallet_id="w1", amount_nanos=0), "amount_nanos"),
        (dict(enterprise_id="acme", wallet_id="w1", amount_nanos=-5), "amount_nanos"),
        (dict(enterprise_id="acme", wallet_id="w1", amount_nanos=1.5), "amount_nanos"),
        (dict(enterprise_id="acme", wallet_id="w1", amount_nanos=2**63), "amount_nanos"),
        (dict(enterprise_id="acme", amount_nanos=1), "wallet_id, workflow"),
        (dict(enterprise_id="acme", wallet_id="w1", workflow="wf", amount_nanos=1), "wallet_id, workflow"),
        (dict(enterprise_id="acme", wallet_id="nope", amount_nanos=1), "wallet_id: unknown wallet"),
        (dict(enterprise_id="acme", wallet_id="other-w", amount_nanos=1), "wallet_id: wallet 'other-w' belongs"),
        (dict(enterprise_id="ghost", workflow="wf", amount_nanos=1), "enterprise_id: unknown"),
        (dict(enterprise_id="acme", workflow="has space", amount_nanos=1), "workflow"),
        (dict(enterprise_id="acme", workflow="wf", amount_nanos=1, auto_pause="yes"), "auto_pause"),
    ]
    for kwargs, field in cases:
        with pytest.raises(BudgetError, match=f"^{field}"):
            _budget(**kwargs)
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM budget")).scalar_one() == 0

    first = _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=5 * USD)
    second = _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=7 * USD, auto_pause=True)
    assert first == second
    with db.connect() as conn:
        assert conn.execute(text("SELECT amount_nanos, auto_pause FROM budget")).one() == (7 * USD, True)


def test_alert_webhook_is_signed_retried_after_a_500_and_delivered_once_by_a_celery_worker(
    db, gate, redis_client, spender, celery_worker_factory
):
    receiver, server, thread = start_receiver()
    try:
        receiver.statuses = [500]
        _wallet(gate)
        with db.begin() as conn:
            conn.execute(
                text("UPDATE enterprise SET callback_url = :u, webhook_secret = :s"), {"u": receiver.url, "s": SECRET}
            )
        _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=10 * USD)
        spender.spend("w1", 2_000_000)
        celery_worker_factory(extra_env={"TOLLGATE_WEBHOOK_BACKOFF_BASE_S": "0"})
        [alert] = _check(gate).alerts  # no send_task: the real Celery app sends the task
        deadline = time.monotonic() + 60
        while not receiver.delivered() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a duplicate delivery would show up here
        assert [r.status for r in receiver.requests] == [500, 200]
        [delivered] = receiver.delivered()
        for r in receiver.requests:
            assert r.headers["tollgate-event-id"] == alert.event_id
            verify(SECRET, r.headers["tollgate-signature"], r.body)
        body = json.loads(delivered.body)
        assert (body["type"], body["enterprise_id"], body["data"]["threshold_pct"], body["data"]["spent_nanos"]) == (
            "budget.threshold_crossed",
            "acme",
            50,
            5 * USD,
        )
        with pytest.raises(Exception, match="no signature matches"):
            verify("forged-secret", delivered.headers["tollgate-signature"], delivered.body)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_turns_either_side_of_midnight_count_in_their_own_months_budget(db, gate, redis_client, spender):
    import time_machine

    _wallet(gate)
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD)
    last_instant = datetime(2026, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    with time_machine.travel(last_instant, tick=False):
        spender.turn("w1", 200_000, at=datetime.now(UTC))  # 0.5 USD at 23:59:59.999
    spender.drain.drain()
    with time_machine.travel(last_instant, tick=False):
        with session_scope() as session:  # now=None: the frozen clock decides the period
            assert [(a.period, a.threshold_pct) for a in check_budgets(session, gate=gate).alerts] == [("2026-11", 50)]
    with time_machine.travel(DEC, tick=False):
        spender.turn("w1", 200_000, at=datetime.now(UTC))  # 0.5 USD at 00:00:00.000
    spender.drain.drain()
    with time_machine.travel(DEC, tick=False):
        with session_scope() as session:
            result = check_budgets(session, gate=gate)
    # December's half is December's 50 %; November never reached 100 % (1 USD across both months)
    assert [(a.period, a.threshold_pct, a.spent_nanos) for a in result.alerts] == [("2026-12", 50, USD // 2)]
    assert [(p, t) for _b, p, t, _s, _a in _alerts(db)] == [("2026-11", 50), ("2026-12", 50)]


def test_a_threshold_crossed_by_last_month_s_late_turns_is_alerted_in_the_first_hour(db, gate, redis_client, spender):
    """November's last check saw 0.5 USD; a November turn persisted after it brings November to
    100 %: the first check of December (within the late-alert window) alerts November's 100 %, once."""
    _wallet(gate)
    _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD)
    spender.turn("w1", 200_000, at=datetime(2026, 11, 30, 23, 0, tzinfo=UTC))  # 0.5 USD
    spender.drain.drain()
    assert [
        (a.period, a.threshold_pct) for a in _check(gate, datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)).alerts
    ] == [("2026-11", 50)]
    spender.turn("w1", 200_000, at=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))  # persisted after that check
    spender.drain.drain()
    first = _check(gate, datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC))
    assert [(a.period, a.threshold_pct, a.spent_nanos) for a in first.alerts] == [
        ("2026-11", 80, USD),
        ("2026-11", 100, USD),
    ]
    assert _check(gate, datetime(2026, 12, 1, 0, 1, tzinfo=UTC)).alerts == []
    assert _check(gate, datetime(2026, 12, 1, 2, 0, tzinfo=UTC)).alerts == []


def test_an_alert_committed_but_never_sent_is_sent_by_the_next_check(db, gate, redis_client, spender):
    """The process died between the alert's commit and its announcement: the alert row has no
    ``notified_at``; the next check sends it, with the alert's own event id, once."""
    _wallet(gate)
    budget = _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=10 * USD)
    listen = Listener(redis_client)
    spender.spend("w1", 2_000_000)  # 50 %
    sent = []
    result = _check(gate, send_task=lambda name, kwargs: sent.append(kwargs))
    [alert] = result.alerts
    assert [m["id"] for m in listen.drain()] == [f"evt_budget_alert_{alert.alert_id}"]
    with db.begin() as conn:  # sent: marked; now pretend the announcement was lost two minutes ago
        assert conn.execute(text("SELECT notified_at IS NOT NULL FROM budget_alert")).scalar_one() is True
        conn.execute(text("UPDATE budget_alert SET notified_at = NULL, created_at = now() - interval '2 minutes'"))
    _app_callback()
    again = _check(gate, send_task=lambda name, kwargs: sent.append(kwargs))
    assert (again.alerts, again.resent_alerts) == ([], [alert.alert_id])
    [message] = listen.drain()
    assert (message["id"], message["data"]["threshold_pct"], message["data"]["budget_id"]) == (
        f"evt_budget_alert_{alert.alert_id}",
        50,
        budget,
    )
    assert [k["event_id"] for k in sent] == [f"evt_budget_alert_{alert.alert_id}"]  # the webhook, queued again
    assert _check(gate).resent_alerts == [] and listen.drain() == []  # sent once more, not every minute
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM budget_alert WHERE notified_at IS NULL")).scalar_one() == 0


def _app_callback() -> None:
    with session_scope() as s:
        s.execute(
            text(
                "UPDATE enterprise SET callback_url = 'http://127.0.0.1:9/hook', webhook_secret = 'whsec' "
                "WHERE id = 'acme'"
            )
        )


def test_october_turns_persisted_in_november_raise_october_s_alert_once_and_nothing_for_november(
    db, gate, redis_client, spender
):
    """Late data: the turns of a month persisted after it ended count in their own month.  October
    was checked at 50 %; October turns drained on 10 November take it to 80 %: one 80 % alert for
    October (wallet and workflow budget), none for November (whose own turns stay at 40 %), and
    no auto-pause now for a month that is over."""
    _wallet(gate)
    wallet_budget = _budget(enterprise_id="acme", wallet_id="w1", amount_nanos=1 * USD, auto_pause=True)
    workflow_budget = _budget(enterprise_id="acme", workflow="wf", amount_nanos=1 * USD)
    spender.spend("w1", 200_000, at=datetime(2026, 10, 15, tzinfo=UTC))  # 0.5 USD in October
    october = _check(gate, datetime(2026, 10, 20, tzinfo=UTC))
    assert [(a.budget_id, a.period, a.threshold_pct) for a in october.alerts] == [
        (wallet_budget, "2026-10", 50),
        (workflow_budget, "2026-10", 50),
    ]
    spender.spend("w1", 160_000, at=datetime(2026, 11, 5, tzinfo=UTC))  # 0.4 USD in November
    assert _check(gate, datetime(2026, 11, 6, tzinfo=UTC)).alerts == []

    listen = Listener(redis_client)
    spender.spend("w1", 120_000, at=datetime(2026, 10, 31, 22, tzinfo=UTC))  # 0.3 USD of October, drained now
    result = _check(gate, datetime(2026, 11, 10, 12, tzinfo=UTC))
    assert [(a.budget_id, a.period, a.threshold_pct, a.spent_nanos) for a in result.alerts] == [
        (wallet_budget, "2026-10", 80, 800_000_000),
        (workflow_budget, "2026-10", 80, 800_000_000),
    ]
    assert [(m["data"]["budget_id"], m["data"]["period"], m["data"]["threshold_pct"]) for m in listen.drain()] == [
        (wallet_budget, "2026-10", 80),
        (workflow_budget, "2026-10", 80),
    ]
    assert result.paused_wallets == [] and [b.spent_nanos for b in result.budgets] == [400_000_000] * 2
    assert _check(gate, datetime(2026, 11, 10, 12, 1, tzinfo=UTC)).alerts == [] and listen.drain() == []
    assert _alerts(db) == [
        (wallet_budget, "2026-10", 50, 500_000_000, USD),
        (wallet_budget, "2026-10", 80, 800_000_000, USD),
        (workflow_budget, "2026-10", 50, 500_000_000, USD),
        (workflow_budget, "2026-10", 80, 800_000_000, USD),
    ]
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM budget_dirty")).scalar_one() == 0
