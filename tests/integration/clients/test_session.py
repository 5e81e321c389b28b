"""The billing session, in-process and over HTTP, sync and asyncio: the same decisions, exhaustion
as a typed error, resume on credit, non-LLM meters, and a summary against PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from worker.client import (
    AsyncBillingSession,
    AsyncHttpTransport,
    AsyncInProcessTransport,
    BillingSession,
    HttpTransport,
    InProcessTransport,
    UnknownModel,
    WalletExhausted,
    WalletNotFound,
)

pytestmark = pytest.mark.integration

TURN = {"model": "gpt-4o", "provider": "openai", "prompt_tokens": 1000, "completion_tokens": 100}
COST = 1000 * 2_500 + 100 * 10_000  # gpt-4o: 3,500,000 nanos per turn


def run_script(session: BillingSession, agents=("planner", "coder", "planner")) -> list:
    """Three turns on a wallet of 10,000,000 nanos: the third overdraws it and pauses the chat."""
    out = []
    for i, agent in enumerate(agents):
        try:
            out.append(session.record_turn(agent=agent, turn_id=f"{session.chat_id}:t{i}", duration_ms=100 + i, **TURN))
        except WalletExhausted as exc:
            out.append(exc)
    return out


def strip(decision) -> dict:
    d = decision.model_dump()
    d.pop("turn_id")
    return d


def _chat_rows(db, chat_id: str) -> dict:
    """The chat's session row and its paused-chat records, as the two transports leave them."""
    with db.connect() as conn:
        chat = conn.execute(
            text(
                "SELECT wallet_id, workflow, status, connection_state, pause_reason, can_resume "
                "FROM chat_session WHERE chat_id = :c"
            ),
            {"c": chat_id},
        ).one()
        paused = conn.execute(
            text(
                "SELECT wallet_id, reason, needed_nanos, resumed_at IS NOT NULL, resumed_by "
                "FROM paused_chat WHERE chat_id = :c ORDER BY id"
            ),
            {"c": chat_id},
        ).all()
    return {"chat": tuple(chat), "paused": [tuple(p) for p in paused]}


def test_in_process_and_http_give_the_same_decisions_exhaustion_pauses_resumes_and_summaries(
    gate, api, app_id, open_payer, events_url, drain, db
):
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited

    w1 = open_payer("app_usage", app_id, "alice", 10_000_000)
    w2 = open_payer("app_usage", app_id, "bob", 10_000_000)
    local = BillingSession.start(
        InProcessTransport(gate),
        level="app_usage",
        payer_id="alice",
        enterprise_id=app_id,
        workflow="support-a",
        chat_id="chat-a",
    )
    remote = BillingSession.start(
        HttpTransport(api_key=api.owner_key(app_id), client=api, events_url=events_url),
        level="app_usage",
        payer_id="bob",
        enterprise_id=app_id,
        workflow="support-b",
        chat_id="chat-b",
    )
    assert (local.wallet_id, remote.wallet_id) == (w1, w2) == (f"app:{app_id}:alice", f"app:{app_id}:bob")
    # start: the chat's session row exists, active and connected, in its workflow
    assert _chat_rows(db, "chat-a") == {"chat": (w1, "support-a", "active", "connected", None, False), "paused": []}
    assert _chat_rows(db, "chat-b") == {"chat": (w2, "support-b", "active", "connected", None, False), "paused": []}
    assert local.can_continue() and remote.can_continue()
    a, b = run_script(local), run_script(remote)
    assert (
        [strip(d) for d in a[:2]]
        == [strip(d) for d in b[:2]]
        == [
            {
                "accepted": True,
                "action": "continue",
                "balance_nanos": 6_500_000,
                "cost_nanos": COST,
                "billed_nanos": COST,
                "duplicate": False,
            },
            {
                "accepted": True,
                "action": "continue",
                "balance_nanos": 3_000_000,
                "cost_nanos": COST,
                "billed_nanos": COST,
                "duplicate": False,
            },
        ]
    )
    for exc, wallet_id, chat_id in ((a[2], w1, "chat-a"), (b[2], w2, "chat-b")):
        assert isinstance(exc, WalletExhausted)
        assert (exc.wallet_id, exc.balance_nanos, exc.chat_id) == (wallet_id, -500_000, chat_id)
        assert exc.decision.accepted and exc.decision.action == "pause"  # post-hoc: the turn itself is charged
    # pause: one open paused-chat record each, needing 500,001 nanos; the chat paused
    assert _chat_rows(db, "chat-a") == {
        "chat": (w1, "support-a", "paused", "paused", "wallet_exhausted", False),
        "paused": [(w1, "wallet_exhausted", 500_001, False, None)],
    }
    assert _chat_rows(db, "chat-b") == {
        "chat": (w2, "support-b", "paused", "paused", "wallet_exhausted", False),
        "paused": [(w2, "wallet_exhausted", 500_001, False, None)],
    }
    assert not local.can_continue() and not remote.can_continue()
    assert local.state == remote.state == "paused"
    # a turn while exhausted is denied, not charged, and raises again (no second pause record)
    for s in (local, remote):
        with pytest.raises(WalletExhausted) as denied:
            s.record_turn(agent="planner", turn_id=f"{s.chat_id}:denied", **TURN)
        assert (denied.value.decision.accepted, denied.value.decision.billed_nanos) == (False, 0)
    assert gate.balance(w1) == gate.balance(w2) == -500_000
    assert len(_chat_rows(db, "chat-a")["paused"]) == len(_chat_rows(db, "chat-b")["paused"]) == 1
    # a credit makes the chats resumable; can_continue() resumes them: active and connected again
    for wallet_id in (w1, w2):
        credit_wallet(gate, wallet_id=wallet_id, amount_nanos=20_000_000, idempotency_key=f"topup-{wallet_id}")
    assert _chat_rows(db, "chat-b")["chat"] == (w2, "support-b", "paused", "resumable", "wallet_exhausted", True)
    assert local.can_continue() and remote.can_continue()
    assert local.state == remote.state == "connected"
    assert _chat_rows(db, "chat-a") == {
        "chat": (w1, "support-a", "active", "connected", None, False),
        "paused": [(w1, "wallet_exhausted", 500_001, True, f"topup-{w1}")],
    }
    assert _chat_rows(db, "chat-b") == {
        "chat": (w2, "support-b", "active", "connected", None, False),
        "paused": [(w2, "wallet_exhausted", 500_001, True, f"topup-{w2}")],
    }
    for s in (local, remote):
        d = s.record_turn(agent="coder", turn_id=f"{s.chat_id}:t3", duration_ms=103, **TURN)
        assert (d.accepted, d.balance_nanos) == (True, 19_500_000 - COST)
    drain()
    agents = {
        "coder": {
            "turns": 2,
            "prompt_tokens": 2000,
            "completion_tokens": 200,
            "cached_prompt_tokens": 0,
            "total_tokens": 2200,
            "duration_ms": 204,
            "cost_nanos": 2 * COST,
            "billed_nanos": 2 * COST,
        },
        "planner": {
            "turns": 2,
            "prompt_tokens": 2000,
            "completion_tokens": 200,
            "cached_prompt_tokens": 0,
            "total_tokens": 2200,
            "duration_ms": 202,
            "cost_nanos": 2 * COST,
            "billed_nanos": 2 * COST,
        },
    }
    sa, sb = local.finalize(), remote.finalize()
    assert sa.agents == sb.agents == agents
    assert sa.totals == sb.totals and sa.cost_nanos == sb.cost_nanos == 4 * COST
    assert sa.pauses == sb.pauses == 1
    # finalize: the chat completed, its workflow rolled up, and this session compared with it
    period = datetime.now(UTC).strftime("%Y-%m")
    for summary, workflow in ((sa, "support-a"), (sb, "support-b")):
        averages = dict(summary.workflow_averages)
        assert averages.pop("refreshed_at") is not None
        assert averages.pop("avg_duration_sec") > 0  # the chat's wall time, start to end: not fixed
        assert averages == {
            "enterprise_id": app_id,
            "workflow": workflow,
            "period": period,
            "source": "rollup",
            "total_sessions": 1,
            "total_turns": 4,
            "total_cost_nanos": 4 * COST,
            "total_cost_usd": "0.014000000",
            "avg_cost_nanos": 4 * COST,
            "avg_cost_usd": "0.014000000",
            "avg_prompt_tokens": 4000.0,
            "avg_completion_tokens": 400.0,
            "avg_total_tokens": 4400.0,
        }
    assert (
        sa.comparison
        == sb.comparison
        == {
            "total_sessions": 1,
            "cost_nanos": 4 * COST,
            "avg_cost_nanos": 4 * COST,
            "cost_delta_nanos": 0,
            "cost_vs_avg_bps": 10_000,
            "total_tokens": 4400,
            "avg_total_tokens": 4400.0,
            "turns": 4,
            "avg_turns": 4.0,
        }
    )
    assert _chat_rows(db, "chat-a")["chat"][2:4] == _chat_rows(db, "chat-b")["chat"][2:4] == ("completed", "ended")


def test_a_platform_wallet_over_http_needs_the_owner_key_issued_for_it(gate, api, app_id, open_payer, drain, db):
    """Level 1: the creator's wallet has no app, so an app's plain owner key may not read it; an
    owner key issued for it (``wallet_id=plat:<creator>``) may read it, hold on it and pause its
    chats, never credit it or change its mode."""
    from models.enums import ApiRole
    from worker.access.apikeys import ApiKeyError, create_key
    from worker.db import session_scope

    open_payer("app_usage", app_id, "enduser", 0)  # the app exists
    wallet_id = open_payer("platform", app_id, "maker1", 10_000_000)
    open_payer("platform", app_id, "maker2", 10_000_000)
    plain = api.owner_key(app_id)
    with session_scope() as session:
        bound = create_key(session, role=ApiRole.owner, enterprise_id=app_id, wallet_id=wallet_id)
        with pytest.raises(ApiKeyError, match="wallet_id: 'app:x:y' is not a platform"):
            create_key(session, role=ApiRole.owner, enterprise_id=app_id, wallet_id="app:x:y")
    assert api.get(f"/v1/wallets/{wallet_id}", headers={"Authorization": f"Bearer {plain}"}).status_code == 404
    with pytest.raises(WalletNotFound, match="wallet_id: unknown wallet 'plat:maker1'"):
        BillingSession.start(
            HttpTransport(api_key=plain, client=api),
            level="platform",
            payer_id="maker1",
            enterprise_id=app_id,
            workflow="app_generation",
        )
    h = {"Authorization": f"Bearer {bound}"}
    r = api.get(f"/v1/wallets/{wallet_id}", headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "wallet_id": wallet_id,
        "enterprise_id": None,
        "level": "platform",
        "mode": "production",
        "limited": True,
        "gate_balance_nanos": 10_000_000,
        "held_nanos": 0,
        "can_continue": True,
        "ledger_balance_nanos": 10_000_000,
        "credits_nanos": 10_000_000,
        "debits_nanos": 0,
        "debt_nanos": 0,
        "reservations_required": False,
    }
    assert api.get("/v1/wallets/plat:maker2", headers=h).status_code == 404  # another creator's wallet
    assert api.get(f"/v1/wallets/{wallet_id}/ledger", headers=h).json()["count"] == 1
    assert (
        api.post(
            f"/v1/wallets/{wallet_id}/credits", json={"amount_nanos": 5, "idempotency_key": "free"}, headers=h
        ).status_code
        == 404
    )
    assert api.put(f"/v1/wallets/{wallet_id}/mode", json={"mode": "development"}, headers=h).status_code == 404
    session = BillingSession.start(
        HttpTransport(api_key=bound, client=api),
        level="platform",
        payer_id="maker1",
        enterprise_id=app_id,
        workflow="app_generation",
        chat_id="gen-h",
    )
    out = run_script(session, ("architect", "architect", "architect"))
    assert [d.balance_nanos for d in out[:2]] == [6_500_000, 3_000_000]
    assert isinstance(out[2], WalletExhausted) and out[2].balance_nanos == -500_000
    assert _chat_rows(db, "gen-h") == {
        "chat": (wallet_id, "app_generation", "paused", "paused", "wallet_exhausted", False),
        "paused": [(wallet_id, "wallet_exhausted", 500_001, False, None)],
    }
    assert not session.can_continue()
    drain()
    summary = session.finalize()
    assert (summary.level, summary.wallet_id, summary.cost_nanos, summary.pauses) == (
        "platform",
        wallet_id,
        3 * COST,
        1,
    )
    assert summary.comparison["total_sessions"] == 1 and summary.comparison["avg_cost_nanos"] == 3 * COST
    assert gate.balance(wallet_id) == -500_000 and gate.balance("plat:maker2") == 10_000_000


def test_unknown_model_and_unknown_wallet_are_typed_errors(gate, api, app_id, open_payer):
    open_payer("app_usage", app_id, "alice", 10_000_000)
    for transport in (InProcessTransport(gate), HttpTransport(api_key=api.owner_key(app_id), client=api)):
        session = BillingSession.start(transport, level="app_usage", payer_id="alice", enterprise_id=app_id)
        with pytest.raises(UnknownModel, match="model: 'acme-llm-9000'"):
            session.record_turn(agent="a", model="acme-llm-9000", prompt_tokens=1, completion_tokens=1)
        with pytest.raises(WalletNotFound, match=f"wallet_id: unknown wallet 'app:{app_id}:nobody'"):
            BillingSession.start(transport, level="app_usage", payer_id="nobody", enterprise_id=app_id)
    with pytest.raises(ValueError, match="level: 'gold'"):
        BillingSession.start(InProcessTransport(gate), level="gold", payer_id="alice", enterprise_id=app_id)
    assert gate.balance(f"app:{app_id}:alice") == 10_000_000  # nothing was charged


def test_wait_for_resume_times_out_then_returns_on_the_credit_and_the_chat_goes_on(
    gate, app_id, open_payer, events_url, drain, db
):
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited

    wallet_id = open_payer("platform", app_id, "maker1", 4_000_000)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="platform",
        payer_id="maker1",
        enterprise_id=app_id,
        workflow="app_generation",
        chat_id="gen-1",
    )
    assert wallet_id == "plat:maker1"
    assert isinstance(run_script(session, ("architect", "architect"))[-1], WalletExhausted)
    with pytest.raises(WalletExhausted):
        session.ensure_can_continue()
    assert session.balance_nanos == 4_000_000 - 2 * COST
    with pytest.raises(TimeoutError, match="was not credited within 0.3 s"):
        asyncio.run(session.wait_for_resume(timeout=0.3))

    async def wait_and_credit():
        waiter = asyncio.create_task(session.wait_for_resume(timeout=10))
        await asyncio.sleep(0.3)  # subscribed and found the balance ≤ 0 by now
        await asyncio.to_thread(
            credit_wallet, gate, wallet_id=wallet_id, amount_nanos=20_000_000, idempotency_key=f"topup-{app_id}"
        )
        return await waiter

    resumed = asyncio.run(wait_and_credit())
    assert resumed.cause in ("chat.resumable", "wallet.credited")
    assert resumed.balance_nanos == 4_000_000 - 2 * COST + 20_000_000 == 17_000_000
    assert session.state == "connected" and session.can_continue()
    # a credit that landed before the wait started is seen by the balance check after subscribing
    assert asyncio.run(session.wait_for_resume(timeout=2)).cause == "balance"
    decision = session.record_turn(agent="architect", **TURN)
    assert (decision.action, decision.balance_nanos) == ("continue", 17_000_000 - COST)
    assert session.record_meter("emails", quantity=3).cost_nanos == 300_000  # $0.10 per 1,000 emails
    assert session.record_meter("storage_gb_month", quantity=100).cost_nanos == 2_300_000  # $0.023 per GB-month
    drain()
    summary = session.finalize()
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT meter, count(*), sum(cost_nanos), sum(quantity) FROM usage_event "
                "WHERE chat_id = 'gen-1' GROUP BY meter ORDER BY meter"
            )
        ).all()
        paused = conn.execute(
            text("SELECT reason, resumed_at IS NOT NULL FROM paused_chat WHERE chat_id = 'gen-1'")
        ).all()
    assert summary.agents["architect"]["turns"] == 3
    assert summary.meters["emails"] == {"records": 1, "quantity": 3, "cost_nanos": 300_000, "billed_nanos": 300_000}
    assert [tuple(r) for r in rows] == [
        ("emails", 1, 300_000, 3),
        ("llm", 3, 3 * COST, 0),
        ("storage_gb_month", 1, 2_300_000, 100),
    ]
    assert [tuple(r) for r in paused] == [("wallet_exhausted", True)]
    assert summary.workflow_averages["total_sessions"] == 1
    assert summary.comparison["cost_nanos"] == summary.cost_nanos == 3 * COST + 300_000 + 2_300_000
    assert summary.comparison["avg_cost_nanos"] == summary.workflow_averages["avg_cost_nanos"]


def test_asyncio_sessions_in_process_and_http_match(gate, api, app_id, open_payer, events_url):
    from api_stub import main

    open_payer("app_usage", app_id, "carol", 10_000_000)
    open_payer("app_usage", app_id, "dave", 10_000_000)
    key = api.owner_key(app_id)

    async def script(transport, payer):
        session = await AsyncBillingSession.start(
            transport, level="app_usage", payer_id=payer, enterprise_id=app_id, workflow="support"
        )
        out = []
        for agent in ("planner", "coder", "planner"):
            try:
                out.append(strip(await session.record_turn(agent=agent, **TURN)))
            except WalletExhausted as exc:
                out.append(("exhausted", exc.balance_nanos))
        out.append(await session.can_continue())
        return out, (await session.finalize()).agents

    async def both():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=main.app), base_url="http://tollgate") as c:
            remote = await script(AsyncHttpTransport(api_key=key, client=c, events_url=events_url), "dave")
        local = await script(AsyncInProcessTransport(gate), "carol")
        return local, remote

    local, remote = asyncio.run(both())
    assert local == remote
    assert local[0][2:] == [("exhausted", -500_000), False]


#: messages another publisher on the app's events channel may send: not tollgate's event shape
_STRAY_EVENTS = [
    '{"type": "wallet.credited", "data": "plat:maker2"}',
    '{"type": "wallet.credited", "data": ["plat:maker2"]}',
    '{"type": "wallet.credited", "data": {"wallet_id": "plat:maker2", "balance_nanos": 1.5}}',
    '{"type": "wallet.credited", "data": {"wallet_id": "plat:maker2", "balance_nanos": true}}',
    '{"type": "wallet.credited", "data": {"wallet_id": "plat:maker2", "balance_nanos": "\\u0661\\u0662"}}',
    '{"type": "wallet.credited", "data": {"wallet_id": "plat:maker2", "balance_nanos": "lots"}}',
    '{"type": "chat.resumable", "data": {"chat_id": "gen-2", "balance_nanos": "lots"}}',
    '{"type": "chat.resumable", "data": null}',
    '["wallet.credited"]',
    "not json",
]


def test_wait_for_resume_ignores_events_not_of_tollgate_s_shape(gate, app_id, open_payer, events_url):
    """Each stray message raised AttributeError or ValueError out of ``wait_for_resume`` (or
    resumed the chat on a balance of ``1.5`` read as 1 nano); now they are not resume events, and
    the real credit after them resumes the chat with its exact balance."""
    import json as jsonlib

    import redis as redis_lib

    from worker import credit_wallet, events_channel

    wallet_id = open_payer("platform", app_id, "maker2", 4_000_000)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="platform",
        payer_id="maker2",
        enterprise_id=app_id,
        workflow="app_generation",
        chat_id="gen-2",
    )
    assert isinstance(run_script(session, ("architect", "architect"))[-1], WalletExhausted)
    publisher = redis_lib.Redis.from_url(events_url)
    for stray in _STRAY_EVENTS:
        assert session._matches(jsonlib.loads(stray) if stray != "not json" else stray) is False, stray

    async def stray_then_credit():
        waiter = asyncio.create_task(session.wait_for_resume(timeout=10))
        await asyncio.sleep(0.3)  # subscribed by now
        for stray in _STRAY_EVENTS:
            publisher.publish(events_channel(app_id), stray)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await asyncio.to_thread(
            credit_wallet, gate, wallet_id=wallet_id, amount_nanos=20_000_000, idempotency_key=f"topup2-{app_id}"
        )
        return await waiter

    resumed = asyncio.run(stray_then_credit())
    publisher.close()
    assert resumed.cause in ("chat.resumable", "wallet.credited")
    assert resumed.balance_nanos == 4_000_000 - 2 * COST + 20_000_000
