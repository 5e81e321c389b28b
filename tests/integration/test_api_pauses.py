"""A turn the gate denies never reaches the outbox, so the API queues the pause of its chat
(``tollgate.billing.pause_chat``), at most once a minute per chat; the task records one open
paused-chat record however often it runs."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.integration.test_api import TURN, _auth, api  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_a_denied_turn_queues_one_pause_of_its_chat(api, gate, db, monkeypatch):
    from tasks.billing import pause_chat
    from worker.celery_app import app as celery

    sent = []
    monkeypatch.setattr(celery, "send_task", lambda name, kwargs, **options: sent.append((name, kwargs)))
    turn = {**TURN, "wallet_id": "w2", "chat_id": "c-dry"}  # w2 has no funds
    for i in range(3):  # an orchestrator that keeps calling
        r = api.post("/v1/turns", json={**turn, "turn_id": f"dry-{i}"}, headers=_auth(api.keys["owner"]))
        assert (r.status_code, r.json()["accepted"], r.json()["action"]) == (200, False, "pause")
    assert sent == [("tollgate.billing.pause_chat",
                     {"enterprise_id": "acme", "chat_id": "c-dry", "wallet_id": "w2"})]
    assert pause_chat(**sent[0][1]) is True
    assert pause_chat(**sent[0][1]) is False  # a redelivery changes nothing
    with db.connect() as conn:
        rows = conn.execute(text("SELECT chat_id, wallet_id, reason, needed_nanos, resumed_at FROM paused_chat")).all()
        chat = conn.execute(text("SELECT status, connection_state FROM chat_session")).all()
    assert [tuple(r) for r in rows] == [("c-dry", "w2", "wallet_exhausted", 1, None)]
    assert [tuple(c) for c in chat] == [("paused", "paused")]
