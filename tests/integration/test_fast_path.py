"""The turn endpoints' fast path (:mod:`api_stub.fast_path`) against real Redis and PostgreSQL: it
answers well-formed requests itself, and every other request gets exactly FastAPI's answer, the one
an app without the fast path gives (status, content type, problem document)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from api_stub import fast_path
from api_stub.routes import turns
from api_stub.strict_json import StrictJsonRoute
from models.turn import TurnIn
from tests.conftest import auth
from tests.integration.test_api import COST, TURN, api  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture()
def plain(api, monkeypatch):  # noqa: F811
    """A client of an app built without the fast path (FastAPI's handlers only, behind the same check
    of a key named twice: ``StrictJsonRoute``), with ``api``'s keys."""
    from api_stub.app import create_app

    monkeypatch.setattr(fast_path.FastPathRoute, "unchecked_handler", StrictJsonRoute.unchecked_handler)
    client = TestClient(create_app())
    client.keys = api.keys
    return client


@pytest.fixture()
def fast_calls(monkeypatch):
    """The callers the fast handlers authenticated (one per request they answered themselves: the
    single turn's handler through ``authenticated``, its admission then in the turn's script or
    ``admit``; the batch's through ``principal``)."""
    calls: list[str | None] = []

    def spied(real):
        async def spy(authorization: str | None = None):
            calls.append(authorization)
            return await real(authorization)

        return spy

    monkeypatch.setattr(turns, "principal", spied(turns.principal))
    monkeypatch.setattr(turns, "authenticated", spied(turns.authenticated))
    return calls


def test_a_well_formed_turn_is_answered_by_the_fast_path_with_the_gate_s_decision(api, gate, fast_calls):  # noqa: F811
    r = api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "turn_id": "api-1",
        "accepted": True,
        "action": "continue",
        "balance_nanos": 1_000_000_000 - COST,
        "cost_nanos": COST,
        "billed_nanos": COST,
        "duplicate": False,
    }
    assert fast_calls == [f"Bearer {api.keys['owner']}"]
    again = api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"]))
    assert again.json() == {**r.json(), "duplicate": True}
    assert gate.balance("w1") == 1_000_000_000 - COST
    batch = [{**TURN, "turn_id": f"b-{i}"} for i in range(3)]
    r = api.post("/v1/turns/batch", json={"turns": batch}, headers=auth(api.keys["owner"]))
    assert r.status_code == 200, r.text
    assert [d["balance_nanos"] for d in r.json()["data"]] == [1_000_000_000 - COST * k for k in (2, 3, 4)]
    assert len(fast_calls) == 3
    assert gate.balance("w1") == 1_000_000_000 - 4 * COST


def _cases(keys: dict[str, str]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, path, body, headers) of requests the fast path must answer as FastAPI does; none changes anything."""
    owner = auth(keys["owner"])
    js = {"Content-Type": "application/json"}
    body = json.dumps(TURN).encode()

    def turn(**change) -> bytes:
        return json.dumps({**TURN, **change}).encode()

    return [
        ("malformed JSON", "/v1/turns", b'{"turn_id": ', owner | js),
        ("empty body", "/v1/turns", b"", owner | js),
        ("JSON null", "/v1/turns", b"null", owner | js),
        ("text/plain", "/v1/turns", body, owner | {"Content-Type": "text/plain"}),
        ("no content type", "/v1/turns", body, owner),
        (
            "missing field",
            "/v1/turns",
            json.dumps({k: v for k, v in TURN.items() if k != "model"}).encode(),
            owner | js,
        ),
        ("unknown field", "/v1/turns", turn(colour="blue"), owner | js),
        ("tokens as text", "/v1/turns", turn(prompt_tokens="800"), owner | js),
        ("tokens as float", "/v1/turns", turn(prompt_tokens=800.0), owner | js),
        ("negative tokens", "/v1/turns", turn(completion_tokens=-1), owner | js),
        ("tokens as bool", "/v1/turns", turn(completion_tokens=True), owner | js),
        ("NUL in chat_id", "/v1/turns", turn(chat_id="c\x00"), owner | js),
        ("no key, valid body", "/v1/turns", turn(turn_id="nokey"), js),
        ("unknown key, valid body", "/v1/turns", turn(turn_id="badkey"), auth("tg_nope_nope") | js),
        ("unknown key, bad body", "/v1/turns", turn(prompt_tokens=-1), auth("tg_nope_nope") | js),
        ("no key, malformed JSON", "/v1/turns", b"{", js),
        ("another app's key", "/v1/turns", turn(turn_id="other"), auth(keys["other_owner"]) | js),
        ("end user's key", "/v1/turns", turn(turn_id="enduser"), auth(keys["user_w1"]) | js),
        ("unknown wallet", "/v1/turns", turn(turn_id="nowallet", wallet_id="nope"), owner | js),
        ("unknown model", "/v1/turns", turn(turn_id="nomodel", model="no-such-model-x"), owner | js),
        (
            "batch, a bad turn 1",
            "/v1/turns/batch",
            json.dumps({"turns": [TURN, {**TURN, "turn_id": "x", "prompt_tokens": -5}]}).encode(),
            owner | js,
        ),
        ("batch, empty", "/v1/turns/batch", b'{"turns": []}', owner | js),
        (
            "batch, text/plain",
            "/v1/turns/batch",
            json.dumps({"turns": [TURN]}).encode(),
            owner | {"Content-Type": "text/plain"},
        ),
    ]


def test_every_other_request_gets_exactly_fastapi_s_answer(api, plain, gate, redis_client, fast_calls):  # noqa: F811
    before = gate.balance("w1")
    keys_before = sorted(redis_client.keys("*"))
    for name, path, body, headers in _cases(api.keys):
        fast = api.post(path, content=body, headers=headers)
        slow = plain.post(path, content=body, headers=headers)
        assert fast.status_code >= 400, (name, fast.text)
        assert (fast.status_code, fast.headers.get("content-type"), fast.json()) == (
            slow.status_code,
            slow.headers.get("content-type"),
            slow.json(),
        ), name
        assert fast.headers.get("www-authenticate") == slow.headers.get("www-authenticate"), name
    assert gate.balance("w1") == before
    # nothing recorded: only the rate-limit windows and caches of the requests may be new
    assert [k for k in sorted(redis_client.keys("*")) if k not in keys_before and "ratelimit" not in str(k)] == []
    # the fast path answered none of these (each went to FastAPI's handler or was refused by principal),
    # and the app without it never uses it
    calls = len(fast_calls)
    assert plain.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"])).status_code == 200
    assert len(fast_calls) == calls
    assert gate.balance("w1") == before - COST


#: JSON values a turn's fields may be sent as: the fast path must accept exactly what FastAPI does
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.integers(min_value=-(10**40), max_value=10**40),  # past 64 bits
    st.floats(),  # NaN and the infinities too (json.dumps writes NaN / Infinity)
    st.text(max_size=12),
    st.text(st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Nd"]), max_size=4),
    st.sampled_from(
        ["1000", "1e3", " 5", "\u0665", "2026-11-01T12:00:00Z", "2026-11-01", "1761998400", "gpt-4o", "llm", "emails"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@hsettings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(sorted(TurnIn.model_fields)), VALUES, max_size=6))
def test_json_validation_accepts_what_python_validation_accepts_and_the_same_turn(changes):
    """The fast path validates the raw bytes (``model_validate_json``, pydantic's JSON mode);
    FastAPI ``json.loads`` then validates Python objects.  A body the first accepts must give the
    same turn by the second (a body it refuses goes to FastAPI's handler, so only this direction
    matters)."""
    raw = json.dumps({**TURN, **changes})
    if "prompt_tokens" in changes:  # a duplicate key as well (refused before either parser since
        # StrictJsonRoute; the parsers still agree: both keep the last)
        raw = '{"prompt_tokens": -1, ' + raw[1:]
    try:
        fast = TurnIn.model_validate_json(raw)
    except ValidationError:
        return
    assert TurnIn.model_validate(json.loads(raw)) == fast


def _hostile_bodies(turn_id: str = "@ID@") -> dict[str, bytes]:
    """Bodies of the classes a hostile or careless client sends, of turn ``turn_id``: duplicate keys, numbers in every JSON form, NaN/Infinity, a BOM, bytes that are not
    UTF-8, escapes PostgreSQL cannot store, deep nesting, unknown fields, other encodings."""
    base = json.dumps({**TURN, "turn_id": turn_id})
    tokens = f'"prompt_tokens": {TURN["prompt_tokens"]}'

    def tok(raw: str) -> str:
        return base.replace(tokens, f'"prompt_tokens": {raw}')

    text_fields = ["turn_id", "wallet_id", "enterprise_id", "chat_id", "agent", "model", "provider"]
    bodies = {
        "duplicate key, the last valid": base[:-1] + ', "prompt_tokens": 5}',
        "duplicate key, the last invalid": base[:-1] + ', "prompt_tokens": -5}',
        "duplicate key, the first invalid": '{"prompt_tokens": -5, ' + base[1:],
        "duplicate wallet_id": base[:-1] + ', "wallet_id": "w2"}',
        "int past 64 bits": tok(str(10**30)),
        "int past int()'s digits": tok("9" * 5000),
        "1.0": tok("1.0"),
        "1e3": tok("1e3"),
        "1E3": tok("1E3"),
        "-0": tok("-0"),
        '"5"': tok('"5"'),
        '" 5"': tok('" 5"'),
        '"\u0665"': tok('"\u0665"'),
        "NaN": tok("NaN"),
        "Infinity": tok("Infinity"),
        "-Infinity": tok("-Infinity"),
        "BOM": "\ufeff" + base,
        "whitespace around": " \r\n\t" + base + "\n ",
        "trailing junk": base + " x",
        "two documents": base + base,
        "deep nesting": '{"turn_id": "' + turn_id + '", "x": ' + "[" * 10_000 + "]" * 10_000 + "}",
        "unknown field": base[:-1] + ', "amount_nanos": 1}',
        "occurred_at as epoch seconds": base.replace('"2026-11-01T12:00:00Z"', "1793534400"),
        "occurred_at without zone": base.replace('"2026-11-01T12:00:00Z"', '"2026-11-01T12:00:00"'),
        "occurred_at lower-case t and z": base.replace('"2026-11-01T12:00:00Z"', '"2026-11-01t12:00:00z"'),
        "occurred_at year 9999 offset": base.replace('"2026-11-01T12:00:00Z"', '"9999-12-31T23:59:59-23:59"'),
    }
    for field in text_fields:
        value = json.dumps({**TURN, "turn_id": turn_id}[field])
        for name, escape in (("NUL", "\\u0000"), ("lone surrogate", "\\ud800"), ("RLO", "\\u202e")):
            bodies[f"{name} in {field}"] = base.replace(f'"{field}": {value}', f'"{field}": "{escape}{value[1:]}')
    raw = {name: body.encode() for name, body in bodies.items()}
    raw["not UTF-8 in chat_id"] = base.replace('"c1"', '"c\xff1"').encode("latin-1")
    raw["UTF-16"] = base.encode("utf-16")
    raw["UTF-8 encoded surrogate"] = base.replace('"c1"', '"c@S@"').encode().replace(b"@S@", b"\xed\xa0\x80")
    return raw


#: content types: FastAPI's handler decides every one the fast path does not take
CONTENT_TYPES = [
    {"Content-Type": "application/json"},
    {"Content-Type": "application/JSON"},
    {"Content-Type": "application/json; charset=latin-1"},
    {"Content-Type": "application/json-patch+json"},
    {"Content-Type": "application/vnd.api+json"},
    {"Content-Type": "text/json"},
    {},
]


def test_hostile_bodies_get_exactly_fastapi_s_answer_accepted_or_refused(api, plain, settings, monkeypatch):  # noqa: F811
    """Every hostile body under every content type, single and batched: the fast path answers
    what FastAPI's own handler answers (status and body; the balance after each, which depends on
    the order of the two apps' requests on one wallet, left out), and accepts nothing FastAPI refuses."""
    monkeypatch.setattr(settings, "rate_limit", "100000/minute")  # about 1,000 requests of one key
    owner = auth(api.keys["owner"])
    differ = []
    n = 0
    for name in _hostile_bodies():
        for ctype in CONTENT_TYPES:
            n += 1
            for path, wrap in (("/v1/turns", lambda b: b), ("/v1/turns/batch", lambda b: b'{"turns": [' + b + b"]}")):
                answers = []
                for client, side in ((api, "f"), (plain, "p")):
                    marker = f"{side}{n}-{path[-5:]}"
                    body = _hostile_bodies(marker)[name]
                    r = client.post(path, content=wrap(body), headers=owner | ctype)
                    shown = re.sub(r'"balance_nanos":-?\d+', "", r.text.replace(marker, "ID"))
                    answers.append((r.status_code, r.headers.get("content-type"), shown))
                if answers[0] != answers[1]:
                    differ.append((name, ctype, path, answers))
    assert differ == []
    assert n == len(_hostile_bodies()) * len(CONTENT_TYPES)


def test_a_body_at_the_size_cap_and_over_it_chunked_or_not(api, plain, settings):  # noqa: F811
    """The cap (``TOLLGATE_MAX_BODY_BYTES``) is counted as bytes arrive, before either handler: a
    valid turn padded to exactly the cap is answered as FastAPI answers it, one byte over is 413
    from both, with or without Content-Length."""
    owner = auth(api.keys["owner"]) | {"Content-Type": "application/json"}
    cap = settings.max_body_bytes
    for side, client in (("f", api), ("p", plain)):
        body = json.dumps({**TURN, "turn_id": f"cap-{side}"}).encode()
        at_cap = body[:-1] + b" " * (cap - len(body)) + b"}"
        assert len(at_cap) == cap
        assert client.post("/v1/turns", content=at_cap, headers=owner).status_code == 200
        over = at_cap[:-1] + b" }"
        assert client.post("/v1/turns", content=over, headers=owner).status_code == 413
        chunked = client.post("/v1/turns", content=iter([over[:1000], over[1000:]]), headers=owner)
        assert chunked.status_code == 413
        ok_chunked = json.dumps({**TURN, "turn_id": f"chunk-{side}"}).encode()
        assert (
            client.post("/v1/turns", content=iter([ok_chunked[:10], ok_chunked[10:]]), headers=owner).status_code == 200
        )
