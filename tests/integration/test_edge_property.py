"""The property at the HTTP edge (issue 14, "What must hold", second bullet), against real Redis and
PostgreSQL: arbitrary Unicode (NUL, lone surrogates, C0/C1 controls, bidi overrides included) in
every string field of a turn, a batch, a credit and a reservation, sent through the API, then the
drain (``worker.ledger.drain``), then reconciliation (``worker.ledger.reconcile``):

- no answer is a 5xx;
- turn_ids are reused across wallets and apps and, as retries, within a wallet: within a turn's scope
  (enterprise_id, wallet_id) the first answer comes back (``duplicate``, same acceptance and cost);
  across scopes each is its own turn;
- every turn the API accepted (and did not answer as a duplicate) is persisted exactly once in its
  scope, with the cost it was charged;
- reconciliation reports 0 drift and the drain 0 dead letters, nothing left pending.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.conftest import create_keys, seed_wallet

pytestmark = pytest.mark.integration

USD = 1_000_000_000
#: the idempotency scopes, (enterprise_id, wallet_id): two wallets of one app and a wallet of another
SCOPES = (("acme", "w1"), ("acme", "w2"), ("beta", "b1"))
WALLETS = tuple(w for _e, w in SCOPES)
#: turn_ids every scope draws often: reused across wallets and apps, and within a wallet (retries)
SHARED_IDS = ("t-shared-1", "t-shared-2")

#: any code point, lone surrogates included (hypothesis leaves Cs out unless told), and the ones
#: that broke things drawn often
SPECIAL = st.sampled_from(
    [
        "\x00",
        "\ud800",
        "\udfff",
        "\x07",
        "\x1b",
        "\x7f",
        "\x85",
        "\u202e",
        "\u2066",
        "\u200b",
        "\ufeff",
        "\u2028",
        " ",
        "\t",
        "\n",
        "=",
        "é",
        "日",
        "🤖",
    ]
)
CHARS = st.one_of(st.characters(exclude_categories=()), SPECIAL)
ANY_TEXT = st.text(CHARS, max_size=12)


def _field(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value, arbitrary text, or a valid value with one hostile character inside."""
    return st.one_of(
        st.sampled_from(valid),
        ANY_TEXT,
        st.tuples(st.sampled_from(valid), SPECIAL).map(lambda p: p[0][:1] + p[1] + p[0][1:]),
    )


OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
OCCURRED_AT = st.one_of(
    st.just("2026-11-01T12:00:00Z"),
    st.builds(
        lambda d, tz: d.replace(tzinfo=tz).isoformat(),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        OFFSETS,
    ),
    st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-11-01T12:00:00"]),
    ANY_TEXT,
)


TURN_FIELDS = {
    "turn_id": None,
    "wallet_id": list(WALLETS),
    "enterprise_id": ["acme", "beta"],
    "chat_id": ["c1", "c2"],
    "workflow": ["support"],
    "agent": ["planner", "writer"],
    "model": ["gpt-4o"],
    "provider": ["openai"],
    "reservation_id": ["r-1"],
    "occurred_at": None,
}


@st.composite
def _turn_body(draw, scope: tuple[str, str] | None = None) -> dict:
    """A valid turn of ``scope`` (default: drawn) with up to three of its string fields (and
    occurred_at) made hostile, so that both accepted and refused turns are frequent.  Half the
    turn_ids are :data:`SHARED_IDS`, so the same id meets other wallets, other apps and itself."""
    enterprise, wallet = scope or draw(st.sampled_from(SCOPES))
    turn_id = draw(st.one_of(st.sampled_from(SHARED_IDS), st.integers(0, 10**6).map(lambda n: f"t-{n}")))
    body = {
        "turn_id": turn_id,
        "wallet_id": wallet,
        "enterprise_id": enterprise,
        "chat_id": draw(st.sampled_from(["c1", "c2"])),
        "workflow": "support",
        "agent": draw(st.sampled_from(["planner", "writer"])),
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": draw(st.integers(0, 2_000)),
        "completion_tokens": draw(st.integers(0, 200)),
        "occurred_at": "2026-11-01T12:00:00Z",
    }
    for name in draw(st.sets(st.sampled_from(sorted(TURN_FIELDS)), max_size=3)):
        if name == "occurred_at":
            body[name] = draw(OCCURRED_AT)
        else:
            own = {"turn_id": [body["turn_id"], *SHARED_IDS]}
            body[name] = draw(_field(own.get(name) or TURN_FIELDS[name]))
    return body


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("turn"), _turn_body()),
        # one app's key sends a batch: its turns share a scope (hostile fields aside)
        st.tuples(
            st.just("batch"),
            st.sampled_from(SCOPES).flatmap(lambda scope: st.lists(_turn_body(scope), min_size=1, max_size=3)),
        ),
        st.tuples(
            st.just("credit"),
            st.fixed_dictionaries(
                {
                    "wallet": _field(list(WALLETS)),
                    "amount_nanos": st.integers(1, 10**6),
                    "idempotency_key": _field(["k-1", "k-2"]),
                    "description": st.one_of(st.just(""), ANY_TEXT),
                }
            ),
        ),
        st.tuples(
            st.just("reserve"),
            st.fixed_dictionaries(
                {
                    "wallet": _field(list(WALLETS)),
                    "amount_nanos": st.integers(1, 10**6),
                    "reservation_id": _field(["r-1", "r-2"]),
                }
            ),
        ),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture()
def api(http_api, gate, settings, monkeypatch):
    monkeypatch.setattr(settings, "occurred_at_max_ahead_s", 86_400)  # production's default (conftest widens it)
    for e, w in SCOPES:
        seed_wallet(gate, w, e, f"u-{w}", USD)
    keys = create_keys({e: ("owner", e) for e in sorted({e for e, _w in SCOPES})})
    client = http_api(
        keys, headers={"Content-Type": "application/json"}, raise_server_exceptions=False
    )  # a server error must show as a 5xx here
    # the owner key of each app; a wallet's requests go with its app's key
    client.h = {w: client.h[e] for e, w in SCOPES}
    return client


def _path(value: str) -> str:
    # a lone surrogate cannot be UTF-8: a client can only send its bytes (invalid UTF-8), percent-encoded
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _headers(api, wallet: object) -> dict:
    """The key of the wallet's app (a hostile wallet id: the first app's)."""
    return api.h.get(wallet) or api.h[WALLETS[0]]


def _send(api, op: str, body) -> tuple[object, list[tuple[dict, dict]]]:
    """Send one operation; returns the response and the (turn body, decision) pairs it answered."""
    if op == "turn":
        r = api.post("/v1/turns", content=json.dumps(body).encode(), headers=_headers(api, body["wallet_id"]))
        turns = [(body, r.json())] if r.status_code == 200 else []
    elif op == "batch":
        r = api.post(
            "/v1/turns/batch", content=json.dumps({"turns": body}).encode(), headers=_headers(api, body[0]["wallet_id"])
        )
        turns = list(zip(body, r.json()["data"])) if r.status_code == 200 else []
    elif op == "credit":
        payload = {k: body[k] for k in ("amount_nanos", "idempotency_key", "description")}
        r = api.post(
            f"/v1/wallets/{_path(body['wallet'])}/credits",
            content=json.dumps(payload).encode(),
            headers=_headers(api, body["wallet"]),
        )
        turns = []
    else:
        payload = {"amount_nanos": body["amount_nanos"], "reservation_id": body["reservation_id"]}
        r = api.post(
            f"/v1/wallets/{_path(body['wallet'])}/reservations",
            content=json.dumps(payload).encode(),
            headers=_headers(api, body["wallet"]),
        )
        turns = []
    return r, turns


def test_arbitrary_unicode_at_the_http_edge_never_5xx_and_every_accepted_turn_persists_once(
    api, redis_client, gate, settings, db
):
    from worker.gate.keys import deadletter_key
    from worker.ledger.drain import OutboxDrain
    from worker.ledger.reconcile import reconcile

    drain = OutboxDrain(redis_client, settings=settings, consumer="prop")
    accepted: dict[tuple[str, str, str], int] = {}  # (enterprise_id, wallet_id, turn_id) → cost charged
    answers: dict[tuple[str, str, str], tuple] = {}  # the first answer in each scope: (accepted, cost, billed)
    statuses: dict[int, int] = {}
    retries = [0]  # answers that were a turn_id's first answer again, in its scope

    @hsettings(
        max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )
    @given(ops=OPS)
    def run(ops) -> None:
        for op, body in ops:
            r, new = _send(api, op, body)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (op, body, r.status_code, r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json", r.text
            for sent, d in new:
                key = (sent["enterprise_id"], sent["wallet_id"], d["turn_id"])
                answer = (d["accepted"], d["cost_nanos"], d["billed_nanos"])
                if key in answers:  # a retry in its scope: the first answer, whatever this one carried
                    assert d["duplicate"] and answer == answers[key], (key, d, answers[key])
                    retries[0] += 1
                    continue
                assert not d["duplicate"], ("a first answer marked duplicate", key, d)
                answers[key] = answer
                if d["accepted"]:
                    accepted[key] = d["cost_nanos"]
        drain.drain()
        for shard in range(settings.outbox_shards):
            assert redis_client.xlen(deadletter_key(shard)) == 0
            assert redis_client.xpending(gate._shard_keys[shard][1], "tollgate-drain")["pending"] == 0
        with db.connect() as conn:
            rows = {
                (e, w, t): c
                for e, w, t, c in conn.execute(
                    text("SELECT enterprise_id, wallet_id, turn_id, cost_nanos FROM usage_event")
                ).all()
            }
            keys = conn.execute(text("SELECT count(*) FROM usage_turn_key")).scalar_one()
        assert rows == accepted  # every accepted turn once in its scope, at its cost; nothing else
        assert keys == len(accepted)
        report = reconcile(gate)
        assert (report.wallets_drifted, report.drift_nanos_abs, report.ledger_mismatches) == (0, 0, 0), report.drifted

    run()
    assert accepted and statuses.get(200) and statuses.get(422)  # both sides of the edge were exercised
    # and the scopes: a shared turn_id persisted in several scopes (billed in each), retries answered
    assert max(sum(t == shared for _e, _w, t in accepted) for shared in SHARED_IDS) >= 2
    assert retries[0] > 0
