"""Reservations under real concurrency: 8 processes race to reserve and settle against one wallet;
debits never exceed credits, to the nano, and Redis and the PostgreSQL ledger agree afterwards."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP

import pytest
from genai_prices import Usage, calc_price
from sqlalchemy import text

from tests.committed import credit_wallet, open_wallet
from tests.conftest import SHARED_DATA, process_context
from worker.ledger.drain import OutboxDrain

pytestmark = pytest.mark.integration
CREDITS = 200_000_000  # $0.20: enough for about 60 of the racers' turns, far fewer than they try


def _racer(worker: int, rounds: int, out) -> None:
    """One process: reserve the exact cost of a turn, then settle it (or give the hold back)."""
    from models.turn import TurnIn
    from worker.gate.gate import WalletGate

    gate = WalletGate(kicker=lambda shard: None)
    billed = granted = 0
    for i in range(rounds):
        turn = TurnIn(
            turn_id=f"race-{worker}-{i}",
            wallet_id="pool",
            enterprise_id="acme",
            chat_id=f"c{worker}",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=500 + (worker * 37 + i * 11) % 900,
            completion_tokens=50 + i % 40,
            occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
            reservation_id=f"res-{worker}-{i}",
        )
        cost = gate.prices.price(
            model="gpt-4o",
            provider="openai",
            when=turn.occurred_at,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
        ).cost_nanos
        hold = gate.reserve("pool", cost, reservation_id=turn.reservation_id)
        if not hold.granted:
            continue
        granted += 1
        if i % 7 == 3:  # an abandoned call: the hold goes back
            gate.release("pool", turn.reservation_id)
            continue
        decision = gate.record_turn(turn)
        assert decision.accepted and decision.billed_nanos == cost
        billed += decision.billed_nanos
    out.put((worker, granted, billed))


def test_eight_processes_racing_never_overspend_and_ledger_agrees(db, redis_client, gate, settings):
    open_wallet(gate, wallet_id="pool", enterprise_id="acme", owner_id="u")
    credit_wallet(gate, wallet_id="pool", amount_nanos=CREDITS, idempotency_key="pool-open")
    ctx = process_context()
    out = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(w, 60, out)) for w in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    billed = sum(r[2] for r in results)
    assert billed <= CREDITS
    balance = gate.balance("pool")
    assert balance == CREDITS - billed and balance >= 0
    assert int(redis_client.hget(gate.wallet_key("pool"), "held")) == 0
    assert sum(r[1] for r in results) > 0

    OutboxDrain(redis_client, settings=settings, consumer="c").drain()
    with db.connect() as conn:
        credits, debits = conn.execute(text("SELECT credits_nanos, debits_nanos FROM wallet WHERE id='pool'")).one()
        persisted = conn.execute(text("SELECT coalesce(sum(billed_nanos), 0) FROM usage_event")).scalar_one()
    assert (credits, debits, persisted) == (CREDITS, billed, billed)
    assert debits <= credits and credits - debits == balance


CONV_SHARED = SHARED_DATA / "azure_llm_2023_conv_shared.csv"


@pytest.mark.skipif(not CONV_SHARED.exists(), reason="needs ../shared/data beside the repo")
def test_replay_with_reserve_policy_matches_a_straightforward_computation(cli, db):
    balance, accepted, denied = 10 * 10**9, 0, 0
    with CONV_SHARED.open(newline="") as fh:
        for row in csv.DictReader(fh):
            when = datetime.strptime(row["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            price = calc_price(
                Usage(input_tokens=int(row["ContextTokens"]), output_tokens=int(row["GeneratedTokens"])),
                "gpt-4o",
                provider_id="openai",
                genai_request_timestamp=when,
            ).total_price
            cost = int((price * 10**9).to_integral_value(rounding=ROUND_HALF_UP))
            if cost <= balance:
                balance -= cost
                accepted += 1
            else:
                denied += 1
    assert denied > 0 and accepted > 0

    proc = cli(
        "replay",
        str(CONV_SHARED),
        "--format",
        "azure",
        "--wallet-usd",
        "10",
        "--policy",
        "reserve",
        "--run-id",
        "res",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["turns_accepted"], report["turns_denied"]) == (accepted, denied)
    assert report["final_balance_nanos"] == balance == report["ledger_balance_nanos"]
    assert report["final_balance_nanos"] >= 0
    assert report["turns_persisted"] == accepted
