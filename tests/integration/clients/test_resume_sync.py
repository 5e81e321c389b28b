"""Issue 14, item 8: sync frameworks (AG2 runs its sync hooks inside a running event loop, where
``asyncio.run`` is refused) wait for a credit with ``BillingSession.wait_for_resume_sync``: it blocks
the calling thread, loop or not, with ``wait_for_resume``'s events, balance check and result."""

from __future__ import annotations

import asyncio
import threading

import pytest

from worker.client import BillingSession, InProcessTransport, WalletExhausted

TURN = {"model": "gpt-4o", "provider": "openai", "prompt_tokens": 1000, "completion_tokens": 0}
COST = 1000 * 2_500  # gpt-4o: $2.50 per million prompt tokens


def test_wait_for_resume_sync_blocks_inside_a_running_event_loop_until_the_credit(gate, app_id, open_payer, db):
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited

    wallet_id = open_payer("platform", app_id, "maker-sync", 4_000_000)
    session = BillingSession.start(
        InProcessTransport(gate),
        level="platform",
        payer_id="maker-sync",
        enterprise_id=app_id,
        workflow="app_generation",
        chat_id="sync-1",
    )
    session.record_turn(agent="architect", **TURN)
    with pytest.raises(WalletExhausted):
        session.record_turn(agent="architect", **TURN)
    assert session.balance_nanos == 4_000_000 - 2 * COST

    async def hook_in_a_loop(timeout: float):
        """What an AG2 reply hook does: plain sync code, called from inside a running event loop."""
        asyncio.get_running_loop()  # there is one
        return session.wait_for_resume_sync(timeout=timeout)

    with pytest.raises(TimeoutError, match="was not credited within 0.3 s"):
        asyncio.run(hook_in_a_loop(0.3))

    credit = threading.Timer(
        0.5,
        lambda: credit_wallet(gate, wallet_id=wallet_id, amount_nanos=20_000_000, idempotency_key=f"topup-{app_id}"),
    )
    credit.start()
    try:
        resumed = asyncio.run(hook_in_a_loop(10))
    finally:
        credit.join()
    assert resumed.cause in ("chat.resumable", "wallet.credited")
    assert resumed.balance_nanos == 4_000_000 - 2 * COST + 20_000_000 == 19_000_000
    assert session.state == "connected" and session.can_continue()
    # from plain sync code too; a credit made before the wait is seen by the balance check
    assert session.wait_for_resume_sync(timeout=2).cause == "balance"
    assert session.record_turn(agent="architect", **TURN).balance_nanos == 19_000_000 - COST
    with pytest.raises(ValueError, match="^timeout: "):
        session.wait_for_resume_sync(timeout=0)
