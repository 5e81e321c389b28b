"""The API's app factory (``api_stub.app.create_app``): every router installed with the same paths,
methods and OpenAPI operation ids as the served ``api_stub.main:app``; each call a new app; a given
``settings`` pins the request-body cap."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api_stub.app import create_app
from api_stub.main import app as served
from worker.settings import get_settings

OPERATIONS = {
    ("GET", "/billing/export.csv", "export_csv_billing_export_csv_get"),
    ("GET", "/billing/export.json", "export_json_billing_export_json_get"),
    ("GET", "/billing/export.pdf", "export_pdf_billing_export_pdf_get"),
    ("GET", "/v1/analytics/rollups", "analytics_rollups_v1_analytics_rollups_get"),
    ("GET", "/v1/analytics/usage", "analytics_usage_v1_analytics_usage_get"),
    ("GET", "/v1/analytics/workflows/{workflow}", "analytics_workflow_v1_analytics_workflows__workflow__get"),
    ("GET", "/v1/chats/{chat_id}", "chat_detail_v1_chats__chat_id__get"),
    ("POST", "/v1/chats/{chat_id}/end", "chat_end_v1_chats__chat_id__end_post"),
    ("POST", "/v1/chats/{chat_id}/pause", "chat_pause_v1_chats__chat_id__pause_post"),
    ("POST", "/v1/chats/{chat_id}/resume", "chat_resume_v1_chats__chat_id__resume_post"),
    ("POST", "/v1/chats/{chat_id}/start", "chat_start_v1_chats__chat_id__start_post"),
    ("POST", "/v1/checkout", "checkout_v1_checkout_post"),
    ("PUT", "/v1/enterprises/{enterprise_id}/mode", "enterprise_mode_v1_enterprises__enterprise_id__mode_put"),
    ("POST", "/v1/stripe/webhook", "stripe_webhook_v1_stripe_webhook_post"),
    ("POST", "/v1/turns", "record_turn_v1_turns_post"),
    ("POST", "/v1/turns/batch", "record_turns_v1_turns_batch_post"),
    ("GET", "/v1/usage", "usage_export_v1_usage_get"),
    ("GET", "/v1/wallets/{wallet_id}", "wallet_v1_wallets__wallet_id__get"),
    ("POST", "/v1/wallets/{wallet_id}/credits", "credit_v1_wallets__wallet_id__credits_post"),
    ("GET", "/v1/wallets/{wallet_id}/ledger", "ledger_v1_wallets__wallet_id__ledger_get"),
    ("PUT", "/v1/wallets/{wallet_id}/mode", "wallet_mode_v1_wallets__wallet_id__mode_put"),
    ("POST", "/v1/wallets/{wallet_id}/reservations", "reserve_v1_wallets__wallet_id__reservations_post"),
    (
        "DELETE",
        "/v1/wallets/{wallet_id}/reservations/{reservation_id}",
        "release_v1_wallets__wallet_id__reservations__reservation_id__delete",
    ),
}


def _operations(spec: dict) -> set[tuple[str, str, str]]:
    return {
        (method.upper(), path, op["operationId"]) for path, ops in spec["paths"].items() for method, op in ops.items()
    }


def test_create_app_serves_the_documented_operations_and_a_new_app_each_call():
    a, b = create_app(), create_app()
    assert a is not b and a is not served
    assert _operations(a.openapi()) == _operations(served.openapi()) == OPERATIONS  # 23 operations
    assert len(OPERATIONS) == 23
    client = TestClient(a)
    assert client.get("/healthz").json() == {"status": "ok"}  # outside the schema, still routed
    missing = client.get("/v1/nothing")
    assert (missing.status_code, missing.headers["content-type"], missing.json()["title"]) == (
        404,
        "application/problem+json",
        "Not Found",
    )


def test_create_app_with_settings_pins_the_body_cap():
    settings = get_settings().model_copy(update={"max_body_bytes": 64})
    client = TestClient(create_app(settings))
    r = client.post("/v1/turns", content=b"x" * 65, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["errors"] == [
        {"field": "body", "message": "the request body exceeds the limit of 64 bytes (TOLLGATE_MAX_BODY_BYTES)"}
    ]
