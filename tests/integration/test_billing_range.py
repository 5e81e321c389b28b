"""/billing's date range read from the billing rollups for its whole months and from the usage
events only for the partial months at its edges (``worker.billing.report.whole_months``): every
figure equals the same sums taken over ``usage_event`` for the span, to the nano, whatever the span."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.billing_seed import seed
from worker.billing.report import billing_report, whole_months
from worker.db import session_scope

pytestmark = pytest.mark.integration


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "months", "run"),
    [
        (d(2026, 9, 15), d(2026, 12, 15), ["2026-10", "2026-11"], (d(2026, 10, 1), d(2026, 12, 1))),
        (d(2026, 11, 1), d(2026, 12, 1), ["2026-11"], (d(2026, 11, 1), d(2026, 12, 1))),
        (d(2026, 11, 3), d(2026, 11, 21), [], (d(2026, 11, 21), d(2026, 11, 21))),
        (d(2026, 10, 31), d(2026, 12, 2), ["2026-11"], (d(2026, 11, 1), d(2026, 12, 1))),
        (
            d(2025, 12, 1),
            d(2026, 12, 1),
            ["2025-12"] + [f"2026-{m:02d}" for m in range(1, 12)],
            (d(2025, 12, 1), d(2026, 12, 1)),
        ),
        (d(2999, 12, 1), d(3000, 1, 1), ["2999-12"], (d(2999, 12, 1), d(3000, 1, 1))),
    ],
)
def test_whole_months_of_a_span(start, end, months, run):
    assert whole_months(start, end) == (months, run)


def _sql(db, query: str, **params):
    with db.connect() as conn:
        return conn.execute(text(query), params).all()


SPANS = [
    (d(2026, 6, 10), d(2026, 12, 3)),  # partial June and December around five whole months
    (d(2026, 5, 1), d(2027, 1, 1)),  # whole months only
    (d(2026, 11, 3), d(2026, 11, 21)),  # inside one month: events only
    (d(2026, 10, 31), d(2026, 12, 2)),  # a day each side of a whole month
]


@pytest.mark.parametrize("span", SPANS, ids=lambda s: f"{s[0]:%Y-%m-%d}..{s[1]:%Y-%m-%d}")
@pytest.mark.parametrize("wallet", [None, "w-alice"])
def test_a_range_equals_the_sums_of_its_events(db, span, wallet):
    seed(db)
    with session_scope() as session:
        report = billing_report(session, enterprise_id="acme", period="2026-11", wallet_id=wallet, span=span)
    where = "enterprise_id = 'acme' AND occurred_at >= :lo AND occurred_at < :hi" + (
        " AND wallet_id = :w" if wallet else ""
    )
    params = dict(lo=span[0], hi=span[1], w=wallet)
    ((events, prompt, completion, cost, billed, creator),) = _sql(
        db,
        "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
        "coalesce(sum(cost_nanos), 0), coalesce(sum(billed_nanos), 0), coalesce(sum(creator_share_nanos), 0) "
        f"FROM usage_event WHERE {where}",
        **params,
    )
    assert events > 0
    t = report.total
    assert (t.events, t.prompt_tokens, t.completion_tokens, t.cost_nanos, t.billed_nanos, t.creator_share_nanos) == (
        events,
        prompt,
        completion,
        cost,
        billed,
        creator,
    )
    by_provider = dict(
        _sql(
            db,
            f"SELECT provider, sum(cost_nanos) FROM usage_event WHERE {where} AND meter = 'llm' GROUP BY 1",
            **params,
        )
    )
    assert {p.provider: p.figures.cost_nanos for p in report.providers} == {k: int(v) for k, v in by_provider.items()}
    chats = _sql(
        db,
        f"SELECT chat_id, sum(cost_nanos), min(occurred_at), max(occurred_at) FROM usage_event WHERE {where} "
        "GROUP BY chat_id ORDER BY 2 DESC, 1 LIMIT 50",
        **params,
    )
    ((n_chats,),) = _sql(db, f"SELECT count(DISTINCT chat_id) FROM usage_event WHERE {where}", **params)
    assert report.chats_in_period == n_chats
    assert [(c.chat_id, c.figures.cost_nanos, c.first_at, c.last_at) for c in report.top_chats] == [
        (c, int(cost), first, last) for c, cost, first, last in chats
    ]
