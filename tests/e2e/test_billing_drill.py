"""The /billing page's drill-down in a real headless browser (Debian chromium, Playwright): a
conversation's page (figures, agents, keyset-paged turns), a workflow's month (the rollup's
averages), the date-range view and the month picker reaching any month with data.  Every figure is
checked against PostgreSQL to the nano, displayed parts against their displayed totals, and each
new view has its 403/404 tests; screenshots at 1280 and 375 px go to ``$TOLLGATE_SCREENSHOTS``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from sqlalchemy import insert, text

from models.chat import ChatAgentUsage, ChatSession
from models.turn import UsageEvent
from tests.billing_seed import _agent_usage, _chat_totals, _event, mark_groups_dirty, seed
from tests.e2e.test_billing_page import _cents, _context, _sign_in, _texts, shots  # noqa: F401
from worker.billing.report import format_cents, format_money, round_cents
from worker.chats.rollups import refresh_rollup
from worker.db import session_scope

pytestmark = pytest.mark.integration

LONG_CHAT = "chat-long"
ODD_CHAT = "team/α?x=1#2%41"
NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture()
def seeded(db, redis_client):
    """The billing seed plus ``chat-long`` (w-alice, 'support'): 131 turns from Oct 31 to Nov 1
    (two monthly partitions), several sharing one ``occurred_at``, some costing under half a cent.
    ``redis_client`` flushes the test Redis db (a fresh sign-in limit)."""
    s = seed(db)
    rows = []
    start = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    models = [("openai", "gpt-4o"), ("google", "gemini-2.0-flash"), ("anthropic", "claude-sonnet-4")]
    for i in range(131):
        provider, model = models[i % 3]
        tiny = i % 10 == 7  # 10 prompt tokens of gemini: 1,000 nanos, shown "<$0.01"
        rows.append(
            _event(
                50_000 + i,
                enterprise="acme",
                wallet="w-alice",
                chat=LONG_CHAT,
                workflow="support",
                provider="google" if tiny else provider,
                model="gemini-2.0-flash" if tiny else model,
                at=start + timedelta(minutes=i // 3),  # three turns per minute: equal times, ordered by id
                prompt=10 if tiny else 1_000 + 37 * i,
                cached=0 if tiny else (200 if i % 2 else 0),
                completion=0 if tiny else 100 + 11 * i,
            )
        )
    rows.append(  # an id that needs escaping in a URL path
        _event(
            60_000,
            enterprise="acme",
            wallet="w-alice",
            chat=ODD_CHAT,
            workflow="ops/α#1",
            provider="openai",
            model="gpt-4o",
            at=datetime(2026, 11, 29, 12, tzinfo=UTC),
            prompt=5_000,
            completion=500,
        )
    )
    with db.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), rows)
        mark_groups_dirty(conn)  # as the drain marks the groups of the rows it inserts
        ids = dict(
            conn.execute(
                insert(ChatSession.__table__).returning(ChatSession.__table__.c.chat_id, ChatSession.__table__.c.id),
                _chat_totals(rows, []),
            ).all()
        )
        conn.execute(insert(ChatAgentUsage.__table__), _agent_usage(rows, ids))
    return s


def _bearer(browser, server, key: str):
    ctx = browser.new_context(
        base_url=server, viewport={"width": 1280, "height": 900}, extra_http_headers={"Authorization": f"Bearer {key}"}
    )
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    return ctx, page


def _sql(db, sql: str, **params) -> list:
    with db.connect() as conn:
        return conn.execute(text(sql), params).all()


def _refresh_rollups(db) -> None:
    """Roll up every workflow × month of acme, as the beat job does (committed)."""
    groups = _sql(
        db,
        "SELECT DISTINCT workflow, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') FROM usage_event "
        "WHERE enterprise_id = 'acme'",
    )
    with session_scope() as session:
        for w, p in sorted(groups):
            refresh_rollup(session, "acme", w, p)


def _fits_375(page) -> None:
    """At 375 px the page does not scroll sideways (wide tables scroll inside their card)."""
    page.set_viewport_size({"width": 375, "height": 812})
    page.reload()
    wider = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(el => el.getBoundingClientRect().right > 375 && !el.closest('.table-wrap'))
        .map(el => el.tagName + '.' + el.className + ' ' + Math.round(el.getBoundingClientRect().right))""")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375, wider


def _shots(page, shots, name: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    page.screenshot(path=str(shots / f"{name}-1280.png"), full_page=True)
    _fits_375(page)
    page.screenshot(path=str(shots / f"{name}-375.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


# a conversation --------------------------------------------------------------------------------
def test_a_conversation_links_to_its_page_with_figures_agents_and_every_turn(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-10")
    page.click(f"[data-testid=chat-row][data-chat={LONG_CHAT}] [data-testid=chat-link]")
    assert urlsplit(page.url).path == f"/billing/chats/{LONG_CHAT}"
    assert page.inner_text("[data-testid=chat-title]") == LONG_CHAT

    (total, billed, turns, prompt, cached, completion), *_ = _sql(
        db,
        "SELECT sum(cost_nanos), sum(billed_nanos), count(*), sum(prompt_tokens), sum(cached_prompt_tokens), "
        "sum(completion_tokens) FROM usage_event WHERE enterprise_id = 'acme' AND chat_id = :c",
        c=LONG_CHAT,
    )
    cost = page.query_selector("[data-testid=chat-cost]")
    assert int(cost.get_attribute("data-nanos")) == total
    assert cost.inner_text() == format_cents(round_cents(total), total)
    assert int(page.get_attribute("[data-testid=chat-billed]", "data-nanos")) == billed
    assert int(page.get_attribute("[data-testid=chat-turns]", "data-turns")) == turns == 131
    assert int(page.get_attribute("[data-testid=chat-tokens]", "data-tokens")) == prompt + completion

    # agents: to the nano against the turns, and their displayed cents add up to the displayed total
    expected = {
        a: tuple(int(x) for x in rest)
        for a, *rest in _sql(
            db,
            "SELECT agent, count(*), sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), "
            "sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND chat_id = :c GROUP BY agent",
            c=LONG_CHAT,
        )
    }
    shown = {
        el.get_attribute("data-agent"): tuple(
            int(el.get_attribute(f"data-{k}")) for k in ("turns", "prompt", "cached", "completion", "nanos")
        )
        for el in page.query_selector_all("[data-testid=agent-row]")
    }
    assert shown == expected and len(shown) == 2
    assert sum(_texts(page, "[data-testid=agent-cost]")) == _cents(page.inner_text("[data-testid=agents-cost-total]"))
    assert _cents(page.inner_text("[data-testid=agents-cost-total]")) == _cents(cost.inner_text())

    # every turn once, oldest first (ties by id), across keyset pages and both months' partitions
    order = [
        (int(i), int(n))
        for i, n in _sql(
            db,
            "SELECT id, cost_nanos FROM usage_event WHERE enterprise_id = 'acme' AND chat_id = :c ORDER BY occurred_at, id",
            c=LONG_CHAT,
        )
    ]
    seen, pages = [], 0
    while True:
        pages += 1
        for row in page.query_selector_all("[data-testid=turn-row]"):
            nanos = int(row.get_attribute("data-nanos"))
            seen.append((int(row.get_attribute("data-id")), nanos))
            assert row.query_selector("[data-testid=turn-cost]").inner_text() == format_money(nanos)
            if 0 < nanos < 5_000_000:
                assert row.query_selector("[data-testid=turn-cost]").inner_text() == "<$0.01"
        if pages == 1:
            _shots(page, shots, "billing-chat")
        nxt = page.query_selector("[data-testid=turns-next]")
        if nxt is None:
            break
        nxt.click()
    assert seen == order and pages == 3  # 50 + 50 + 31
    assert sum(n for _, n in seen) == total
    assert page.query_selector("[data-testid=turns-first]") is not None
    assert page.errors == []
    ctx.close()


def test_the_chat_page_keeps_the_api_rules(browser, server, seeded, db, shots):
    # the end user: its own wallet's chat, and a 404 (as unknown) for another wallet's
    ctx, page = _bearer(browser, server, seeded.keys["end_user"])
    (alice_chat,) = _sql(db, "SELECT chat_id FROM chat_session WHERE wallet_id = 'w-alice' ORDER BY chat_id LIMIT 1")[0]
    (bob_chat,) = _sql(db, "SELECT chat_id FROM chat_session WHERE wallet_id = 'w-bob' ORDER BY chat_id LIMIT 1")[0]
    assert page.goto(f"/billing/chats/{alice_chat}").status == 200
    assert page.query_selector("[data-testid=workflow-link]") is None  # workflow pages are an app's figures
    r = page.goto(f"/billing/chats/{bob_chat}")
    assert r.status == 404 and "no chat" in page.inner_text("main")
    assert page.goto("/billing/chats/no-such-chat").status == 404
    r = page.goto(f"/billing/chats/{alice_chat}?after=yesterday")
    assert r.status == 422 and page.get_attribute("[data-field]", "data-field") == "after"
    r = page.goto(f"/billing/chats/{alice_chat}?period=2026-13")
    assert r.status == 422 and page.get_attribute("[data-field]", "data-field") == "period"

    # an id with '/', '?', '#', '%' and non-ASCII: its link from the month page opens its page, and
    # (for the owner) its workflow's link the workflow's page
    page.goto("/billing?period=2026-11")
    page.click(f"[data-testid=chat-row][data-chat='{ODD_CHAT}'] [data-testid=chat-link]")
    assert page.inner_text("[data-testid=chat-title]") == ODD_CHAT
    assert [el.get_attribute("data-id") for el in page.query_selector_all("[data-testid=turn-row]")] == [
        str(i) for (i,) in _sql(db, "SELECT id FROM usage_event WHERE chat_id = :c", c=ODD_CHAT)
    ]
    ctx.close()
    ctx, page = _bearer(browser, server, seeded.keys["owner"])
    page.goto(f"/billing/chats/{quote(ODD_CHAT, safe='')}")
    page.click("[data-testid=workflow-link]")  # no period given: the month of the chat's last turn
    assert parse_qs(urlsplit(page.url).query)["period"] == ["2026-11"]
    assert page.inner_text("[data-testid=workflow-title]") == "ops/α#1"
    assert int(page.get_attribute("[data-testid=wf-turns]", "data-count")) == 1
    ctx.close()

    # the admin sees aggregates only: no single conversation
    ctx, page = _bearer(browser, server, seeded.keys["admin"])
    r = page.goto(f"/billing/chats/{alice_chat}?enterprise_id=acme")
    assert r.status == 403 and page.get_attribute("[data-field]", "data-field") == "chat_id"
    page.screenshot(path=str(shots / "billing-chat-admin-403.png"), full_page=True)
    ctx.close()

    # another app's users: 403 naming the app, 404 for the id within their own app
    for who in ("other_owner", "other_end_user"):
        ctx, page = _bearer(browser, server, seeded.keys[who])
        r = page.goto(f"/billing/chats/{alice_chat}?enterprise_id=acme")
        assert r.status == 403 and "may not see the billing of enterprise 'acme'" in page.inner_text("main")
        assert page.goto(f"/billing/chats/{alice_chat}").status == 404
        ctx.close()

    # no sign-in: the sign-in form, which comes back to the chat
    ctx, page = _context(browser, server)
    r = page.goto(f"/billing/chats/{alice_chat}?period=2026-11")
    assert r.status == 401 and page.input_value("input[name=next]") == f"/billing/chats/{alice_chat}?period=2026-11"
    ctx.close()


# a workflow's month ----------------------------------------------------------------------------
def _workflow_sql(db, workflow: str, lo: datetime, hi: datetime) -> dict:
    (sessions, turns, cost), *_ = _sql(
        db,
        "SELECT count(DISTINCT chat_id), count(*), sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' "
        "AND workflow = :w AND occurred_at >= :lo AND occurred_at < :hi",
        w=workflow,
        lo=lo,
        hi=hi,
    )
    agents = {
        a: (int(t), int(p), int(c), int(n))
        for a, t, p, c, n in _sql(
            db,
            "SELECT agent, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_nanos) FROM usage_event "
            "WHERE enterprise_id = 'acme' AND workflow = :w AND occurred_at >= :lo AND occurred_at < :hi GROUP BY agent",
            w=workflow,
            lo=lo,
            hi=hi,
        )
    }
    (prompt, completion), *_ = _sql(
        db,
        "SELECT sum(prompt_tokens), sum(completion_tokens) FROM usage_event WHERE enterprise_id = 'acme' "
        "AND workflow = :w AND occurred_at >= :lo AND occurred_at < :hi",
        w=workflow,
        lo=lo,
        hi=hi,
    )
    rows = {c: (s, last) for c, s, last in _sql(db, "SELECT chat_id, status, last_turn_at FROM chat_session")}
    return {
        "sessions": int(sessions),
        "turns": int(turns),
        "cost": int(cost),
        "agents": agents,
        "tokens": int(prompt) + int(completion),
        "sessions_rows": rows,
    }


def _assert_workflow(page, want: dict, *, detail: bool) -> None:
    total = page.query_selector("[data-testid=wf-total-cost]")
    assert int(total.get_attribute("data-nanos")) == want["cost"]
    assert total.inner_text() == format_cents(round_cents(want["cost"]), want["cost"])
    assert int(page.get_attribute("[data-testid=wf-sessions]", "data-count")) == want["sessions"]
    assert int(page.get_attribute("[data-testid=wf-turns]", "data-count")) == want["turns"]
    q, r = divmod(want["cost"], want["sessions"])
    assert int(page.get_attribute("[data-testid=wf-avg-cost]", "data-nanos")) == q + (2 * r >= want["sessions"])
    avg_tokens = (Decimal(want["tokens"]) / want["sessions"]).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(page.get_attribute("[data-testid=wf-avg-tokens]", "data-value")) == avg_tokens
    assert page.inner_text("[data-testid=wf-avg-tokens]") == f"{avg_tokens:,}"
    if not detail:
        assert page.query_selector("[data-testid=wf-agents]") is None
        assert page.query_selector("[data-testid=wf-chats]") is None
        return
    shown = {
        el.get_attribute("data-agent"): tuple(
            int(el.get_attribute(f"data-{k}")) for k in ("turns", "prompt", "completion", "nanos")
        )
        for el in page.query_selector_all("[data-testid=wf-agent-row]")
    }
    assert shown == want["agents"]
    assert sum(_texts(page, "[data-testid=wf-agent-cost]")) == _cents(page.inner_text("[data-testid=wf-agents-total]"))
    assert _cents(page.inner_text("[data-testid=wf-agents-total]")) == _cents(total.inner_text())
    chats = page.query_selector_all("[data-testid=wf-chat-row]")
    assert 0 < len(chats) <= 20
    costs = [int(c.get_attribute("data-nanos")) for c in chats]
    assert costs == sorted(costs, reverse=True)
    # statuses as on the month page: an active chat quiet for 24 hours reads completed
    now = datetime.now(UTC)
    for row in chats:
        status, last = want["sessions_rows"][row.get_attribute("data-chat")]
        quiet = status == "active" and now - last >= timedelta(hours=24)
        shown = row.query_selector("[data-testid=wf-chat-status]").get_attribute("data-status")
        assert shown == ("completed" if quiet else status)


def test_workflow_pages_show_the_rollup_averages(browser, server, seeded, db, shots):
    want = _workflow_sql(db, "support", *NOV)
    ctx, page = _bearer(browser, server, seeded.keys["owner"])
    page.goto("/billing/workflows/support?period=2026-11")
    assert page.get_attribute("[data-testid=workflow-source]", "data-source") == "usage_event"  # not rolled up yet
    _assert_workflow(page, want, detail=True)
    # a chat of the workflow opens its page
    first = page.query_selector("[data-testid=wf-chat-row] a")
    chat = page.query_selector("[data-testid=wf-chat-row]").get_attribute("data-chat")
    first.click()
    assert urlsplit(page.url).path == f"/billing/chats/{chat}"

    # rolled up (as the beat job does): the same figures, from the rollup
    _refresh_rollups(db)
    page.goto("/billing/workflows/support?period=2026-11")
    assert page.get_attribute("[data-testid=workflow-source]", "data-source") == "rollup"
    _assert_workflow(page, want, detail=True)
    _shots(page, shots, "billing-workflow")
    # the month page lists the month's workflows, each linked to its page
    page.goto("/billing?period=2026-11")
    rows = {
        el.get_attribute("data-workflow"): int(el.get_attribute("data-nanos"))
        for el in page.query_selector_all("[data-testid=workflow-row]")
    }
    assert rows == {
        w: int(n)
        for w, n in _sql(
            db,
            "SELECT workflow, sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo "
            "AND occurred_at < :hi GROUP BY workflow",
            lo=NOV[0],
            hi=NOV[1],
        )
    }
    page.click("[data-testid=workflow-row][data-workflow=research] [data-testid=workflow-link]")
    assert urlsplit(page.url).path == "/billing/workflows/research"
    _assert_workflow(page, _workflow_sql(db, "research", *NOV), detail=True)
    assert page.errors == []
    ctx.close()

    # the admin: the averages only (the rollup document names chats)
    ctx, page = _bearer(browser, server, seeded.keys["admin"])
    r = page.goto("/billing/workflows/support?period=2026-11&enterprise_id=acme")
    assert r.status == 200, page.content()
    _assert_workflow(page, want, detail=False)
    page.screenshot(path=str(shots / "billing-workflow-admin-1280.png"), full_page=True)
    assert page.goto("/billing/workflows/support?period=2026-11").status == 422  # an admin names the app
    ctx.close()


def test_the_workflow_page_keeps_the_api_rules(browser, server, seeded, db):
    ctx, page = _bearer(browser, server, seeded.keys["end_user"])
    r = page.goto("/billing/workflows/support?period=2026-11")
    assert r.status == 403 and page.get_attribute("[data-field]", "data-field") == "workflow"
    ctx.close()
    for who in ("other_owner", "other_end_user"):
        ctx, page = _bearer(browser, server, seeded.keys[who])
        r = page.goto("/billing/workflows/support?period=2026-11&enterprise_id=acme")
        assert r.status == 403 and page.get_attribute("[data-field]", "data-field") == "enterprise_id"
        ctx.close()
    ctx, page = _bearer(browser, server, seeded.keys["owner"])
    r = page.goto("/billing/workflows/support?period=November")
    assert r.status == 422 and page.get_attribute("[data-field]", "data-field") == "period"
    # a workflow without turns that month: zeros, no error
    page.goto("/billing/workflows/nothing-here?period=2026-11")
    assert int(page.get_attribute("[data-testid=wf-total-cost]", "data-nanos")) == 0
    assert page.inner_text("[data-testid=wf-total-cost]") == "$0.00"
    ctx.close()


# any date range, any month ---------------------------------------------------------------------
def _range_sum(db, column: str, lo: datetime, hi: datetime, wallet: str | None = None, where: str = "") -> int:
    (n,) = _sql(
        db,
        f"SELECT COALESCE(sum({column}), 0) FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo "
        f"AND occurred_at < :hi AND (CAST(:w AS text) IS NULL OR wallet_id = :w) {where}",
        lo=lo,
        hi=hi,
        w=wallet,
    )[0]
    return int(n)


def _assert_range(page, db, lo: datetime, hi: datetime, wallet: str | None = None) -> None:
    total = _range_sum(db, "cost_nanos", lo, hi, wallet)
    llm = _range_sum(db, "cost_nanos", lo, hi, wallet, "AND meter = 'llm'")
    assert int(page.get_attribute("[data-testid=total-cost]", "data-nanos")) == total
    assert int(page.get_attribute("[data-testid=total-billed]", "data-nanos")) == _range_sum(
        db, "billed_nanos", lo, hi, wallet
    )
    assert int(page.get_attribute("[data-testid=llm-cost]", "data-nanos")) == llm
    assert int(page.get_attribute("[data-testid=meters-cost]", "data-nanos")) == total - llm
    cost, llm_c, meters_c = (
        _cents(page.inner_text(f"[data-testid={t}]")) for t in ("total-cost", "llm-cost", "meters-cost")
    )
    assert cost == round_cents(total) and llm_c + meters_c == cost
    providers = {
        el.get_attribute("data-provider"): int(el.get_attribute("data-nanos"))
        for el in page.query_selector_all("[data-testid=provider]")
    }
    assert providers == {
        p: int(n)
        for p, n in _sql(
            db,
            "SELECT provider, sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND meter = 'llm' "
            "AND occurred_at >= :lo AND occurred_at < :hi AND (CAST(:w AS text) IS NULL OR wallet_id = :w) GROUP BY provider",
            lo=lo,
            hi=hi,
            w=wallet,
        )
    }
    if providers:
        assert sum(_texts(page, "[data-testid=provider-cost]")) == llm_c
        for group in page.query_selector_all("[data-testid=provider]"):
            assert sum(_texts(group, "[data-testid=model-cost]")) == _cents(
                group.query_selector("[data-testid=provider-cost]").inner_text()
            )
    assert sum(_texts(page, "[data-testid=meter-cost]")) == meters_c


def test_a_date_range_beside_the_month_picker(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    assert page.input_value("[data-testid=range-from]") == "2026-11-01"
    assert page.input_value("[data-testid=range-to]") == "2026-11-30"
    page.fill("[data-testid=range-from]", "2026-11-03")
    page.fill("[data-testid=range-to]", "2026-11-20")
    page.click("[data-testid=range-submit]")
    assert urlsplit(page.url).path == "/billing/range"
    assert parse_qs(urlsplit(page.url).query) == {"from": ["2026-11-03"], "to": ["2026-11-20"]}
    assert page.inner_text("[data-testid=range-title]") == "Nov 3, 2026 – Nov 20, 2026"
    lo, hi = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    _assert_range(page, db, lo, hi)
    chats = [el.get_attribute("data-chat") for el in page.query_selector_all("[data-testid=chat-row]")]
    top = [
        c
        for (c,) in _sql(
            db,
            "SELECT chat_id FROM usage_event WHERE enterprise_id = 'acme' AND occurred_at >= :lo AND occurred_at < :hi "
            "GROUP BY chat_id ORDER BY sum(cost_nanos) DESC, chat_id LIMIT 50",
            lo=lo,
            hi=hi,
        )
    ]
    assert chats == top
    _shots(page, shots, "billing-range")

    # across a month boundary, both days included (Oct 31 23:59:59 and Dec 1 00:00 are the edges)
    page.goto("/billing/range?from=2026-10-31&to=2026-12-01")
    _assert_range(page, db, datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))
    assert page.errors == []
    ctx.close()

    # the end user: its wallet only; the admin: aggregates, no conversations
    ctx, page = _bearer(browser, server, seeded.keys["end_user"])
    page.goto("/billing/range?from=2026-11-03&to=2026-11-20")
    _assert_range(page, db, lo, hi, "w-alice")
    assert "w-alice" in page.inner_text("[data-testid=scope-note]")
    ctx.close()
    ctx, page = _bearer(browser, server, seeded.keys["admin"])
    page.goto("/billing/range?from=2026-11-03&to=2026-11-20&enterprise_id=acme")
    _assert_range(page, db, lo, hi)
    assert page.query_selector("[data-testid=top-chats]") is None
    ctx.close()


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("from=2026-11-31&to=2026-12-01", "from", "is not a date"),
        ("from=03/11/2026&to=2026-12-01", "from", "is not a date"),
        ("from=2026-11-03", "to", "a date is required"),
        ("from=2026-11-20&to=2026-11-03", "to", "is before from"),
        ("from=2025-11-01&to=2026-11-02", "to", "at most 366 days"),
    ],
)
def test_a_bad_date_range_is_422_naming_the_field(browser, server, seeded, query, field, says):
    ctx, page = _bearer(browser, server, seeded.keys["owner"])
    r = page.goto(f"/billing/range?{query}")
    assert r.status == 422
    assert page.get_attribute("[data-field]", "data-field") == field
    assert says in page.inner_text("[role=alert]")
    ctx.close()


def test_the_range_view_keeps_the_page_rules(browser, server, seeded):
    for who in ("other_owner", "other_end_user"):
        ctx, page = _bearer(browser, server, seeded.keys[who])
        r = page.goto("/billing/range?from=2026-11-01&to=2026-11-30&enterprise_id=acme")
        assert r.status == 403 and page.get_attribute("[data-field]", "data-field") == "enterprise_id"
        ctx.close()
    ctx, page = _context(browser, server)
    assert page.goto("/billing/range?from=2026-11-01&to=2026-11-30").status == 401
    ctx.close()


def test_the_month_picker_reaches_back_to_the_first_month_with_data(browser, server, seeded, db):
    _refresh_rollups(db)
    ((first,),) = _sql(
        db,
        "SELECT to_char(min(occurred_at) AT TIME ZONE 'UTC', 'YYYY-MM') FROM usage_event WHERE enterprise_id = 'acme'",
    )
    ctx, page = _bearer(browser, server, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    options = page.eval_on_selector_all("[data-testid=period-select] option", "els => els.map(e => e.value)")
    now = datetime.now(UTC)
    months = (now.year - 2026) * 12 + now.month - int(first[5:]) + 1
    assert options[0] == f"{now:%Y-%m}" and options[-1] == first == "2026-05" and len(options) == months
    assert options == sorted(options, reverse=True) and len(set(options)) == len(options)
    # choosing the first month shows its figures
    page.select_option("[data-testid=period-select]", first)
    page.wait_for_url(re.compile(r"period=2026-05"))
    lo, hi = datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    assert int(page.get_attribute("[data-testid=total-cost]", "data-nanos")) == _range_sum(db, "cost_nanos", lo, hi)
    # a month older than any data is still reachable by its URL (empty), and a workflow's picker too
    assert page.goto("/billing?period=2019-02").status == 200
    assert page.inner_text("[data-testid=period-title]") == "February 2019"
    page.goto("/billing/workflows/research?period=2026-05")
    wf_options = page.eval_on_selector_all("[data-testid=period-select] option", "els => els.map(e => e.value)")
    assert wf_options == options
    ctx.close()
