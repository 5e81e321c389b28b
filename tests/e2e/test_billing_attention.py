"""Issue 18 items 3 and 4 on the /billing page, in a real headless browser (Debian chromium driven by
Playwright): the attention section (paused chats with their reason and what resumes them, the alert
feed: budget alerts, exhausted and blocked wallets, dead letters, the admin's reconciliation drift)
and top-up from the page (token packages as buttons → Stripe Checkout through the local Stripe
stand-in → the webhook → the credit and the balance shown on return); the month-to-date marker and
the empty chart's "no data" label.  Every figure is asserted against SQL, to the nano; every new
view and the new POST have their 403s.

Screenshots go to ``$TOLLGATE_SCREENSHOTS`` (default: the test's tmp dir), at 1280 px and 375 px.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import insert, text

from models.budget import Budget
from models.chat import PausedChat
from models.reconcile import ReconciliationRun, WalletDrift
from models.stripe import TokenPackage
from models.turn import DeadLetter, UsageEvent
from models.wallet import Wallet
from tests.billing_seed import _event, seed
from tests.e2e.conftest import start_server
from tests.stripe_stub import StripeStub, event_json, stripe_signature
from worker.billing.attention import ceil_cents
from worker.billing.report import format_cents, format_money
from worker.periods import current_period

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_attention_test"
NOW = datetime.now(UTC)
PAUSED_AT = NOW - timedelta(hours=2)


@pytest.fixture(scope="module")
def stripe_stub():
    with StripeStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def server(database_url, stripe_stub):
    """``uvicorn api_stub.main:app`` on a free loopback port, its Stripe pointed at the local stand-in."""
    yield from start_server(
        {
            "TOLLGATE_STRIPE_API_KEY": "sk_test_tollgate",
            "TOLLGATE_STRIPE_API_BASE": stripe_stub.url,
            "TOLLGATE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )


@pytest.fixture()
def shots(tmp_path) -> Path:
    path = Path(os.environ.get("TOLLGATE_SCREENSHOTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _extra(engine) -> None:
    """What the attention section and top-up read, on top of tests/billing_seed.py: paused-chat
    records of every kind, a workflow budget exceeded this month, an exhausted wallet, dead letters,
    reconciliation runs, token packages."""
    with engine.begin() as conn:
        pc = PausedChat.__table__
        cs = text(
            "UPDATE chat_session SET status = 'paused', pause_reason = :r, paused_at = :at, can_resume = :cr "
            "WHERE enterprise_id = 'acme' AND chat_id = :c"
        )
        for chat, reason, needed, closed in (
            ("chat-000", "wallet_exhausted", 5_000_000_001, False),  # w-alice: the end user's
            ("chat-002", "wallet_exhausted", 1_234_567_891, False),
            ("chat-005", "trial_exhausted", 0, False),
            ("chat-011", "paused_by_orchestrator", 0, False),
            ("chat-014", "wallet_exhausted", 700_000_000, True),  # a credit closed it: resumable
        ):
            conn.execute(cs, {"r": reason, "at": PAUSED_AT, "cr": closed, "c": chat})
            conn.execute(
                insert(pc).values(
                    enterprise_id="acme",
                    chat_id=chat,
                    wallet_id="w-alice" if chat == "chat-000" else "w-carol",
                    reason=reason,
                    needed_nanos=needed,
                    paused_at=PAUSED_AT - timedelta(minutes=int(chat[-2:])),
                    resumed_at=NOW - timedelta(minutes=5) if closed else None,
                    resumed_by="stripe:cs_old" if closed else None,
                )
            )
        # a workflow budget's auto-pause: the session only, no paused-chat record
        conn.execute(cs, {"r": "budget_exceeded", "at": PAUSED_AT, "cr": False, "c": "chat-008"})
        conn.execute(
            insert(Budget.__table__).values(
                enterprise_id="acme", workflow="onboarding", amount_nanos=1_000_000_000, auto_pause=True
            )
        )
        row = _event(
            9_001,
            enterprise="acme",
            wallet="w-carol",
            chat="chat-008",
            workflow="onboarding",
            provider="openai",
            model="gpt-4o",
            at=NOW - timedelta(minutes=30),
            prompt=500_000,
            completion=20_000,
        )
        conn.execute(insert(UsageEvent.__table__), [row])
        conn.execute(
            insert(Wallet.__table__).values(
                id="w-dave",
                enterprise_id="acme",
                owner_id="w-dave",
                level="app_usage",
                mode="production",
                currency="USD",
                limited=True,
                credits_nanos=1_000_000_000,
                debits_nanos=1_250_000_007,
            )
        )
        dl = DeadLetter.__table__
        conn.execute(
            insert(dl),
            [
                dict(
                    outbox_id=f"0:{i}-0",
                    shard=0,
                    turn_id=f"t-{i}",
                    wallet_id=w,
                    billed_nanos=n,
                    charged=True,
                    error="value too long",
                    error_class="DataError",
                    fields_json="{}",
                    status=status,
                    created_at=NOW - timedelta(hours=i),
                )
                for i, (w, n, status) in enumerate(
                    (
                        ("w-bob", 123_456_789, "open"),
                        ("w-alice", 1, "open"),
                        ("w-bob", 999, "discarded"),
                        ("x-1", 5_000_000, "open"),  # the other app's
                    ),
                    start=1,
                )
            ],
        )
        rr = ReconciliationRun.__table__
        old, last = (
            conn.execute(
                insert(rr).returning(rr.c.id),
                [
                    dict(
                        started_at=NOW - timedelta(days=1),
                        finished_at=NOW - timedelta(days=1),
                        wallets_checked=9,
                        wallets_drifted=1,
                        drift_nanos_abs=77,
                    ),
                    dict(
                        started_at=NOW - timedelta(hours=1),
                        finished_at=NOW - timedelta(minutes=59),
                        wallets_checked=10,
                        wallets_drifted=2,
                        drift_nanos_abs=5_000,
                    ),
                ],
            )
            .scalars()
            .all()
        )
        conn.execute(
            insert(WalletDrift.__table__),
            [
                dict(run_id=old, wallet_id="w-alice", gate_nanos=1, expected_nanos=78, drift_nanos=-77),
                dict(run_id=last, wallet_id="w-bob", gate_nanos=0, expected_nanos=3_000, drift_nanos=-3_000),
                dict(run_id=last, wallet_id="x-1", gate_nanos=2_000, expected_nanos=0, drift_nanos=2_000),
            ],
        )
        conn.execute(
            insert(TokenPackage.__table__),
            [
                dict(id=i, name=n, price_cents=p, credit_nanos=c, active=a, monthly=m)
                for i, n, p, c, a, m in (
                    ("pkg-20", "Builder", 2_000, 21_000_000_000, True, False),
                    ("pkg-5", "Starter", 500, 5_000_000_000, True, False),
                    ("pkg-old", "Retired", 100, 1_000_000_000, False, False),
                    ("pkg-plan", "Monthly", 1_500, 15_000_000_000, True, True),
                )
            ],
        )


@pytest.fixture()
def seeded(db, redis_client):
    # redis_client flushes the test Redis db: the sign-in rate limit starts afresh
    keys = seed(db)
    _extra(db)
    return keys


def _context(browser, server, width=1280):
    ctx = browser.new_context(base_url=server, viewport={"width": width, "height": 900})
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    return ctx, page


def _sign_in(page, key: str) -> None:
    page.goto("/billing/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/billing*")


def _sql(db, query: str, **params) -> list[tuple]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query), params)]


def _paused_sql(db, wallet: str | None = None) -> dict[str, tuple[str, str, int]]:
    return {
        c: (w, r, int(n))
        for c, w, r, n in _sql(
            db,
            "SELECT cs.chat_id, cs.wallet_id, COALESCE(pc.reason, cs.pause_reason, 'unknown'), "
            "COALESCE(pc.needed_nanos, 0) FROM chat_session cs LEFT JOIN paused_chat pc ON "
            "pc.enterprise_id = cs.enterprise_id AND pc.chat_id = cs.chat_id AND pc.resumed_at IS NULL "
            "WHERE cs.enterprise_id = 'acme' AND cs.status = 'paused' "
            "AND (CAST(:w AS text) IS NULL OR cs.wallet_id = :w)",
            w=wallet,
        )
    }


def _no_sideways_scroll(page) -> None:
    wide = page.evaluate("() => document.documentElement.scrollWidth")
    assert wide <= 375, wide


def test_owner_sees_paused_chats_with_what_resumes_them_and_the_alert_feed(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing?period=2026-11")
    section = page.locator("[data-testid=attention]")

    expected = _paused_sql(db)
    rows = {
        el.get_attribute("data-chat"): el
        for el in page.query_selector_all("[data-testid=attention] [data-testid=paused-chat]")
    }
    assert len(expected) == 22 and set(rows) == set(expected)
    for chat, el in rows.items():
        wallet, reason, needed = expected[chat]
        assert (
            el.get_attribute("data-wallet"),
            el.get_attribute("data-reason"),
            int(el.get_attribute("data-needed-nanos")),
        ) == (
            wallet,
            reason,
            needed,
        )
    assert int(section.locator("[data-testid=count-paused]").get_attribute("data-count")) == len(expected)

    # what resumes each: a top-up of at least the need (rounded up to the cent), the budget, the orchestrator
    remedy = {c: rows[c].query_selector("[data-testid=remedy]").inner_text() for c in rows}
    assert remedy["chat-002"] == "Top up at least $1.24" == f"Top up at least {format_cents(ceil_cents(1_234_567_891))}"
    assert rows["chat-002"].get_attribute("data-remedy-nanos") == "1234567891"
    assert rows["chat-002"].query_selector("[data-testid=remedy] a[href='#topup']") is not None
    assert remedy["chat-005"] == "The trial is used up: switch the wallet to production mode"
    assert remedy["chat-011"] == "Resume by the orchestrator (POST /v1/chats/chat-011/resume)"
    assert rows["chat-014"].get_attribute("data-remedy") == "resumable"  # its record was closed by a credit
    assert "Resumable" in rows["chat-014"].inner_text()
    [(spent,)] = _sql(
        db,
        "SELECT sum(cost_nanos) FROM usage_event WHERE enterprise_id = 'acme' AND workflow = 'onboarding' "
        "AND occurred_at >= :lo AND occurred_at < :hi",
        lo=datetime.strptime(current_period(), "%Y-%m").replace(tzinfo=UTC),
        hi=datetime.strptime(current_period(), "%Y-%m").replace(tzinfo=UTC) + timedelta(days=31),
    )
    assert int(spent) > 1_000_000_000
    assert remedy["chat-008"] == (
        f"Raise the onboarding budget above {format_cents(ceil_cents(int(spent)))} (now $1.00), or wait for next month"
    )
    assert rows["chat-008"].get_attribute("data-reason") == "budget_exceeded"

    # the alert feed: November's budget alerts, the blocked and the exhausted wallet, the open dead letters
    alerts = [
        (
            el.get_attribute("data-kind"),
            el.get_attribute("data-subject"),
            int(el.get_attribute("data-nanos")),
            int(el.get_attribute("data-spent-nanos")),
            int(el.get_attribute("data-threshold")),
            el.get_attribute("data-reason"),
        )
        for el in page.query_selector_all("[data-testid=alert-feed] [data-testid=alert]")
    ]
    budget_alerts = _sql(
        db,
        "SELECT CASE WHEN b.wallet_id IS NOT NULL THEN 'wallet ' || b.wallet_id ELSE 'workflow ' || b.workflow END, "
        "a.amount_nanos, a.spent_nanos, a.threshold_pct FROM budget_alert a JOIN budget b ON b.id = a.budget_id "
        "WHERE b.enterprise_id = 'acme' AND a.period = '2026-11' ORDER BY a.created_at DESC, a.threshold_pct DESC",
    )
    assert [a[1:5] for a in alerts if a[0] == "budget"] == [
        (s, int(n), int(sp), int(t)) for s, n, sp, t in budget_alerts
    ]
    assert len(budget_alerts) == 5
    wallets = _sql(
        db,
        "SELECT id, credits_nanos - debits_nanos, COALESCE(blocked_reason, 'exhausted') FROM wallet "
        "WHERE enterprise_id = 'acme' AND (blocked_reason IS NOT NULL OR (limited AND credits_nanos - debits_nanos <= 0)) "
        "ORDER BY 2, 1",
    )
    assert [(a[1], a[2], a[5]) for a in alerts if a[0] == "wallet"] == [(w, int(b), r) for w, b, r in wallets]
    assert {w for w, *_ in wallets} == {"w-carol", "w-dave"}
    dead = _sql(
        db,
        "SELECT d.outbox_id, d.billed_nanos FROM dead_letter d JOIN wallet w ON w.id = d.wallet_id "
        "WHERE w.enterprise_id = 'acme' AND d.status = 'open' ORDER BY d.created_at DESC",
    )
    assert [(a[1], a[2]) for a in alerts if a[0] == "dead_letter"] == [(o, int(n)) for o, n in dead]
    assert len(dead) == 2
    chip = section.locator("[data-testid=count-dead-letters]")
    assert (int(chip.get_attribute("data-count")), int(chip.get_attribute("data-nanos"))) == (
        len(dead),
        sum(int(n) for _, n in dead),
    )
    assert "$0.12" in chip.inner_text()
    assert not [a for a in alerts if a[0] == "drift"]  # the admin's only
    assert "w-dave balance -$0.25" in section.inner_text()
    page.screenshot(path=str(shots / "attention-owner-1280.png"), full_page=True)

    page.set_viewport_size({"width": 375, "height": 812})
    page.goto("/billing?period=2026-11")
    _no_sideways_scroll(page)
    page.locator("[data-testid=attention]").screenshot(path=str(shots / "attention-owner-375.png"))
    assert page.errors == []
    ctx.close()


def test_end_user_sees_only_its_wallet_s_attention(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server, width=375)
    _sign_in(page, seeded.keys["end_user"])
    page.goto("/billing?period=2026-11")
    expected = _paused_sql(db, "w-alice")
    rows = page.query_selector_all("[data-testid=paused-chat]")
    assert (
        [(el.get_attribute("data-chat"), int(el.get_attribute("data-needed-nanos"))) for el in rows]
        == [(c, n) for c, (_w, _r, n) in expected.items()]
        == [("chat-000", 5_000_000_001)]
    )
    assert rows[0].query_selector("[data-testid=remedy]").inner_text() == "Top up at least $5.01"
    alerts = [
        (el.get_attribute("data-kind"), el.get_attribute("data-subject"), int(el.get_attribute("data-nanos")))
        for el in page.query_selector_all("[data-testid=alert]")
    ]
    # its wallet budget's two alerts, its one dead letter; nothing of w-bob, w-carol, w-dave
    assert [a[0] for a in alerts] == ["budget", "budget", "dead_letter"]
    assert alerts[2] == ("dead_letter", "0:2-0", 1)
    text_ = page.inner_text("[data-testid=attention]")
    for other in ("w-bob", "w-carol", "w-dave", "chat-002", "0:1-0"):
        assert other not in text_
    _no_sideways_scroll(page)
    page.screenshot(path=str(shots / "attention-end-user-375.png"), full_page=True)
    assert page.errors == []
    ctx.close()


def test_admin_sees_counts_only_and_the_reconciliation_drift(browser, server, seeded, db, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["admin"])
    page.goto("/billing?period=2026-11&enterprise_id=acme")
    section = page.locator("[data-testid=attention]")
    assert page.query_selector_all("[data-testid=paused-chat]") == []
    by_reason = {
        el.get_attribute("data-reason"): int(el.get_attribute("data-count"))
        for el in page.query_selector_all("[data-testid=paused-reason]")
    }
    expected = {}
    for _w, reason, _n in _paused_sql(db).values():
        expected[reason] = expected.get(reason, 0) + 1
    assert by_reason == expected and sum(by_reason.values()) == 22
    feed = {
        el.get_attribute("data-kind") + ":" + (el.get_attribute("data-reason") or ""): el
        for el in page.query_selector_all("[data-testid=alert]")
    }
    [(n_dead, nanos_dead)] = _sql(
        db,
        "SELECT count(*), sum(d.billed_nanos) FROM dead_letter d JOIN wallet w ON w.id = d.wallet_id "
        "WHERE w.enterprise_id = 'acme' AND d.status = 'open'",
    )
    dl = feed["dead_letter:"]
    assert (
        (int(dl.get_attribute("data-count")), int(dl.get_attribute("data-nanos")))
        == (n_dead, nanos_dead)
        == (
            2,
            123_456_790,
        )
    )
    assert int(feed["wallet:budget_exceeded"].get_attribute("data-count")) == 1
    assert int(feed["wallet:exhausted"].get_attribute("data-count")) == 1
    [(run, n_drift, abs_drift)] = _sql(
        db,
        "SELECT r.id, count(d.id), COALESCE(sum(abs(d.drift_nanos)), 0) FROM reconciliation_run r "
        "LEFT JOIN wallet_drift d ON d.run_id = r.id AND d.wallet_id IN (SELECT id FROM wallet WHERE enterprise_id = 'acme') "
        "WHERE r.finished_at IS NOT NULL GROUP BY r.id ORDER BY max(r.finished_at) DESC LIMIT 1",
    )
    drift = feed["drift:"]
    assert (
        (
            int(drift.get_attribute("data-run")),
            int(drift.get_attribute("data-count")),
            int(drift.get_attribute("data-nanos")),
        )
        == (
            run,
            n_drift,
            abs_drift,
        )
        == (run, 1, 3_000)
    )
    assert "10 wallets checked, 2 drifted in all" in drift.inner_text()
    # aggregates only: no chat, wallet or dead-letter id, no top-up
    text_ = section.inner_text()
    for hidden in ("chat-0", "w-bob", "w-carol", "w-dave", "0:1-0"):
        assert hidden not in text_
    assert page.query_selector("[data-testid=topup]") is None
    page.screenshot(path=str(shots / "attention-admin-1280.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto("/billing?period=2026-11&enterprise_id=acme")
    _no_sideways_scroll(page)
    page.locator("[data-testid=attention]").screenshot(path=str(shots / "attention-admin-375.png"))
    assert page.errors == []
    ctx.close()


def test_another_app_s_owner_gets_403_and_no_attention(browser, server, seeded):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["other_owner"])
    response = page.goto("/billing?period=2026-11&enterprise_id=acme")
    assert response.status == 403
    assert page.query_selector("[data-testid=attention]") is None and page.query_selector("[data-testid=topup]") is None
    # its own page shows its own dead letter, none of acme's
    page.goto("/billing?period=2026-11")
    assert [
        el.get_attribute("data-subject") for el in page.query_selector_all("[data-testid=alert][data-kind=dead_letter]")
    ] == ["0:4-0"]
    ctx.close()


def _post_topup(
    page, server, *, wallet: str, package: str = "pkg-5", csrf: str | None = None, origin: str | None = None
):
    """POST the top-up form from ``page``'s session; ``csrf`` defaults to the session's own token
    (every signed-in page carries it in its sign-out form)."""
    if csrf is None:
        csrf = page.evaluate("() => (document.querySelector('[name=csrf_token]') || {}).value || ''")
    return page.request.post(
        f"{server}/billing/topup",
        form={"wallet_id": wallet, "package_id": package, "csrf_token": csrf},
        headers={"Origin": origin or server},
        max_redirects=0,
    )


def test_the_top_up_post_refuses_what_it_must(browser, server, seeded, stripe_stub):
    before = len(stripe_stub.requests)
    ctx, page = _context(browser, server)
    # no credentials: 401
    r = page.request.post(
        f"{server}/billing/topup",
        form={"wallet_id": "w-alice", "package_id": "pkg-5"},
        headers={"Origin": server},
        max_redirects=0,
    )
    assert r.status == 401
    _sign_in(page, seeded.keys["end_user"])
    page.goto("/billing?period=2026-11")
    # another site, no Origin or Referer, a wrong CSRF token: 403 naming the field
    r = _post_topup(page, server, wallet="w-alice", origin="https://evil.example")
    assert r.status == 403 and 'data-field="Origin"' in r.text()
    r = _post_topup(page, server, wallet="w-alice", csrf="not-the-token")
    assert r.status == 403 and 'data-field="csrf_token"' in r.text()
    # an end user pays only for its own wallet
    r = _post_topup(page, server, wallet="w-bob")
    assert r.status == 403 and 'data-field="wallet_id"' in r.text()
    # a monthly or retired package is not a top-up
    r = _post_topup(page, server, wallet="w-alice", package="pkg-plan")
    assert r.status == 422 and 'data-field="package_id"' in r.text()
    r = _post_topup(page, server, wallet="w-alice", package="pkg-old")
    assert r.status == 422 and "unknown or inactive package" in r.text()
    ctx.close()

    for who, wallet in (("other_owner", "w-alice"), ("admin", "w-alice"), ("owner", "x-1"), ("owner", "no-such")):
        ctx, page = _context(browser, server)
        _sign_in(page, seeded.keys[who])
        r = _post_topup(page, server, wallet=wallet)
        assert r.status == 403 and 'data-field="wallet_id"' in r.text(), (who, wallet, r.status)
        ctx.close()
    assert len(stripe_stub.requests) == before  # nothing reached Stripe

    # a Bearer caller has no browser session, so no CSRF token: Origin and the wallet rule still hold
    ctx, page = _context(browser, server)
    bearer = {"Authorization": f"Bearer {seeded.keys['owner']}"}
    r = page.request.post(
        f"{server}/billing/topup",
        form={"wallet_id": "x-1", "package_id": "pkg-5"},
        headers=bearer | {"Origin": server},
        max_redirects=0,
    )
    assert r.status == 403 and 'data-field="wallet_id"' in r.text()
    r = page.request.post(
        f"{server}/billing/topup",
        form={"wallet_id": "w-bob", "package_id": "pkg-5"},
        headers=bearer | {"Origin": server},
        max_redirects=0,
    )
    assert r.status == 303 and r.headers["location"] == f"https://checkout.stripe.com/c/pay/cs_test_{before + 1}"
    [req] = stripe_stub.requests[before:]
    assert (req.form["metadata[wallet_id]"], req.form["metadata[package_id]"]) == ("w-bob", "pkg-5")
    ctx.close()


def _webhook(server: str, body: str) -> None:
    import httpx

    r = httpx.post(
        f"{server}/v1/stripe/webhook",
        content=body,
        headers={"Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET), "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {"received": True, "duplicate": False}, r.text


def test_top_up_through_checkout_and_the_credit_on_return(browser, server, seeded, db, shots, stripe_stub, gate):
    # the stand-in numbers its sessions by the requests it has had (earlier tests' included)
    from worker.billing.stripe import process_event
    from worker.chats.wiring import after_credit
    from worker.db import session_scope

    [(balance,)] = _sql(db, "SELECT credits_nanos - debits_nanos FROM wallet WHERE id = 'w-alice'")
    gate.load_wallet("w-alice", mode="production", limited=True, balance_nanos=int(balance), enterprise_id="acme")
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["end_user"])
    page.goto("/billing")
    assert page.get_attribute("[data-testid=mtd]", "data-testid") == "mtd"
    offered = [
        (
            el.get_attribute("data-package"),
            int(el.get_attribute("data-price-cents")),
            int(el.get_attribute("data-credit-nanos")),
        )
        for el in page.query_selector_all("[data-testid=package]")
    ]
    assert (
        offered
        == [
            (i, int(p), int(c))
            for i, p, c in _sql(
                db,
                "SELECT id, price_cents, credit_nanos FROM token_package WHERE active AND NOT monthly ORDER BY price_cents, id",
            )
        ]
        == [("pkg-5", 500, 5_000_000_000), ("pkg-20", 2_000, 21_000_000_000)]
    )
    assert "Pay $20.00" in page.inner_text("[data-package=pkg-20]") and "$21.00" in page.inner_text(
        "[data-package=pkg-20]"
    )
    page.screenshot(path=str(shots / "topup-end-user-1280.png"), full_page=True)

    before = len(stripe_stub.requests)
    # the browser follows the 303 to Stripe's hosted page (the page's CSP form-action allows it); that
    # page is not reachable from here, so the request is what is checked
    with page.expect_request(lambda r: r.url.startswith("https://checkout.stripe.com/")) as went:
        page.click("[data-package=pkg-20]")
    [req] = stripe_stub.requests[before:]
    form = req.form
    assert (req.method, req.path, form["mode"], form["metadata[wallet_id]"], form["metadata[package_id]"]) == (
        "POST",
        "/v1/checkout/sessions",
        "payment",
        "w-alice",
        "pkg-20",
    )
    assert form["line_items[0][price_data][unit_amount]"] == "2000"
    sid = f"cs_test_{len(stripe_stub.requests)}"
    assert went.value.url == f"https://checkout.stripe.com/c/pay/{sid}"
    assert went.value.redirected_from is not None and went.value.redirected_from.url == f"{server}/billing/topup"
    page.errors.clear()  # the unreachable stand-in host's failed load
    success = form["success_url"]
    assert (
        success == f"{server}/billing?period={current_period()}&topup=success&checkout_session={{CHECKOUT_SESSION_ID}}"
    )
    assert form["cancel_url"] == f"{server}/billing?period={current_period()}&topup=cancelled"

    # the payer pays; Stripe posts the webhook and sends the browser back (before the worker ran)
    _webhook(
        server,
        event_json(
            "evt_topup_1",
            "checkout.session.completed",
            {
                "id": sid,
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "amount_total": 2_000,
                "currency": "usd",
                "client_reference_id": "w-alice",
                "metadata": {"wallet_id": "w-alice", "package_id": "pkg-20"},
            },
        ),
    )
    page.goto(success.replace("{CHECKOUT_SESSION_ID}", sid))
    assert page.get_attribute("[data-testid=topup-banner]", "data-state") == "pending"
    # the Celery task's work (tasks/stripe.py): process the stored event
    with session_scope() as session:
        result = process_event(session, "evt_topup_1", gate=gate, on_credited=after_credit)
    assert result.credited_nanos == 21_000_000_000
    # the page reloads itself while pending and then shows the credit
    page.wait_for_selector("[data-testid=topup-banner][data-state=credited]", timeout=20_000)
    [(amount, at_balance)] = _sql(
        db,
        "SELECT t.amount_nanos, w.credits_nanos - w.debits_nanos FROM wallet_transaction t JOIN wallet w ON w.id = t.wallet_id "
        "WHERE t.idempotency_key = :k AND t.kind = 'credit'",
        k=f"stripe:{sid}",
    )
    banner = page.locator("[data-testid=topup-banner]")
    assert (
        (int(banner.get_attribute("data-nanos")), int(banner.get_attribute("data-balance-nanos")))
        == (
            amount,
            at_balance,
        )
        == (21_000_000_000, int(balance) + 21_000_000_000)
    )
    assert f"{format_money(amount)} credited to wallet w-alice" in banner.inner_text()
    row = page.locator("[data-testid=wallet-row][data-wallet=w-alice]")
    assert int(row.get_attribute("data-balance-nanos")) == at_balance
    assert row.locator("[data-testid=wallet-balance]").inner_text() == format_money(at_balance)
    [(entry_id,)] = _sql(db, "SELECT id FROM wallet_transaction WHERE idempotency_key = :k", k=f"stripe:{sid}")
    entry = page.locator(f"[data-testid=ledger-row][data-id='{entry_id}']")
    assert (entry.get_attribute("data-source"), int(entry.get_attribute("data-nanos"))) == ("stripe", amount)
    assert "Stripe" in entry.inner_text() and "+$21.00" in entry.inner_text()
    # chat-000 was paused for $5.01: the credit resumed it (after_credit)
    assert page.get_attribute("[data-testid=paused-chat][data-chat=chat-000]", "data-remedy") == "resumable"
    page.screenshot(path=str(shots / "topup-credited-1280.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    page.reload()
    _no_sideways_scroll(page)
    page.screenshot(path=str(shots / "topup-credited-375.png"), full_page=True)

    # cancelled: a banner, nothing credited
    page.goto(form["cancel_url"])
    assert page.get_attribute("[data-testid=topup-banner]", "data-state") == "cancelled"
    # a session id of another wallet or a made-up one never reads as credited
    page.goto("/billing?topup=success&checkout_session=cs_test_nope")
    assert page.get_attribute("[data-testid=topup-banner]", "data-state") == "pending"
    assert page.errors == []
    ctx.close()


def test_month_to_date_marker_and_the_empty_chart(browser, server, seeded, shots):
    ctx, page = _context(browser, server)
    _sign_in(page, seeded.keys["owner"])
    page.goto("/billing")
    assert page.inner_text("[data-testid=mtd]") == "Month to date"
    now = datetime.now(UTC)
    labels = page.evaluate("() => Chart.getChart('history-chart').data.labels")
    assert labels[-1] == [f"{now:%b %Y}", "to date"] and all(isinstance(x, str) for x in labels[:-1])
    assert page.query_selector("[data-testid=chart-empty]") is None
    page.locator(".chart-box").screenshot(path=str(shots / "chart-month-to-date.png"))
    page.goto("/billing?period=2026-11")
    assert page.query_selector("[data-testid=mtd]") is None
    assert json.loads(page.inner_text("#history-data"))["current"] == current_period()
    page.goto("/billing?period=2030-01")  # six months without a usage event
    assert page.inner_text("[data-testid=chart-empty]") == "No data: no spend in these six months"
    page.locator(".chart-box").screenshot(path=str(shots / "chart-empty.png"))
    assert page.errors == []
    ctx.close()
