"""A turn the gate denies never reaches the outbox, so the API queues the pause of its chat
(``tollgate.billing.pause_chat``), at most once a minute per chat; the task records one open
paused-chat record however often it runs."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import auth
from tests.integration.test_api import TURN, api  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_a_denied_turn_queues_one_pause_of_its_chat(api, gate, db, monkeypatch):
    from tasks.billing import pause_chat
    from worker.celery_app import app as celery
    from worker.gate.keys import transitions_key
    from worker.ledger.turns import outbox_position

    sent = []
    monkeypatch.setattr(celery, "send_task", lambda name, kwargs, **options: sent.append((name, kwargs)))
    turn = {**TURN, "wallet_id": "w2", "chat_id": "c-dry"}  # w2 has no funds
    before = outbox_position(gate, "w2")
    for i in range(3):  # an orchestrator that keeps calling
        r = api.post("/v1/turns", json={**turn, "turn_id": f"dry-{i}"}, headers=auth(api.keys["owner"]))
        assert (r.status_code, r.json()["accepted"], r.json()["action"]) == (200, False, "pause")
    after = outbox_position(gate, "w2")

    # the denial's position in the gate's order: after the shard's last turn (its shard has no
    # stream here, so from Redis's clock: between the positions read before and after) and its 1st
    # transition
    assert int(gate.redis.get(transitions_key(gate.shard("w2")))) == 1
    [(name, kwargs)] = sent
    at, plus, n = kwargs["position"].rpartition("+")
    assert (name, {k: v for k, v in kwargs.items() if k != "position"}) == (
        "tollgate.billing.pause_chat",
        {"enterprise_id": "acme", "chat_id": "c-dry", "wallet_id": "w2"},
    )
    assert (before <= at + plus <= after, n) == (True, f"{1:020d}")
    assert pause_chat(**sent[0][1]) is True
    assert pause_chat(**sent[0][1]) is False  # a redelivery changes nothing
    with db.connect() as conn:
        rows = conn.execute(text("SELECT chat_id, wallet_id, reason, needed_nanos, resumed_at FROM paused_chat")).all()
        chat = conn.execute(text("SELECT status, connection_state FROM chat_session")).all()
    assert [tuple(r) for r in rows] == [("c-dry", "w2", "wallet_exhausted", 1, None)]
    assert [tuple(c) for c in chat] == [("paused", "paused")]


def test_a_hanging_broker_or_a_first_wallet_lookup_never_stalls_other_requests(api, gate, monkeypatch):
    """The turn endpoint runs on the event loop only what answers from memory and one Redis round
    trip: queueing a denied turn's pause (the broker may hang) and a wallet's first lookup
    (PostgreSQL) run in the thread pool, so the loop keeps answering other requests meanwhile."""
    import asyncio
    import threading
    import time as _time

    import httpx

    from api_stub import deps, main
    from worker.celery_app import app as celery

    release = threading.Event()
    sent = []

    def hanging_send_task(name, kwargs, **options):  # a broker that does not answer for a while
        release.wait(10)
        sent.append(name)

    monkeypatch.setattr(celery, "send_task", hanging_send_task)
    slow_lookups = []
    real_owner = deps.platform_owner

    def slow_platform_owner(wallet_id):  # a database that takes its time
        slow_lookups.append(wallet_id)
        _time.sleep(1.0)
        return real_owner(wallet_id)

    monkeypatch.setattr(deps, "platform_owner", slow_platform_owner)
    deps._WALLET_PAYERS.pop("w2", None)
    owner = auth(api.keys["owner"])

    async def scenario():
        transport = httpx.ASGITransport(app=main.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollgate.test") as client:
            started = _time.perf_counter()  # before the timer: the broker cannot answer sooner than 2.5 s after it
            threading.Timer(2.5, release.set).start()  # the broker answers after 2.5 s
            denied = asyncio.create_task(
                client.post(
                    "/v1/turns",
                    json={**TURN, "wallet_id": "w2", "chat_id": "c-hang", "turn_id": "hang-1"},
                    headers=owner,
                )
            )
            await asyncio.sleep(0.2)  # the turn is now in its lookup (1 s), then in its pause (till 2.5 s)
            health = await client.get("/healthz")
            answered = _time.perf_counter() - started
            response = await denied
            return response, health, answered, _time.perf_counter() - started

    response, health, answered, finished = asyncio.run(scenario())
    # /healthz was answered 0.2 s in, while the turn was still blocked (it ends after 2.5 s)
    assert health.status_code == 200 and answered < 0.8 and finished >= 2.5
    assert (response.status_code, response.json()["accepted"], response.json()["action"]) == (200, False, "pause")
    assert slow_lookups == ["w2"] and sent == ["tollgate.billing.pause_chat"]
