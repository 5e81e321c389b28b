"""Deterministic billing data for the /billing tests: two apps, wallets, chat sessions, LLM turns of
four models at three providers, non-LLM meters, budgets and recorded alerts, across seven months.

Rows are inserted directly (SQLAlchemy Core), as the drain and the meter path would leave them:
``usage_event`` with integer nanos (cost = tokens × the unit prices below; billed = cost, or 0 for
the development-mode turns), ``chat_session``, ``budget`` (created in May 2026, the ``research``
budget on 2026-11-10), ``budget_alert``.  The tests compute
every expected figure from the database itself, never from these constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, insert, text
from sqlmodel import Session

from models.budget import Budget, BudgetAlert
from models.chat import ChatAgentUsage, ChatSession
from models.turn import UsageEvent
from models.wallet import Enterprise, Wallet, WalletTransaction
from tests.conftest import create_keys
from worker.chats.rollups import refresh_billing_rollups

PERIOD = "2026-11"
#: nano-USD per token: (input, cached input, output)
MODELS = {
    ("openai", "gpt-4o"): (2_500, 1_250, 10_000),
    ("openai", "gpt-4o-mini"): (150, 75, 600),
    ("anthropic", "claude-sonnet-4"): (3_000, 300, 15_000),
    ("google", "gemini-2.0-flash"): (100, 25, 400),
}
#: meter → (quantity per event, nano-USD per unit)
METERS = {"emails": (4_115, 100_000), "storage_gb_month": (83_334, 23_000), "function_calls": (1_000_000, 200)}
WORKFLOWS = ("support", "research", "onboarding")


@dataclass
class Seeded:
    """API keys of the seeded principals (shown once) and the ids the tests use."""

    keys: dict[str, str]
    enterprise_id: str = "acme"
    other_enterprise_id: str = "other"
    end_user_wallet: str = "w-alice"
    period: str = PERIOD


def _event(
    n: int,
    *,
    enterprise: str,
    wallet: str,
    chat: str,
    workflow: str,
    provider: str,
    model: str,
    at: datetime,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
    meter: str = "llm",
    quantity: int = 0,
    development: bool = False,
) -> dict:
    if meter == "llm":
        inp, cache, out = MODELS[(provider, model)]
        cost = (prompt - cached) * inp + cached * cache + completion * out
        prices = (inp * 1_000_000, cache * 1_000_000, out * 1_000_000)
    else:
        cost = quantity * METERS[meter][1]
        prices = (0, 0, 0)
    billed = 0 if development else cost
    creator = billed * 7 // 10
    return dict(
        turn_id=f"seed:{enterprise}:{n}",
        outbox_id=f"0:{n}-0",
        wallet_id=wallet,
        enterprise_id=enterprise,
        chat_id=chat,
        workflow=workflow,
        agent="planner" if n % 2 else "writer",
        model=model,
        provider=provider,
        mode="development" if development else "production",
        level="app_usage",
        billing_target=enterprise,
        billable=not development,
        creator_share_nanos=creator,
        platform_fee_nanos=billed - creator,
        trial_tokens=0,
        meter=meter,
        quantity=quantity,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
        duration_ms=800 + n % 700,
        input_nanos_per_mtok=prices[0],
        cached_input_nanos_per_mtok=prices[1],
        output_nanos_per_mtok=prices[2],
        cost_nanos=cost,
        billed_nanos=billed,
        balance_after_nanos=None,
        action="continue",
        occurred_at=at,
    )


def mark_groups_dirty(conn: Connection) -> None:
    """Leave every (enterprise, workflow, UTC month) of the stored usage events as the drain leaves
    the groups of the rows it inserts: marked in ``rollup_dirty`` (the workflow rollup refresh's
    queue) and with their drain-kept rollups (``billing_rollup``, ``chat_rollup``, ``agent_rollup``)
    equal to the sums of their events.  Rows inserted directly bypass the drain's incremental upserts, so the groups are
    recomputed here with the repair path (:func:`worker.chats.rollups.refresh_billing_rollups`), in
    ``conn``'s transaction."""
    conn.execute(
        text(
            "INSERT INTO rollup_dirty (enterprise_id, workflow, period) SELECT DISTINCT enterprise_id, workflow, "
            "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') FROM usage_event ON CONFLICT DO NOTHING"
        )
    )
    groups = conn.execute(
        text(
            "SELECT DISTINCT enterprise_id, workflow, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') "
            "FROM usage_event ORDER BY 1, 2, 3"
        )
    ).all()
    with Session(bind=conn) as session:
        for enterprise_id, workflow, period in groups:
            refresh_billing_rollups(session, enterprise_id, workflow, period)
        session.flush()


def seed(engine: Engine) -> Seeded:
    """Insert the data set into an empty database; returns the keys (owner, other_owner, end_user,
    other_end_user, admin)."""
    models = list(MODELS)
    wallets = ["w-alice", "w-bob", "w-carol"]
    rows: list[dict] = []
    sessions: list[dict] = []
    n = 0
    nov = datetime(2026, 11, 1, tzinfo=UTC)
    # 64 chats in the period (more than the 50 listed), 1..4 turns each, varied models and sizes
    for c in range(64):
        chat, wallet, workflow = f"chat-{c:03d}", wallets[c % 3], WORKFLOWS[c % 3]
        start = nov + timedelta(days=c % 29, hours=c % 11, minutes=c)
        turns = 1 + c % 4
        for t in range(turns):
            provider, model = models[(c + t) % 4]
            prompt = 4_000 + (c * 7919 + t * 104_729) % 120_000
            cached = prompt // (2 + (c + t) % 5) if (c + t) % 3 else 0
            completion = 400 + (c * 31 + t * 977) % 6_000
            n += 1
            rows.append(
                _event(
                    n,
                    enterprise="acme",
                    wallet=wallet,
                    chat=chat,
                    workflow=workflow,
                    provider=provider,
                    model=model,
                    at=start + timedelta(minutes=7 * t),
                    prompt=prompt,
                    cached=cached,
                    completion=completion,
                    development=(c % 13 == 5),
                )
            )
        sessions.append(
            dict(
                enterprise_id="acme",
                chat_id=chat,
                wallet_id=wallet,
                workflow=workflow,
                status=("active", "completed", "paused")[c % 3],
                started_at=start,
                last_turn_at=start + timedelta(minutes=7 * (turns - 1)),
                turns=turns,
            )
        )
    # the edges of the period: its last microsecond is in it, the next month's first is not
    for at, model in (
        (datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC), ("openai", "gpt-4o")),
        (datetime(2026, 12, 1, tzinfo=UTC), ("openai", "gpt-4o")),
        (datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), ("anthropic", "claude-sonnet-4")),
    ):
        n += 1
        rows.append(
            _event(
                n,
                enterprise="acme",
                wallet="w-bob",
                chat="chat-edge",
                workflow="support",
                provider=model[0],
                model=model[1],
                at=at,
                prompt=10_000,
                cached=0,
                completion=2_000,
            )
        )
    # non-LLM meters, through the same ledger (provider 'tollgate', model = meter, no tokens)
    for i, (meter, (quantity, _price)) in enumerate(METERS.items()):
        for k in range(3):
            n += 1
            rows.append(
                _event(
                    n,
                    enterprise="acme",
                    wallet=wallets[k],
                    chat=f"chat-{k:03d}",
                    workflow="support",
                    provider="tollgate",
                    model=meter,
                    meter=meter,
                    quantity=quantity * (k + 1),
                    at=nov + timedelta(days=3 + 5 * k, hours=i),
                )
            )
    # history: the five months before, and one month outside the six-month window
    for m, month in enumerate((5, 6, 7, 8, 9, 10)):
        for j, (provider, model) in enumerate(models):
            if (m + j) % 5 == 4:
                continue
            n += 1
            rows.append(
                _event(
                    n,
                    enterprise="acme",
                    wallet=wallets[j % 3],
                    chat=f"old-{month}-{j}",
                    workflow="research",
                    provider=provider,
                    model=model,
                    at=datetime(2026, month, 10 + j, tzinfo=UTC),
                    prompt=2_000_000 + 600_000 * m + 200_000 * j,
                    cached=400_000,
                    completion=150_000 + 30_000 * m,
                )
            )
    # another app in the same period: must never show in acme's figures
    for k in range(5):
        n += 1
        rows.append(
            _event(
                n,
                enterprise="other",
                wallet="x-1",
                chat=f"x-chat-{k}",
                workflow="support",
                provider="openai",
                model="gpt-4o",
                at=nov + timedelta(days=k + 1),
                prompt=900_000,
                cached=0,
                completion=90_000,
            )
        )

    ledger = _ledger()
    balances: dict[str, tuple[int, int]] = {}
    for e in ledger:
        c, d = balances.get(e["wallet_id"], (0, 0))
        balances[e["wallet_id"]] = (c + e["amount_nanos"], d) if e["kind"] == "credit" else (c, d + e["amount_nanos"])

    with engine.begin() as conn:
        conn.execute(
            insert(Enterprise.__table__), [dict(id="acme", name="Acme Assist"), dict(id="other", name="Other Corp")]
        )
        conn.execute(
            insert(Wallet.__table__),
            [
                dict(
                    id=w,
                    enterprise_id="acme",
                    owner_id=w,
                    level="app_usage",
                    mode="production",
                    currency="USD",
                    limited=True,
                    credits_nanos=balances.get(w, (0, 0))[0],
                    debits_nanos=balances.get(w, (0, 0))[1],
                    blocked_reason="budget_exceeded" if w == "w-carol" else None,
                )
                for w in wallets
            ]
            + [
                dict(
                    id="x-1",
                    enterprise_id="other",
                    owner_id="x",
                    level="app_usage",
                    mode="production",
                    currency="USD",
                    limited=True,
                    credits_nanos=balances["x-1"][0],
                    debits_nanos=balances["x-1"][1],
                    blocked_reason=None,
                )
            ],
        )
        session_ids = dict(
            conn.execute(
                insert(ChatSession.__table__).returning(ChatSession.__table__.c.chat_id, ChatSession.__table__.c.id),
                _chat_totals(rows, sessions),
            ).all()
        )
        conn.execute(insert(ChatAgentUsage.__table__), _agent_usage(rows, session_ids))
        conn.execute(insert(WalletTransaction.__table__), ledger)
        conn.execute(insert(UsageEvent.__table__), rows)
        mark_groups_dirty(conn)
        budget_ids = (
            conn.execute(
                insert(Budget.__table__).returning(Budget.__table__.c.id),
                [
                    dict(
                        enterprise_id="acme",
                        wallet_id="w-alice",
                        workflow=None,
                        amount_nanos=10_000_000_000,
                        auto_pause=True,
                        created_at=datetime(2026, 5, 1, tzinfo=UTC),
                    ),
                    dict(
                        enterprise_id="acme",
                        wallet_id=None,
                        workflow="support",
                        amount_nanos=20_000_000_000,
                        auto_pause=False,
                        created_at=datetime(2026, 5, 1, tzinfo=UTC),
                    ),
                    dict(
                        enterprise_id="acme",
                        wallet_id=None,
                        workflow="research",
                        amount_nanos=50_000_000_000,
                        auto_pause=False,
                        created_at=datetime(2026, 11, 10, tzinfo=UTC),  # not on October's page,
                    ),
                    dict(
                        enterprise_id="other",
                        wallet_id="x-1",
                        workflow=None,
                        amount_nanos=1_000_000_000,
                        auto_pause=False,
                        created_at=datetime(2026, 5, 1, tzinfo=UTC),
                    ),
                ],
            )
            .scalars()
            .all()
        )
        conn.execute(
            insert(BudgetAlert.__table__),
            [
                dict(
                    budget_id=budget_ids[0],
                    period=PERIOD,
                    threshold_pct=50,
                    spent_nanos=5_100_000_000,
                    amount_nanos=10_000_000_000,
                ),
                dict(
                    budget_id=budget_ids[0],
                    period=PERIOD,
                    threshold_pct=80,
                    spent_nanos=8_100_000_000,
                    amount_nanos=10_000_000_000,
                ),
                dict(
                    budget_id=budget_ids[1],
                    period=PERIOD,
                    threshold_pct=50,
                    spent_nanos=10_400_000_000,
                    amount_nanos=20_000_000_000,
                ),
                dict(
                    budget_id=budget_ids[1],
                    period=PERIOD,
                    threshold_pct=80,
                    spent_nanos=16_900_000_000,
                    amount_nanos=20_000_000_000,
                ),
                dict(
                    budget_id=budget_ids[1],
                    period=PERIOD,
                    threshold_pct=100,
                    spent_nanos=20_300_000_000,
                    amount_nanos=20_000_000_000,
                ),
                dict(
                    budget_id=budget_ids[1],
                    period="2026-10",
                    threshold_pct=50,
                    spent_nanos=10_600_000_000,
                    amount_nanos=20_000_000_000,
                ),
            ],
        )
    keys = create_keys(
        {
            "owner": ("owner", "acme"),
            "other_owner": ("owner", "other"),
            "end_user": ("end_user", "acme", "w-alice"),
            "other_end_user": ("end_user", "other", "x-1"),
            "admin": ("admin",),
        },
        engine,
    )
    return Seeded(keys=keys)


_TOTALS = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos")


def _chat_totals(rows: list[dict], sessions: list[dict]) -> list[dict]:
    """``chat_session`` rows as the drain leaves them: one per chat with a usage event (a chat
    without a listed session is completed at its last event), ``turns`` and the running totals
    summed over every event of the chat (meters included), ``started_at``/``last_turn_at`` the
    least and greatest ``occurred_at`` (at most the listed start)."""
    listed = {(x["enterprise_id"], x["chat_id"]): dict(x) for x in sessions}
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["enterprise_id"], r["chat_id"])
        if key not in out:
            base = listed.get(key) or dict(
                enterprise_id=key[0],
                chat_id=key[1],
                wallet_id=r["wallet_id"],
                workflow=r["workflow"],
                status="completed",
                started_at=r["occurred_at"],
                last_turn_at=r["occurred_at"],
            )
            out[key] = {**base, "ended_at": None, "turns": 0, "billed_nanos": 0, **dict.fromkeys(_TOTALS, 0)}
        chat = out[key]
        chat["turns"] += 1
        for c in (*_TOTALS, "billed_nanos"):
            chat[c] += r[c]
        chat["started_at"] = min(chat["started_at"], r["occurred_at"])
        chat["last_turn_at"] = max(chat["last_turn_at"], r["occurred_at"])
    for chat in out.values():
        if chat["status"] == "completed" and (chat["enterprise_id"], chat["chat_id"]) not in listed:
            chat["ended_at"] = chat["last_turn_at"]
    return list(out.values())


def _agent_usage(rows: list[dict], session_ids: dict[str, int]) -> list[dict]:
    """``chat_agent_usage`` rows as the drain leaves them: per chat and agent, turns, the sum of
    response times and the token and cost totals (chat ids are unique across the seed's apps)."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["chat_id"], r["agent"])
        a = out.setdefault(
            key,
            {"chat_session_id": session_ids[r["chat_id"]], "agent": r["agent"], "turns": 0, "duration_ms": 0}
            | dict.fromkeys(_TOTALS, 0),
        )
        a["turns"] += 1
        a["duration_ms"] += r["duration_ms"]
        for c in _TOTALS:
            a[c] += r[c]
    return list(out.values())


def _ledger() -> list[dict]:
    """``wallet_transaction`` rows: credits from Stripe, the monthly allowance and an operator, usage
    debits, before, in and after the period; 55 small debits of w-bob in November (two ledger pages);
    one credit of the other app.  ``wallet.credits_nanos``/``debits_nanos`` are set from these."""

    def entry(
        wallet: str, kind: str, amount: int, key: str, at: datetime, turns: int = 0, description: str = ""
    ) -> dict:
        return dict(
            wallet_id=wallet,
            kind=kind,
            amount_nanos=amount,
            turns=turns,
            idempotency_key=key,
            description=description,
            created_at=at,
        )

    rows = [
        entry(
            "w-alice",
            "credit",
            20_000_000_000,
            "stripe:cs_test_a1",
            datetime(2026, 10, 2, 9, tzinfo=UTC),
            description="Checkout: 20 USD package",
        ),
        entry(
            "w-alice",
            "debit",
            3_333_333_333,
            "tollgate:usage:0:1-0",
            datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
            turns=7,
        ),
        entry(
            "w-alice",
            "credit",
            5_004_999_999,
            "tollgate:allowance:w-alice:2026-11",
            datetime(2026, 11, 1, tzinfo=UTC),
            description="monthly allowance",
        ),
        entry(
            "w-alice",
            "credit",
            1_004_999_999,
            "support-goodwill-17",
            datetime(2026, 11, 15, 12, tzinfo=UTC),
            description="goodwill credit",
        ),
        entry(
            "w-alice", "debit", 8_599_387_350, "tollgate:usage:0:2-0", datetime(2026, 11, 20, 8, tzinfo=UTC), turns=22
        ),
        entry("w-alice", "debit", 500_000_000, "tollgate:usage:0:3-0", datetime(2026, 12, 1, tzinfo=UTC), turns=1),
        entry(
            "w-bob",
            "credit",
            10_005_000_000,
            "stripe:in_test_b1",
            datetime(2026, 11, 3, 10, tzinfo=UTC),
            description="invoice paid",
        ),
        entry("w-carol", "credit", 7_777_000_000, "stripe:cs_test_c1", datetime(2026, 9, 9, tzinfo=UTC)),
        entry("x-1", "credit", 50_000_000_000, "stripe:cs_test_x1", datetime(2026, 11, 5, tzinfo=UTC)),
    ]
    for i in range(55):
        rows.append(
            entry(
                "w-bob",
                "debit",
                1_234_567 + i,
                f"tollgate:usage:0:{100 + i}-0",
                datetime(2026, 11, 4, tzinfo=UTC) + timedelta(hours=10 * i),
                turns=1,
            )
        )
    return rows
