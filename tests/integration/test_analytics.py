"""Usage analytics against real PostgreSQL: day / ISO week / month buckets in UTC, grouping, exact
sums computed here row by row, enterprise scoping, and bad arguments naming the field."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session

from models.wallet import Wallet
from worker.chats.analytics import usage_analytics
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise
from worker.ledger.turns import USAGE_COLUMNS, persist_turns

pytestmark = pytest.mark.integration

# (occurred_at, enterprise, workflow, agent, model, provider, prompt, completion, cached, cost, billed)
EVENTS = [
    (
        datetime(2026, 11, 29, 23, 30, tzinfo=UTC),
        "acme",
        "support",
        "planner",
        "gpt-4o",
        "openai",
        100,
        10,
        0,
        1_000,
        1_000,
    ),
    (
        datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
        "acme",
        "support",
        "coder",
        "gpt-4o",
        "openai",
        200,
        20,
        50,
        2_000,
        2_000,
    ),
    (
        datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC),
        "acme",
        "sales",
        "planner",
        "claude-3-5-haiku",
        "anthropic",
        300,
        30,
        0,
        3_000,
        0,
    ),
    (
        datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
        "acme",
        "support",
        "planner",
        "gpt-4o",
        "openai",
        400,
        40,
        100,
        4_000,
        4_000,
    ),
    (
        datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        "acme",
        "support",
        "planner",
        "gpt-4o-mini",
        "openai",
        500,
        50,
        0,
        500,
        500,
    ),
    (datetime(2026, 12, 7, 8, 0, tzinfo=UTC), "acme", "sales", "coder", "gpt-4o", "openai", 600, 60, 0, 6_000, 6_000),
    (
        datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
        "acme",
        "support",
        "coder",
        "claude-3-5-haiku",
        "anthropic",
        700,
        70,
        70,
        7_000,
        7_000,
    ),
    # another enterprise on the same days: never in acme's figures
    (
        datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        "globex",
        "support",
        "planner",
        "gpt-4o",
        "openai",
        9_999,
        999,
        0,
        99_999,
        99_999,
    ),
    (
        datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        "globex",
        "support",
        "planner",
        "gpt-4o",
        "openai",
        9_999,
        999,
        0,
        99_999,
        99_999,
    ),
]
FIELDS = (
    "occurred_at",
    "enterprise_id",
    "workflow",
    "agent",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cost_nanos",
    "billed_nanos",
)
FIGURES = ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos", "billed_nanos")
ALL_TIME = (date(2026, 1, 1), date(2028, 1, 1))


def _seed(s: Session) -> list[dict]:
    """The EVENTS above persisted through the ledger into ``s`` (one wallet per enterprise)."""
    rows = []
    for i, values in enumerate(EVENTS):
        e = dict(zip(FIELDS, values))
        rows.append(
            {
                **dict.fromkeys(USAGE_COLUMNS, 0),
                **e,
                "turn_id": f"t{i}",
                "outbox_id": f"0:{i}-0",
                "wallet_id": f"w-{e['enterprise_id']}",
                "chat_id": f"chat-{i % 3}",
                "duration_ms": 100,
                "action": "continue",
                "mode": "production",
                "balance_after_nanos": None,
                "level": "app_usage",
                "billing_target": e["enterprise_id"],
                "billable": True,
                "meter": "llm",
                "service_tier": None,  # a text column: the standard tier (the drain refuses a number there)
            }
        )
    for enterprise in ("acme", "globex"):
        ensure_enterprise(s, enterprise)
        s.execute(insert(Wallet).values(id=f"w-{enterprise}", enterprise_id=enterprise, owner_id=enterprise))
    assert persist_turns(s, rows).inserted == len(EVENTS)
    return rows


@pytest.fixture()
def events(session):
    """The EVENTS persisted in the test's rolled-back ``session`` (nothing to truncate afterwards)."""
    return _seed(session)


@pytest.fixture()
def committed_events(db):
    """The EVENTS committed (for the CLI, which reads them from its own process)."""
    with session_scope() as s:
        return _seed(s)


def _bucket(when: datetime, granularity: str) -> date:
    day = when.astimezone(UTC).date()
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())  # ISO week: Monday
    return day.replace(day=1)


def _expected(granularity: str, group_by: tuple[str, ...], start: date, end: date, enterprise="acme") -> list[dict]:
    """The analytics rows, computed here in Python from EVENTS."""
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    sums: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0))
    for values in EVENTS:
        e = dict(zip(FIELDS, values))
        if e["enterprise_id"] != enterprise or not lo <= e["occurred_at"] < hi:
            continue
        acc = sums[(_bucket(e["occurred_at"], granularity), *(e[k] for k in group_by))]
        acc["turns"] += 1
        for name in FIGURES[1:]:
            acc[name] += e[name]
    return [{"bucket": key[0], **dict(zip(group_by, key[1:])), **sums[key]} for key in sorted(sums)]


def _run(session, granularity, group_by=(), start=ALL_TIME[0], end=ALL_TIME[1], enterprise="acme"):
    return usage_analytics(
        session, enterprise_id=enterprise, granularity=granularity, group_by=group_by, start=start, end=end
    )


def test_daily_weekly_monthly_buckets_in_utc_with_exact_sums(events, session):
    daily = _run(session, "day")
    assert daily == _expected("day", (), *ALL_TIME)
    assert [r["bucket"] for r in daily] == [
        date(2026, 11, 29),
        date(2026, 11, 30),
        date(2026, 12, 1),
        date(2026, 12, 6),
        date(2026, 12, 7),
        date(2027, 1, 1),
    ]
    # 2026-11-30 holds 00:00:00 and 23:59:59.999 (not globex's 12:00)
    assert daily[1] == {
        "bucket": date(2026, 11, 30),
        "turns": 2,
        "prompt_tokens": 500,
        "completion_tokens": 50,
        "cached_prompt_tokens": 50,
        "cost_nanos": 5_000,
        "billed_nanos": 2_000,
    }

    weekly = _run(session, "week")
    assert weekly == _expected("week", (), *ALL_TIME)
    # ISO weeks start on Monday: Sun 11-29 is in the week of Mon 11-23; Mon 11-30 … Sun 12-06 is one week;
    # Fri 2027-01-01 is in the week of Mon 2026-12-28
    assert [(r["bucket"], r["turns"], r["cost_nanos"]) for r in weekly] == [
        (date(2026, 11, 23), 1, 1_000),
        (date(2026, 11, 30), 4, 9_500),
        (date(2026, 12, 7), 1, 6_000),
        (date(2026, 12, 28), 1, 7_000),
    ]

    monthly = _run(session, "month")
    assert monthly == _expected("month", (), *ALL_TIME)
    assert [(r["bucket"], r["turns"], r["prompt_tokens"], r["billed_nanos"]) for r in monthly] == [
        (date(2026, 11, 1), 3, 600, 3_000),
        (date(2026, 12, 1), 3, 1_500, 10_500),
        (date(2027, 1, 1), 1, 700, 7_000),
    ]


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
@pytest.mark.parametrize(
    "group_by", [("workflow",), ("agent",), ("model", "provider"), ("provider", "workflow", "agent")]
)
def test_grouping_matches_sums_computed_row_by_row(events, session, granularity, group_by):
    rows = _run(session, granularity, group_by)
    assert rows == _expected(granularity, group_by, *ALL_TIME)
    assert sum(r["turns"] for r in rows) == 7
    assert sum(r["cost_nanos"] for r in rows) == 23_500


def test_buckets_do_not_depend_on_the_database_session_time_zone(events, session):
    session.execute(text("SET LOCAL TIME ZONE 'Pacific/Kiritimati'"))  # UTC+14 until the test's rollback
    for granularity in ("day", "week", "month"):
        assert _run(session, granularity, ("workflow",)) == _expected(granularity, ("workflow",), *ALL_TIME)


def test_range_is_half_open_and_scoped_to_the_enterprise(events, session):
    start, end = date(2026, 11, 30), date(2026, 12, 7)
    rows = _run(session, "week", ("workflow",), start, end)
    assert rows == _expected("week", ("workflow",), start, end)
    assert rows == [
        {
            "bucket": date(2026, 11, 30),
            "workflow": "sales",
            "turns": 1,
            "prompt_tokens": 300,
            "completion_tokens": 30,
            "cached_prompt_tokens": 0,
            "cost_nanos": 3_000,
            "billed_nanos": 0,
        },
        {
            "bucket": date(2026, 11, 30),
            "workflow": "support",
            "turns": 3,
            "prompt_tokens": 1_100,
            "completion_tokens": 110,
            "cached_prompt_tokens": 150,
            "cost_nanos": 6_500,
            "billed_nanos": 6_500,
        },
    ]
    # aware datetimes cut inside a day: the last millisecond of November only
    edge = _run(
        session, "day", (), datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    )
    assert [(r["bucket"], r["turns"], r["cost_nanos"]) for r in edge] == [(date(2026, 11, 30), 1, 3_000)]
    globex = _run(session, "month", (), enterprise="globex")
    assert [(r["bucket"], r["turns"], r["cost_nanos"]) for r in globex] == [
        (date(2026, 11, 1), 1, 99_999),
        (date(2026, 12, 1), 1, 99_999),
    ]
    assert _run(session, "month", (), enterprise="initech") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"granularity": "year"}, "granularity"),
        ({"granularity": "WEEK"}, "granularity"),
        ({"group_by": ("team",)}, "group_by"),
        ({"group_by": "workflow"}, "group_by"),
        ({"group_by": ("agent", "agent")}, "group_by"),
        ({"start": datetime(2026, 11, 1)}, "start"),
        ({"end": "2026-12-01"}, "end"),
        ({"start": date(2026, 12, 1), "end": date(2026, 12, 1)}, "end"),
        ({"enterprise_id": ""}, "enterprise_id"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(session, kwargs, field):
    args = {
        "enterprise_id": "acme",
        "granularity": "day",
        "group_by": (),
        "start": date(2026, 11, 1),
        "end": date(2026, 12, 1),
        **kwargs,
    }
    with pytest.raises(ValueError, match=rf"^{field}:"):
        usage_analytics(session, **args)


def test_cli_analytics_json_and_bad_options(committed_events, cli):
    proc = cli(
        "analytics",
        "acme",
        "--by",
        "week",
        "--group",
        "workflow,agent",
        "--from",
        "2026-11-01",
        "--to",
        "2027-02-01",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    expected = _expected("week", ("workflow", "agent"), date(2026, 11, 1), date(2027, 2, 1))
    assert json.loads(proc.stdout) == [{**r, "bucket": r["bucket"].isoformat()} for r in expected]
    table = cli("analytics", "acme", "--by", "month", "--from", "2026-11-01", "--to", "2027-02-01")
    assert table.returncode == 0 and "2026-12-01" in table.stdout
    bad = cli("analytics", "acme", "--by", "year")
    assert bad.returncode == 2 and "--by" in bad.stderr
    bad = cli("analytics", "acme", "--by", "day", "--group", "team")
    assert bad.returncode == 2 and "--group" in bad.stderr
