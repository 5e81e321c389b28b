"""The billing report and its exports against real PostgreSQL: every figure equals what SQL computes
from ``usage_event`` (and ``budget``/``budget_alert``) to the nano, scoped to the caller's app and
wallet; exports carry the database rows exactly; other apps' keys get 403 everywhere."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.billing_seed import seed
from worker.billing.report import (
    EVENT_COLUMNS,
    TOP_CHATS,
    ReportError,
    billing_report,
    format_bp,
    format_quantity,
    format_usd,
)
from worker.db import session_scope

pytestmark = pytest.mark.integration

NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
EXPORTS = ("/billing/export.csv", "/billing/export.json", "/billing/export.pdf")


@pytest.fixture()
def seeded(db):
    return seed(db)


@pytest.fixture()
def client(seeded):
    from api_stub.main import app

    return TestClient(app)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _sql(db, query: str, **params):
    with db.connect() as conn:
        return conn.execute(text(query), params).all()


def _db_events(db, enterprise: str, wallet: str | None = None) -> list[dict]:
    """The period's usage events straight from PostgreSQL, as the export should carry them."""
    cols = ", ".join(c for c in EVENT_COLUMNS if c != "cost_usd")
    rows = _sql(
        db,
        f"SELECT {cols} FROM usage_event WHERE enterprise_id = :e AND occurred_at >= :lo "
        "AND occurred_at < :hi AND (CAST(:w AS text) IS NULL OR wallet_id = :w) ORDER BY occurred_at, id",
        e=enterprise,
        lo=NOV[0],
        hi=NOV[1],
        w=wallet,
    )
    return [dict(r._mapping) for r in rows]


def _db_sum(db, column: str, enterprise: str = "acme", wallet: str | None = None, extra: str = "") -> int:
    ((value,),) = _sql(
        db,
        f"SELECT COALESCE(SUM({column}), 0) FROM usage_event WHERE enterprise_id = :e "
        "AND occurred_at >= :lo AND occurred_at < :hi "
        f"AND (CAST(:w AS text) IS NULL OR wallet_id = :w) {extra}",
        e=enterprise,
        lo=NOV[0],
        hi=NOV[1],
        w=wallet,
    )
    return int(value)


# the data function ------------------------------------------------------------------------------
def test_report_totals_providers_and_meters_equal_sql_to_the_nano(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")

    assert r.total.cost_nanos == _db_sum(db, "cost_nanos") == 34_028_590_300
    assert r.total.billed_nanos == _db_sum(db, "billed_nanos") == 32_468_800_650
    assert r.total.events == _db_sum(db, "1") == 170
    assert r.llm.cost_nanos == _db_sum(db, "cost_nanos", extra="AND meter = 'llm'")
    assert r.meters_total.cost_nanos == _db_sum(db, "cost_nanos", extra="AND meter <> 'llm'") == 15_169_092_000
    assert r.llm.cost_nanos + r.meters_total.cost_nanos == r.total.cost_nanos

    expected = {
        (p, m): (int(n), int(pt), int(ct), int(cpt), int(c), int(b))
        for p, m, n, pt, ct, cpt, c, b in _sql(
            db,
            "SELECT provider, model, count(*), sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), "
            "sum(cost_nanos), sum(billed_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND meter = 'llm' "
            "AND occurred_at >= :lo AND occurred_at < :hi GROUP BY 1, 2",
            lo=NOV[0],
            hi=NOV[1],
        )
    }
    got = {
        (p.provider, m.model): (
            m.figures.events,
            m.figures.prompt_tokens,
            m.figures.cached_prompt_tokens,
            m.figures.completion_tokens,
            m.figures.cost_nanos,
            m.figures.billed_nanos,
        )
        for p in r.providers
        for m in p.models
    }
    assert got == expected
    assert [p.provider for p in r.providers] == ["anthropic", "openai", "google"]  # by cost, descending
    for p in r.providers:
        assert p.figures.cost_nanos == sum(m.figures.cost_nanos for m in p.models)

    meters = {m.info.meter: (m.figures.quantity, m.figures.cost_nanos) for m in r.meters}
    assert meters == {
        "emails": (24_690, 24_690 * 100_000),  # $0.10 per 1,000 emails
        "storage_gb_month": (500_004, 500_004 * 23_000),  # $0.023 per GB-month = 23,000 nanos per MB-month
        "function_calls": (6_000_000, 6_000_000 * 200),  # $0.20 per 1M calls
    }
    for meter, (quantity, cost) in meters.items():
        assert _db_sum(db, "quantity", extra=f"AND meter = '{meter}'") == quantity
        assert _db_sum(db, "cost_nanos", extra=f"AND meter = '{meter}'") == cost


def test_period_edges_and_other_apps_are_excluded(seeded, db):
    from worker.billing.report import iter_events

    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
        other = billing_report(session, enterprise_id="other", period="2026-11")
        stamps = {e["occurred_at"] for e in iter_events(session, enterprise_id="acme", period="2026-11")}
    assert "2026-11-30T23:59:59.999999Z" in stamps  # the period's last microsecond is in it
    assert "2026-12-01T00:00:00Z" not in stamps and "2026-10-31T23:59:59Z" not in stamps
    assert r.total.events == len(_db_events(db, "acme")) == 170
    assert r.chats_in_period == 65  # 64 chats and chat-edge
    assert (
        other.total.cost_nanos
        == _db_sum(db, "cost_nanos", enterprise="other")
        == 5 * (900_000 * 2_500 + 90_000 * 10_000)
    )
    assert {p.provider for p in other.providers} == {"openai"}
    assert r.total.cost_nanos + other.total.cost_nanos == _db_sum(
        db,
        "cost_nanos",
        extra="OR enterprise_id = 'other' AND occurred_at >= '2026-11-01Z' AND occurred_at < '2026-12-01Z'",
    )


def test_end_user_view_is_only_the_wallet_s_rows_and_budget(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11", wallet_id="w-alice")
    assert r.total.cost_nanos == _db_sum(db, "cost_nanos", wallet="w-alice") == 9_201_607_850
    assert r.total.billed_nanos == _db_sum(db, "billed_nanos", wallet="w-alice")
    assert {c.wallet_id for c in r.top_chats} == {"w-alice"}
    assert [(b.scope, b.target) for b in r.budgets] == [("wallet", "w-alice")]


def test_budgets_spend_thresholds_and_alerts_of_the_period(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    alice, support, research = r.budgets
    assert alice.spent_nanos == _db_sum(db, "billed_nanos", wallet="w-alice") == 8_599_387_350  # wallets: billed
    assert support.spent_nanos == _db_sum(db, "cost_nanos", extra="AND workflow = 'support'")  # workflows: cost
    assert research.spent_nanos == _db_sum(db, "cost_nanos", extra="AND workflow = 'research'")
    assert (alice.used_bp, alice.reached, alice.status) == (8599, [50, 80], "80")
    assert support.reached == [50, 80, 100] and support.status == "100"
    assert research.reached == [] and research.status == "ok"
    assert [a.threshold_pct for a in alice.alerts] == [50, 80]
    assert [a.threshold_pct for a in support.alerts] == [50, 80, 100]  # October's alert is not November's
    assert len(r.budgets) == 3  # the 'other' app's budget is not listed


def test_top_chats_are_the_50_costliest_of_the_period(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    expected = [
        (c, int(n), int(cost))
        for c, n, cost in _sql(
            db,
            "SELECT chat_id, count(*), sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' "
            "AND occurred_at >= :lo AND occurred_at < :hi GROUP BY chat_id ORDER BY 3 DESC, 1 LIMIT 50",
            lo=NOV[0],
            hi=NOV[1],
        )
    ]
    assert len(r.top_chats) == TOP_CHATS == 50
    assert [(c.chat_id, c.figures.events, c.figures.cost_nanos) for c in r.top_chats] == expected
    statuses = dict(_sql(db, "SELECT chat_id, status FROM chat_session WHERE enterprise_id = 'acme'"))
    assert all(c.status == statuses.get(c.chat_id) for c in r.top_chats)


def test_history_is_six_months_of_cost_per_provider(seeded, db):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11")
    assert r.history.periods == ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]
    expected: dict[str, list[int]] = {}
    for month, provider, cost in _sql(
        db,
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM'), provider, sum(cost_nanos) FROM usage_event "
        "WHERE enterprise_id = 'acme' AND occurred_at >= '2026-06-01Z' AND occurred_at < '2026-12-01Z' "
        "GROUP BY 1, 2",
    ):
        expected.setdefault(provider, [0] * 6)[r.history.periods.index(month)] = int(cost)
    assert r.history.by_provider == expected
    assert list(r.history.by_provider)[-1] == "tollgate"  # meters stack last
    assert r.history.totals[-1] == r.total.cost_nanos
    ((may,),) = _sql(
        db, "SELECT count(*) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at < '2026-06-01Z'"
    )
    assert may == 4  # exists, and is outside the window


def test_admin_view_has_no_end_user_detail(seeded):
    with session_scope() as session:
        r = billing_report(session, enterprise_id="acme", period="2026-11", detail=False)
    assert r.top_chats == [] and r.chats_in_period == 0
    assert [(b.scope, b.target) for b in r.budgets] == [("workflow", "support"), ("workflow", "research")]
    assert r.total.cost_nanos == 34_028_590_300


@pytest.mark.parametrize("period", ["2026-13", "2026-1", "26-11", "", "2026-11-01", None, "abcd-ef"])
def test_bad_period_names_the_field(seeded, period):
    with session_scope() as session, pytest.raises(ReportError, match=r"^period: "):
        billing_report(session, enterprise_id="acme", period=period)


def test_unknown_enterprise_names_the_field(seeded):
    with session_scope() as session, pytest.raises(ReportError, match=r"^enterprise_id: "):
        billing_report(session, enterprise_id="ghost", period="2026-11")


def test_money_formatting_is_integer_exact():
    assert format_usd(34_028_590_300) == "$34.03"
    assert format_usd(4_999_999) == "$0.00" and format_usd(5_000_000) == "$0.01"  # half-up at the cent
    assert format_usd(1_234_567_895_000_000) == "$1,234,567.90"
    assert format_usd(-1_500_000_000) == "-$1.50" and format_usd(-1) == "$0.00"
    assert format_usd(123_456_789, 4) == "$0.1235" and format_usd(7, 9) == "$0.000000007"
    assert format_quantity("storage_gb_month", 500_004) == "500.004" and format_quantity("emails", 24_690) == "24,690"
    assert format_bp(8598) == "85.9 %" and format_bp(10943) == "109.4 %"
    with pytest.raises(ValueError, match="^places"):
        format_usd(1, 10)


# exports over HTTP ------------------------------------------------------------------------------
def _csv_records(body: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body)))


def _as_csv(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        out[k] = (
            ("true" if v else "false")
            if isinstance(v, bool)
            else v.astimezone(UTC).isoformat().replace("+00:00", "Z")
            if isinstance(v, datetime)
            else str(v)
        )
    return out


def test_csv_export_is_the_database_rows_exactly(client, seeded, db):
    r = client.get("/billing/export.csv?period=2026-11", headers=_auth(seeded.keys["owner"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="tollgate-billing-acme-2026-11.csv"'
    records = _csv_records(r.text)
    assert list(records[0]) == list(EVENT_COLUMNS)
    expected = [_as_csv(row) for row in _db_events(db, "acme")]
    assert [{k: v for k, v in rec.items() if k != "cost_usd"} for rec in records] == expected
    assert sum(int(rec["cost_nanos"]) for rec in records) == _db_sum(db, "cost_nanos") == 34_028_590_300
    assert all(
        rec["cost_usd"] == f"{int(rec['cost_nanos']) // 10**9}.{int(rec['cost_nanos']) % 10**9:09d}" for rec in records
    )


def test_json_export_is_the_report_and_the_database_rows(client, seeded, db):
    r = client.get("/billing/export.json?period=2026-11", headers=_auth(seeded.keys["owner"]))
    assert r.status_code == 200, r.text
    body = json.loads(r.text)
    events = body["events"]
    expected = _db_events(db, "acme")
    assert len(events) == len(expected) == 170
    for got, want in zip(events, expected):
        want = {**want, "occurred_at": want["occurred_at"].astimezone(UTC).isoformat().replace("+00:00", "Z")}
        assert {k: v for k, v in got.items() if k != "cost_usd"} == want
    report = body["report"]
    assert report["total"]["cost_nanos"] == _db_sum(db, "cost_nanos") == 34_028_590_300
    assert report["total"]["cost_usd"] == "34.028590300"
    assert report["total"]["billed_nanos"] == _db_sum(db, "billed_nanos")
    assert sum(e["cost_nanos"] for e in events) == report["total"]["cost_nanos"]
    assert len(report["top_chats"]) == 50 and report["history"]["periods"][-1] == "2026-11"


def test_end_user_exports_hold_only_their_wallet(client, seeded, db):
    key = _auth(seeded.keys["end_user"])
    records = _csv_records(client.get("/billing/export.csv?period=2026-11", headers=key).text)
    assert {r["wallet_id"] for r in records} == {"w-alice"}
    assert [_as_csv(row) for row in _db_events(db, "acme", "w-alice")] == [
        {k: v for k, v in rec.items() if k != "cost_usd"} for rec in records
    ]
    body = client.get("/billing/export.json?period=2026-11", headers=key).json()
    assert body["report"]["total"]["cost_nanos"] == _db_sum(db, "cost_nanos", wallet="w-alice")


def test_pdf_export_opens_and_lists_the_same_totals(client, seeded, db):
    from pypdf import PdfReader

    r = client.get("/billing/export.pdf?period=2026-11", headers=_auth(seeded.keys["owner"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(r.content))
    assert len(reader.pages) >= 2
    text_ = "\n".join(page.extract_text() for page in reader.pages)
    total, billed = _db_sum(db, "cost_nanos"), _db_sum(db, "billed_nanos")
    assert f"Total cost {format_usd(total)} {total:,}" in text_  # "Total cost $34.03 34,028,590,300"
    assert f"Billed {format_usd(billed)} {billed:,}" in text_
    assert "Billing statement - November 2026" in text_ and "Top conversations (50 of 65)" in text_
    assert "500.004 GB-months $11.50" in text_


def test_admin_exports_aggregates_only(client, seeded, db):
    key = _auth(seeded.keys["admin"])
    records = _csv_records(client.get("/billing/export.csv?period=2026-11&enterprise_id=acme", headers=key).text)
    assert "wallet_id" not in records[0] and "chat_id" not in records[0]
    assert sum(int(r["cost_nanos"]) for r in records) == _db_sum(db, "cost_nanos")
    body = client.get("/billing/export.json?period=2026-11&enterprise_id=acme", headers=key).json()
    assert "events" not in body and body["report"]["top_chats"] == []
    page = client.get("/billing?period=2026-11&enterprise_id=acme", headers=key)
    assert page.status_code == 200 and 'data-testid="top-chats"' not in page.text
    missing = client.get("/billing/export.csv?period=2026-11", headers=key)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "enterprise_id"


@pytest.mark.parametrize("who", ["other_owner", "other_end_user"])
def test_another_app_s_keys_get_403_on_the_page_and_every_export(client, seeded, who):
    key = _auth(seeded.keys[who])
    for path in ("/billing", *EXPORTS):
        r = client.get(f"{path}?period=2026-11&enterprise_id=acme", headers=key)
        assert r.status_code == 403, (path, r.text)
        assert "34.03" not in r.text
    # their own app is theirs to see
    assert client.get("/billing/export.json?period=2026-11", headers=key).json()["report"]["enterprise_id"] == "other"


def test_missing_or_bad_keys_are_401_and_bad_periods_422_naming_the_field(client, seeded):
    for path in EXPORTS:
        assert client.get(f"{path}?period=2026-11").status_code == 401
        assert client.get(f"{path}?period=2026-11", headers=_auth("tg_000000000000_x")).status_code == 401
        bad = client.get(f"{path}?period=2026-13", headers=_auth(seeded.keys["owner"]))
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["errors"] == [{"field": "period", "message": bad.json()["detail"]}]
    page = client.get("/billing?period=nope", headers=_auth(seeded.keys["owner"]))
    assert page.status_code == 422 and "period: &#39;nope&#39; is not a month" in page.text
    assert client.get("/billing").status_code == 401  # the sign-in form


def test_sign_in_sets_an_httponly_session_cookie_and_a_key_in_the_url_is_refused(client, seeded):
    # a key in the URL (it would land in access logs and history) never signs in: 400, no cookie
    r = client.get(f"/billing?period=2026-11&key={seeded.keys['owner']}", follow_redirects=False)
    assert r.status_code == 400 and "key: an API key in the URL is never accepted" in r.text
    assert "tollgate_session" not in r.headers.get("set-cookie", "") and seeded.keys["owner"] not in str(r.headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/billing/login").text).group(1)
    origin = {"Origin": "http://testserver"}
    r = client.post(
        "/billing/login",
        data={"key": seeded.keys["owner"], "csrf_token": token, "next": "/billing?period=2026-11"},
        headers=origin,
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/billing?period=2026-11"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("tollgate_session="))
    assert "HttpOnly" in cookie and "Path=/billing" in cookie and "SameSite=lax" in cookie
    assert seeded.keys["owner"] not in cookie  # a session id, never the key
    page = client.get("/billing?period=2026-11")  # the client keeps the cookie
    assert page.status_code == 200 and 'data-nanos="34028590300"' in page.text
    client.cookies.clear()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/billing/login").text).group(1)
    form = client.post(
        "/billing/login",
        data={"key": seeded.keys["owner"], "next": "//evil.example/", "csrf_token": token},
        headers=origin,
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"] == "/billing"  # no open redirect
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/billing/login").text).group(1)
    wrong = client.post(
        "/billing/login",
        data={"key": "tg_000000000000_nope", "csrf_token": token},
        headers=origin,
        follow_redirects=False,
    )
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
