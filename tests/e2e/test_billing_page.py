"""The /billing page in a real headless browser (Debian chromium driven by Playwright): an owner signs
in, sees the period's totals as PostgreSQL computes them, the history chart draws, the exports
download and parse back to the database rows; end users see their wallet only; another app's user
gets 403 on the page and every export.

Screenshots go to ``$TOLLGATE_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.billing_seed import seed
from worker.billing.report import EVENT_COLUMNS, format_usd, provider_color, provider_name, round_cents

pytestmark = pytest.mark.integration

NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture()
def seeded(db):
    return seed(db)


@pytest.fixture()
def shots(tmp_path) -> Path:
    path = Path(os.environ.get("TOLLGATE_SCREENSHOTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _context(browser, server):
    ctx = browser.new_context(base_url=server, viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    return ctx, page


def _sign_in(page, key: str) -> None:
    page.goto("/billing/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def _db_sum(db, column: str, wallet: str | None = None, where: str = "") -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT COALESCE(SUM({column}), 0) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo "
                    f"AND occurred_at < :hi AND (CAST(:w AS text) IS NULL OR wallet_id = :w) {where}"
                ),
                {"lo": NOV[0], "hi": NOV[1], "w": wallet},
            ).scalar_one()
        )


def _nanos(page, testid: str) -> int:
    return int(page.get_attribute(f"[data-testid={testid}]", "data-nanos"))


def test_owner_sees_the_period_totals_chart_and_table(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    assert page.inner_text("[data-testid=period-title]") == "November 2026"
    assert page.inner_text("[data-testid=role]").lower() == "owner"

    total, billed = _db_sum(db, "cost_nanos"), _db_sum(db, "billed_nanos")
    llm, meters = (
        _db_sum(db, "cost_nanos", where="AND meter = 'llm'"),
        _db_sum(db, "cost_nanos", where="AND meter <> 'llm'"),
    )
    assert (
        _nanos(page, "total-cost"),
        _nanos(page, "total-billed"),
        _nanos(page, "llm-cost"),
        _nanos(page, "meters-cost"),
    ) == (total, billed, llm, meters)
    assert page.inner_text("[data-testid=total-cost]") == format_usd(total) == "$34.03"
    assert page.inner_text("[data-testid=total-billed]") == format_usd(billed)
    assert page.inner_text("[data-testid=llm-cost]") == format_usd(llm)
    assert page.inner_text("[data-testid=meters-cost]") == format_usd(meters)

    providers = {
        el.get_attribute("data-provider"): int(el.get_attribute("data-nanos"))
        for el in page.query_selector_all("[data-testid=provider]")
    }
    with db.connect() as conn:
        expected = {
            p: int(c)
            for p, c in conn.execute(
                text(
                    "SELECT provider, sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND meter = 'llm' "
                    "AND occurred_at >= :lo AND occurred_at < :hi GROUP BY provider"
                ),
                {"lo": NOV[0], "hi": NOV[1]},
            )
        }
        top = conn.execute(
            text(
                "SELECT chat_id, sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo "
                "AND occurred_at < :hi GROUP BY chat_id ORDER BY 2 DESC, 1 LIMIT 50"
            ),
            {"lo": NOV[0], "hi": NOV[1]},
        ).all()
    assert providers == expected
    meter_rows = {
        el.get_attribute("data-meter"): (int(el.get_attribute("data-quantity")), int(el.get_attribute("data-nanos")))
        for el in page.query_selector_all("[data-testid=meter-row]")
    }
    assert meter_rows == {
        "emails": (24_690, 2_469_000_000),
        "storage_gb_month": (500_004, 11_500_092_000),
        "function_calls": (6_000_000, 1_200_000_000),
    }
    chats = [
        (el.get_attribute("data-chat"), int(el.get_attribute("data-nanos")))
        for el in page.query_selector_all("[data-testid=chat-row]")
    ]
    assert chats == [(c, int(n)) for c, n in top] and len(chats) == 50
    budgets = {
        el.get_attribute("data-budget-id"): el.get_attribute("data-status")
        for el in page.query_selector_all("[data-testid=budget]")
    }
    assert sorted(budgets.values()) == ["100", "80", "ok"]

    # the chart: a Chart.js instance with the history per provider, and pixels actually drawn
    chart = page.evaluate("""() => {
        const c = Chart.getChart('history-chart');
        return {labels: c.data.labels, sets: c.data.datasets.map(d => ({label: d.label, nanos: d.costNanos}))};
    }""")
    assert chart["labels"] == ["Jun 2026", "Jul 2026", "Aug 2026", "Sep 2026", "Oct 2026", "Nov 2026"]
    assert sum(s["nanos"][-1] for s in chart["sets"]) == total
    assert [s["label"] for s in chart["sets"]][-1] == "Meters"
    painted = page.evaluate("""() => {
        const cv = document.getElementById('history-chart');
        const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return {n, w: cv.width, h: cv.height};
    }""")
    assert painted["w"] > 300 and painted["h"] > 200 and painted["n"] > 5_000, painted
    assert page.errors == []
    page.screenshot(path=str(shots / "billing-owner.png"), full_page=True)
    ctx.close()


def test_exports_download_and_equal_the_database(browser, server, seeded, db, shots):
    from pypdf import PdfReader

    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    files = {}
    for kind in ("csv", "json", "pdf"):
        with page.expect_download() as info:
            page.click(f"[data-testid=export-{kind}]")
        download = info.value
        assert download.suggested_filename == f"tollgate-billing-acme-2026-11.{kind}"
        path = shots / download.suggested_filename
        download.save_as(path)
        files[kind] = path.read_bytes()

    cols = ", ".join(c for c in EVENT_COLUMNS if c != "cost_usd")
    with db.connect() as conn:
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                text(
                    f"SELECT {cols} FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo AND occurred_at < :hi "
                    "ORDER BY occurred_at, id"
                ),
                {"lo": NOV[0], "hi": NOV[1]},
            )
        ]
    for row in rows:
        row["occurred_at"] = row["occurred_at"].astimezone(UTC).isoformat().replace("+00:00", "Z")

    records = list(csv.DictReader(io.StringIO(files["csv"].decode())))
    assert len(records) == len(rows) == 170
    for rec, row in zip(records, rows):
        assert {k: rec[k] for k in row} == {
            k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in row.items()
        }
    body = json.loads(files["json"])
    assert [{k: e[k] for k in rows[0]} for e in body["events"]] == rows
    total = _db_sum(db, "cost_nanos")
    assert body["report"]["total"]["cost_nanos"] == sum(int(r["cost_nanos"]) for r in records) == total

    text_ = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(files["pdf"])).pages)
    billed = _db_sum(db, "billed_nanos")
    assert f"Total cost {format_usd(total)} {total:,}" in text_
    assert f"Billed {format_usd(billed)} {billed:,}" in text_
    ctx.close()


def test_another_app_s_user_gets_403_on_the_page_and_every_export(browser, server, seeded, shots):
    for who in ("other_owner", "other_end_user"):
        ctx, page = _context(browser, server)
        _sign_in(page, seeded.keys[who])
        assert page.url.endswith("/billing")  # signed in: their own app's page
        assert "Other Corp" in page.inner_text("header")
        response = page.goto("/billing?period=2026-11&enterprise_id=acme")
        assert response.status == 403
        assert "may not see the billing of enterprise 'acme'" in page.inner_text("main")
        if who == "other_owner":
            page.screenshot(path=str(shots / "billing-403.png"), full_page=True)
        for kind in ("csv", "json", "pdf"):
            r = page.request.get(f"/billing/export.{kind}?period=2026-11&enterprise_id=acme")  # the same cookie
            assert r.status == 403, (who, kind)
            assert r.json()["errors"][0]["field"] == "enterprise_id"
        ctx.close()


def test_end_user_sees_only_their_wallet_and_admin_no_chats(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    link = page.goto(f"/billing?period=2026-11&key={seeded.keys['end_user']}")  # a sign-in link: refused
    assert link.status == 400 and "an API key in the URL is never accepted" in page.inner_text("main")
    assert not [c for c in ctx.cookies() if c["name"] == "tollgate_session"]
    _sign_in(page, seeded.keys["end_user"])
    page.goto("/billing?period=2026-11")
    assert _nanos(page, "total-cost") == _db_sum(db, "cost_nanos", wallet="w-alice") == 9_201_607_850
    assert page.inner_text("[data-testid=total-cost]") == "$9.20"
    assert "w-alice" in page.inner_text("[data-testid=scope-note]")
    chats = page.query_selector_all("[data-testid=chat-row]")
    assert len(chats) == 22 and all(c.get_attribute("data-chat").startswith("chat-") for c in chats)
    assert len(page.query_selector_all("[data-testid=budget]")) == 1
    page.screenshot(path=str(shots / "billing-end-user.png"), full_page=True)
    ctx.close()

    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["admin"])
    page.goto("/billing?period=2026-11&enterprise_id=acme")
    assert _nanos(page, "total-cost") == _db_sum(db, "cost_nanos")
    assert page.query_selector("[data-testid=top-chats]") is None
    page.screenshot(path=str(shots / "billing-admin.png"), full_page=True)
    ctx.close()


def test_choosing_another_period_shows_its_figures(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    with page.expect_navigation():
        page.select_option("[data-testid=period-select]", "2026-10")
    assert page.url.endswith("period=2026-10")
    assert page.inner_text("[data-testid=period-title]") == "October 2026"
    with db.connect() as conn:
        october = int(
            conn.execute(
                text(
                    "SELECT sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' "
                    "AND occurred_at >= '2026-10-01Z' AND occurred_at < '2026-11-01Z'"
                )
            ).scalar_one()
        )
    assert _nanos(page, "total-cost") == october
    page.goto("/billing?period=2027-02")  # an empty month
    assert _nanos(page, "total-cost") == 0 and "No LLM turns in February 2027" in page.inner_text("main")
    page.screenshot(path=str(shots / "billing-empty.png"), full_page=True)
    bad = page.goto("/billing?period=2026-13")
    assert bad.status == 422 and "period: '2026-13' is not a month written YYYY-MM" in page.inner_text("main")
    ctx.close()


def test_sign_in_keeps_a_session_id_and_sign_out_ends_it(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])  # the form's CSRF token and this site's Origin: accepted
    assert page.url.endswith("/billing") and page.inner_text("[data-testid=role]").lower() == "owner"
    [cookie] = [c for c in ctx.cookies() if c["name"] == "tollgate_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/billing"
    assert seeded.keys["owner"] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # nothing readable by scripts
    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url.endswith("/billing/login")
    assert page.goto("/billing?period=2026-11").status == 401  # signed out
    # the old cookie, replayed, is worth nothing: the session is gone on the server
    ctx.add_cookies([{**cookie}])
    assert page.goto("/billing?period=2026-11").status == 401
    ctx.close()


def test_a_sign_in_form_posted_from_another_site_is_refused(browser, server, seeded):
    ctx, page = _context(browser, server)
    page.goto("/billing/login")  # the browser holds a CSRF cookie for the site
    evil = ctx.new_page()
    evil.route(
        "http://evil.test/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form id=f method=post action="{server}/billing/login">'
                f'<input name=key value="{seeded.keys["owner"]}"><input name=csrf_token value="guess"></form>'
                "<script>document.getElementById('f').submit()</script>"
            ),
        ),
    )
    with evil.expect_navigation(url=f"{server}/billing/login"):
        evil.goto("http://evil.test/")
    assert "is not this site" in evil.inner_text("main") or "csrf_token" in evil.inner_text("main")
    assert not [c for c in ctx.cookies() if c["name"] == "tollgate_session"]
    ctx.close()


# issue 18 item 5: figures that add up ---------------------------------------------------------------
def _cents(shown: str) -> int:
    """A displayed amount ("$1,234.56", "-$0.07", "<$0.01") → integer cents; "<$0.01" counts as 0."""
    s = shown.strip()
    if s.lstrip("-") == "<$0.01":
        return 0
    sign = -1 if s.startswith("-") else 1
    whole, frac = s.lstrip("-").removeprefix("$").replace(",", "").split(".")
    return sign * (int(whole) * 100 + int(frac))


def _texts(scope, selector: str) -> list[int]:
    return [_cents(el.inner_text()) for el in scope.query_selector_all(selector)]


def _assert_figures_add_up(page, db, wallet: str | None) -> None:
    cost, llm, meters = (
        _cents(page.inner_text(f"[data-testid={t}]")) for t in ("total-cost", "llm-cost", "meters-cost")
    )
    assert cost == round_cents(_db_sum(db, "cost_nanos", wallet=wallet))  # the total, rounded alone
    assert llm + meters == cost  # the cards add up as displayed
    assert _cents(page.inner_text("[data-testid=total-billed]")) == round_cents(
        _db_sum(db, "billed_nanos", wallet=wallet)
    )
    # the provider table: providers sum to Total LLM, models to their provider (cost and billed)
    assert _cents(page.inner_text("[data-testid=llm-cost-total]")) == llm
    assert sum(_texts(page, "[data-testid=provider-cost]")) == llm
    billed_llm = _cents(page.inner_text("[data-testid=llm-billed-total]"))
    assert sum(_texts(page, "[data-testid=provider-billed]")) == billed_llm
    for group in page.query_selector_all("[data-testid=provider]"):
        provider = group.get_attribute("data-provider")
        exact = _db_sum(db, "cost_nanos", wallet=wallet, where=f"AND meter = 'llm' AND provider = '{provider}'")
        shown = _cents(group.query_selector("[data-testid=provider-cost]").inner_text())
        assert exact // 10_000_000 <= shown <= exact // 10_000_000 + 1, provider  # within a cent, to SQL
        assert sum(_texts(group, "[data-testid=model-cost]")) == shown
        assert sum(_texts(group, "[data-testid=model-billed]")) == _cents(
            group.query_selector("[data-testid=provider-billed]").inner_text()
        )
    assert sum(_texts(page, "[data-testid=meter-cost]")) == _cents(page.inner_text("[data-testid=meters-cost-total]"))
    assert _cents(page.inner_text("[data-testid=meters-cost-total]")) == meters
    # no non-zero amount anywhere reads $0.00
    for el in page.query_selector_all("[data-testid=meter-row]"):
        if int(el.get_attribute("data-nanos")):
            assert el.query_selector("[data-testid=meter-cost]").inner_text() != "$0.00"


def test_displayed_figures_add_up_and_colours_stay_with_their_provider(
    browser, server, seeded, db, shots, redis_client
):
    # redis_client flushes the test Redis db: the sign-in rate limit (10/minute per address) starts afresh
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    _assert_figures_add_up(page, db, None)

    # one colour per provider: the table's dot, the chart's dataset and the server's map agree
    dots = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-provider-dot]')]
        .map(el => [el.dataset.providerDot, getComputedStyle(el).backgroundColor]))""")
    chart = page.evaluate("""() => Object.fromEntries(Chart.getChart('history-chart').data.datasets
        .map(d => [d.label, d.backgroundColor]))""")
    assert set(dots) == {"openai", "anthropic", "google"}
    for provider, rgb in dots.items():
        hexed = provider_color(provider).lstrip("#")
        assert rgb == "rgb({}, {}, {})".format(*(int(hexed[i : i + 2], 16) for i in (0, 2, 4)))
        assert chart[provider_name(provider)] == provider_color(provider)
    # the chart's tooltip figures: providers add up to the month's total, in cents
    sums = page.evaluate("""() => { const c = Chart.getChart('history-chart');
        return c.data.labels.map((_, i) => c.data.datasets.reduce((s, d) => s + d.cents[i], 0)); }""")
    history = json.loads(page.inner_text("#history-data"))
    assert sums == history["total_cents"] and history["total_cents"][-1] == round_cents(_db_sum(db, "cost_nanos"))

    # chats: a chat ended by the chat-end job, or with no turn for 24 hours, reads "completed"
    now = datetime.now(UTC)
    with db.connect() as conn:
        sessions = {
            c: (s, last) for c, s, last in conn.execute(text("SELECT chat_id, status, last_turn_at FROM chat_session"))
        }
    for row in page.query_selector_all("[data-testid=chat-row]"):
        status, last = sessions.get(row.get_attribute("data-chat"), (None, None))
        shown = row.query_selector("[data-testid=chat-status]").get_attribute("data-status")
        quiet = status == "active" and now - last >= timedelta(hours=24)
        assert shown == ("completed" if quiet or status == "completed" else status or "")
    page.screenshot(path=str(shots / "billing-owner-figures.png"), full_page=True)

    # the end user's page: the same rules, the same colours
    ctx.close()
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["end_user"])
    page.goto("/billing?period=2026-11")
    _assert_figures_add_up(page, db, "w-alice")
    colours = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-provider-dot]')]
        .map(el => [el.dataset.providerDot, el.dataset.color]))""")
    assert colours and all(c == provider_color(p) for p, c in colours.items())
    assert page.errors == []
    ctx.close()


def test_budgets_only_on_months_they_existed_and_the_phone_width(browser, server, seeded, db, shots, redis_client):
    # redis_client flushes the test Redis db: the sign-in rate limit (10/minute per address) starts afresh
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-10")  # the research budget was created on 2026-11-10
    with db.connect() as conn:
        existed = conn.execute(
            text("SELECT count(*) FROM budget WHERE enterprise_id = 'acme' AND created_at < '2026-11-01Z'")
        ).scalar_one()
    assert len(page.query_selector_all("[data-testid=budget]")) == existed == 2
    page.goto("/billing?period=2026-11")
    assert len(page.query_selector_all("[data-testid=budget]")) == 3
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto("/billing?period=2026-11")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    wider = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(el => el.getBoundingClientRect().right > 375 && !el.closest('.table-wrap'))
        .map(el => el.tagName + '.' + el.className + ' ' + Math.round(el.getBoundingClientRect().right))""")
    assert width <= 375, (width, wider)  # wide tables scroll inside their card, the page does not
    _assert_figures_add_up(page, db, None)
    page.screenshot(path=str(shots / "billing-owner-375.png"), full_page=True)
    ctx.close()


# issue 18 item 1: balances and the ledger ----------------------------------------------------------
def test_wallets_balances_reserved_and_the_paged_ledger(browser, server, seeded, db, shots, gate):
    # the gate fixture flushes the test Redis db (fresh sign-in limit) and gives w-bob a live hold
    with db.connect() as conn:
        bob_balance = int(
            conn.execute(text("SELECT credits_nanos - debits_nanos FROM wallet WHERE id = 'w-bob'")).scalar_one()
        )
        signed = "CASE WHEN kind = 'credit' THEN amount_nanos ELSE -amount_nanos END"
        sql = {
            w: tuple(int(x) for x in rest)
            for w, *rest in conn.execute(
                text(
                    f"SELECT wallet_id, COALESCE(SUM({signed}) FILTER (WHERE created_at < :lo), 0), "
                    "COALESCE(SUM(amount_nanos) FILTER (WHERE kind = 'credit' AND created_at >= :lo AND created_at < :hi), 0), "
                    "COALESCE(SUM(amount_nanos) FILTER (WHERE kind = 'debit' AND created_at >= :lo AND created_at < :hi), 0) "
                    "FROM wallet_transaction WHERE wallet_id LIKE 'w-%' GROUP BY wallet_id"
                ),
                {"lo": NOV[0], "hi": NOV[1]},
            )
        }
        ledger = [
            int(i)
            for (i,) in conn.execute(
                text(
                    "SELECT t.id FROM wallet_transaction t JOIN wallet w ON w.id = t.wallet_id WHERE w.enterprise_id = 'acme' "
                    "AND t.created_at >= :lo AND t.created_at < :hi ORDER BY t.created_at DESC, t.id DESC"
                ),
                {"lo": NOV[0], "hi": NOV[1]},
            )
        ]
    gate.load_wallet("w-bob", mode="production", limited=True, balance_nanos=bob_balance, enterprise_id="acme")
    gate.reserve("w-bob", 1_234_567_891, ttl_s=3600)

    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    rows = {el.get_attribute("data-wallet"): el for el in page.query_selector_all("[data-testid=wallet-row]")}
    assert set(rows) == {"w-alice", "w-bob", "w-carol"}
    for w, el in rows.items():
        o, c, d = sql.get(w, (0, 0, 0))
        assert (
            int(el.get_attribute("data-opening-nanos")),
            int(el.get_attribute("data-credits-nanos")),
            int(el.get_attribute("data-debits-nanos")),
            int(el.get_attribute("data-closing-nanos")),
        ) == (o, c, d, o + c - d)
        shown = {
            k: _cents(el.query_selector(f"[data-testid=wallet-{k}]").inner_text().split("\n")[0])
            for k in ("opening", "credits", "debits", "closing")
        }
        assert shown["opening"] + shown["credits"] - shown["debits"] == shown["closing"] == round_cents(o + c - d)
    assert rows["w-bob"].get_attribute("data-reserved-nanos") == "1234567891"
    assert rows["w-bob"].query_selector("[data-testid=wallet-reserved]").inner_text() == "$1.23"
    assert rows["w-alice"].query_selector("[data-testid=wallet-reserved]").inner_text() == "–"  # not in the gate
    assert "Stripe $10.01" in rows["w-bob"].inner_text()
    assert "Allowance $5.00" in rows["w-alice"].inner_text() and "Operator $1.00" in rows["w-alice"].inner_text()
    assert rows["w-carol"].get_attribute("data-state") == "blocked"

    ids = [int(el.get_attribute("data-id")) for el in page.query_selector_all("[data-testid=ledger-row]")]
    page.screenshot(path=str(shots / "billing-wallets-ledger.png"), full_page=True)
    with page.expect_navigation():
        page.click("[data-testid=ledger-next]")
    assert page.inner_text("[data-testid=ledger-page]") == "2"
    ids += [int(el.get_attribute("data-id")) for el in page.query_selector_all("[data-testid=ledger-row]")]
    assert ids == ledger and len(ids) == 59
    assert page.errors == []
    ctx.close()

    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["end_user"])
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto("/billing?period=2026-11")
    assert [el.get_attribute("data-wallet") for el in page.query_selector_all("[data-testid=wallet-row]")] == [
        "w-alice"
    ]
    assert {el.get_attribute("data-wallet") for el in page.query_selector_all("[data-testid=ledger-row]")} == {
        "w-alice"
    }
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(shots / "billing-end-user-375.png"), full_page=True)
    ctx.close()


def test_the_admin_picks_an_app_and_signs_out(browser, server, seeded, db, shots, redis_client):
    # redis_client flushes the test Redis db: the sign-in rate limit (10/minute per address) starts afresh
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["admin"])  # lands on /billing: no app named
    assert page.url.endswith("/billing")
    assert page.query_selector("[data-testid=app-picker]") is not None
    assert sorted(el.get_attribute("data-app") for el in page.query_selector_all("[data-testid=app-link]")) == [
        "acme",
        "other",
    ]
    page.screenshot(path=str(shots / "billing-admin-picker.png"), full_page=True)
    with page.expect_navigation():
        page.click("[data-testid=app-link][data-app=acme]")
    assert "period=" in page.url and "enterprise_id=acme" in page.url
    assert page.inner_text("[data-testid=role]").lower() == "admin"
    with page.expect_navigation():
        page.click("[data-testid=switch-app]")
    assert page.query_selector("[data-testid=app-picker]") is not None
    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url.endswith("/billing/login")
    assert page.errors == []
    ctx.close()
