"""The HTTP API against real Redis and PostgreSQL: the same gate as the Python client, API keys
and their scopes, problem documents naming the field, metrics."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import auth, create_keys, seed_wallet
from worker.db import session_scope

pytestmark = pytest.mark.integration

TURN = {
    "turn_id": "api-1",
    "wallet_id": "w1",
    "enterprise_id": "acme",
    "chat_id": "c1",
    "agent": "planner",
    "model": "gpt-4o",
    "provider": "openai",
    "prompt_tokens": 1000,
    "cached_prompt_tokens": 200,
    "completion_tokens": 100,
    "occurred_at": "2026-11-01T12:00:00Z",
}
COST = 800 * 2_500 + 200 * 1_250 + 100 * 10_000  # gpt-4o nanos per token: in 2,500, cache 1,250, out 10,000


@pytest.fixture()
def api(http_api, gate):
    seed_wallet(gate, "w1", "acme", "u1", 1_000_000_000)
    seed_wallet(gate, "w2", "acme", "u2")
    seed_wallet(gate, "x1", "other", "x")
    return http_api(
        create_keys(
            {
                "owner": ("owner", "acme"),
                "other_owner": ("owner", "other"),
                "user_w1": ("end_user", "acme", "w1"),
                "admin": ("admin",),
            }
        )
    )


def test_record_turn_over_http_is_the_gate_s_decision_and_idempotent(api, gate):
    r = api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"]))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "turn_id": "api-1",
        "accepted": True,
        "action": "continue",
        "balance_nanos": 1_000_000_000 - COST,
        "cost_nanos": COST,
        "billed_nanos": COST,
        "duplicate": False,
    }
    again = api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"]))
    assert again.json() == {**r.json(), "duplicate": True}
    assert gate.balance("w1") == 1_000_000_000 - COST


def test_batch_records_in_order_and_a_bad_turn_rejects_the_whole_batch(api, gate):
    turns = [{**TURN, "turn_id": f"b-{i}"} for i in range(5)]
    r = api.post("/v1/turns/batch", json={"turns": turns}, headers=auth(api.keys["owner"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 5
    assert [d["balance_nanos"] for d in body["data"]] == [1_000_000_000 - COST * (i + 1) for i in range(5)]
    bad = [{**TURN, "turn_id": "b-10"}, {**TURN, "turn_id": "b-11", "model": "gpt-nonexistent"}]
    r = api.post("/v1/turns/batch", json={"turns": bad}, headers=auth(api.keys["owner"]))
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "model", "message": r.json()["detail"]}]
    assert gate.balance("w1") == 1_000_000_000 - 5 * COST


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"completion_tokens": 1.5}, "completion_tokens"),
        ({"prompt_tokens": "100"}, "prompt_tokens"),
        ({"cached_prompt_tokens": 5000}, "body"),
        ({"wallet_id": ""}, "wallet_id"),
        ({"occurred_at": "2026-11-01T12:00:00"}, "occurred_at"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_turns_get_a_problem_naming_the_field_and_change_nothing(api, gate, redis_client, change, field):
    r = api.post("/v1/turns", json={**TURN, **change}, headers=auth(api.keys["owner"]))
    assert r.status_code == 422
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and field in [e["field"] for e in problem["errors"]]
    assert gate.balance("w1") == 1_000_000_000
    assert redis_client.xlen(gate.wallet_key("w1").replace(":wallet:w1", ":outbox")) == 0


def test_unknown_wallet_is_404_naming_wallet_id(api):
    r = api.post("/v1/turns", json={**TURN, "wallet_id": "ghost"}, headers=auth(api.keys["owner"]))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "wallet_id"


def test_every_endpoint_refuses_missing_wrong_and_revoked_keys(api):
    from worker.access.apikeys import revoke_key

    calls = [
        ("post", "/v1/turns", {"json": TURN}),
        ("post", "/v1/turns/batch", {"json": {"turns": [TURN]}}),
        ("get", "/v1/wallets/w1", {}),
        ("get", "/metrics", {}),
    ]
    prefix = api.keys["owner"].split("_")[1]
    with session_scope() as session:
        assert revoke_key(session, prefix)
    for method, path, kw in calls:
        for headers in ({}, auth("tg_000000000000_nope"), auth(api.keys["owner"]), {"Authorization": "Basic x"}):
            r = getattr(api, method)(path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_an_app_cannot_charge_another_app_s_wallet(api, gate):
    """The owner key of 'other' names its own enterprise but acme's wallet: refused by the gate
    itself (the wallet knows its app), the same 404 as an unknown wallet, nothing debited."""
    r = api.post("/v1/turns", json={**TURN, "enterprise_id": "other"}, headers=auth(api.keys["other_owner"]))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "wallet_id"
    assert gate.balance("w1") == 1_000_000_000
    ok = api.post(
        "/v1/turns", json={**TURN, "wallet_id": "x1", "enterprise_id": "other"}, headers=auth(api.keys["other_owner"])
    )
    assert ok.status_code == 200 and ok.json()["accepted"] is False  # its own empty wallet: denied, not refused


def test_scopes_nobody_reads_or_writes_another_app_s_data(api):
    other = auth(api.keys["other_owner"])
    assert api.post("/v1/turns", json=TURN, headers=other).status_code == 403
    assert api.get("/v1/wallets/w1", headers=other).status_code == 404
    user = auth(api.keys["user_w1"])
    assert api.post("/v1/turns", json=TURN, headers=user).status_code == 403
    mine = api.get("/v1/wallets/w1", headers=user)
    assert mine.status_code == 200 and mine.json()["gate_balance_nanos"] == 1_000_000_000
    assert api.get("/v1/wallets/w2", headers=user).status_code == 404
    assert api.get("/v1/wallets/w1", headers=auth(api.keys["admin"])).status_code == 404  # no end-user detail
    owner = api.get("/v1/wallets/w2", headers=auth(api.keys["owner"]))
    assert owner.status_code == 200 and owner.json()["ledger_balance_nanos"] == 0


def test_metrics_count_decisions_and_outbox_for_admins_only(api):
    api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"]))
    assert api.get("/metrics", headers=auth(api.keys["owner"])).status_code == 403
    r = api.get("/metrics", headers=auth(api.keys["admin"]))
    assert r.status_code == 200
    assert 'tollgate_decisions_total{outcome="accepted"}' in r.text
    assert "tollgate_gate_seconds_bucket" in r.text
    assert (
        sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines() if line.startswith("tollgate_outbox_length{"))
        == 1.0
    )


def test_metrics_show_the_last_reconciliation_drift(api, gate, redis_client):
    from worker.ledger.reconcile import reconcile

    redis_client.hincrby(gate.wallet_key("w2"), "balance", 250)
    reconcile(gate)
    r = api.get("/metrics", headers=auth(api.keys["admin"]))
    assert "tollgate_reconciliation_last_drift_nanos 250.0" in r.text
    assert "tollgate_reconciliation_last_drifted_wallets 1.0" in r.text


def test_key_changes_are_audited_and_keys_stored_hashed(api, db):
    with db.connect() as conn:
        actions = [a for (a,) in conn.execute(text("SELECT action FROM audit_log ORDER BY id"))]
        stored = [k for (k,) in conn.execute(text("SELECT key_sha256 FROM api_key"))]
    assert actions == ["key_create"] * 4
    assert all(len(k) == 64 for k in stored) and api.keys["owner"] not in stored
