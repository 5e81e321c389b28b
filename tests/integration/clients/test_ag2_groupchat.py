"""End to end: a real AG2 GroupChat of three agents against a local OpenAI-compatible server.  Every
reply is a persisted turn with its agent and tokens; a small wallet pauses the chat at exhaustion,
a credit resumes it, and PostgreSQL's totals equal the usage the server returned."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from sqlalchemy import text

from tests.integration.clients.openai_server import FakeOpenAI
from worker.client import BillingSession, InProcessTransport
from worker.client.ag2 import GroupChatBilling

pytestmark = pytest.mark.integration

NAMES = ("planner", "coder", "critic")
#: gpt-4o-mini at OpenAI (genai-prices): nanos per token in 150, cache read 75, out 600
IN, CACHED, OUT = 150, 75, 600


def cost(call: dict) -> int:
    p, c, k = call["prompt_tokens"], call["completion_tokens"], call["cached_tokens"]
    return ((p - k) * IN * 10**6 + k * CACHED * 10**6 + c * OUT * 10**6 + 500_000) // 10**6


def group_chat(base_url: str, max_round: int):
    import autogen

    llm_config = {
        "config_list": [{"model": "gpt-4o-mini", "api_key": "sk-local-test", "base_url": base_url}],
        "cache_seed": None,
    }
    agents = [
        autogen.ConversableAgent(
            name,
            system_message=f"AGENT={name}. Build the app together.",
            llm_config=llm_config,
            human_input_mode="NEVER",
        )
        for name in NAMES
    ]
    chat = autogen.GroupChat(agents=agents, messages=[], max_round=max_round, speaker_selection_method="round_robin")
    manager = autogen.GroupChatManager(groupchat=chat, llm_config=False, human_input_mode="NEVER")
    return agents, chat, manager


def persisted(db, chat_id: str) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT turn_id, agent, model, prompt_tokens, completion_tokens, cached_prompt_tokens, cost_nanos, "
                    "action FROM usage_event WHERE chat_id = :c ORDER BY id"
                ),
                {"c": chat_id},
            )
        ]


def test_group_chat_pauses_at_exhaustion_resumes_on_credit_and_postgres_matches_the_server(
    gate, db, app_id, open_payer, drain
):
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited

    wallet_id = open_payer("app_usage", app_id, "enduser1", 150_000)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="app_usage",
        payer_id="enduser1",
        enterprise_id=app_id,
        workflow="build_app",
        chat_id="ag2-chat-1",
    )
    with FakeOpenAI() as server:
        agents, chat, manager = group_chat(server.base_url, max_round=10)
        billing = GroupChatBilling(session).attach(manager)
        agents[0].initiate_chat(manager, message="Plan a todo app.", silent=True)

        # the wallet ran out: the round ended right after the reply that exhausted it
        calls_at_pause = list(server.calls)
        costs = [cost(c) for c in calls_at_pause]
        spent_before_last = sum(costs[:-1])
        assert spent_before_last < 150_000 <= sum(costs)  # exactly the last call crossed zero
        assert billing.stop_reason == "wallet_exhausted" and session.state == "paused"
        assert billing.error.balance_nanos == 150_000 - sum(costs) == gate.balance(wallet_id)
        assert [c["agent"] for c in calls_at_pause] == [NAMES[(i + 1) % 3] for i in range(len(calls_at_pause))]
        assert len(chat.messages) == 1 + len(calls_at_pause)  # the paid reply is kept in the chat
        assert billing.recorded == len(calls_at_pause)
        drain()
        with db.connect() as conn:
            assert conn.execute(
                text("SELECT status, pause_reason FROM chat_session WHERE chat_id = 'ag2-chat-1'")
            ).one() == ("paused", "wallet_exhausted")
            assert conn.execute(
                text("SELECT reason, resumed_at IS NULL FROM paused_chat WHERE chat_id = 'ag2-chat-1'")
            ).all() == [("wallet_exhausted", True)]

        # a credit resumes it: wait_for_resume returns, the chat goes on where it stopped
        credit = threading.Timer(
            0.3,
            credit_wallet,
            kwargs=dict(gate=gate, wallet_id=wallet_id, amount_nanos=5_000_000, idempotency_key=f"topup-{app_id}"),
        )
        credit.start()
        resumed = asyncio.run(session.wait_for_resume(timeout=10))
        credit.join()
        assert resumed.balance_nanos == 150_000 - sum(costs) + 5_000_000
        result = billing.resume(manager)
        assert billing.stop_reason is None and session.state == "connected"
        assert "Maximum rounds (10) reached" in (result.summary or "") or len(server.calls) > len(calls_at_pause)
        calls = list(server.calls)

    assert len(calls) == len(calls_at_pause) + 9  # the resumed run: 10 rounds, the first is the kick-off
    drain()
    rows = persisted(db, "ag2-chat-1")
    expected = [
        (
            f"ag2-chat-1:{c['id']}",
            c["agent"],
            "gpt-4o-mini-2024-07-18",
            c["prompt_tokens"],
            c["completion_tokens"],
            c["cached_tokens"],
            cost(c),
        )
        for c in calls
    ]
    assert [r[:7] for r in rows] == expected
    assert [r[7] for r in rows].count("pause") == 1 and rows[len(calls_at_pause) - 1][7] == "pause"
    with db.connect() as conn:
        totals = conn.execute(
            text(
                "SELECT count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_prompt_tokens), sum(cost_nanos), "
                "sum(billed_nanos) FROM usage_event WHERE wallet_id = :w"
            ),
            {"w": wallet_id},
        ).one()
        debits = conn.execute(text("SELECT debits_nanos FROM wallet WHERE id = :w"), {"w": wallet_id}).scalar_one()
        agents_db = dict(
            conn.execute(
                text(
                    "SELECT a.agent, a.turns FROM chat_agent_usage a JOIN chat_session s ON s.id = a.chat_session_id "
                    "WHERE s.chat_id = 'ag2-chat-1'"
                )
            ).all()
        )
        reopened = conn.execute(
            text("SELECT resumed_at IS NOT NULL FROM paused_chat WHERE chat_id = 'ag2-chat-1'")
        ).scalar_one()
    server_totals = (
        len(calls),
        sum(c["prompt_tokens"] for c in calls),
        sum(c["completion_tokens"] for c in calls),
        sum(c["cached_tokens"] for c in calls),
        sum(map(cost, calls)),
        sum(map(cost, calls)),
    )
    assert tuple(int(v) for v in totals) == server_totals
    assert debits == server_totals[4]
    assert agents_db == {n: sum(c["agent"] == n for c in calls) for n in NAMES}
    assert reopened
    assert gate.balance(wallet_id) == 150_000 + 5_000_000 - server_totals[4]
    summary = session.finalize()
    assert summary.totals["turns"] == len(calls) and summary.cost_nanos == server_totals[4]
    assert summary.comparison["total_sessions"] == 1 and summary.comparison["cost_delta_nanos"] == 0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_workflow_cost_threshold_warns_then_stops_the_chat(gate, db, app_id, open_payer, drain):
    open_payer("app_usage", app_id, "enduser2", 10_000_000)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="app_usage",
        payer_id="enduser2",
        enterprise_id=app_id,
        workflow="build_app",
        chat_id="ag2-chat-2",
        cost_threshold_nanos=100_000,
        warn_at_bps=5_000,
    )
    records = _Records()
    logging.getLogger("worker.client.session").addHandler(records)
    try:
        with FakeOpenAI() as server:
            agents, chat, manager = group_chat(server.base_url, max_round=20)
            billing = GroupChatBilling(session).attach(manager)
            agents[0].initiate_chat(manager, message="Plan a todo app.", silent=True)
            costs = [cost(c) for c in server.calls]
    finally:
        logging.getLogger("worker.client.session").removeHandler(records)
    assert sum(costs[:-1]) < 100_000 <= sum(costs)
    assert billing.stop_reason == "cost_threshold" and session.pause_reason == "cost_threshold"
    assert (billing.error.cost_nanos, billing.error.threshold_nanos) == (sum(costs), 100_000)
    warned = [m for m in records.messages if "5000 bps" in m]
    assert len(warned) == 1
    assert not session.can_continue()  # only resume() lifts a threshold stop
    drain()
    assert len(persisted(db, "ag2-chat-2")) == len(costs)
    with db.connect() as conn:
        assert (
            conn.execute(text("SELECT reason FROM paused_chat WHERE chat_id = 'ag2-chat-2'")).scalar_one()
            == "cost_threshold"
        )


def test_llm_speaker_selection_calls_are_billed_turns_too(gate, db, app_id, open_payer, drain):
    """speaker_selection_method='auto': AG2 asks the LLM who speaks next through an internal agent
    it makes per selection.  Every one of those calls is a turn too (agent 'speaker_selection_agent'),
    so PostgreSQL's totals equal everything the server answered, not only the agents' replies."""
    import autogen

    wallet_id = open_payer("app_usage", app_id, "enduser-auto", 10**9)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="app_usage",
        payer_id="enduser-auto",
        enterprise_id=app_id,
        workflow="build_app",
        chat_id="ag2-auto-1",
    )
    with FakeOpenAI() as server:
        llm_config = {
            "config_list": [{"model": "gpt-4o-mini", "api_key": "sk-local-test", "base_url": server.base_url}],
            "cache_seed": None,
        }
        agents = [
            autogen.ConversableAgent(
                name,
                system_message=f"AGENT={name}. Build the app together.",
                llm_config=llm_config,
                human_input_mode="NEVER",
            )
            for name in NAMES
        ]
        chat = autogen.GroupChat(agents=agents, messages=[], max_round=4, speaker_selection_method="auto")
        manager = autogen.GroupChatManager(groupchat=chat, llm_config=llm_config, human_input_mode="NEVER")
        billing = GroupChatBilling(session).attach(manager)
        agents[0].initiate_chat(manager, message="Plan a todo app.", silent=True)
        calls = list(server.calls)

    selections = [c for c in calls if c["agent"] == "speaker_selection"]
    assert len(selections) == 3 and len(calls) == 6  # rounds 2..4: a selection, then the chosen agent's reply
    assert [c["agent"] for c in calls] == ["speaker_selection", "planner"] * 3
    assert billing.recorded == 6 and billing.stop_reason is None
    drain()
    rows = persisted(db, "ag2-auto-1")
    agent_of = {"speaker_selection": "speaker_selection_agent"}
    assert [r[:7] for r in rows] == [
        (
            f"ag2-auto-1:{c['id']}",
            agent_of.get(c["agent"], c["agent"]),
            "gpt-4o-mini-2024-07-18",
            c["prompt_tokens"],
            c["completion_tokens"],
            c["cached_tokens"],
            cost(c),
        )
        for c in calls
    ]
    assert gate.balance(wallet_id) == 10**9 - sum(map(cost, calls))
