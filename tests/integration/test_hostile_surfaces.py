"""Hostile and careless input on the surfaces added after issue 14 (the drain's fast outbox parse,
the /billing drill-down, range and top-up, the ledger page), against real Redis and PostgreSQL:
each is a clear 4xx naming the parameter, or a dead letter with its error, never a 500, never a
value stored as something it is not, and nothing else lost."""

from __future__ import annotations

import json
import re

import pytest
import redis as redis_lib
from sqlalchemy import text

from tests.billing_seed import seed
from tests.conftest import TEST_REDIS_URL, auth
from tests.integration.test_deadletter import _open, _rows, _turn
from worker.gate.keys import outbox_key
from worker.ledger.drain import OutboxDrain

pytestmark = pytest.mark.integration


# the drain's outbox parse -------------------------------------------------------------------------
#: (element of a version-5 payload, or "g" for the gate's decision field) -> a value no gate writes
_POISON = {
    "prompt_tokens true": (9, True),  # was stored as 1 token
    "occurred_at float": (15, 1.7e15),  # was stored, microseconds rounded through a float
    "occurred_at true": (15, True),
    "turn_id a number": (1, 12345),  # was stored as the text '12345'
    "rates in other digits": (13, "\u0661,1,1,1,1"),  # '١' was read as the rate 1
    "decision in other digits": ("g", None),  # '٠' in billed and balance was read as 0
}


@pytest.mark.parametrize("name", list(_POISON))
def test_an_outbox_value_no_gate_writes_is_dead_lettered_with_its_error_and_the_rest_persisted(
    db, redis_client, gate, settings, name
):
    _open(gate)
    decided = gate.record_turns([_turn(1), _turn(2), _turn(3)])
    shard = gate.shard("w1")
    raw = redis_lib.Redis.from_url(TEST_REDIS_URL)
    entries = raw.xrange(outbox_key(shard))
    entry_id, fields = entries[1]  # turn t-2, rewritten below as another writer would have left it
    where, value = _POISON[name]
    if where == "g":
        fields = {**fields, b"g": fields[b"g"].decode().replace("0", "\u0660").encode()}
    else:
        payload = json.loads(fields[b"t"])
        payload[where] = value
        fields = {**fields, b"t": json.dumps(payload).encode()}
    raw.xdel(outbox_key(shard), entry_id)
    raw.xadd(outbox_key(shard), fields)
    raw.close()

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (3, 2, 1)
    assert _rows(db, "SELECT turn_id, prompt_tokens, cost_nanos FROM usage_event ORDER BY turn_id") == [
        ("t-1", 1001, decided[0].cost_nanos),
        ("t-3", 1003, decided[2].cost_nanos),
    ]
    ((error, billed),) = _rows(db, "SELECT error, billed_nanos FROM dead_letter")
    column = {9: "prompt_tokens", 15: "occurred_at", 1: "turn_id", 13: "rate", "g": "gate decision"}[where]
    assert column in error, error
    # the charge is read from the decision field: unreadable there, the dead letter holds no nanos
    # (reconcile then shows the wallet's drift) rather than a figure read wrongly
    assert billed == (0 if where == "g" else decided[1].billed_nanos)
    assert redis_client.xlen(outbox_key(shard)) == 0


#: (element of a version-5 payload, or ("g", position in the decision), value, the column named):
#: figures of the right type that no gate writes, outside their column's domain
_OUT_OF_DOMAIN = {
    "prompt_tokens negative": (9, -5, "prompt_tokens"),
    "completion_tokens negative": (10, -1, "completion_tokens"),
    "cached_prompt_tokens past integer": (11, 2**31, "cached_prompt_tokens"),
    "duration_ms negative": (12, -1, "duration_ms"),
    "an input rate negative": (13, "-7,1,1,1,1", "rate"),  # refused by the parser already
    "cost_nanos negative": (14, -1_000, "cost_nanos"),
    "cost_nanos past bigint": (14, 2**63, "cost_nanos"),
    "occurred_at in 1970": (15, 0, "occurred_at"),
    "occurred_at in 2100": (15, 4_102_444_800 * 10**6, "occurred_at"),
    "billed negative": (("g", 0), "-5", "billed_nanos"),
    "balance past bigint": (("g", 1), str(2**64), "balance_after_nanos"),
    "share over 10,000 bps": (("g", 3), "20000", "creator_share_nanos"),
    "trial tokens negative": (("g", 4), "-1", "trial_tokens"),
    "debt negative": (("g", 5), "-1", "debt_nanos"),
    # texts: longer than the column, or what the edge's id and label rules refuse
    "agent past its varchar": (6, "a" * 201, "agent"),
    "chat_id with a space": (4, "chat 1", "chat_id"),
    "workflow with a newline": (5, "wf\n", "workflow"),
    "chat_id empty": (4, "", "chat_id"),
    "agent with a Hangul filler": (6, "planner\u3164", "agent"),
    "model with a bidi override": (7, "gpt-4o\u202e", "model"),
    "provider past its varchar": (8, "p" * 101, "provider"),
}


@pytest.mark.parametrize("name", list(_OUT_OF_DOMAIN))
def test_an_outbox_figure_outside_its_domain_is_dead_lettered_naming_the_column_and_the_rest_persisted(
    db, redis_client, gate, settings, name
):
    """Negative token counts, figures past their column's width, a creator share above the charge
    and times far from now: the right type, so they passed the type checks, and were stored as they
    were (a negative count lowered the month's sums).  One check of every figure's domain before a
    row is staged; the entry is dead-lettered with an error naming the column."""
    _open(gate)
    decided = gate.record_turns([_turn(1), _turn(2), _turn(3)])
    shard = gate.shard("w1")
    raw = redis_lib.Redis.from_url(TEST_REDIS_URL)
    entry_id, fields = raw.xrange(outbox_key(shard))[1]  # turn t-2, rewritten as a hand would
    where, value, column = _OUT_OF_DOMAIN[name]
    if isinstance(where, tuple):
        parts = fields[b"g"].decode().split("|")
        parts[where[1]] = value
        fields = {**fields, b"g": "|".join(parts).encode()}
    else:
        payload = json.loads(fields[b"t"])
        payload[where] = value
        fields = {**fields, b"t": json.dumps(payload).encode()}
    raw.xdel(outbox_key(shard), entry_id)
    raw.xadd(outbox_key(shard), fields)
    raw.close()

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (3, 2, 1)
    assert _rows(db, "SELECT turn_id, prompt_tokens, cost_nanos FROM usage_event ORDER BY turn_id") == [
        ("t-1", 1001, decided[0].cost_nanos),
        ("t-3", 1003, decided[2].cost_nanos),
    ]
    ((error, billed),) = _rows(db, "SELECT error, billed_nanos FROM dead_letter")
    assert (repr(column) if column != "rate" else "not a rate") in error, error
    # a charge that no gate could have taken is not named in the ledger
    assert billed == (0 if where == ("g", 0) else decided[1].billed_nanos)
    assert redis_client.xlen(outbox_key(shard)) == 0


# /billing: query parameters and ids ---------------------------------------------------------------
@pytest.fixture()
def billing(db, redis_client, gate, http_api):
    s = seed(db)
    client = http_api(s.keys, raise_server_exceptions=False)
    client.seeded = s
    return client


def _refused(r, status: int, field: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:400])
    assert f'data-field="{field}"' in r.text, r.text[:2000]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=9999-12-31&to=9999-12-31", "from"),  # the day after overflowed datetime: a 500
        ("from=2026-11-01&to=9999-12-31", "to"),
        ("from=3000-01-01&to=3000-01-02", "from"),
        ("from=1899-12-31&to=1900-01-01", "from"),
        ("from=2026-W45-1&to=2026-11-30", "from"),  # an ISO week date fromisoformat also reads
        ("from=2026-11-01&to=2026-W48-7", "to"),
        ("from=2\u0660\u0662\u0666-11-01&to=2026-11-30", "from"),  # Arabic-Indic digits
        ("from=2026-11-01%2B05&to=2026-11-30", "from"),
        ("from=2026-11-30&to=2026-11-01", "to"),
        ("from=2024-01-01&to=2025-01-01", "to"),  # 367 days
    ],
)
def test_the_range_view_refuses_dates_it_cannot_show_with_a_422_naming_the_parameter(billing, query, field):
    for who in ("owner", "end_user"):
        _refused(billing.get(f"/billing/range?{query}", headers=auth(billing.seeded.keys[who])), 422, field)


def test_the_range_view_takes_a_whole_leap_year_and_the_last_and_first_years(billing):
    owner = auth(billing.seeded.keys["owner"])
    for query in ("from=2024-01-01&to=2024-12-31", "from=2999-12-31&to=2999-12-31", "from=1900-01-01&to=1900-01-01"):
        assert billing.get(f"/billing/range?{query}", headers=owner).status_code == 200, query


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/billing?ledger_page=99999999999999999999999", "ledger_page"),  # OFFSET overflowed: a 500
        ("/billing?ledger_page=%C2%B2", "ledger_page"),  # '²' passes str.isdigit, int() refuses it: a 500
        ("/billing?ledger_page=%D9%A1", "ledger_page"),  # '١'
        ("/billing?ledger_page=1000001", "ledger_page"),
        ("/billing?period=2%D9%A0%D9%A2%D9%A6-11", "period"),  # '2٠٢٦-11' was read as 2026-11
        ("/billing/workflows/support?period=2%D9%A0%D9%A2%D9%A6-11", "period"),
        ("/billing/chats/chat-000?after=%D9%A1.%D9%A1", "after"),  # a cursor in other digits was read
        ("/billing/chats/chat-000?after=1%EF%BC%8E1", "after"),  # fullwidth full stop
    ],
)
def test_numbers_in_billing_parameters_are_ascii_digits_in_range_or_a_422_naming_them(billing, url, field):
    for who in ("owner", "end_user"):
        _refused(billing.get(url, headers=auth(billing.seeded.keys[who])), 422, field)
    assert billing.get("/billing?ledger_page=1000000", headers=auth(billing.seeded.keys["owner"])).status_code == 200


@pytest.mark.parametrize("enterprise_id", ["acme%00", "%ED%A0%80", "a" * 300, "acme%E2%80%8B"])
def test_an_admin_s_app_id_postgresql_cannot_hold_is_an_unknown_app(billing, enterprise_id):
    r = billing.get(f"/billing?enterprise_id={enterprise_id}", headers=auth(billing.seeded.keys["admin"]))
    _refused(r, 404, "enterprise_id")


@pytest.mark.parametrize(
    ("form", "status", "field"),
    [
        ("wallet_id=w-alice%00&package_id=p1", 403, "wallet_id"),  # a NUL reached PostgreSQL: a 500
        ("wallet_id=w-alice&package_id=p%00", 422, "package_id"),
        ("wallet_id=w-alice&package_id=p%E2%80%AE1", 422, "package_id"),
        ("wallet_id=w-alice&package_id=" + "p" * 5000, 422, "package_id"),
        ("wallet_id=" + "w" * 5000 + "&package_id=p1", 403, "wallet_id"),
    ],
)
def test_the_top_up_form_s_ids_postgresql_cannot_hold_are_unknown_ids(billing, db, form, status, field):
    def entries() -> int:
        with db.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM wallet_transaction")).scalar_one()

    before = entries()
    r = billing.post(
        "/billing/topup",
        content=form,
        headers=auth(billing.seeded.keys["owner"])
        | {"Origin": "http://testserver", "Content-Type": "application/x-www-form-urlencoded"},
    )
    _refused(r, status, field)
    assert entries() == before


def test_no_hostile_billing_parameter_is_a_500_or_reflected_as_markup(billing):
    """A sweep of the rest (the cases above are each a test of their own)."""
    junk = ["%00", "%FF", "%ED%A0%80", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "-1", "1e3", "x" * 3000]
    urls = [f"/billing/chats/{j}" for j in junk] + [f"/billing/workflows/{j}" for j in junk]
    urls += [f"/billing/chats/chat-000?after={j}" for j in junk] + [f"/billing?period={j}" for j in junk]
    urls += [f"/billing/range?from={j}&to=2026-11-30" for j in junk] + [f"/billing?ledger_page={j}" for j in junk]
    urls += [f"/billing?topup=success&checkout_session=cs_{j}" for j in junk]
    for who in ("owner", "end_user", "admin"):
        for url in urls:
            r = billing.get(url, headers=auth(billing.seeded.keys[who]))
            assert r.status_code < 500, (who, url, r.status_code)
            assert not re.search(r"<script>alert", r.text), (who, url)


#: mutations of an entry in the older layout (payload version 4, one field per figure)
_OLD_POISON = {
    "billed in other digits": ("b", "\u0663\u0660\u0660\u0665\u0660\u0660\u0660"),  # was read as 3005000
    "billed with a space": ("b", " 3005000"),
    "billed with an underscore": ("b", "3_005_000"),
    "billed missing": ("b", None),
    "balance in other digits": ("bal", "\u0661"),
    "prompt_tokens false": (9, False),
    "prompt_tokens past 64 bits": (9, 2**70),
    "occurred_at float": (17, 1.7e15),
    "turn_id a number": (1, 7),
}


@pytest.mark.parametrize("name", list(_OLD_POISON))
def test_an_older_layout_entry_no_gate_wrote_is_dead_lettered_and_the_rest_persisted(
    db, redis_client, gate, settings, name
):
    from worker.gate.outbox import _decision, _v5_as_v4

    _open(gate)
    decided = gate.record_turns([_turn(1), _turn(2), _turn(3)])
    shard = gate.shard("w1")
    raw = redis_lib.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    entries = raw.xrange(outbox_key(shard))
    entry_id, fields = entries[1]
    payload = _v5_as_v4(json.loads(fields["t"]))  # turn t-2 as a gate before version 5 queued it
    old = {"t": "", **_decision({"g": fields["g"]})}
    where, value = _OLD_POISON[name]
    if isinstance(where, int):
        payload[where] = value
    elif value is None:
        del old[where]
    else:
        old[where] = value
    old["t"] = json.dumps(payload)
    raw.xdel(outbox_key(shard), entry_id)
    raw.xadd(outbox_key(shard), old)
    raw.close()

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (3, 2, 1)
    assert _rows(db, "SELECT turn_id, prompt_tokens, cost_nanos FROM usage_event ORDER BY turn_id") == [
        ("t-1", 1001, decided[0].cost_nanos),
        ("t-3", 1003, decided[2].cost_nanos),
    ]
    assert len(_rows(db, "SELECT error FROM dead_letter")) == 1
    assert redis_client.xlen(outbox_key(shard)) == 0


@pytest.mark.parametrize("path", ["/billing/topup", "/billing/login"])
def test_a_billing_form_with_too_many_fields_is_a_422_naming_the_form(billing, db, path):
    """``parse_qs(max_num_fields=10)`` raised ValueError: a 500.  One reader for every /billing form."""
    before = _rows(db, "SELECT count(*) FROM wallet_transaction")
    fields = "&".join(f"f{i}=1" for i in range(11))
    r = billing.post(
        path,
        content=f"{fields}&wallet_id=w-alice&package_id=p1&key=x&csrf_token=a",
        headers=auth(billing.seeded.keys["owner"])
        | {
            "Origin": "http://testserver",
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "tollgate_csrf=a",
        },
    )
    assert r.status_code == 422 and "form: more than 10 fields" in r.text, (r.status_code, r.text[:300])
    if path == "/billing/topup":  # the sign-in form shows its error without a field attribute
        _refused(r, 422, "form")
    assert _rows(db, "SELECT count(*) FROM wallet_transaction") == before
