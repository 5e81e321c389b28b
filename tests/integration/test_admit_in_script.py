"""``POST /v1/turns`` in one Redis round trip: the request's admission (the key's revocation marker and
its rate limits, ``api_stub.deps.admit``) runs inside the turn's script (``admit_record_turn.lua``)
instead of a round trip of its own.  Against real Redis and PostgreSQL: the same answers as the two
round trips (byte for byte), a refused request changes nothing of its turn (not debited, not queued,
its turn_id not remembered), the limits count exactly, and each turn is recorded once."""

from __future__ import annotations

import pytest
from redis.exceptions import NoScriptError

from api_stub import deps
from tests.conftest import create_keys, seed_wallet
from tests.integration.test_api_v1 import COST, TURN, USD
from worker.gate import aio
from worker.gate.aio import AsyncWalletGate
from worker.gate.keys import outbox_key, revoked_marker

pytestmark = pytest.mark.integration


@pytest.fixture()
def api(http_api, gate):
    """The API with two owner keys of app ``acme`` (each its own rate-limit window) and a wallet of
    another app."""
    seed_wallet(gate, "w1", "acme", "u1", USD)
    seed_wallet(gate, "x1", "other", "x", USD)
    return http_api(create_keys({"owner": ("owner", "acme"), "owner2": ("owner", "acme")}))


@pytest.fixture()
def sends(monkeypatch):
    """The Redis sends of the API's request path (``asend_packed``: admit's and the gate's) that ran
    (a send whose every reply is NOSCRIPT is not counted: the Redis server is shared, and a SCRIPT
    FLUSH elsewhere makes the next send load its script and go again)."""
    calls: list[int] = []

    def counted(real):
        async def spy(client, commands, sent, on_reply):
            replies: list = []

            def seen(reply):
                replies.append(reply)
                on_reply(reply)

            try:
                return await real(client, commands, sent, seen)
            finally:
                if not all(isinstance(r, NoScriptError) for r in replies):
                    calls.append(1)

        return spy

    real = aio.asend_packed
    monkeypatch.setattr(aio, "asend_packed", counted(real))
    monkeypatch.setattr(deps, "asend_packed", counted(real))
    return calls


@pytest.fixture(params=["one", "two"])
def trips(request, monkeypatch):
    """Each test twice: the admission in the turn's script (``one``), and in a round trip of its own
    first (``two``: the path taken on Redis Cluster, and before this change)."""
    if request.param == "two":
        monkeypatch.setattr(AsyncWalletGate, "admits_in_one_call", lambda self: False)
    return request.param


def _prefix(key: str) -> str:
    return key.split("_")[1]


def _queued(redis_client, settings) -> int:
    return sum(redis_client.xlen(outbox_key(s)) for s in range(settings.outbox_shards))


def _answer(r) -> tuple:
    return r.status_code, r.headers["content-type"], r.headers.get("www-authenticate"), r.content


def test_a_turn_is_one_round_trip_and_the_decision_of_the_two(api, gate, sends, redis_client, settings, trips):
    # the first turn loads the script and sees the wallet's payer for the first time (PostgreSQL)
    assert api.post("/v1/turns", json={**TURN, "turn_id": "warm"}, headers=api.h["owner"]).status_code == 200
    sends.clear()
    r = api.post("/v1/turns", json=TURN, headers=api.h["owner"])
    assert r.status_code == 200 and r.json()["balance_nanos"] == USD - 2 * COST and r.json()["billed_nanos"] == COST
    assert len(sends) == (1 if trips == "one" else 2)
    again = api.post("/v1/turns", json=TURN, headers=api.h["owner"])
    assert again.json() == {**r.json(), "duplicate": True}
    assert gate.balance("w1") == USD - 2 * COST and _queued(redis_client, settings) == 2  # each recorded once


def test_a_revoked_key_is_refused_as_before_and_its_turn_changes_nothing(api, gate, redis_client, settings, trips):
    from worker.access.apikeys import key_cache

    assert api.post("/v1/turns", json={**TURN, "turn_id": "warm"}, headers=api.h["owner"]).status_code == 200
    key = api.keys["owner"]
    assert key_cache.get(key) is not None
    redis_client.set(revoked_marker(_prefix(key)), 1, ex=60)  # as the CLI's revocation in another process
    r = api.post("/v1/turns", json=TURN, headers=api.h["owner"])
    assert _answer(r) == (
        401,
        "application/problem+json",
        'Bearer realm="tollgate"',
        b'{"type":"about:blank","title":"Unauthorized","status":401,"detail":"the API key is unknown or revoked"}',
    )
    assert key_cache.get(key) is None  # dropped from this process's cache
    assert gate.balance("w1") == USD - COST and _queued(redis_client, settings) == 1
    # its turn_id was not remembered: another owner key of the app records it as new
    redis_client.delete(revoked_marker(_prefix(key)))
    ok = api.post("/v1/turns", json=TURN, headers=api.h["owner2"])
    assert ok.status_code == 200 and ok.json()["duplicate"] is False and ok.json()["billed_nanos"] == COST
    assert gate.balance("w1") == USD - 2 * COST and _queued(redis_client, settings) == 2


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_the_rate_limit_holds_at_the_exact_count_and_a_refused_turn_changes_nothing(
    api,
    gate,
    redis_client,
    settings,
    monkeypatch,
    strategy,
    trips,
):
    monkeypatch.setattr(settings, "rate_limit", "3/hour")
    monkeypatch.setattr(settings, "rate_limit_strategy", strategy)
    answers = [api.post("/v1/turns", json={**TURN, "turn_id": f"rl-{i}"}, headers=api.h["owner"]) for i in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.json()["balance_nanos"] for r in answers[:3]] == [USD - COST, USD - 2 * COST, USD - 3 * COST]
    refused = answers[3]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    body = refused.json()
    assert body["title"] == "Too Many Requests" and body["status"] == 429
    assert body["detail"].startswith("this API key may make 3 per 1 hour requests; retry in ")
    assert gate.balance("w1") == USD - 3 * COST and _queued(redis_client, settings) == 3
    # rl-3 was not remembered: sent with another key of the app (its own window) it is new
    ok = api.post("/v1/turns", json={**TURN, "turn_id": "rl-3"}, headers=api.h["owner2"])
    assert ok.status_code == 200 and ok.json()["duplicate"] is False
    assert gate.balance("w1") == USD - 4 * COST and _queued(redis_client, settings) == 4


def test_several_limits_each_count_every_request(api, gate, redis_client, settings, monkeypatch, trips):
    # a request refused by one limit still counts against the others, as the pipelined commands did
    monkeypatch.setattr(settings, "rate_limit", "2/day;3/hour")
    codes = [
        api.post("/v1/turns", json={**TURN, "turn_id": f"s-{i}"}, headers=api.h["owner"]).status_code for i in range(4)
    ]
    assert codes == [200, 200, 429, 429]
    monkeypatch.setattr(settings, "rate_limit", "3/hour")  # the day's window lifted: the hour's has 4 requests
    r = api.post("/v1/turns", json={**TURN, "turn_id": "s-4"}, headers=api.h["owner"])
    assert r.status_code == 429 and gate.balance("w1") == USD - 2 * COST and _queued(redis_client, settings) == 2


def test_refusals_before_the_gate_keep_their_order(api, gate, redis_client, trips):
    # a request the pre-gate checks refuse (another app's turn: 403; an unknown price: 422) is admitted
    # first, so a revoked key still answers 401, and an admitted one gets the check's answer
    other = {**TURN, "enterprise_id": "other", "wallet_id": "x1"}
    unpriced = {**TURN, "model": "no-such-model"}
    assert api.post("/v1/turns", json=other, headers=api.h["owner"]).status_code == 403
    assert api.post("/v1/turns", json=unpriced, headers=api.h["owner"]).status_code == 422
    redis_client.set(revoked_marker(_prefix(api.keys["owner"])), 1, ex=60)
    assert api.post("/v1/turns", json=other, headers=api.h["owner"]).status_code == 401
    assert api.post("/v1/turns", json=unpriced, headers=api.h["owner"]).status_code == 401
    assert gate.balance("w1") == USD


def test_an_unknown_wallet_is_answered_after_the_admission(api, gate, redis_client, trips):
    lost = {**TURN, "wallet_id": "nowhere"}
    r = api.post("/v1/turns", json=lost, headers=api.h["owner"])
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "wallet_id"
    redis_client.set(revoked_marker(_prefix(api.keys["owner"])), 1, ex=60)
    assert api.post("/v1/turns", json=lost, headers=api.h["owner"]).status_code == 401


def test_the_script_is_loaded_again_after_a_flush(api, gate, redis_client):
    assert api.post("/v1/turns", json=TURN, headers=api.h["owner"]).status_code == 200
    redis_client.script_flush()
    r = api.post("/v1/turns", json={**TURN, "turn_id": "t-2"}, headers=api.h["owner"])
    assert r.status_code == 200 and r.json()["balance_nanos"] == USD - 2 * COST
