"""Issue 18 item 5 on the report, against PostgreSQL: displayed cents add up at every level and stay
within a cent of the exact SQL sums; a tiny meter cost is not shown as $0.00; budgets only on months
they existed; chats that ended (or went quiet for 24 hours) shown as completed."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import insert, text

from api_stub.billing_exports import pdf_statement
from models.turn import UsageEvent
from tests.billing_seed import _event, mark_groups_dirty, seed
from worker.billing.report import CENT_NANOS, CHAT_INACTIVE, billing_report, round_cents
from worker.db import session_scope

pytestmark = pytest.mark.integration

NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture()
def seeded(db):
    return seed(db)


def _rows(db, query: str, **params):
    with db.connect() as conn:
        return conn.execute(text(query), params).all()


def _by(db, column: str, group: str, extra: str = "") -> dict:
    return {
        tuple(r[:-1]) if len(r) > 2 else r[0]: int(r[-1])
        for r in _rows(
            db,
            f"SELECT {group}, SUM({column}) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo "
            f"AND occurred_at < :hi {extra} GROUP BY {group}",
            lo=NOV[0],
            hi=NOV[1],
        )
    }


def _near(cents: int, nanos: int) -> bool:
    """Largest remainder gives each part its floor in cents or one more."""
    return nanos // CENT_NANOS <= cents <= nanos // CENT_NANOS + 1


@pytest.mark.parametrize("column, attr", [("cost_nanos", "cost"), ("billed_nanos", "billed")])
def test_displayed_cents_add_up_at_every_level_and_follow_sql(seeded, db, column, attr):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    shown = getattr(r.displayed(), attr)
    total = _by(db, column, "enterprise_id")["acme"]
    llm = _by(db, column, "enterprise_id", "AND meter = 'llm'")["acme"]
    providers = _by(db, column, "provider", "AND meter = 'llm'")
    models = _by(db, column, "provider, model", "AND meter = 'llm'")
    meters = _by(db, column, "meter", "AND meter <> 'llm'")

    assert shown["total"] == round_cents(total)  # the total is its own rounding
    assert shown["llm"] + shown["meters"] == shown["total"]
    assert _near(shown["llm"], llm) and _near(shown["meters"], total - llm)
    assert set(k for k in shown if k.startswith("provider:")) == {f"provider:{p}" for p in providers}
    assert sum(shown[f"provider:{p}"] for p in providers) == shown["llm"]
    for p, nanos in providers.items():
        assert _near(shown[f"provider:{p}"], nanos)
        mine = {m: n for (q, m), n in models.items() if q == p}
        assert sum(shown[f"model:{p}:{m}"] for m in mine) == shown[f"provider:{p}"]
        assert all(_near(shown[f"model:{p}:{m}"], n) for m, n in mine.items())
    assert sum(shown[f"meter:{m}"] for m in ("emails", "storage_gb_month", "function_calls")) == shown["meters"]
    assert all(_near(shown[f"meter:{m}"], n) for m, n in meters.items())


def test_history_cents_add_up_per_month(seeded):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    d = r.displayed()
    assert d.history_totals == [round_cents(t) for t in r.history.totals]
    for i in range(len(r.history.periods)):
        assert sum(v[i] for v in d.history.values()) == d.history_totals[i]
        for p, values in r.history.by_provider.items():
            assert _near(d.history[p][i], values[i])


def test_a_tiny_meter_cost_is_not_shown_as_zero(seeded, db):
    # 16,659 function calls at 200 nanos = 3,331,800 nanos = $0.0033318, the only usage of January 2027
    row = _event(
        900_001,
        enterprise="acme",
        wallet="w-bob",
        chat="chat-jan",
        workflow="support",
        provider="tollgate",
        model="function_calls",
        meter="function_calls",
        quantity=16_659,
        at=datetime(2027, 1, 5, tzinfo=UTC),
    )
    with db.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), [row])
        mark_groups_dirty(conn)
    from api_stub.main import app  # imported late: the app reads the test settings the fixtures set

    client = TestClient(app)
    page = client.get("/billing?period=2027-01", headers={"Authorization": f"Bearer {seeded.keys['owner']}"})
    assert page.status_code == 200
    html = page.text
    # the function-calls row (emails and storage are unused: $0.00 there is exact)
    assert 'data-testid="meter-cost" data-cents="0" title="0.003331800 USD">&lt;$0.01</td>' in html
    assert 'data-testid="total-cost" data-nanos="3331800" data-cents="0">&lt;$0.01<' in html
    assert 'data-testid="meters-cost-total" data-cents="0">&lt;$0.01<' in html


def test_budgets_show_only_on_months_they_existed(seeded, db):
    created = dict(_rows(db, "SELECT workflow, created_at FROM budget WHERE workflow IS NOT NULL"))
    assert created["research"] == datetime(2026, 11, 10, tzinfo=UTC)
    with session_scope() as session:
        nov = billing_report(session, enterprise_id="acme", period="2026-11")
        october = billing_report(session, enterprise_id="acme", period="2026-10")
        april = billing_report(session, enterprise_id="acme", period="2026-04")
    assert [(b.scope, b.target) for b in nov.budgets] == [
        ("wallet", "w-alice"),
        ("workflow", "support"),
        ("workflow", "research"),
    ]
    assert [(b.scope, b.target) for b in october.budgets] == [("wallet", "w-alice"), ("workflow", "support")]
    assert april.budgets == []  # before every budget was created


def test_chats_that_ended_or_went_quiet_show_as_completed(seeded, db):
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11", now=now)
    sessions = {c: (s, last) for c, s, last in _rows(db, "SELECT chat_id, status, last_turn_at FROM chat_session")}
    seen = set()
    for c in r.top_chats:
        status, last = sessions[c.chat_id]
        assert c.status == status
        quiet = status == "active" and now - last >= CHAT_INACTIVE
        assert c.ended_by_inactivity is quiet
        assert c.shown_status == ("completed" if quiet else status)
        seen.add((status, quiet, c.shown_status))
    # the seed holds every case: completed, paused, active and quiet, active within 24 hours
    assert {("completed", False, "completed"), ("paused", False, "paused"), ("active", True, "completed")} <= seen
    recent = [c for c in r.top_chats if c.status == "active" and not c.ended_by_inactivity]
    assert recent and all(c.shown_status == "active" for c in recent)
    assert all(now - sessions[c.chat_id][1] < timedelta(hours=24) for c in recent)


def _cents_of(shown: str) -> int:
    if shown.lstrip("-") == "<$0.01":
        return 0
    sign = -1 if shown.startswith("-") else 1
    whole, frac = shown.lstrip("-").removeprefix("$").replace(",", "").split(".")
    return sign * (int(whole) * 100 + int(frac))


def test_the_pdf_statement_shows_billed_and_figures_that_add_up(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    lines = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf_statement(r))).pages).splitlines()
    money = [[w for w in line.split() if "$" in w] for line in lines]
    assert any(line.split()[-2:] == ["Billed", "Cost"] for line in lines)  # the provider table's header
    providers = [m for line, m in zip(lines, money) if " all models " in line]
    [total_llm] = [m for line, m in zip(lines, money) if line.startswith("Total LLM")]
    assert len(providers) == 3 and all(len(m) == 2 for m in providers)
    billed, cost = (_cents_of(x) for x in total_llm)
    assert sum(_cents_of(m[1]) for m in providers) == cost == r.displayed().cost["llm"]
    assert sum(_cents_of(m[0]) for m in providers) == billed == r.displayed().billed["llm"]
    summary = {line.split(" $")[0]: _cents_of(m[0]) for line, m in zip(lines, money) if m and " $" in line}
    assert summary["LLM"] + summary["Meters"] == summary["Total cost"] == round_cents(r.total.cost_nanos)
    assert summary["Total meters"] == summary["Meters"]
