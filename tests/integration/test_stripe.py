"""Stripe against real PostgreSQL and Redis: signed webhooks (signatures computed here as Stripe
computes them), each event stored once and processed once, credits keyed by the Stripe object so a
replay credits once (exact nanos in the ledger and the gate), the subscription lifecycle through the
gate's block, and the exact Checkout requests sent to a local server standing in for Stripe's API."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from sqlalchemy import text

from models.enums import PayerLevel
from models.turn import TurnIn
from tests.committed import credit_wallet, open_wallet
from tests.conftest import create_keys
from tests.stripe_stub import StripeStub, event_json, stripe_signature
from worker.billing.jobs import run_monthly_reset
from worker.billing.stripe import (
    PAYMENT_FAILED,
    ProcessResult,
    StripeBillingError,
    add_package,
    application_fee_percent,
    checkout_idempotency_key,
    checkout_params,
    create_checkout_session,
    platform_fee_cents,
    process_event,
)
from worker.db import session_scope

pytestmark = pytest.mark.integration

SECRET = "whsec_test_tollgate"
USD = 10**9
CENT = 10_000_000
TOPUP = dict(package_id="topup-10", name="10 USD of tokens", price_cents=1_000, credit_nanos=10 * USD)
PLAN = dict(
    package_id="plan-20",
    name="20 USD a month",
    price_cents=2_000,
    credit_nanos=20 * USD,
    monthly=True,
    stripe_price_id="price_plan20",
)
URLS = dict(success_url="https://app.example/ok", cancel_url="https://app.example/cancel")
TASK = "tollgate.stripe.process_event"


@pytest.fixture()
def stripe_settings(settings, monkeypatch):
    monkeypatch.setattr(settings, "stripe_webhook_secret", SECRET)
    monkeypatch.setattr(settings, "stripe_api_key", "sk_test_tollgate")
    return settings


@pytest.fixture()
def api(http_api, stripe_settings):
    """The FastAPI app with Celery sends recorded in ``api.sent`` instead of sent."""
    from api_stub import main
    from api_stub.routes.stripe import get_send_task

    sent: list[tuple[str, dict]] = []
    main.app.dependency_overrides[get_send_task] = lambda: lambda name, kwargs: sent.append((name, kwargs))
    client = http_api()
    client.sent = sent
    yield client
    main.app.dependency_overrides.clear()


def _packages(*packages) -> None:
    with session_scope() as session:
        for p in packages:
            add_package(session, **p)


def _post(api, body: str, *, secret: str = SECRET, timestamp: int | None = None, header: str | None = None):
    sig = header if header is not None else stripe_signature(body, secret, timestamp)
    headers = {"Content-Type": "application/json"}
    if sig:
        headers["Stripe-Signature"] = sig
    return api.post("/v1/stripe/webhook", content=body.encode(), headers=headers)


def _process(event_id: str) -> dict:
    """The Celery task's function, called in-process."""
    from tasks.stripe import process_event as task

    return task(event_id)


def _apply(event_id: str, gate) -> "ProcessResult":
    """:func:`process_event` as the task runs it: one transaction, the gate steps after its commit."""
    with session_scope() as session:
        return process_event(session, event_id, gate=gate)


def _ledger(db, wallet_id="w1") -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT idempotency_key, kind, amount_nanos FROM wallet_transaction WHERE wallet_id = :w ORDER BY id"
                ),
                {"w": wallet_id},
            )
        ]


def _wallet_row(db, wallet_id="w1") -> dict:
    with db.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT credits_nanos, debits_nanos, stripe_customer_id, stripe_subscription_id, subscription_status, "
                    "monthly_allowance_nanos, blocked_reason FROM wallet WHERE id = :w"
                ),
                {"w": wallet_id},
            )
            .mappings()
            .one()
        )


def _events(db) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT id, type, processed_at IS NOT NULL, outcome FROM stripe_event ORDER BY received_at, id")
            )
        ]


def _audits(db) -> list[tuple]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT actor, action, wallet_id, detail FROM audit_log WHERE actor = 'stripe' ORDER BY id")
            )
        ]


def _paid_session(sid="cs_test_a1", wallet="w1", package="topup-10", **kw) -> dict:
    return {
        "id": sid,
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 1_000,
        "currency": "usd",
        "customer": "cus_1",
        "client_reference_id": wallet,
        "metadata": {"wallet_id": wallet, "package_id": package},
        **kw,
    }


def _invoice(iid, *, sub="sub_1", wallet="w1", price="price_plan20", quantity=1, customer="cus_1") -> dict:
    """An invoice in the current API shape (``parent.subscription_details``, ``pricing.price_details``)."""
    return {
        "id": iid,
        "object": "invoice",
        "customer": customer,
        "currency": "usd",
        "amount_paid": 2_000,
        "status": "paid",
        "billing_reason": "subscription_cycle",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub, "metadata": {"wallet_id": wallet, "package_id": "plan-20"}},
        },
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{iid}",
                    "object": "line_item",
                    "amount": 2_000,
                    "quantity": quantity,
                    "pricing": {"type": "price_details", "price_details": {"price": price, "product": "prod_1"}},
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {"proration": False, "subscription": sub},
                    },
                }
            ],
        },
    }


def _turn(gate, n: int, wallet="w1"):
    return gate.record_turn(
        TurnIn(
            turn_id=f"t{n}",
            wallet_id=wallet,
            enterprise_id="acme",
            chat_id="c1",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=1_000,
            completion_tokens=0,
        )
    )


def test_a_paid_checkout_credits_once_however_often_stripe_sends_it(db, gate, api):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    body = event_json("evt_pay_1", "checkout.session.completed", _paid_session())

    r = _post(api, body)
    assert (r.status_code, r.json()) == (200, {"received": True, "duplicate": False})
    assert api.sent == [(TASK, {"event_id": "evt_pay_1"})]
    assert _events(db) == [("evt_pay_1", "checkout.session.completed", False, None)]  # stored, not yet processed
    assert gate.balance("w1") == 0

    result = _process("evt_pay_1")
    assert (result["processed"], result["duplicate"], result["credited_nanos"]) == (True, False, 10 * USD)
    assert gate.balance("w1") == 10_000_000_000
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10_000_000_000)]
    row = _wallet_row(db)
    assert (row["credits_nanos"], row["debits_nanos"], row["stripe_customer_id"]) == (10 * USD, 0, "cus_1")
    assert _events(db) == [("evt_pay_1", "checkout.session.completed", True, "credited")]
    [(actor, action, wallet, detail)] = _audits(db)
    assert (actor, action, wallet) == ("stripe", "credit", "w1")
    assert detail == {
        "idempotency_key": "stripe:cs_test_a1",
        "amount_nanos": 10 * USD,
        "stripe_object": "cs_test_a1",
        "package_id": "topup-10",
        "event_id": "evt_pay_1",
    }

    # Stripe re-sends the same event (freshly signed): stored already and processed, nothing queued
    r = _post(api, body)
    assert (r.status_code, r.json()) == (200, {"received": True, "duplicate": True})
    assert api.sent == [(TASK, {"event_id": "evt_pay_1"})]
    # a re-delivered task changes nothing either
    again = _process("evt_pay_1")
    assert (again["processed"], again["duplicate"], again["outcome"]) == (False, True, "credited")
    # another event about the same session (async payment succeeded) is processed, but credits nothing new
    r = _post(api, event_json("evt_pay_2", "checkout.session.async_payment_succeeded", _paid_session()))
    assert r.json() == {"received": True, "duplicate": False}
    assert _process("evt_pay_2")["processed"] is True
    assert gate.balance("w1") == 10_000_000_000
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10_000_000_000)]
    assert _wallet_row(db)["credits_nanos"] == 10 * USD
    assert len(_audits(db)) == 1


def test_forged_stale_and_malformed_webhooks_answer_400_and_change_nothing(db, gate, api):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    body = event_json("evt_forged", "checkout.session.completed", _paid_session())
    now = int(time.time())
    tampered = body.replace('"topup-10"', '"topup-99"')
    cases = [
        ("wrong secret", body, dict(secret="whsec_attacker")),
        ("body changed after signing", tampered, dict(header=stripe_signature(body, SECRET, now))),
        ("stale: 301+ s old", body, dict(timestamp=now - 400)),
        ("no header", body, dict(header="")),
        ("garbage header", body, dict(header="nonsense")),
        ("v0 scheme only", body, dict(header=stripe_signature(body, SECRET, now).replace("v1=", "v0="))),
    ]
    for label, payload, kw in cases:
        r = _post(api, payload, **kw)
        assert r.status_code == 400, label
        assert r.headers["content-type"] == "application/problem+json", label
        assert r.json()["errors"] == [{"field": "Stripe-Signature", "message": r.json()["detail"]}], label
        assert r.json()["detail"].startswith("Stripe-Signature: "), label

    # correctly signed but not an event: 400 naming the field, nothing stored
    for payload, field in [
        ("not json", "body"),
        (json.dumps({"object": "event", "type": "x"}), "id"),
        (json.dumps({"id": "evt_no_type", "object": "event"}), "type"),
    ]:
        r = _post(api, payload)
        assert (r.status_code, r.json()["errors"][0]["field"]) == (400, field), payload

    assert api.sent == [] and _events(db) == [] and _ledger(db) == [] and _audits(db) == []
    assert gate.balance("w1") == 0

    # the same body, signed now with the endpoint's secret, is accepted: the rejections were the signature
    assert _post(api, body, timestamp=now - 200).json() == {"received": True, "duplicate": False}
    _process("evt_forged")
    assert gate.balance("w1") == 10 * USD


def test_unpaid_unknown_and_unmatched_events_credit_nothing(db, gate, api):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    events = [
        ("evt_unpaid", "checkout.session.completed", _paid_session(payment_status="unpaid")),
        ("evt_other", "customer.created", {"id": "cus_9", "object": "customer"}),
        ("evt_nowallet", "checkout.session.completed", _paid_session("cs_x", wallet="ghost")),
        ("evt_nopkg", "checkout.session.completed", _paid_session("cs_y", package="ghost-pkg")),
    ]
    for event_id, kind, obj in events:
        assert _post(api, event_json(event_id, kind, obj)).status_code == 200
        _process(event_id)
    assert sorted(_events(db)) == [
        ("evt_nopkg", "checkout.session.completed", False, "error: metadata.package_id: unknown package 'ghost-pkg'"),
        (
            "evt_nowallet",
            "checkout.session.completed",
            False,
            "error: wallet_id: no wallet for metadata wallet_id 'ghost', subscription None, customer None",
        ),
        ("evt_other", "customer.created", True, "ignored"),
        ("evt_unpaid", "checkout.session.completed", True, "ignored: payment_status 'unpaid'"),
    ]
    assert _ledger(db) == [] and gate.balance("w1") == 0
    # an event left in error is processed when Stripe delivers it again after the data is fixed
    _packages(dict(TOPUP, package_id="ghost-pkg"))
    r = _post(api, event_json("evt_nopkg", "checkout.session.completed", _paid_session("cs_y", package="ghost-pkg")))
    assert r.json() == {"received": True, "duplicate": True}
    assert api.sent[-1] == (TASK, {"event_id": "evt_nopkg"})  # unprocessed: queued again
    assert _process("evt_nopkg")["credited_nanos"] == 10 * USD
    assert (gate.balance("w1"), _ledger(db)) == (10 * USD, [("stripe:cs_y", "credit", 10 * USD)])


def test_concurrent_processing_of_one_event_credits_once(db, gate, api, race):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    _post(api, event_json("evt_race", "checkout.session.completed", _paid_session()))
    results = race(*[lambda: _apply("evt_race", gate)] * 4)  # fails on any racer's exception
    assert sorted((r.processed, r.duplicate) for r in results) == [(False, True)] * 3 + [(True, False)]
    assert gate.balance("w1") == 10 * USD
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)]
    assert len(_audits(db)) == 1


def test_subscription_lifecycle_credits_each_paid_invoice_once_and_blocks_on_failed_payment(db, gate, api, settings):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=1 * USD, idempotency_key="seed-w1")
    _packages(PLAN)

    # the first invoice can arrive before the Checkout session: the subscription metadata finds the wallet
    first = event_json("evt_inv_1", "invoice.paid", _invoice("in_1"))
    assert _post(api, first).json() == {"received": True, "duplicate": False}
    assert _process("evt_inv_1")["credited_nanos"] == 20 * USD
    assert _post(api, first).json() == {"received": True, "duplicate": True}  # replay
    assert _process("evt_inv_1")["duplicate"] is True
    sub_session = {
        "id": "cs_sub_1",
        "object": "checkout.session",
        "mode": "subscription",
        "payment_status": "paid",
        "customer": "cus_1",
        "subscription": "sub_1",
        "client_reference_id": "w1",
        "metadata": {"wallet_id": "w1", "package_id": "plan-20"},
    }
    _post(api, event_json("evt_sub_done", "checkout.session.completed", sub_session))
    assert _process("evt_sub_done")["outcome"] == "subscribed: sub_1"
    assert gate.balance("w1") == 21 * USD
    assert _ledger(db) == [("seed-w1", "credit", USD), ("stripe:in_1", "credit", 20 * USD)]
    row = _wallet_row(db)
    assert (
        row["stripe_customer_id"],
        row["stripe_subscription_id"],
        row["subscription_status"],
        row["monthly_allowance_nanos"],
        row["blocked_reason"],
    ) == ("cus_1", "sub_1", "active", 0, None)
    # the monthly reset grants nothing on top: the paid invoice is the month's credit
    assert run_monthly_reset(gate, wallet_ids=["w1"], settings=settings).granted == []
    assert gate.balance("w1") == 21 * USD

    # the next cycle's payment fails: the wallet is blocked, in PostgreSQL and in the gate
    assert _turn(gate, 1).accepted  # 1,000 gpt-4o prompt tokens: 2,500,000 nanos
    _post(
        api, event_json("evt_fail_2", "invoice.payment_failed", _invoice("in_2") | {"status": "open", "amount_paid": 0})
    )
    assert _process("evt_fail_2")["outcome"] == f"blocked: {PAYMENT_FAILED}"
    row = _wallet_row(db)
    assert (row["subscription_status"], row["blocked_reason"]) == ("past_due", PAYMENT_FAILED)
    assert gate.blocked_reasons(["w1"]) == {"w1": PAYMENT_FAILED}
    denied = _turn(gate, 2)
    assert (denied.accepted, denied.billed_nanos) == (False, 0)
    assert gate.balance("w1") == 21 * USD - 2_500_000

    # the retried payment succeeds: credited once (an old-shape invoice: subscription, price.id), unblocked
    old_shape = {
        "id": "in_2",
        "object": "invoice",
        "customer": "cus_1",
        "currency": "usd",
        "amount_paid": 2_000,
        "subscription": "sub_1",
        "subscription_details": {"metadata": {}},
        "lines": {
            "data": [
                {"id": "il_2", "quantity": 1, "proration": False, "price": {"id": "price_plan20"}},
                {"id": "il_2p", "quantity": 1, "proration": True, "price": {"id": "price_plan20"}},
            ]
        },
    }
    _post(api, event_json("evt_inv_2", "invoice.paid", old_shape))
    _post(api, event_json("evt_inv_2b", "invoice.paid", old_shape))  # a second event about the same invoice
    assert _process("evt_inv_2")["credited_nanos"] == 20 * USD
    _process("evt_inv_2b")
    assert gate.balance("w1") == 41 * USD - 2_500_000
    assert _ledger(db) == [
        ("seed-w1", "credit", USD),
        ("stripe:in_1", "credit", 20 * USD),
        ("stripe:in_2", "credit", 20 * USD),
    ]
    row = _wallet_row(db)
    assert (row["subscription_status"], row["blocked_reason"], row["credits_nanos"]) == ("active", None, 41 * USD)
    assert gate.blocked_reasons(["w1"]) == {"w1": None}
    assert _turn(gate, 3).accepted
    assert [d["idempotency_key"] for *_x, d in _audits(db)] == ["stripe:in_1", "stripe:in_2"]

    # canceled: status recorded, the grant the operator set by hand kept (a subscription never sets
    # it); an event of an older subscription is ignored
    with db.begin() as conn:
        conn.execute(text("UPDATE wallet SET monthly_allowance_nanos = 5000000000 WHERE id = 'w1'"))
    _post(api, event_json("evt_old_fail", "invoice.payment_failed", _invoice("in_0", sub="sub_0")))
    assert _process("evt_old_fail")["outcome"] == "ignored: sub_0 is not the wallet's subscription"
    _post(
        api,
        event_json(
            "evt_del",
            "customer.subscription.deleted",
            {
                "id": "sub_1",
                "object": "subscription",
                "customer": "cus_1",
                "status": "canceled",
                "metadata": {"wallet_id": "w1", "package_id": "plan-20"},
            },
        ),
    )
    assert _process("evt_del")["outcome"] == "canceled"
    row = _wallet_row(db)
    assert (row["subscription_status"], row["monthly_allowance_nanos"], row["blocked_reason"]) == (
        "canceled",
        5_000_000_000,
        None,
    )
    assert gate.balance("w1") == 41 * USD - 5_000_000


def test_payment_failed_takes_over_a_budget_block_and_keeps_other_reasons(db, gate, api):
    from worker.billing.budgets import BUDGET_EXCEEDED

    for w in ("w1", "w2"):
        open_wallet(gate, wallet_id=w, enterprise_id="acme", owner_id=w)
    _packages(PLAN)
    with db.begin() as conn:
        conn.execute(text("UPDATE wallet SET blocked_reason = :r WHERE id = 'w1'"), {"r": BUDGET_EXCEEDED})
        conn.execute(text("UPDATE wallet SET blocked_reason = 'fraud_review' WHERE id = 'w2'"))
    gate.set_blocked("w1", BUDGET_EXCEEDED)
    gate.set_blocked("w2", "fraud_review")
    _post(api, event_json("evt_f1", "invoice.payment_failed", _invoice("in_a", sub="sub_a", wallet="w1")))
    _post(api, event_json("evt_f2", "invoice.payment_failed", _invoice("in_b", sub="sub_b", wallet="w2")))
    _process("evt_f1")
    _process("evt_f2")
    assert gate.blocked_reasons(["w1", "w2"]) == {"w1": PAYMENT_FAILED, "w2": "fraud_review"}
    assert (_wallet_row(db, "w1")["blocked_reason"], _wallet_row(db, "w2")["blocked_reason"]) == (
        PAYMENT_FAILED,
        "fraud_review",
    )
    _post(api, event_json("evt_p2", "invoice.paid", _invoice("in_b", sub="sub_b", wallet="w2")))
    _process("evt_p2")
    assert gate.blocked_reasons(["w2"]) == {"w2": "fraud_review"}  # not ours to lift
    assert gate.balance("w2") == 20 * USD


def test_fee_arithmetic_is_integer_cents():
    assert platform_fee_cents(1_000, 7_000) == 300
    assert platform_fee_cents(999, 7_000) == 300  # creator 699 (699.3 rounded down)
    assert platform_fee_cents(12_345, 3_333) == 8_231  # creator 12,345 × 3,333 // 10,000 = 4,114
    assert platform_fee_cents(1, 7_000) == 1
    assert platform_fee_cents(99_999_999, 10_000) == 0
    assert (
        application_fee_percent(7_000),
        application_fee_percent(8_250),
        application_fee_percent(9_999),
        application_fee_percent(0),
    ) == ("30.00", "17.50", "0.01", "100.00")
    for bad in (-1, 10_001, 70.0, True):
        with pytest.raises(ValueError, match="creator_share_bps"):
            platform_fee_cents(100, bad)


def test_checkout_sends_stripe_exactly_these_requests(db, gate, stripe_settings, monkeypatch, http_api):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    open_wallet(gate, wallet_id="creator", enterprise_id="acme", owner_id="o1", level=PayerLevel.platform)
    _packages(dict(TOPUP, price_cents=999), PLAN)
    with db.begin() as conn:
        conn.execute(text("UPDATE enterprise SET stripe_account_id = 'acct_creator1', creator_share_bps = 8250"))
    with StripeStub() as stub:
        client = stripe.StripeClient("sk_test_tollgate", base_addresses={"api": stub.url}, max_network_retries=0)
        with session_scope() as session:
            one_off = create_checkout_session(
                session, wallet_id="w1", package_id="topup-10", client=client, idempotency_key="buy-1", **URLS
            )
            monthly = create_checkout_session(session, wallet_id="w1", package_id="plan-20", client=client, **URLS)
            platform = create_checkout_session(
                session, wallet_id="creator", package_id="topup-10", client=client, **URLS
            )
        assert (one_off.session_id, one_off.url, one_off.mode) == (
            "cs_test_1",
            "https://checkout.stripe.com/c/pay/cs_test_1",
            "payment",
        )
        assert (monthly.session_id, monthly.mode, platform.session_id) == ("cs_test_2", "subscription", "cs_test_3")
        assert [(r.method, r.path) for r in stub.requests] == [("POST", "/v1/checkout/sessions")] * 3
        first, second, third = stub.requests
        assert first.headers["authorization"] == "Bearer sk_test_tollgate"
        assert first.headers["idempotency-key"] == checkout_idempotency_key("w1", "buy-1")
        assert first.headers["content-type"] == "application/x-www-form-urlencoded"
        common = {"client_reference_id": "w1", "success_url": URLS["success_url"], "cancel_url": URLS["cancel_url"]}
        assert first.form == common | {
            "mode": "payment",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "999",
            "line_items[0][price_data][product_data][name]": "10 USD of tokens",
            "line_items[0][quantity]": "1",
            "metadata[wallet_id]": "w1",
            "metadata[package_id]": "topup-10",
            "payment_intent_data[metadata][wallet_id]": "w1",
            "payment_intent_data[metadata][package_id]": "topup-10",
            # 999 cents: the creator's 82.5 % is 824 cents (824.175 rounded down), the platform keeps 175
            "payment_intent_data[application_fee_amount]": "175",
            "payment_intent_data[transfer_data][destination]": "acct_creator1",
        }
        assert second.form == common | {
            "mode": "subscription",
            "line_items[0][price]": "price_plan20",
            "line_items[0][quantity]": "1",
            "metadata[wallet_id]": "w1",
            "metadata[package_id]": "plan-20",
            "subscription_data[metadata][wallet_id]": "w1",
            "subscription_data[metadata][package_id]": "plan-20",
            "subscription_data[application_fee_percent]": "17.50",
            "subscription_data[transfer_data][destination]": "acct_creator1",
        }
        # a platform-level wallet (the app creator) pays the platform: no Connect
        assert third.form == common | {
            "client_reference_id": "creator",
            "mode": "payment",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "999",
            "line_items[0][price_data][product_data][name]": "10 USD of tokens",
            "line_items[0][quantity]": "1",
            "metadata[wallet_id]": "creator",
            "metadata[package_id]": "topup-10",
            "payment_intent_data[metadata][wallet_id]": "creator",
            "payment_intent_data[metadata][package_id]": "topup-10",
        }

        # bad input names the field and sends nothing
        with db.begin() as conn:
            conn.execute(
                text(
                    "UPDATE wallet SET stripe_subscription_id = 'sub_1', subscription_status = 'active', "
                    "stripe_customer_id = 'cus_1' WHERE id = 'w1'"
                )
            )
        cases = [
            (dict(wallet_id="ghost", package_id="topup-10", **URLS), "wallet_id"),
            (dict(wallet_id="w1", package_id="ghost", **URLS), "package_id"),
            (dict(wallet_id="w1", package_id="plan-20", **URLS), "wallet_id: wallet 'w1' already has subscription"),
            (
                dict(
                    wallet_id="w1",
                    package_id="topup-10",
                    success_url="javascript:alert(1)",
                    cancel_url=URLS["cancel_url"],
                ),
                "success_url",
            ),
            (
                dict(wallet_id="w1", package_id="topup-10", success_url=URLS["success_url"], cancel_url="/relative"),
                "cancel_url",
            ),
        ]
        for kwargs, field in cases:
            with session_scope() as session, pytest.raises(StripeBillingError, match=f"^{field}"):
                create_checkout_session(session, client=client, **kwargs)
        assert len(stub.requests) == 3
        # a known customer is reused
        with session_scope() as session:
            assert checkout_params(session, wallet_id="w1", package_id="topup-10", **URLS)["customer"] == "cus_1"

        # over HTTP: the wallet's end-user key may buy for it, another wallet is not found
        monkeypatch.setattr(stripe_settings, "stripe_api_base", stub.url)
        http = http_api(create_keys({"user": ("end_user", "acme", "w1")}), headers={"Idempotency-Key": "http-buy-1"})
        auth = http.h["user"]
        r = http.post("/v1/checkout", json={"wallet_id": "w1", "package_id": "topup-10", **URLS}, headers=auth)
        assert (r.status_code, r.json()) == (
            200,
            {"session_id": "cs_test_4", "mode": "payment", "url": "https://checkout.stripe.com/c/pay/cs_test_4"},
        )
        # the caller's key scoped to the wallet: one Stripe account serves every app
        assert stub.requests[-1].headers["idempotency-key"] == checkout_idempotency_key("w1", "http-buy-1")
        assert stub.requests[-1].form["customer"] == "cus_1"
        r = http.post("/v1/checkout", json={"wallet_id": "creator", "package_id": "topup-10", **URLS}, headers=auth)
        assert (r.status_code, r.json()["errors"][0]["field"]) == (404, "wallet_id")
        r = http.post("/v1/checkout", json={"wallet_id": "w1", "package_id": "nope", **URLS}, headers=auth)
        assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "package_id")
        stub.fail_next = True
        r = http.post("/v1/checkout", json={"wallet_id": "w1", "package_id": "topup-10", **URLS}, headers=auth)
        assert (r.status_code, r.json()["detail"]) == (502, "Stripe: Your card was declined.")
        assert len(stub.requests) == 5


def test_a_checkout_idempotency_key_is_scoped_to_its_wallet():
    # one Stripe account serves every app: another app's same key must never reach this request
    key = checkout_idempotency_key("w1", "buy-1")
    assert key == checkout_idempotency_key("w1", "buy-1")  # a retry meets its own session
    assert key != checkout_idempotency_key("w2", "buy-1")
    assert checkout_idempotency_key("ab", "c") != checkout_idempotency_key("a", "bc")  # length-prefixed
    assert key.startswith("tollgate-checkout-") and len(key) == 82
    assert len(checkout_idempotency_key("w" * 200, "k" * 200)) == 82  # Stripe takes at most 255


def test_package_validation_names_the_field_and_stores_nothing(session):
    cases = [
        (dict(TOPUP, package_id="has space"), "package_id"),
        (dict(TOPUP, name=" "), "name"),
        (dict(TOPUP, price_cents=49), "price_cents"),
        (dict(TOPUP, price_cents=10.0), "price_cents"),
        (dict(TOPUP, price_cents=100_000_000), "price_cents"),
        (dict(TOPUP, credit_nanos=0), "credit_nanos"),
        (dict(TOPUP, credit_nanos=1.5), "credit_nanos"),
        (dict(TOPUP, credit_nanos=2**62 + 1), "credit_nanos"),
        (dict(TOPUP, monthly=True), "stripe_price_id: a monthly package needs"),
        (dict(TOPUP, stripe_price_id="prod_1"), "stripe_price_id"),
    ]
    for kwargs, field in cases:
        with pytest.raises(StripeBillingError, match=f"^{field}"):
            add_package(session, **kwargs)
    add_package(session, **PLAN)
    session.commit()  # the caller's commit (a savepoint of the test's transaction, rolled back after it)
    with pytest.raises(
        StripeBillingError, match="^stripe_price_id: 'price_plan20' already belongs to package 'plan-20'"
    ):
        add_package(session, **dict(PLAN, package_id="plan-other"))
    assert session.execute(text("SELECT id, price_cents, credit_nanos, monthly FROM token_package")).all() == [
        ("plan-20", 2_000, 20 * USD, True)
    ]
    assert 2_000 * CENT == 20 * USD  # the plan sells credit at face value


def test_a_real_celery_worker_processes_the_webhook_s_task(db, gate, stripe_settings, celery_worker_factory, http_api):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    celery_worker_factory()
    http = http_api()  # the real send_task: through the test broker to the worker
    body = event_json("evt_celery", "checkout.session.completed", _paid_session())
    assert _post(http, body).json() == {"received": True, "duplicate": False}
    deadline = time.monotonic() + 60
    while _events(db)[0][2] is False and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _events(db) == [("evt_celery", "checkout.session.completed", True, "credited")]
    assert gate.balance("w1") == 10 * USD
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)]


class FlakyGate:
    """The real gate, except that its next ``fail`` credits raise a Redis connection error."""

    def __init__(self, gate, fail: int = 1):
        self._gate, self.fail = gate, fail

    def __getattr__(self, name):
        return getattr(self._gate, name)

    def _maybe_fail(self):
        if self.fail:
            self.fail -= 1
            import redis

            raise redis.ConnectionError("Redis went away")

    def credit(self, *args, **kwargs):
        self._maybe_fail()
        return self._gate.credit(*args, **kwargs)

    def set_blocked(self, *args, **kwargs):
        self._maybe_fail()
        return self._gate.set_blocked(*args, **kwargs)


def test_a_gate_failure_after_the_ledger_commit_is_retried_and_credits_once(db, gate, api, monkeypatch):
    import tasks.stripe as stripe_tasks
    from worker.ledger.accounts import GatePending

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    _post(api, event_json("evt_flaky", "checkout.session.completed", _paid_session()))
    flaky = FlakyGate(gate)
    monkeypatch.setattr(stripe_tasks, "process_gate", lambda: flaky)
    with pytest.raises(GatePending):  # called directly, the task's retry re-raises the retriable error
        _process("evt_flaky")
    # one transaction: the event, its ledger entry, the wallet and the audit row committed together;
    # the gate step after the commit is what failed
    assert _events(db) == [("evt_flaky", "checkout.session.completed", True, "credited")]
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)]  # PostgreSQL first
    assert gate.balance("w1") == 0 and len(_audits(db)) == 1
    result = _process("evt_flaky")  # the retry completes the gate side only
    assert (result["processed"], result["duplicate"], result["outcome"]) == (False, True, "credited")
    assert gate.balance("w1") == 10 * USD
    assert _process("evt_flaky")["duplicate"] is True  # and another delivery credits nothing more
    assert gate.balance("w1") == 10 * USD
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)]
    assert _wallet_row(db)["credits_nanos"] == 10 * USD
    assert len(_audits(db)) == 1


def test_an_event_the_broker_refused_is_queued_again_on_stripe_s_next_delivery(db, gate, api):
    from api_stub import main
    from api_stub.routes.stripe import get_send_task

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)

    def broken(name, kwargs):
        raise ConnectionError("broker down")

    main.app.dependency_overrides[get_send_task] = lambda: broken
    body = event_json("evt_q", "checkout.session.completed", _paid_session())
    r = _post(api, body)
    assert (r.status_code, r.headers["content-type"]) == (503, "application/problem+json")
    assert _events(db) == [("evt_q", "checkout.session.completed", False, None)]  # stored once
    main.app.dependency_overrides[get_send_task] = lambda: lambda name, kwargs: api.sent.append((name, kwargs))
    assert _post(api, body).json() == {"received": True, "duplicate": True}
    assert api.sent == [(TASK, {"event_id": "evt_q"})]
    _process("evt_q")
    assert gate.balance("w1") == 10 * USD


def test_cli_adds_lists_and_deactivates_packages(cli):
    r = cli(
        "stripe",
        "package",
        "add",
        "plan-20",
        "--name",
        "20 USD a month",
        "--price-usd",
        "20.00",
        "--credit-usd",
        "20",
        "--monthly",
        "--price-id",
        "price_plan20",
    )
    assert r.returncode == 0, r.stderr
    assert " ".join(r.stdout.split()) == (
        "package plan-20: 20 USD a month, 20.000000000 USD of credit (20000000000 nanos) for 2000 cents a month"
    )
    bad = [
        (["--price-usd", "10.005", "--credit-usd", "10"], "--price-usd: 10.005 is not a whole number of cents"),
        (["--price-usd", "0.10", "--credit-usd", "10"], "--price-usd: must be an integer of USD cents in 50..99999999"),
        (["--price-usd", "10", "--credit-usd", "0"], "--credit-usd:"),
        (["--price-usd", "10", "--credit-usd", "10", "--monthly"], "--price-id: a monthly package needs"),
    ]
    for args, message in bad:
        r = cli("stripe", "package", "add", "topup", "--name", "top-up", *args)
        assert r.returncode == 2 and message in " ".join(r.stderr.split()), (args, r.stderr)
    assert cli("stripe", "package", "deactivate", "plan-20").returncode == 0
    r = cli("stripe", "package", "list", "--all", "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [
        {
            "id": "plan-20",
            "name": "20 USD a month",
            "price_cents": 2_000,
            "credit_nanos": 20 * USD,
            "monthly": True,
            "stripe_price_id": "price_plan20",
            "active": False,
        }
    ]
    assert json.loads(cli("stripe", "package", "list", "--json").stdout.strip().splitlines()[-1]) == []


def test_a_block_whose_gate_step_failed_is_completed_by_the_retry(db, gate, api):
    import redis

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(PLAN)
    _post(api, event_json("evt_fail", "invoice.payment_failed", _invoice("in_1")))
    with pytest.raises(redis.ConnectionError):
        _apply("evt_fail", FlakyGate(gate))  # the gate step after the commit fails
    assert _wallet_row(db)["blocked_reason"] == PAYMENT_FAILED  # PostgreSQL first
    assert gate.blocked_reasons(["w1"]) == {"w1": None} and _events(db)[0][2] is True
    assert _apply("evt_fail", gate).duplicate is True  # the retry completes the gate step
    assert gate.blocked_reasons(["w1"]) == {"w1": PAYMENT_FAILED}
    # and the lift: PostgreSQL credits and lifts in one transaction; both gate steps fail, then the block's
    _post(api, event_json("evt_paid", "invoice.paid", _invoice("in_1")))
    from worker.ledger.accounts import GatePending

    with pytest.raises(GatePending):  # the first failure of the two is raised
        _apply("evt_paid", FlakyGate(gate, fail=2))
    assert (_wallet_row(db)["blocked_reason"], _ledger(db)) == (None, [("stripe:in_1", "credit", 20 * USD)])
    assert (gate.balance("w1"), gate.blocked_reasons(["w1"])) == (0, {"w1": PAYMENT_FAILED})
    with pytest.raises(redis.ConnectionError):
        _apply("evt_paid", _FailBlockOnly(gate))  # the retry: the credit lands, the lift fails again
    assert (gate.balance("w1"), gate.blocked_reasons(["w1"])) == (20 * USD, {"w1": PAYMENT_FAILED})
    assert _apply("evt_paid", gate).duplicate is True
    assert gate.blocked_reasons(["w1"]) == {"w1": None}
    assert (gate.balance("w1"), _ledger(db)) == (20 * USD, [("stripe:in_1", "credit", 20 * USD)])


class _FailBlockOnly(FlakyGate):
    def credit(self, *args, **kwargs):
        return self._gate.credit(*args, **kwargs)


def test_the_sweep_sends_again_what_is_still_unprocessed_and_it_credits_once(db, gate, api, monkeypatch):
    """A stored event whose task was lost (or gave up) is sent again by the beat sweep; sending it
    again and again credits once."""
    import tasks.stripe as stripe_tasks

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    for event_id, sid in (("evt_lost", "cs_lost"), ("evt_done", "cs_done")):
        assert _post(api, event_json(event_id, "checkout.session.completed", _paid_session(sid))).status_code == 200
    _process("evt_done")  # only this one's task ran
    with db.begin() as conn:  # both arrived three minutes ago
        conn.execute(text("UPDATE stripe_event SET received_at = now() - interval '3 minutes'"))
    sent: list[str] = []
    monkeypatch.setattr(stripe_tasks.process_event, "apply_async", lambda args: sent.append(args[0]))
    assert stripe_tasks.sweep(older_than_s=120) == {"resent": 1} and sent == ["evt_lost"]
    for _ in range(2):  # the sweep's task and a duplicate delivery of it
        _process("evt_lost")
    assert stripe_tasks.sweep(older_than_s=120) == {"resent": 0}
    assert _ledger(db) == [("stripe:cs_done", "credit", 10 * USD), ("stripe:cs_lost", "credit", 10 * USD)]
    assert gate.balance("w1") == 20 * USD


def test_the_database_keeps_a_stripe_price_to_one_package(session):
    """add_package checks it; the unique index holds it under concurrent writers too."""
    from sqlalchemy.exc import IntegrityError

    add_package(session, **PLAN)
    with pytest.raises(IntegrityError, match="uq_token_package_stripe_price"):
        with session.begin_nested():
            session.execute(
                text(
                    "INSERT INTO token_package (id, name, price_cents, credit_nanos, stripe_price_id) "
                    "VALUES ('plan-copy', 'copy', 2000, 1, 'price_plan20')"
                )
            )
    with session.begin_nested():  # packages without a Stripe price are many
        session.execute(
            text(
                "INSERT INTO token_package (id, name, price_cents, credit_nanos) VALUES "
                "('a', 'a', 100, 1), ('b', 'b', 100, 1)"
            )
        )


_KILLED_AFTER_COMMIT = """
import os, sys
from tasks.stripe import process_event
from worker.gate.gate import WalletGate

def killed(self, *args, **kwargs):  # the process dies after the commit, before the gate's credit
    os._exit(17)

WalletGate.credit = killed
process_event(sys.argv[1])
"""


def test_a_process_killed_between_the_commit_and_the_gate_credit_is_repaired_exactly_once(db, gate, api):
    """The worker dies after the event's transaction committed and before its gate step: the beat
    job ``tollgate.reconcile.complete_credits`` applies the credit once, and a redelivery of the
    event (acks_late) after that adds nothing."""
    import subprocess
    import sys

    from tasks.reconcile import complete_credits
    from tests.conftest import REPO

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    _post(api, event_json("evt_kill", "checkout.session.completed", _paid_session()))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_COMMIT, "evt_kill"], cwd=REPO, capture_output=True, timeout=120
    )
    assert proc.returncode == 17, proc.stderr.decode()
    assert _events(db) == [("evt_kill", "checkout.session.completed", True, "credited")]
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)] and len(_audits(db)) == 1
    assert gate.balance("w1") == 0  # the credit is in the ledger only
    assert complete_credits(older_than_s=60) == {"completed": 0}  # too recent: its own commit may still be running
    assert complete_credits(older_than_s=0) == {"completed": 1}
    assert gate.balance("w1") == 10 * USD
    assert complete_credits(older_than_s=0) == {"completed": 0}
    assert _process("evt_kill")["duplicate"] is True  # the broker's redelivery
    assert gate.balance("w1") == 10 * USD
    assert _ledger(db) == [("stripe:cs_test_a1", "credit", 10 * USD)] and len(_audits(db)) == 1


def test_an_event_that_cannot_be_applied_leaves_nothing_of_its_own_and_no_gate_step(db, gate, api):
    """A handler's work is undone with its savepoint when the event cannot be applied (here: the
    ledger key already credited another amount); the event's outcome says why, and no gate step
    added inside the savepoint runs on the commit."""
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    # the key taken by another amount: no caller's credit can take a ``stripe:`` key (refused, see
    # test_api_v1), so this stands for a ledger written by hand or another Stripe account's event
    credit_wallet(gate, wallet_id="w1", amount_nanos=5 * USD, idempotency_key="stripe:cs_taken", system_key=True)
    body = _paid_session("cs_taken", customer="cus_new")
    _post(api, event_json("evt_taken", "checkout.session.completed", body))
    result = _apply("evt_taken", gate)
    assert (result.processed, result.outcome.startswith("error: idempotency_key")) == (False, True)
    assert _wallet_row(db)["stripe_customer_id"] is None  # the handler's wallet change was rolled back
    assert (gate.balance("w1"), _ledger(db)) == (5 * USD, [("stripe:cs_taken", "credit", 5 * USD)])


_KILLED_BEFORE_RESUME = """
import os, sys
import worker.chats.wiring as wiring
from tasks.stripe import process_event

def killed(*args, **kwargs):  # the process dies after the credit reached the gate, before the resume
    os._exit(18)

wiring.resume_wallet_chats = killed
process_event(sys.argv[1])
"""


def test_a_resume_lost_after_the_credit_is_done_once_by_the_paused_chat_sweep(db, gate, api):
    """The credit's side effect on chats (resume the wallet's paused chats) is lost with its
    process; the beat job ``tollgate.billing.resume_paused`` resumes the chat, once."""
    import subprocess
    import sys

    import worker
    from tests.conftest import REPO
    from worker.chats.jobs import sweep_paused

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP)
    assert worker.pause_chat(gate, enterprise_id="acme", chat_id="c1", wallet_id="w1") is True
    _post(api, event_json("evt_resume", "checkout.session.completed", _paid_session()))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_RESUME, "evt_resume"], cwd=REPO, capture_output=True, timeout=120
    )
    assert proc.returncode == 18, proc.stderr.decode()
    assert gate.balance("w1") == 10 * USD  # the credit landed; its resume did not

    def paused() -> list[tuple]:
        with db.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT chat_id, resumed_by FROM paused_chat ORDER BY id"))]

    assert paused() == [("c1", None)]
    assert sweep_paused(gate) == {"wallets": 1, "resumed": 1}
    assert paused() == [("c1", "sweep")]
    assert sweep_paused(gate) == {"wallets": 0, "resumed": 0}
    assert _process("evt_resume")["duplicate"] is True  # a redelivery: the credit's key applies it once
    assert gate.balance("w1") == 10 * USD and paused() == [("c1", "sweep")]


#: (event type, its data.object, the field the error names): fields of a JSON type Stripe never
#: sends there, or ids no column can hold.  Each raised AttributeError, TypeError or a PostgreSQL
#: DataError in the handler: the task failed on every retry and the sweeper sent it again forever.
_MISTYPED = [
    ("checkout.session.completed", lambda: _paid_session(metadata="w1"), "data.object.metadata"),
    ("checkout.session.completed", lambda: _paid_session(metadata=["w1"]), "data.object.metadata"),
    ("checkout.session.completed", lambda: _paid_session(currency=5), "data.object.currency"),
    ("checkout.session.completed", lambda: _paid_session(currency=["usd"]), "data.object.currency"),
    ("checkout.session.completed", lambda: _paid_session(customer={"id": 5}), "data.object.customer"),
    ("checkout.session.completed", lambda: _paid_session(customer="cus_" + "x" * 300), "data.object.customer"),
    (
        "checkout.session.completed",
        lambda: _paid_session(mode="subscription", subscription={"id": ["sub_1"]}),
        "data.object.subscription",
    ),
    ("checkout.session.completed", lambda: _paid_session(id="cs_" + "z" * 300), "data.object.id"),
    ("invoice.paid", lambda: {**_invoice("in_1"), "lines": {"data": 5}}, "data.object.lines.data"),
    ("invoice.paid", lambda: {**_invoice("in_2"), "lines": 5}, "data.object.lines"),
    ("invoice.paid", lambda: {**_invoice("in_3"), "currency": 5}, "data.object.currency"),
    ("invoice.paid", lambda: _invoice("in_4", sub="sub_" + "s" * 300), "subscription_details.subscription"),
    ("invoice.paid", lambda: _invoice("in_5", quantity="2"), "lines.data.quantity"),
    ("invoice.payment_failed", lambda: {**_invoice("in_6"), "customer": ["cus_1"]}, "data.object.customer"),
    (
        "customer.subscription.deleted",
        lambda: {"id": "sub_1", "object": "subscription", "metadata": "x"},
        "data.object.metadata",
    ),
    ("customer.subscription.deleted", lambda: {"id": "sub_" + "d" * 300, "object": "subscription"}, "data.object.id"),
]


@pytest.mark.parametrize(("kind", "make", "field"), _MISTYPED)
def test_a_mistyped_event_field_is_the_event_s_error_naming_it_and_changes_nothing(db, gate, api, kind, make, field):
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(TOPUP, PLAN)
    with session_scope() as session:  # the subscription the invoices are about
        session.execute(text("UPDATE wallet SET stripe_subscription_id = 'sub_1', subscription_status = 'active'"))
    before = _wallet_row(db)
    assert _post(api, event_json("evt_mistyped", kind, make())).status_code == 200
    result = _apply("evt_mistyped", gate)
    assert not result.processed and result.outcome.startswith("error: ") and field in result.outcome, result
    assert _ledger(db) == [] and _audits(db) == [] and gate.balance("w1") == 0
    assert _wallet_row(db) == before


def test_an_invoice_line_of_quantity_zero_buys_nothing(db, gate, api):
    """``quantity or 1`` read 0 as a missing quantity: a paid invoice for none of a package credited one."""
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    _packages(PLAN)
    assert _post(api, event_json("evt_q0", "invoice.paid", _invoice("in_q0", quantity=0))).status_code == 200
    result = _apply("evt_q0", gate)
    assert result.processed and result.credited_nanos == 0 and "quantity 0" in result.outcome
    assert _ledger(db) == [] and gate.balance("w1") == 0
    assert _wallet_row(db)["subscription_status"] == "active"
    # a line without a quantity still counts once
    assert (
        _post(
            api,
            event_json(
                "evt_q1",
                "invoice.paid",
                {
                    **_invoice("in_q1"),
                    "lines": {
                        "data": [{k: v for k, v in _invoice("in_q1")["lines"]["data"][0].items() if k != "quantity"}]
                    },
                },
            ),
        ).status_code
        == 200
    )
    assert _apply("evt_q1", gate).credited_nanos == PLAN["credit_nanos"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            lambda: event_json("evt_nul", "checkout.session.completed", _paid_session(customer="cus_\u0000x")),
            "customer",
        ),
        (
            lambda: event_json("evt_sur", "checkout.session.completed", _paid_session(metadata={"n\ud800": 1})),
            "metadata",
        ),
        (
            lambda: event_json("evt_nan", "checkout.session.completed", _paid_session(amount_total=float("nan"))),
            "amount",
        ),
        (
            lambda: event_json("evt_inf", "checkout.session.completed", _paid_session(amount_total=1)).replace(
                '"amount_total": 1', '"amount_total": 1e400'
            ),
            "amount",
        ),
        (lambda: event_json("evt_\u0000", "checkout.session.completed", _paid_session()), "id"),
        (lambda: event_json("evt_type", "checkout\u0000completed", _paid_session()), "type"),
        (lambda: "[" * 5_000 + "]" * 5_000, "body"),
        (lambda: '["evt_list"]', "body"),
    ],
)
def test_a_signed_body_postgresql_cannot_store_is_a_400_naming_it_and_stores_nothing(db, gate, api, body, where):
    """A NUL or a lone surrogate in any string, a number that is not finite, JSON nested past
    Python's recursion limit, a body that is not an object: each was a 500 (PostgreSQL's jsonb, or
    the parser, raised), which Stripe retries for three days.  Signed correctly: only the body is
    at fault."""
    r = _post(api, body())
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] in ("body", "id", "type") and where in r.json()["detail"], r.text
    assert api.sent == [] and _events(db) == []
