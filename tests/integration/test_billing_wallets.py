"""Issue 18 item 1 against PostgreSQL: the wallets in a /billing view with balance, state and the
period's opening, credits (by source), debits and closing balance; the paged ledger; the PDF
statement's wallet table adding up; who sees which wallets (end user: its own; owner: its app's;
admin: one aggregate row, no ledger; another app's key: 403 on the page, the ledger pages and the PDF)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import text

from tests.billing_seed import seed
from worker.billing.attention import attention
from worker.billing.report import round_cents
from worker.billing.statement import LEDGER_PAGE_SIZE, MAX_WALLETS, ledger_page, wallet_statements, wallet_totals
from worker.db import session_scope
from worker.errors import InputError

pytestmark = pytest.mark.integration

NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture()
def seeded(db):
    return seed(db)


@pytest.fixture()
def client(seeded):
    from api_stub.main import app  # imported late: the app reads the test settings the fixtures set

    return TestClient(app)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _sql(db, query: str, **params):
    with db.connect() as conn:
        return conn.execute(text(query), params).all()


def _sql_figures(db, wallet: str) -> tuple[int, int, int, int]:
    """(balance all time, opening, credits, debits) of a wallet in November, from wallet_transaction."""
    signed = "CASE WHEN kind = 'credit' THEN amount_nanos ELSE -amount_nanos END"
    ((balance, opening, credits, debits),) = _sql(
        db,
        f"SELECT COALESCE(SUM({signed}), 0), COALESCE(SUM({signed}) FILTER (WHERE created_at < :lo), 0), "
        "COALESCE(SUM(amount_nanos) FILTER (WHERE kind = 'credit' AND created_at >= :lo AND created_at < :hi), 0), "
        "COALESCE(SUM(amount_nanos) FILTER (WHERE kind = 'debit' AND created_at >= :lo AND created_at < :hi), 0) "
        "FROM wallet_transaction WHERE wallet_id = :w",
        lo=NOV[0],
        hi=NOV[1],
        w=wallet,
    )
    return int(balance), int(opening), int(credits), int(debits)


def test_wallet_statements_equal_the_ledger_to_the_nano_and_add_up_in_cents(seeded, db):
    with session_scope() as session:
        rows = wallet_statements(session, enterprise_id="acme", period="2026-11")
    assert sorted(w.wallet_id for w in rows) == ["w-alice", "w-bob", "w-carol"]  # not the other app's x-1
    for w in rows:
        balance, opening, credits, debits = _sql_figures(db, w.wallet_id)
        assert (w.balance_nanos, w.opening_nanos, w.credits_nanos, w.debits_nanos) == (
            balance,
            opening,
            credits,
            debits,
        )
        ((stored,),) = _sql(db, "SELECT credits_nanos - debits_nanos FROM wallet WHERE id = :w", w=w.wallet_id)
        assert w.balance_nanos == stored
        assert w.closing_nanos == opening + credits - debits
        d = w.displayed()
        assert d["opening"] + d["credits"] - d["debits"] == d["closing"] == round_cents(w.closing_nanos)
    alice = next(w for w in rows if w.wallet_id == "w-alice")
    assert alice.opening_nanos == 20_000_000_000 - 3_333_333_333  # October's entries, the 23:59:59 debit included
    assert alice.credits_by_source == {"allowance": 5_004_999_999, "operator": 1_004_999_999}
    assert alice.debits_nanos == 8_599_387_350  # the December 1st debit is not November's
    bob = next(w for w in rows if w.wallet_id == "w-bob")
    assert bob.credits_by_source == {"stripe": 10_005_000_000}
    assert bob.debits_nanos == sum(1_234_567 + i for i in range(55))
    states = {w.wallet_id: w.state for w in rows}
    assert states == {"w-alice": "active", "w-bob": "active", "w-carol": "blocked"}
    carol = next(w for w in rows if w.wallet_id == "w-carol")
    assert carol.blocked_reason == "budget_exceeded" and carol.paused_chats > 0  # blocked wins over paused


def test_the_displayed_cents_add_up_where_rounding_alone_would_not(seeded, db):
    # w-carol, February 2027: opening $7.777 + $1.004999999 (January) = $8.781999999, credits
    # $1.004999999, closing $9.786999998: alone $8.78 + $1.00 = $9.78, but the closing reads $9.79
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description, "
                "created_at) VALUES ('w-carol', 'credit', 1004999999, 0, 'op-1', '', '2027-01-02Z'), "
                "('w-carol', 'credit', 1004999999, 0, 'op-2', '', '2027-02-02Z')"
            )
        )
        # as every ledger writer does (worker.ledger.accounts.record_credit): the wallet's counters are
        # the sums of its entries, and the statements read the opening balance from them
        conn.execute(text("UPDATE wallet SET credits_nanos = credits_nanos + 2009999998 WHERE id = 'w-carol'"))
    with session_scope() as session:
        [carol] = wallet_statements(session, enterprise_id="acme", period="2027-02", wallet_id="w-carol")
    assert (carol.opening_nanos, carol.credits_nanos, carol.debits_nanos) == (8_781_999_999, 1_004_999_999, 0)
    assert (round_cents(carol.opening_nanos), round_cents(carol.credits_nanos), round_cents(carol.closing_nanos)) == (
        878,
        100,
        979,
    )
    assert carol.displayed() == {"opening": 878, "credits": 101, "debits": 0, "closing": 979}


@pytest.mark.parametrize(
    ("mode", "limited", "balance_nanos", "expected"),
    [
        ("production", True, -1, "exhausted"),
        ("production", True, 0, "exhausted"),
        ("trial", True, -5, "exhausted"),
        ("production", True, 1, "active"),  # one nano left still runs
        ("production", False, -1_000, "active"),  # unlimited: may overdraw, nothing stops
        ("development", True, -1_000, "active"),  # a mode that never debits stops nothing
        ("track_only", True, -1_000, "active"),
    ],
)
def test_a_dry_wallet_reads_exhausted_even_before_a_chat_is_paused(seeded, db, mode, limited, balance_nanos, expected):
    # w-bob has no paused chat: the state column must still say it has run dry (the attention feed
    # lists the same wallets as exhausted)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE wallet SET mode = :mode, limited = :limited, debits_nanos = credits_nanos - :balance "
                "WHERE id = 'w-bob'"
            ),
            dict(mode=mode, limited=limited, balance=balance_nanos),
        )
    ((paused,),) = _sql(db, "SELECT count(*) FROM chat_session WHERE wallet_id = 'w-bob' AND status = 'paused'")
    assert paused == 0
    with session_scope() as session:
        [bob] = wallet_statements(session, enterprise_id="acme", period="2026-11", wallet_id="w-bob")
        feed = attention(session, enterprise_id="acme", period="2026-11", detail=True)
    assert (bob.balance_nanos, bob.state) == (balance_nanos, expected)
    listed = {a.subject for a in feed.alerts if a.reason == "exhausted"}
    assert ("w-bob" in listed) is (expected == "exhausted")


def test_blocked_wins_over_exhausted(seeded, db):
    with db.begin() as conn:
        conn.execute(text("UPDATE wallet SET limited = true, debits_nanos = credits_nanos + 1 WHERE id = 'w-carol'"))
    with session_scope() as session:
        [carol] = wallet_statements(session, enterprise_id="acme", period="2026-11", wallet_id="w-carol")
    assert (carol.state, carol.blocked_reason, carol.balance_nanos) == ("blocked", "budget_exceeded", -1)


def test_the_ledger_is_paged_newest_first_and_scoped(seeded, db):
    expected = [
        (int(i), w, k, int(n))
        for i, w, k, n in _sql(
            db,
            "SELECT t.id, t.wallet_id, t.kind, t.amount_nanos FROM wallet_transaction t JOIN wallet w ON w.id = t.wallet_id "
            "WHERE w.enterprise_id = 'acme' AND t.created_at >= :lo AND t.created_at < :hi "
            "ORDER BY t.created_at DESC, t.id DESC",
            lo=NOV[0],
            hi=NOV[1],
        )
    ]
    assert len(expected) == 59
    with session_scope() as session:
        one = ledger_page(session, enterprise_id="acme", period="2026-11")
        two = ledger_page(session, enterprise_id="acme", period="2026-11", page=2)
        three = ledger_page(session, enterprise_id="acme", period="2026-11", page=3)
        alice = ledger_page(session, enterprise_id="acme", period="2026-11", wallet_id="w-alice")
        with pytest.raises(InputError, match="ledger_page"):
            ledger_page(session, enterprise_id="acme", period="2026-11", page=0)
    got = [(e.id, e.wallet_id, e.kind, e.amount_nanos) for e in one.entries + two.entries]
    assert got == expected
    assert (len(one.entries), len(two.entries), one.pages, one.total) == (LEDGER_PAGE_SIZE, 9, 2, 59)
    assert three.entries == [] and three.page == 3
    assert [(e.source, e.amount_nanos) for e in alice.entries] == [
        ("usage", 8_599_387_350),
        ("operator", 1_004_999_999),
        ("allowance", 5_004_999_999),
    ]


def test_the_page_shows_each_viewer_its_wallets_and_ledger(client, seeded, db):
    owner = client.get("/billing?period=2026-11", headers=_auth(seeded.keys["owner"]))
    assert owner.status_code == 200
    html = owner.text
    for w in ("w-alice", "w-bob", "w-carol"):
        assert f'data-testid="wallet-row" data-wallet="{w}"' in html
    assert html.count('data-testid="ledger-row"') == LEDGER_PAGE_SIZE
    assert 'data-testid="ledger-next" href="/billing?period=2026-11&amp;ledger_page=2#ledger"' in html
    page2 = client.get("/billing?period=2026-11&ledger_page=2", headers=_auth(seeded.keys["owner"]))
    assert page2.text.count('data-testid="ledger-row"') == 9 and 'data-testid="ledger-prev"' in page2.text
    assert "x-1" not in html

    me = client.get("/billing?period=2026-11", headers=_auth(seeded.keys["end_user"])).text
    assert 'data-wallet="w-alice"' in me and 'data-wallet="w-bob"' not in me and 'data-wallet="w-carol"' not in me
    assert me.count('data-testid="ledger-row"') == 3

    admin = client.get("/billing?period=2026-11&enterprise_id=acme", headers=_auth(seeded.keys["admin"])).text
    assert admin.count('data-testid="wallet-row"') == 1 and 'data-wallet="all wallets"' in admin
    assert 'data-wallet="w-alice"' not in admin and 'data-testid="ledger"' not in admin
    total_balance = sum(
        int(b) for (b,) in _sql(db, "SELECT credits_nanos - debits_nanos FROM wallet WHERE enterprise_id = 'acme'")
    )
    assert f'data-balance-nanos="{total_balance}"' in admin

    bad = client.get("/billing?period=2026-11&ledger_page=0", headers=_auth(seeded.keys["owner"]))
    assert bad.status_code == 422 and "ledger_page" in bad.text


@pytest.mark.parametrize("who", ["other_owner", "other_end_user"])
@pytest.mark.parametrize(
    "url",
    [
        "/billing?period=2026-11&enterprise_id=acme&ledger_page=2",
        "/billing?period=2026-11&enterprise_id=acme",
        "/billing/export.pdf?period=2026-11&enterprise_id=acme",
    ],
)
def test_another_app_s_key_gets_403_on_the_wallets_ledger_and_statement(client, seeded, who, url):
    r = client.get(url, headers=_auth(seeded.keys[who]))
    assert r.status_code == 403
    assert "w-alice" not in r.text


def _pdf_wallet_rows(pdf: bytes) -> dict[str, list[str]]:
    lines = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("w-", "x-", "all wallets"))}


def _c(shown: str) -> int:
    whole, frac = shown.lstrip("-").removeprefix("$").replace(",", "").split(".")
    return (-1 if shown.startswith("-") else 1) * (int(whole) * 100 + int(frac))


def test_the_pdf_statement_has_opening_credits_debits_closing_per_wallet(client, seeded, db):
    pdf = client.get("/billing/export.pdf?period=2026-11", headers=_auth(seeded.keys["owner"])).content
    rows = _pdf_wallet_rows(pdf)
    assert set(rows) == {"w-alice", "w-bob", "w-carol"}
    for w, cells in rows.items():
        opening, credits, debits, closing, exact = cells
        _, o, c, d = _sql_figures(db, w)
        assert int(exact.replace(",", "")) == o + c - d  # to the nano
        assert _c(opening) + _c(credits) - _c(debits) == _c(closing) == round_cents(o + c - d)  # to the cent
    mine = _pdf_wallet_rows(
        client.get("/billing/export.pdf?period=2026-11", headers=_auth(seeded.keys["end_user"])).content
    )
    assert set(mine) == {"w-alice"}
    admin = client.get("/billing/export.pdf?period=2026-11&enterprise_id=acme", headers=_auth(seeded.keys["admin"]))
    text_ = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(admin.content)).pages)
    assert "all wallets" in text_ and "w-alice" not in text_


def test_an_admin_without_an_app_gets_the_app_picker_not_a_422(client, seeded):
    key = _auth(seeded.keys["admin"])
    r = client.get("/billing?period=2026-11", headers=key)
    assert r.status_code == 200 and 'data-testid="app-picker"' in r.text
    assert 'href="/billing?period=2026-11&amp;enterprise_id=acme"' in r.text
    assert 'href="/billing?period=2026-11&amp;enterprise_id=other"' in r.text
    assert 'action="/billing/logout"' in r.text  # sign-out is there
    assert "w-alice" not in r.text  # aggregates only: no wallet is named
    # the exports still need the app
    assert client.get("/billing/export.pdf?period=2026-11", headers=key).status_code == 422
    # an owner or end user without enterprise_id still sees its own app, never the picker
    owner = client.get("/billing?period=2026-11", headers=_auth(seeded.keys["owner"]))
    assert owner.status_code == 200 and 'data-testid="app-picker"' not in owner.text
    app = client.get("/billing?period=2026-11&enterprise_id=acme", headers=key)
    assert 'data-testid="switch-app" href="/billing?period=2026-11"' in app.text


def test_wallet_totals_cover_every_wallet_beyond_the_listed_ones(client, seeded, db):
    with session_scope() as session:
        rows = wallet_statements(session, enterprise_id="acme", period="2026-11")
        count, total = wallet_totals(session, enterprise_id="acme", period="2026-11")
    assert count == 3
    for f in ("balance_nanos", "opening_nanos", "credits_nanos", "debits_nanos", "paused_chats"):
        assert getattr(total, f) == sum(getattr(w, f) for w in rows), f
    assert total.credits_by_source == {"allowance": 5_004_999_999, "operator": 1_004_999_999, "stripe": 10_005_000_000}
    # 250 more wallets with a credit each in November: the owner's table lists MAX_WALLETS, the sums cover all
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO wallet (id, enterprise_id, owner_id, level, mode, currency, limited, credits_nanos, "
                "debits_nanos, monthly_allowance_nanos, mode_override, trial_tokens_used, debt_nanos) "
                "SELECT 'many-' || g, 'acme', 'o', 'app_usage', 'production', 'USD', true, g, 0, 0, false, 0, 0 "
                "FROM generate_series(1, 250) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description, created_at) "
                "SELECT 'many-' || g, 'credit', g, 0, 'tollgate:allowance:many-' || g || '-2026-11', '', '2026-11-02Z' "
                "FROM generate_series(1, 250) g"
            )
        )
    with session_scope() as session:
        listed = wallet_statements(session, enterprise_id="acme", period="2026-11")
        count, total = wallet_totals(session, enterprise_id="acme", period="2026-11")
    assert len(listed) == MAX_WALLETS and count == 253
    ((balance, credits),) = _sql(
        db,
        "SELECT sum(credits_nanos - debits_nanos), (SELECT sum(amount_nanos) FROM wallet_transaction t JOIN wallet w "
        "ON w.id = t.wallet_id WHERE w.enterprise_id = 'acme' AND t.kind = 'credit' AND t.created_at >= :lo "
        "AND t.created_at < :hi) FROM wallet WHERE enterprise_id = 'acme'",
        lo=NOV[0],
        hi=NOV[1],
    )
    assert (total.balance_nanos, total.credits_nanos) == (int(balance), int(credits))
    assert total.credits_by_source["allowance"] == 5_004_999_999 + sum(range(1, 251))
    owner = client.get("/billing?period=2026-11", headers=_auth(seeded.keys["owner"])).text
    assert owner.count('data-testid="wallet-row"') == MAX_WALLETS and 'data-testid="wallets-capped"' in owner
    admin = client.get("/billing?period=2026-11&enterprise_id=acme", headers=_auth(seeded.keys["admin"])).text
    assert f'data-balance-nanos="{int(balance)}"' in admin and "All 253 wallets" in admin


def test_wallets_that_differ_only_outside_latin_1_stay_different_on_the_pdf_statement(client, seeded, db):
    """The core fonts draw Latin-1 only; each other code point was drawn as ``?``, so ``w-\u04551``
    (Cyrillic dze) and ``w-\u04341`` (Cyrillic de) were two rows both reading ``w-?1``."""
    ids = ("w-\u04551", "w-\u04341", "w-\U0001d42c1")
    with db.begin() as conn:
        for n, wallet_id in enumerate(ids, 1):
            conn.execute(
                text(
                    "INSERT INTO wallet (id, enterprise_id, owner_id, level, mode, currency, limited, credits_nanos, "
                    "debits_nanos, monthly_allowance_nanos, mode_override, trial_tokens_used, debt_nanos) "
                    "VALUES (:w, 'acme', 'o', 'app_usage', 'production', 'USD', true, :n, 0, 0, false, 0, 0)"
                ),
                {"w": wallet_id, "n": n * 1_000_000_000},
            )
            conn.execute(
                text(
                    "INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description, "
                    "created_at) VALUES (:w, 'credit', :n, 0, :k, '', '2026-11-05T00:00:00Z')"
                ),
                {"w": wallet_id, "n": n * 1_000_000_000, "k": f"odd-{n}"},
            )
    pdf = client.get("/billing/export.pdf?period=2026-11", headers=_auth(seeded.keys["owner"])).content
    rows = _pdf_wallet_rows(pdf)
    shown = {w.encode("latin-1", "backslashreplace").decode("latin-1") for w in ids}
    assert shown <= set(rows), sorted(rows)
    assert [rows[w.encode("latin-1", "backslashreplace").decode("latin-1")][1] for w in ids] == [
        "$1.00",
        "$2.00",
        "$3.00",
    ]
