"""Issue 14 follow-ups, against real Redis and PostgreSQL: a pause reported late (the API's queued
``tollgate.billing.pause_chat`` task of a denied turn) never pauses a chat that was credited and
resumed after the denial; a workflow budget's auto-pause moves the chat's state forward like every
other pause (a turn persisted late does not flip it back, so it is announced once); and the chat
functions of ``worker.chats.lifecycle`` refuse ids that are not ids, naming the field, changing nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text

from tests.committed import open_wallet
from tests.conftest import auth
from tests.integration.test_api import COST, TURN, api  # noqa: F401  (fixture)
from tests.integration.test_budgets import NOW, USD, Spender, _budget, _check
from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited
from worker.db import session_scope
from worker.events import channel
from worker.gate.keys import transitions_key
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.turns import chat_order, outbox_position
from worker.validation import InvalidInput

pytestmark = pytest.mark.integration


def _rows(db, sql: str, **params) -> list[tuple]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


class Events:
    """The events of one app's channel that concern ``chat_id`` (pub/sub channels are shared by every
    Redis database of the server, so other suites may publish on the same app's channel)."""

    def __init__(self, redis_client, enterprise_id: str, chat_id: str) -> None:
        self.redis, self.channel, self.chat_id = redis_client, channel(enterprise_id), chat_id
        self.sub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe(self.channel)
        self.sub.get_message(timeout=1)
        self.seen: list[dict] = []

    def types(self) -> list[str]:
        marker = f"__end__{uuid.uuid4().hex}"
        self.redis.publish(self.channel, marker)
        while (m := self.sub.get_message(timeout=5)) is not None and m["data"] != marker:
            event = json.loads(m["data"])
            if self.chat_id in (event["data"].get("chat_id"), *event["data"].get("chat_ids", ())):
                self.seen.append(event)
        assert m is not None
        return [e["type"] for e in self.seen]


@pytest.fixture()
def queued(monkeypatch) -> list[tuple[str, dict]]:
    """The Celery tasks the API sends (not run: the test runs them when it wants, late)."""
    from worker.celery_app import app as celery

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(celery, "send_task", lambda name, kwargs, **options: sent.append((name, kwargs)))
    return sent


def _deny(api, gate, queued, chat_id: str, turn_id: str) -> dict:
    """A turn of ``chat_id`` on w2 that the gate denies; returns the pause task the API queued, whose
    ``position`` is the denial's place in the gate's order (just after the shard's last turn, and
    after every transition counted before it)."""
    before = outbox_position(gate, "w2")
    r = api.post(
        "/v1/turns",
        json={**TURN, "wallet_id": "w2", "chat_id": chat_id, "turn_id": turn_id},
        headers=auth(api.keys["owner"]),
    )
    assert (r.status_code, r.json()["accepted"], r.json()["action"]) == (200, False, "pause")
    after = outbox_position(gate, "w2")
    count = int(gate.redis.get(transitions_key(gate.shard("w2"))))
    [kwargs] = [kw for name, kw in queued if name == "tollgate.billing.pause_chat"]
    at, plus, n = kwargs.pop("position").rpartition("+")
    assert kwargs == {"enterprise_id": "acme", "chat_id": chat_id, "wallet_id": "w2"}
    # just after the shard's last turn (the same position as before and after while the shard has a
    # stream; from Redis's clock, between the two, while it has none) and the shard's newest count
    assert (before <= at + plus <= after, n) == (True, f"{count:020d}")
    if before == after:
        assert at + plus == before
    kwargs["position"] = at + plus + n
    return kwargs


def test_a_pause_task_run_after_credit_and_resume_leaves_the_chat_resumable(api, gate, db, redis_client, queued):
    """Denied turn (the client reports the pause: one record, ``chat.paused``) → credit (closes it:
    ``chat.resumable``) → the API's pause task runs late.  The chat stays resumable, one record,
    no second ``chat.paused``.  Before the fix the task opened a second record and paused the chat
    again (until the 30 s sweep)."""
    from tasks.billing import pause_chat

    chat = f"late-{uuid.uuid4().hex[:8]}"
    events = Events(redis_client, "acme", chat)
    task = _deny(api, gate, queued, chat, "late-1")
    r = api.post(
        f"/v1/chats/{chat}/pause",
        json={"wallet_id": "w2", "reason": "wallet_exhausted"},
        headers=auth(api.keys["owner"]),
    )
    assert r.status_code == 200, r.text
    credit_wallet(gate, wallet_id="w2", amount_nanos=10 * COST, idempotency_key="topup-late")
    assert pause_chat(**task) is False  # stale: the credit's resume came after the denial
    assert pause_chat(**task) is False  # a redelivery too
    assert events.types() == ["chat.paused", "chat.resumable"]
    assert _rows(db, "SELECT chat_id, reason, needed_nanos, resumed_by FROM paused_chat") == [
        (chat, "wallet_exhausted", 1, "topup-late")
    ]
    assert _rows(db, "SELECT chat_id, status, connection_state, can_resume FROM chat_session") == [
        (chat, "paused", "resumable", True)
    ]


def test_a_pause_task_run_after_the_orchestrator_resumed_changes_nothing(api, gate, db, redis_client, queued):
    """A chat active in PostgreSQL (its last turn went on); another call holds the wallet's funds
    (a reservation), so the chat's next turn is denied and its pause left to the task.  A credit
    (no record to close yet), then the orchestrator resumes the chat (``POST …/resume``), then the
    task runs: the chat stays active, no record, no ``chat.paused``.  Before the fix the task paused
    the active chat after the orchestrator had resumed it."""
    from tasks.billing import pause_chat
    from worker import OutboxDrain  # wired: announces chat.paused / chat.resumable

    chat = f"late-{uuid.uuid4().hex[:8]}"
    credit_wallet(gate, wallet_id="w2", amount_nanos=3 * COST, idempotency_key="two-turns")
    r = api.post(
        "/v1/turns",
        json={**TURN, "wallet_id": "w2", "chat_id": chat, "turn_id": "paid-1"},
        headers=auth(api.keys["owner"]),
    )
    assert (r.json()["accepted"], r.json()["action"], r.json()["balance_nanos"]) == (True, "continue", 2 * COST)
    assert OutboxDrain(redis_client, settings=gate.settings).drain().inserted == 1
    events = Events(redis_client, "acme", chat)
    gate.reserve("w2", 2 * COST, reservation_id="other-call")
    task = _deny(api, gate, queued, chat, "late-2")
    credit_wallet(gate, wallet_id="w2", amount_nanos=10 * COST, idempotency_key="topup-late-2")
    r = api.post(f"/v1/chats/{chat}/resume", headers=auth(api.keys["owner"]))
    assert r.status_code == 200, r.text
    assert pause_chat(**task) is False
    assert events.types() == []
    assert _rows(db, "SELECT count(*) FROM paused_chat") == [(0,)]
    assert _rows(db, "SELECT chat_id, status, connection_state, turns, billed_nanos FROM chat_session") == [
        (chat, "active", "connected", 1, COST)
    ]


def test_a_pause_task_run_in_time_pauses_the_chat(api, gate, db, redis_client, queued):
    """The same task run before anything moved the chat: it pauses it, once (a late-report guard
    that drops real pauses would pass the tests above)."""
    from tasks.billing import pause_chat

    chat = f"late-{uuid.uuid4().hex[:8]}"
    events = Events(redis_client, "acme", chat)
    task = _deny(api, gate, queued, chat, "late-3")
    assert pause_chat(**task) is True
    assert pause_chat(**task) is False
    assert events.types() == ["chat.paused"]
    assert _rows(db, "SELECT chat_id, status, connection_state, state_key FROM chat_session") == [
        (chat, "paused", "paused", task["position"])
    ]


def test_a_turn_persisted_after_a_workflow_budget_paused_its_chat_does_not_flip_it(db, gate, redis_client, settings):
    """A workflow budget reaches 100 % with auto-pause; one more turn of the chat was decided by the
    gate before the check (the gate cannot see workflows) but persisted after it.  The chat stays
    paused and the next check pauses and announces nothing.  Before the fix the late turn marked the
    chat active and the next check paused it again: a second ``budget.chats_paused``."""
    app = f"bud-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        ensure_enterprise(s, app)
    open_wallet(gate, wallet_id=f"{app}:w", enterprise_id=app, owner_id="o")
    credit_wallet(gate, wallet_id=f"{app}:w", amount_nanos=100 * USD, idempotency_key=f"open-{app}")
    _budget(enterprise_id=app, workflow="research", amount_nanos=2 * USD, auto_pause=True)
    spender = Spender(gate, redis_client, settings)
    spender.spend(f"{app}:w", 800_000, workflow="research", chat="r1", enterprise=app)  # 2 USD: 100 %
    assert spender.turn(f"{app}:w", 400_000, workflow="research", chat="r1", enterprise=app).accepted  # 1 USD
    events = Events(redis_client, app, "r1")
    assert _check(gate, NOW).paused_chats == [(app, "r1")]
    assert spender.drain.drain().inserted == 1  # the late turn
    assert _rows(
        db, "SELECT status, pause_reason, turns, billed_nanos FROM chat_session WHERE enterprise_id = :e", e=app
    ) == [("paused", "budget_exceeded", 2, 3 * USD)]
    assert _check(gate, NOW).paused_chats == []
    assert [t for t in events.types() if t.startswith("budget.chats")] == ["budget.chats_paused"]
    [(state_key,)] = _rows(db, "SELECT state_key FROM chat_session WHERE enterprise_id = :e", e=app)
    [late] = _rows(db, "SELECT outbox_id FROM usage_event WHERE enterprise_id = :e AND prompt_tokens = 400000", e=app)
    assert state_key > chat_order(late[0])


BAD = {"NUL": "a\x00b", "control": "a\x1bb", "surrogate": "a\ud800b", "empty": ""}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize(
    "call, field",
    [
        ("start_session", "chat_id"),
        ("start_session", "enterprise_id"),
        ("start_session", "wallet_id"),
        ("start_session", "workflow"),
        ("pause_chat", "chat_id"),
        ("pause_chat", "enterprise_id"),
        ("pause_chat", "wallet_id"),
        ("pause_chat", "reason"),
        ("pause_task", "chat_id"),
        ("pause_task", "position"),
        ("resume_chat", "chat_id"),
        ("resume_chat", "enterprise_id"),
        ("resume_paused_chats", "wallet_id"),
        ("resume_paused_chats", "cause"),
        ("finalize_session", "chat_id"),
        ("finalize_session", "enterprise_id"),
        ("can_continue", "wallet_id"),
    ],
)
def test_session_functions_refuse_unsafe_ids_naming_the_field(db, gate, redis_client, call, field, bad):
    """NUL, control characters, lone surrogates (PostgreSQL cannot store a lone one) and empty ids:
    InvalidInput naming the field, and nothing changes (no chat, no record, no event, no transition
    counted).  Before, a NUL reached PostgreSQL and failed there (a psycopg DataError naming
    nothing), a surrogate failed in the driver's encoding, and empty ids were stored."""
    from tasks.billing import pause_chat as pause_task
    from worker.chats import lifecycle as sessions

    app = f"val-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        ensure_enterprise(s, app)
    open_wallet(gate, wallet_id=f"{app}:w", enterprise_id=app, owner_id="o")
    credit_wallet(gate, wallet_id=f"{app}:w", amount_nanos=USD, idempotency_key=f"open-{app}")
    good = {
        "enterprise_id": app,
        "chat_id": "c1",
        "wallet_id": f"{app}:w",
        "workflow": "wf",
        "reason": "manual",
        "cause": "sweep",
        "position": outbox_position(gate, f"{app}:w") + "0" * 20,
    }
    args = {**good, field: bad}
    keys = {
        "start_session": ("enterprise_id", "chat_id", "wallet_id", "workflow"),
        "pause_chat": ("enterprise_id", "chat_id", "wallet_id", "reason"),
        "pause_task": ("enterprise_id", "chat_id", "wallet_id", "reason", "position"),
        "resume_chat": ("enterprise_id", "chat_id"),
        "resume_paused_chats": ("wallet_id", "cause"),
        "finalize_session": ("enterprise_id", "chat_id"),
        "can_continue": ("wallet_id",),
    }[call]
    kw = {k: args[k] for k in keys}

    def tx(call):  # the entry point's one transaction
        with session_scope() as s:
            return call(s)

    fn = {
        "start_session": lambda: tx(lambda s: sessions.start_session(s, gate, **kw)),
        "pause_chat": lambda: tx(lambda s: sessions.pause_chat(s, gate, **kw)),
        "pause_task": lambda: pause_task(**kw),
        "resume_chat": lambda: tx(lambda s: sessions.resume_chat(s, gate, **kw)),
        "resume_paused_chats": lambda: tx(
            lambda s: sessions.resume_paused_chats(s, gate, kw["wallet_id"], cause=kw["cause"])
        ),
        "finalize_session": lambda: tx(lambda s: sessions.finalize_session(s, **kw)),
        "can_continue": lambda: sessions.can_continue(gate, kw["wallet_id"]),
    }[call]
    events = Events(redis_client, app, "c1")
    counted = gate.redis.get(transitions_key(gate.shard(f"{app}:w")))
    with pytest.raises(InvalidInput) as err:
        fn()
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert _rows(db, "SELECT count(*) FROM chat_session") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM paused_chat") == [(0,)]
    assert events.types() == []
    assert gate.redis.get(transitions_key(gate.shard(f"{app}:w"))) == counted
