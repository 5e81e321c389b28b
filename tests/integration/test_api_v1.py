"""The v1 API beyond turns (reservations, ledger, credits, chats, analytics, usage export, metrics)
against real Redis and PostgreSQL: exact figures, role scopes per endpoint, every route's
authentication, the per-key rate limit."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text

from tests.conftest import create_keys, seed_wallet
from worker.db import session_scope

pytestmark = pytest.mark.integration

TURN = {
    "turn_id": "t-1",
    "wallet_id": "w1",
    "enterprise_id": "acme",
    "chat_id": "c1",
    "agent": "planner",
    "workflow": "support",
    "model": "gpt-4o",
    "provider": "openai",
    "prompt_tokens": 1000,
    "cached_prompt_tokens": 200,
    "completion_tokens": 100,
    "duration_ms": 1500,
    "occurred_at": "2026-11-01T12:00:00Z",
}
COST = 800 * 2_500 + 200 * 1_250 + 100 * 10_000  # 3,250,000 nanos (gpt-4o per token: in 2,500, cache 1,250, out 10,000)
USD = 1_000_000_000


@pytest.fixture()
def api(http_api, gate):
    seed_wallet(gate, "w1", "acme", "u1", USD)
    seed_wallet(gate, "w2", "acme", "u2")
    seed_wallet(gate, "x1", "other", "x", USD)
    return http_api(
        create_keys(
            {
                "owner": ("owner", "acme"),
                "other_owner": ("owner", "other"),
                "user_w1": ("end_user", "acme", "w1"),
                "user_w2": ("end_user", "acme", "w2"),
                "admin": ("admin",),
            }
        )
    )


def _drain(redis_client, settings) -> None:
    from worker.ledger.drain import OutboxDrain

    OutboxDrain(redis_client, settings=settings, consumer="test").drain()


@pytest.fixture()
def turns(api, redis_client, settings):
    """Three persisted turns: two in chat c1 (wallet w1), one in chat c9 of app 'other' (wallet x1)."""
    for body, key in (
        (TURN, "owner"),
        ({**TURN, "turn_id": "t-2", "agent": "writer"}, "owner"),
        ({**TURN, "turn_id": "t-x", "wallet_id": "x1", "enterprise_id": "other", "chat_id": "c9"}, "other_owner"),
    ):
        r = api.post("/v1/turns", json=body, headers=api.h[key])
        assert r.status_code == 200 and r.json()["accepted"], r.text
    _drain(redis_client, settings)
    return api


# every route: authentication ------------------------------------------------------------------
def _routes():
    from api_stub.main import app

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included routers
                yield from walk(route.original_router.routes)
            elif isinstance(route, APIRoute):
                yield route

    out = []
    for route in walk(app.routes):
        # liveness; Stripe signs its webhook instead; the /billing pages are a browser app with a
        # login form and a session cookie (their own tests)
        if route.path == "/healthz" or "stripe" in route.path or route.path.startswith("/billing"):
            continue
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, route.path))
    return out


ROUTES = _routes()


def test_the_route_list_covers_the_api():
    assert {
        ("POST", "/v1/turns"),
        ("POST", "/v1/wallets/{wallet_id}/reservations"),
        ("DELETE", "/v1/wallets/{wallet_id}/reservations/{reservation_id}"),
        ("GET", "/v1/wallets/{wallet_id}/ledger"),
        ("POST", "/v1/wallets/{wallet_id}/credits"),
        ("GET", "/v1/chats/{chat_id}"),
        ("POST", "/v1/chats/{chat_id}/end"),
        ("GET", "/v1/analytics/usage"),
        ("GET", "/v1/analytics/rollups"),
        ("GET", "/v1/usage"),
        ("GET", "/metrics"),
    } <= set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_refuses_missing_wrong_and_revoked_keys(api, method, path):
    from worker.access.apikeys import revoke_key

    url = re.sub(r"\{[^}]+\}", "w1", path)
    with session_scope() as session:
        assert revoke_key(session, api.keys["user_w2"].split("_")[1])
    for headers in (
        {},
        {"Authorization": "Bearer tg_000000000000_nope"},
        api.h["user_w2"],
        {"Authorization": "Basic dTpw"},
    ):
        r = api.request(method, url, headers=headers, json={})
        assert r.status_code == 401, (method, path, headers, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")


# reservations -----------------------------------------------------------------------------------
def test_reserve_settle_with_a_turn_and_release(api, gate):
    h = api.h["owner"]
    r = api.post("/v1/wallets/w1/reservations", json={"amount_nanos": 4_000_000, "reservation_id": "r-1"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "reservation_id": "r-1",
        "wallet_id": "w1",
        "granted": True,
        "amount_nanos": 4_000_000,
        "balance_nanos": USD,
        "held_nanos": 4_000_000,
        "duplicate": False,
    }
    settled = api.post("/v1/turns", json={**TURN, "reservation_id": "r-1"}, headers=h)
    assert settled.status_code == 200 and settled.json()["balance_nanos"] == USD - COST
    assert gate.redis.hget(gate.wallet_key("w1"), "held") == "0"
    # a hold bigger than what is available is refused, nothing held
    too_big = api.post("/v1/wallets/w1/reservations", json={"amount_nanos": USD}, headers=h).json()
    assert (too_big["granted"], too_big["amount_nanos"], too_big["held_nanos"]) == (False, 0, 0)
    api.post("/v1/wallets/w1/reservations", json={"amount_nanos": 7, "reservation_id": "r-2"}, headers=h)
    gone = api.delete("/v1/wallets/w1/reservations/r-2", headers=h)
    assert gone.json() == {"reservation_id": "r-2", "wallet_id": "w1", "released_nanos": 7}
    again = api.delete("/v1/wallets/w1/reservations/r-2", headers=h)
    assert again.status_code == 404 and again.json()["errors"][0]["field"] == "reservation_id"


def test_reservations_stay_within_their_wallet_and_app(api, gate):
    assert (
        api.post(
            "/v1/wallets/x1/reservations",
            json={"amount_nanos": 9, "reservation_id": "rx"},
            headers=api.h["other_owner"],
        ).json()["granted"]
        is True
    )
    h = api.h["owner"]
    # acme's owner cannot reserve on, release or settle other's hold, nor its wallet
    assert api.post("/v1/wallets/x1/reservations", json={"amount_nanos": 1}, headers=h).status_code == 404
    assert api.delete("/v1/wallets/x1/reservations/rx", headers=h).status_code == 404
    w1_shard_same = gate.shard("w1") == gate.shard("x1")
    r = api.delete("/v1/wallets/w1/reservations/rx", headers=h)
    assert r.status_code == 404
    r = api.post("/v1/turns", json={**TURN, "reservation_id": "rx"}, headers=h)
    assert r.status_code == (409 if w1_shard_same else 200)
    assert gate.redis.hget(gate.wallet_key("x1"), "held") == "9"
    # end users and admins do not reserve
    assert (
        api.post("/v1/wallets/w1/reservations", json={"amount_nanos": 1}, headers=api.h["user_w1"]).status_code == 403
    )
    assert api.post("/v1/wallets/w1/reservations", json={"amount_nanos": 1}, headers=api.h["admin"]).status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_nanos": -1}, "amount_nanos"),
        ({"amount_nanos": 1.5}, "amount_nanos"),
        ({"amount_nanos": "10"}, "amount_nanos"),
        ({"amount_nanos": 1, "ttl_s": 0}, "ttl_s"),
        ({}, "amount_nanos"),
    ],
)
def test_bad_reservations_name_the_field_and_hold_nothing(api, gate, body, field):
    r = api.post("/v1/wallets/w1/reservations", json=body, headers=api.h["owner"])
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]
    assert gate.redis.hget(gate.wallet_key("w1"), "held") is None


# credits and the ledger -----------------------------------------------------------------------------
def test_credit_is_idempotent_audited_and_scoped(api, gate, db):
    body = {"amount_nanos": 2 * USD, "idempotency_key": "pay-1", "description": "top-up"}
    r = api.post("/v1/wallets/w2/credits", json=body, headers=api.h["owner"])
    assert r.status_code == 200, r.text
    assert r.json() == {
        "wallet_id": "w2",
        "amount_nanos": 2 * USD,
        "idempotency_key": "pay-1",
        "balance_nanos": 2 * USD,
        "replayed": False,
    }
    assert api.post("/v1/wallets/w2/credits", json=body, headers=api.h["owner"]).json()["replayed"] is True
    assert gate.balance("w2") == 2 * USD
    admin = api.post(
        "/v1/wallets/x1/credits", json={"amount_nanos": 5, "idempotency_key": "grant-1"}, headers=api.h["admin"]
    )
    # an admin sees aggregates only: the end user's balance is not in its reply; the credit is applied
    assert admin.status_code == 200 and admin.json()["balance_nanos"] is None and gate.balance("x1") == USD + 5
    assert (
        api.post(
            "/v1/wallets/x1/credits", json={"amount_nanos": 5, "idempotency_key": "k"}, headers=api.h["owner"]
        ).status_code
        == 404
    )
    assert (
        api.post(
            "/v1/wallets/w1/credits", json={"amount_nanos": 5, "idempotency_key": "k"}, headers=api.h["user_w1"]
        ).status_code
        == 403
    )
    reused = api.post(
        "/v1/wallets/w1/credits", json={"amount_nanos": 5, "idempotency_key": "grant-1"}, headers=api.h["owner"]
    )
    assert reused.status_code == 409 and reused.json()["errors"] == [
        {"field": "idempotency_key", "message": "already used for another entry"}
    ]
    assert "x1" not in reused.text  # another app's wallet is never named
    for bad, field in (
        ({"amount_nanos": 0, "idempotency_key": "z"}, "amount_nanos"),
        ({"amount_nanos": 1.0, "idempotency_key": "z"}, "amount_nanos"),
        ({"amount_nanos": 1, "idempotency_key": ""}, "idempotency_key"),
    ):
        r = api.post("/v1/wallets/w1/credits", json=bad, headers=api.h["owner"])
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field
    assert gate.balance("w1") == USD
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT actor, wallet_id, detail FROM audit_log WHERE action = 'credit' ORDER BY id")
        ).all()
    owner_actor = "key:" + api.keys["owner"].split("_")[1]
    admin_actor = "key:" + api.keys["admin"].split("_")[1]
    assert [(a, w, d["amount_nanos"], d["idempotency_key"], d["replayed"]) for a, w, d in rows] == [
        (owner_actor, "w2", 2 * USD, "pay-1", False),
        (owner_actor, "w2", 2 * USD, "pay-1", True),
        (admin_actor, "x1", 5, "grant-1", False),
    ]


def test_ledger_pages_newest_first_for_owner_and_own_end_user_only(api):
    for i in range(3):
        api.post(
            "/v1/wallets/w1/credits", json={"amount_nanos": i + 1, "idempotency_key": f"c-{i}"}, headers=api.h["owner"]
        )
    first = api.get("/v1/wallets/w1/ledger?limit=2", headers=api.h["user_w1"]).json()
    assert [e["amount_nanos"] for e in first["data"]] == [3, 2] and first["count"] == 2
    second = api.get(f"/v1/wallets/w1/ledger?limit=2&cursor={first['next_cursor']}", headers=api.h["owner"]).json()
    assert [(e["kind"], e["amount_nanos"], e["idempotency_key"]) for e in second["data"]] == [
        ("credit", 1, "c-0"),
        ("credit", USD, "open-w1"),
    ]
    assert second["next_cursor"] is None
    for key in ("user_w2", "other_owner", "admin"):
        r = api.get("/v1/wallets/w1/ledger", headers=api.h[key])
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "wallet_id"


ODD_NUMBERS = ["1_0", "+2", " 2", "2 ", "02", "2.0", "2e0", "٢", "２", "0x2", "-2", "2\n", ""]


@pytest.mark.parametrize("odd", ODD_NUMBERS)
@pytest.mark.parametrize("param", ["limit", "cursor"])
def test_a_page_parameter_takes_a_whole_number_only_in_plain_digits(turns, param, odd):
    """``limit`` and ``cursor`` of the ledger and the usage export: '2' is read, every other
    spelling int() or pydantic would also read as 2 (sign, space, '_', leading zero, '.0', other
    scripts' or fullwidth digits) is 422 naming the parameter, and answers nothing."""
    api = turns
    for path in ("/v1/wallets/w1/ledger", "/v1/usage?period=2026-11"):
        sep = "&" if "?" in path else "?"
        plain = api.get(f"{path}{sep}{param}=2", headers=api.h["owner"])
        assert plain.status_code == 200, plain.text
        r = api.get(
            path, params={param: odd} | ({"period": "2026-11"} if "usage" in path else {}), headers=api.h["owner"]
        )
        if odd == "" and param == "cursor":
            continue  # an empty optional parameter: checked below for limit
        assert r.status_code == 422, (path, odd, r.text)
        assert r.json()["errors"][0]["field"] == param
        assert "data" not in r.json()


# a key named twice in one JSON object ----------------------------------------------------------------
def _turn_json(**change) -> str:
    return json.dumps({**TURN, **change})


DUPLICATED = [
    # (path, raw body, the key named twice)
    (
        "/v1/wallets/w2/credits",
        '{"amount_nanos": 1, "idempotency_key": "dup-1", "amount_nanos": 5000000000}',
        "amount_nanos",
    ),
    # the same name spelled with an escape: one key once decoded
    (
        "/v1/wallets/w2/credits",
        '{"amount_nanos": 1, "idempotency_key": "dup-2", "amount\\u005fnanos": 7}',
        "amount_nanos",
    ),
    ("/v1/turns", _turn_json()[:-1] + ', "wallet_id": "w2"}', "wallet_id"),
    (
        "/v1/turns/batch",
        '{"turns": [' + _turn_json(turn_id="b-1") + ", " + _turn_json(turn_id="b-2")[:-1] + ', "prompt_tokens": 900}]}',
        "prompt_tokens",
    ),
    (
        "/v1/turns/batch",
        '{"turns": [' + _turn_json(turn_id="b-3") + '], "turns": [' + _turn_json(turn_id="b-4") + "]}",
        "turns",
    ),
]


@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.api+json", None])
@pytest.mark.parametrize(("path", "body", "key"), DUPLICATED)
def test_a_key_named_twice_in_a_json_body_is_refused_and_changes_nothing(api, gate, path, body, key, content_type):
    """Python's json and orjson keep a repeated name's last value, other parsers the first: a body
    naming a key twice (at any depth, escaped or not) is 422 naming the key, on the fast path of the
    turns too, whatever content type FastAPI reads as JSON; no credit, no turn, no balance moves."""
    headers = dict(api.h["owner"])
    if content_type:
        headers["content-type"] = content_type
    before = (gate.balance("w1"), gate.balance("w2"))
    r = api.post(path, content=body.encode(), headers=headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == key
    assert "twice" in r.json()["errors"][0]["message"]
    assert (gate.balance("w1"), gate.balance("w2")) == before
    # the same body with the key once is taken
    once = json.loads(body)  # the last value, as json keeps it
    r = api.post(path, json=once, headers=api.h["owner"])
    assert r.status_code == 200, r.text


# chats ---------------------------------------------------------------------------------------------
def test_chat_detail_and_end(turns, db):
    api = turns
    r = api.get("/v1/chats/c1", headers=api.h["user_w1"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["wallet_id"], body["status"], body["turns"], body["cost_nanos"], body["connection_state"]) == (
        "w1",
        "active",
        2,
        2 * COST,
        "connected",
    )
    assert body["agents"]["planner"]["total_response_ms"] == 1500 and body["agents"]["writer"]["cost_nanos"] == COST
    for key, status in (("user_w2", 404), ("other_owner", 404), ("admin", 403)):
        assert api.get("/v1/chats/c1", headers=api.h[key]).status_code == status
    assert api.post("/v1/chats/c1/end", headers=api.h["user_w1"]).status_code == 403
    assert api.post("/v1/chats/c1/end", headers=api.h["other_owner"]).status_code == 404
    ended = api.post("/v1/chats/c1/end", json={"ended_at": "2026-11-01T13:00:00Z"}, headers=api.h["owner"])
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["ended_at"], ended.json()["connection_state"]) == (
        "completed",
        "2026-11-01T13:00:00Z",
        "ended",
    )
    again = api.post("/v1/chats/c1/end", headers=api.h["owner"])
    assert again.json()["ended_at"] == "2026-11-01T13:00:00Z"
    with db.connect() as conn:
        assert conn.execute(
            text("SELECT total_turns, cost_nanos FROM workflow_rollup WHERE enterprise_id='acme'")
        ).one() == (2, 2 * COST)
    assert api.post("/v1/chats/nope/end", headers=api.h["owner"]).status_code == 404


# analytics and usage ------------------------------------------------------------------------------
def test_analytics_are_scoped_to_the_app(turns):
    api = turns
    q = "/v1/analytics/usage?start=2026-11-01&end=2026-12-01&granularity=month&group_by=agent"
    r = api.get(q, headers=api.h["owner"])
    assert r.status_code == 200, r.text
    assert [(row["agent"], row["turns"], row["cost_nanos"], row["billed_nanos"]) for row in r.json()["data"]] == [
        ("planner", 1, COST, COST),
        ("writer", 1, COST, COST),
    ]
    assert api.get(q + "&enterprise_id=other", headers=api.h["owner"]).status_code == 404
    assert api.get(q, headers=api.h["user_w1"]).status_code == 403
    need = api.get(q, headers=api.h["admin"])
    assert need.status_code == 422 and need.json()["errors"][0]["field"] == "enterprise_id"
    admin = api.get(q + "&enterprise_id=other", headers=api.h["admin"]).json()
    assert [(row["agent"], row["turns"]) for row in admin["data"]] == [("planner", 1)]
    bad = api.get("/v1/analytics/usage?start=2026-11-02&end=2026-11-01", headers=api.h["owner"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "end"
    bad = api.get(q.replace("agent", "wallet"), headers=api.h["owner"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("group_by")


def test_rollups_give_documents_to_owners_and_totals_to_admins(turns):
    api = turns
    api.post("/v1/chats/c1/end", headers=api.h["owner"])
    owner = api.get("/v1/analytics/rollups?period=2026-11", headers=api.h["owner"]).json()
    assert [(r["workflow"], r["total_sessions"], r["total_turns"], r["cost_nanos"]) for r in owner["data"]] == [
        ("support", 1, 2, 2 * COST)
    ]
    assert owner["data"][0]["document"]["_id"] == "mon_acme_support"
    admin = api.get("/v1/analytics/rollups?period=2026-11&enterprise_id=acme", headers=api.h["admin"]).json()
    assert admin["data"][0]["total_turns"] == 2 and admin["data"][0]["document"] is None
    assert (
        api.get("/v1/analytics/rollups?period=2026-11&enterprise_id=acme", headers=api.h["other_owner"]).status_code
        == 404
    )
    avg = api.get("/v1/analytics/workflows/support?period=2026-11", headers=api.h["owner"]).json()
    assert (avg["source"], avg["total_sessions"], avg["total_cost_nanos"], avg["avg_cost_nanos"]) == (
        "rollup",
        1,
        2 * COST,
        2 * COST,
    )
    bad = api.get("/v1/analytics/rollups?period=2026-13", headers=api.h["owner"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "period"


def test_usage_export_json_csv_paged_and_scoped(turns):
    api = turns
    first = api.get("/v1/usage?period=2026-11&limit=1", headers=api.h["owner"]).json()
    assert [row["turn_id"] for row in first["data"]] == ["t-1"] and first["next_cursor"] is not None
    rest = api.get(f"/v1/usage?period=2026-11&limit=1&cursor={first['next_cursor']}", headers=api.h["owner"]).json()
    assert [(row["turn_id"], row["cost_nanos"], row["billed_nanos"]) for row in rest["data"]] == [("t-2", COST, COST)]
    assert rest["next_cursor"] is None
    r = api.get("/v1/usage?period=2026-11&format=csv&limit=1", headers=api.h["owner"])
    assert r.headers["content-type"].startswith("text/csv") and r.headers["x-next-cursor"] == str(first["next_cursor"])
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["turn_id"], row["wallet_id"], row["cost_nanos"]) for row in rows] == [("t-1", "w1", str(COST))]
    assert 'rel="next"' in r.headers["link"]
    other = api.get("/v1/usage?period=2026-11", headers=api.h["other_owner"]).json()
    assert [row["turn_id"] for row in other["data"]] == ["t-x"]
    assert api.get("/v1/usage?period=2026-11", headers=api.h["user_w2"]).json()["data"] == []
    assert api.get("/v1/usage?period=2026-11", headers=api.h["user_w1"]).json()["count"] == 2
    assert api.get("/v1/usage?period=2026-11&wallet_id=w2", headers=api.h["user_w1"]).status_code == 404
    assert api.get("/v1/usage?period=2026-11", headers=api.h["admin"]).status_code == 403
    assert api.get("/v1/usage?period=2026-10", headers=api.h["owner"]).json()["count"] == 0
    bad = api.get("/v1/usage?period=2026-11&format=xml", headers=api.h["owner"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"


# rate limit and metrics ---------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after_per_key(api, settings, monkeypatch):
    monkeypatch.setattr(settings, "rate_limit", "3/minute")
    for _ in range(3):
        assert api.get("/v1/wallets/w1", headers=api.h["owner"]).status_code == 200
    r = api.get("/v1/wallets/w1", headers=api.h["owner"])
    assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200  # another key, its own window


def test_metrics_expose_worker_side_drain_counters_and_outbox_lag(api, redis_client, settings):
    admin = api.h["admin"]
    for i in range(3):
        api.post("/v1/turns", json={**TURN, "turn_id": f"m-{i}"}, headers=api.h["owner"])
    before = api.get("/metrics", headers=admin).text
    lags = [float(v) for v in re.findall(r'^tollgate_outbox_lag_seconds\{shard="\d+"\} (\S+)$', before, re.M)]
    assert len(lags) == settings.outbox_shards and 0 < max(lags) < 60 and sorted(lags)[:-1] == [0.0] * (len(lags) - 1)
    _drain(redis_client, settings)
    after = api.get("/metrics", headers=admin).text
    assert "tollgate_persisted_turns_total 3.0" in after
    assert 'tollgate_drain_batch_size_bucket{le="1"} 0.0' in after
    assert 'tollgate_drain_batch_size_bucket{le="10"} 1.0' in after
    assert "tollgate_drain_batch_size_sum 3.0" in after
    assert (
        re.findall(r'^tollgate_outbox_lag_seconds\{shard="\d+"\} (\S+)$', after, re.M)
        == ["0.0"] * settings.outbox_shards
    )


def test_outbox_lag_is_the_age_of_the_oldest_entry_not_persisted(redis_client):
    from worker.metrics import outbox_lag_seconds

    assert outbox_lag_seconds(redis_client, "s", "g") == 0.0  # no stream yet
    redis_client.xadd("s", {"t": "1"}, id="1000-0")
    redis_client.xadd("s", {"t": "2"}, id="3000-0")
    assert outbox_lag_seconds(redis_client, "s", "g", now_ms=5000) == 4.0  # never drained: no group yet
    redis_client.xgroup_create("s", "g", id="0")
    assert outbox_lag_seconds(redis_client, "s", "g", now_ms=5000) == 4.0  # unread
    redis_client.xreadgroup("g", "c", {"s": ">"}, count=1)
    assert outbox_lag_seconds(redis_client, "s", "g", now_ms=5000) == 4.0  # read, pending
    redis_client.xack("s", "g", "1000-0")
    assert outbox_lag_seconds(redis_client, "s", "g", now_ms=5000) == 2.0  # the next one, unread
    redis_client.xreadgroup("g", "c", {"s": ">"})
    redis_client.xack("s", "g", "3000-0")
    assert outbox_lag_seconds(redis_client, "s", "g", now_ms=5000) == 0.0


# chat pause/resume and modes (worker.chats.lifecycle, worker.billing.modes) ------------------------------------
def test_pause_then_resume_a_chat_once_its_wallet_can_pay(turns, gate):
    api = turns
    h = api.h["owner"]
    assert api.post("/v1/chats/c1/pause", json={"reason": "manual"}, headers=api.h["user_w1"]).status_code == 403
    other_chat = api.post("/v1/chats/c9/pause", headers=h)  # other's chat: unknown here, so a wallet is needed
    assert other_chat.status_code == 422 and other_chat.json()["errors"][0]["field"] == "wallet_id"
    r = api.post("/v1/chats/c1/pause", json={"reason": "manual", "needed_nanos": 5}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["pause_reason"], r.json()["connection_state"]) == (
        "paused",
        "manual",
        "paused",
    )
    new = api.post("/v1/chats/c-new/pause", json={"wallet_id": "x1"}, headers=h)
    assert new.status_code == 404 and new.json()["errors"][0]["field"] == "wallet_id"  # other's wallet
    resumed = api.post("/v1/chats/c1/resume", headers=h)
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["status"], resumed.json()["connection_state"]) == ("active", "connected")
    # w2 has nothing: its chat cannot resume until credited
    api.post("/v1/chats/c2/pause", json={"wallet_id": "w2"}, headers=h)
    stuck = api.post("/v1/chats/c2/resume", headers=h)
    assert stuck.status_code == 409 and api.get("/v1/chats/c2", headers=h).json()["status"] == "paused"


def test_resume_of_a_chat_whose_wallet_the_gate_lost_is_409_not_unknown_chat(turns, gate):
    """UnknownWallet is a LookupError like UnknownChat: the route must answer the lost wallet (409,
    nothing changed), not "Unknown chat" (404); an unknown chat stays 404 naming ``chat_id``."""
    api = turns
    h = api.h["owner"]
    assert api.post("/v1/chats/c1/pause", json={"reason": "manual"}, headers=h).status_code == 200
    assert gate.redis.delete(gate.wallet_key("w1")) == 1  # Redis lost the wallet (rebuild not run yet)
    lost = api.post("/v1/chats/c1/resume", headers=h)
    assert lost.status_code == 409, lost.text
    assert (lost.json()["title"], lost.json()["detail"]) == ("Wallet not in the gate", "unknown wallet 'w1'")
    chat = api.get("/v1/chats/c1", headers=h).json()
    assert (chat["status"], chat["pause_reason"], chat["connection_state"]) == ("paused", "manual", "paused")
    unknown = api.post("/v1/chats/nope/resume", headers=h)
    assert unknown.status_code == 404 and unknown.json()["errors"] == [
        {"field": "chat_id", "message": "no chat 'nope' for this key"}
    ]


def test_mode_changes_are_scoped_and_audited(api, gate, db):
    r = api.put("/v1/wallets/w2/mode", json={"mode": "development"}, headers=api.h["owner"])
    assert r.status_code == 200 and r.json() == {
        "mode": "development",
        "wallet_id": "w2",
        "enterprise_id": None,
        "wallets_changed": None,
    }
    assert gate.redis.hget(gate.wallet_key("w2"), "mode") == "development"
    assert api.put("/v1/wallets/x1/mode", json={"mode": "development"}, headers=api.h["owner"]).status_code == 404
    assert api.put("/v1/wallets/w1/mode", json={"mode": "development"}, headers=api.h["user_w1"]).status_code == 403
    bad = api.put("/v1/wallets/w1/mode", json={"mode": "free"}, headers=api.h["owner"])
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "mode"
    assert api.put("/v1/enterprises/other/mode", json={"mode": "trial"}, headers=api.h["owner"]).status_code == 404
    app_mode = api.put("/v1/enterprises/other/mode", json={"mode": "track_only"}, headers=api.h["admin"])
    assert app_mode.json() == {"mode": "track_only", "enterprise_id": "other", "wallet_id": None, "wallets_changed": 1}
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT enterprise_id, wallet_id, detail->>'to' FROM audit_log WHERE action = 'mode_change' ORDER BY id"
            )
        ).all()
    assert rows == [("acme", "w2", "development"), ("other", None, "track_only")]


# API key cache and revocation (worker.access.apikeys.key_cache) ----------------------------------------------
def _prefix(key: str) -> str:
    return key.split("_")[1]


def test_a_cached_key_revoked_in_this_process_is_refused_at_once(api):
    from worker.access.apikeys import key_cache, revoke_key

    key = api.keys["user_w1"]
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200
    assert key_cache.get(key) is not None  # authenticated once, now served from the cache
    with session_scope() as session:
        assert revoke_key(session, _prefix(key))
        assert key_cache.get(key) is None  # dropped before the commit, again after it
    r = api.get("/v1/wallets/w1", headers=api.h["user_w1"])
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert api.post("/v1/turns", json=TURN, headers=api.h["owner"]).status_code == 200  # other keys unaffected


def test_a_key_revoked_by_another_process_is_refused_on_the_next_request(api, redis_client, settings, monkeypatch):
    """The CLI revokes in its own process: its commit sets the Redis marker, which the API checks on
    every request, so the cached key is refused at once (well inside the cache TTL)."""
    import os
    import subprocess
    import sys

    from worker.access.apikeys import REVOKED_MARKER_TTL_S, key_cache
    from worker.gate.keys import revoked_marker

    # a cache TTL far longer than the CLI subprocess takes on a loaded machine (5 s by default): the
    # refusal below must come from the marker, never from the entry having expired meanwhile
    monkeypatch.setattr(settings, "api_key_cache_ttl_s", 600.0)
    key, prefix = api.keys["owner"], _prefix(api.keys["owner"])
    assert api.post("/v1/turns", json=TURN, headers=api.h["owner"]).status_code == 200
    assert key_cache.get(key) is not None
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "apikey", "revoke", prefix],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert 0 < redis_client.ttl(revoked_marker(prefix)) <= REVOKED_MARKER_TTL_S
    assert key_cache.get(key) is not None  # this process has not heard of it yet…
    r = api.post("/v1/turns", json={**TURN, "turn_id": "t-after"}, headers=api.h["owner"])
    assert r.status_code == 401  # …but the marker refuses it, and drops it from the cache
    assert key_cache.get(key) is None
    assert api.get("/v1/wallets/w1", headers=api.h["owner"]).status_code == 401  # now from PostgreSQL


def test_without_the_marker_a_revoked_key_lives_at_most_the_cache_ttl(api, redis_client, settings, monkeypatch):
    """A revocation the API cannot hear of (made in SQL, or its marker lost with Redis) is bounded by
    ``api_key_cache_ttl_s``: served from the cache within it, refused once the entry expires."""
    import time

    from worker.access.apikeys import key_cache

    monkeypatch.setattr(settings, "api_key_cache_ttl_s", 0.5)
    key = api.keys["user_w1"]
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200
    cached_at = time.monotonic()
    with session_scope() as session:
        session.execute(text("UPDATE api_key SET revoked_at = now() WHERE prefix = :p"), {"p": _prefix(key)})
    if time.monotonic() - cached_at < 0.4:
        assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200  # inside the bound
    assert key_cache.get(key, now=cached_at + 0.5) is None  # the entry is dead at the bound, whatever happens
    time.sleep(max(0.0, cached_at + 0.5 - time.monotonic()))
    r = api.get("/v1/wallets/w1", headers=api.h["user_w1"])
    assert r.status_code == 401 and key_cache.get(key) is None


def _await_refresh(key: str) -> None:
    """Wait (up to 10 s) until no re-read of ``key`` is under way."""
    import time

    from api_stub import deps

    deadline = time.monotonic() + 10
    while key in deps._REFRESHING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert key not in deps._REFRESHING


def test_a_key_near_its_cache_expiry_is_read_again_ahead_once_and_renewed(api, settings, monkeypatch):
    """In the entry's last KEY_REFRESH_AHEAD of the TTL a request is answered from the cache and
    starts one re-read (however many requests come meanwhile), which renews the entry: under steady
    traffic no request waits for PostgreSQL."""
    from api_stub import deps
    from worker.access.apikeys import key_cache

    monkeypatch.setattr(settings, "api_key_cache_ttl_s", 10.0)
    reads: list[str] = []
    real = deps._authenticate
    monkeypatch.setattr(deps, "_authenticate", lambda key: reads.append(key) or real(key))
    key = api.keys["owner"]
    assert api.post("/v1/turns", json=TURN, headers=api.h["owner"]).status_code == 200
    assert reads == [key] and key_cache.lookup(key)[1] > 9  # type: ignore[index]
    assert api.post("/v1/turns", json={**TURN, "turn_id": "t-b"}, headers=api.h["owner"]).status_code == 200
    assert reads == [key]  # early in the TTL: from the cache only
    who = key_cache.get(key)
    assert who is not None
    key_cache.put(key, who, 1.5)  # now in its last 2 s (0.2 × 10 s)
    deps._REFRESHING.add(key)  # a re-read under way: the requests below start none
    for i in range(3):
        assert api.post("/v1/turns", json={**TURN, "turn_id": f"t-c{i}"}, headers=api.h["owner"]).status_code == 200
    assert reads == [key]
    deps._REFRESHING.discard(key)
    assert api.post("/v1/turns", json={**TURN, "turn_id": "t-d"}, headers=api.h["owner"]).status_code == 200
    _await_refresh(key)
    assert reads == [key, key] and key_cache.lookup(key)[1] > 8  # type: ignore[index]


def test_a_key_revoked_in_sql_leaves_the_cache_at_its_read_ahead(api, settings, monkeypatch):
    """The read ahead of expiry sees a revocation made in SQL (no marker): the entry is dropped,
    so the next request is refused, before the TTL would have ended it."""
    from worker.access.apikeys import key_cache

    monkeypatch.setattr(settings, "api_key_cache_ttl_s", 10.0)
    key = api.keys["user_w1"]
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200
    with session_scope() as session:
        session.execute(text("UPDATE api_key SET revoked_at = now() WHERE prefix = :p"), {"p": _prefix(key)})
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200  # cached, 10 s left
    who = key_cache.get(key)
    assert who is not None
    key_cache.put(key, who, 1.5)
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200  # the entry, re-read started
    _await_refresh(key)
    assert key_cache.get(key) is None
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 401


def test_with_the_cache_off_every_request_reads_postgresql(api, settings, monkeypatch):
    from worker.access.apikeys import key_cache

    monkeypatch.setattr(settings, "api_key_cache_ttl_s", 0)
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 200
    assert key_cache.get(api.keys["user_w1"]) is None
    with session_scope() as session:
        session.execute(
            text("UPDATE api_key SET revoked_at = now() WHERE prefix = :p"), {"p": _prefix(api.keys["user_w1"])}
        )
    assert api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code == 401


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_cached_keys_still_hit_the_rate_limit_exactly(api, gate, settings, monkeypatch, strategy):
    """Turns (the async path, key from the cache) count exactly: 3 of an hour's 3 go through and are
    charged, the 4th is 429 and charges nothing; each key has its own window."""
    monkeypatch.setattr(settings, "rate_limit", "3/hour")
    monkeypatch.setattr(settings, "rate_limit_strategy", strategy)
    answers = [api.post("/v1/turns", json={**TURN, "turn_id": f"rl-{i}"}, headers=api.h["owner"]) for i in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.json()["balance_nanos"] for r in answers[:3]] == [USD - COST, USD - 2 * COST, USD - 3 * COST]
    assert answers[3].headers["content-type"] == "application/problem+json"
    assert 1 <= int(answers[3].headers["retry-after"]) <= 3600
    assert gate.balance("w1") == USD - 3 * COST
    assert [api.get("/v1/wallets/w1", headers=api.h["user_w1"]).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_several_limits_each_apply(api, settings, monkeypatch):
    monkeypatch.setattr(settings, "rate_limit", "100/hour;2/day")
    assert [api.get("/v1/wallets/w1", headers=api.h["owner"]).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    "key",
    [
        "stripe:cs_test_a1",  # a Checkout session's credit still to come
        "stripe:",  # the bare prefix
        "stripe:in_123",  # a paid invoice's
        "tollgate:allowance:w2-2026-11",  # the monthly allowance's
        "tollgate:usage:0:1-0",  # a drain batch's debit
        "tollgate:",
        # the same after case folding and Unicode compatibility normalisation (NFKC): they read as one
        "Stripe:cs_test_a1",
        "STRIPE:cs_test_a1",
        "TollGate:usage:0:1-0",
        "\uff53\uff54\uff52\uff49\uff50\uff45:cs_test_a1",  # fullwidth ｓｔｒｉｐｅ
        "stripe\uff1acs_test_a1",  # fullwidth colon
        "\U0001d42c\U0001d42d\U0001d42b\U0001d422\U0001d429\U0001d41e:cs",  # mathematical bold
        "\u017ftripe:cs_test_a1",  # long s, which case-folds to s
        "\ufb06ripe:cs",  # the st ligature
        # look-alikes of other scripts (Unicode's confusables data): Cyrillic dze, capitals, Greek omicron
        "\u0455tripe:cs_test_a1",
        "\u0405\u0422RI\u0420\u0415:cs_test_a1",
        "t\u03bfllgate:usage:0:1-0",
        "to1lgate:allowance:w2-2026-11",
        # an invisible letter or mark inside (Hangul filler, variation selector): refused by the id rules
        "stri\u3164pe:cs_test_a1",
        "s\ufe0ftripe:cs_test_a1",
        # what the id rules refuse in any key: leading space, zero-width space, BOM, bidi override
        " stripe:cs_test_a1",
        "\u200bstripe:cs_test_a1",
        "\ufeffstripe:cs_test_a1",
        "\u202estripe:cs_test_a1",
    ],
)
def test_a_credit_key_with_a_system_prefix_is_refused_and_changes_nothing(api, gate, db, key):
    """A caller's credit may not take a key tollgate writes itself (``tollgate:…``, ``stripe:…``): it
    would show as a Stripe payment or an allowance on statements, or take the key of a payment still
    to come (whose webhook would then find it used).  422 naming ``idempotency_key``, before the key
    is looked up (no 409 telling that a system entry exists), nothing written anywhere."""
    for who in ("owner", "admin"):
        r = api.post(
            "/v1/wallets/w2/credits", json={"amount_nanos": 7 * USD, "idempotency_key": key}, headers=api.h[who]
        )
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["idempotency_key"]
    assert gate.balance("w2") == 0
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM wallet_transaction WHERE wallet_id = 'w2'")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'credit'")).scalar_one() == 0
    # keys that only look alike are ordinary keys
    for i, fine in enumerate(
        ("my-stripe:cs_1", "tollgate-topup", "stripe-cs_1", "\u0441\u0442\u0440\u0430\u0439\u043f-1")
    ):
        r = api.post(
            "/v1/wallets/w2/credits", json={"amount_nanos": USD, "idempotency_key": fine}, headers=api.h["owner"]
        )
        assert r.status_code == 200 and r.json()["balance_nanos"] == (i + 1) * USD, r.text


def test_the_cli_and_python_credits_refuse_a_system_key_too(gate, db):
    """The same rule at every entry point that takes a caller's key: ``tollgate wallet credit`` (exit
    1, naming ``--key``) and ``worker.ledger.accounts.credit_wallet`` (LedgerError naming the field);
    the Stripe webhook's own credits pass ``system_key=True``."""
    import os
    import subprocess
    import sys

    from worker.ledger.accounts import LedgerError, credit_wallet

    seed_wallet(gate, "w9", "acme", "u9")
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "wallet", "credit", "w9", "--usd", "3", "--key", "stripe:cs_x"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "--key" in done.stderr and "stripe:" in done.stderr, done.stderr
    fullwidth = subprocess.run(  # the rule folds case and compatibility forms at every entry point
        [sys.executable, "-m", "worker.cli", "wallet", "credit", "w9", "--usd", "3", "--key", "\uff33TRIPE:cs_x"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fullwidth.returncode != 0 and "--key" in fullwidth.stderr, fullwidth.stderr
    for key in ("tollgate:refund:1", "Tollgate:refund:1", "\uff54ollgate:refund:1", "t\u043ell\u0261ate:refund:1"):
        with session_scope() as session, pytest.raises(LedgerError) as refused:
            credit_wallet(session, gate, wallet_id="w9", amount_nanos=USD, idempotency_key=key)
        assert refused.value.field == "idempotency_key"
    with session_scope() as session:
        credit_wallet(session, gate, wallet_id="w9", amount_nanos=USD, idempotency_key="stripe:cs_y", system_key=True)
    assert gate.balance("w9") == USD
    with db.connect() as conn:
        assert conn.execute(
            text("SELECT idempotency_key, amount_nanos FROM wallet_transaction WHERE wallet_id = 'w9'")
        ).all() == [("stripe:cs_y", USD)]
