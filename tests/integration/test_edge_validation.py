"""Edge validation (issue 14, item 1 and the validation parts of item 7) against real Redis and
PostgreSQL: text PostgreSQL cannot store and control / format characters are refused at every entry
point with an error naming the field, and nothing changes (no debit, no outbox entry, no row);
``occurred_at`` must lie inside the configured window and an offset at the year limits is a 422,
never an ``OverflowError``; input bodies refuse unknown fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from tests.committed import credit_wallet, open_wallet
from tests.conftest import create_keys, seed_wallet
from worker.ledger.accounts import LedgerError

pytestmark = pytest.mark.integration

USD = 1_000_000_000
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
COST = 1000 * 2_500 + 100 * 10_000  # gpt-4o: 3,500,000 nanos
#: one of each class refused in every text field: NUL, another C0 control, DEL, a C1 control (NEL),
#: a lone surrogate, the right-to-left override, a zero-width space, the line separator
BAD_CHARS = ["\x00", "\x07", "\x7f", "\x85", "\ud800", "\u202e", "\u200b", "\u2028"]
TURN_TEXT_FIELDS = [
    "turn_id",
    "wallet_id",
    "enterprise_id",
    "chat_id",
    "workflow",
    "agent",
    "model",
    "provider",
    "reservation_id",
]


@pytest.fixture()
def day_window(settings, monkeypatch):
    """The production default window ahead (one day); the suite's environment widens it for
    tests that record turns on fixed future dates (tests/conftest.py)."""
    monkeypatch.setattr(settings, "occurred_at_max_ahead_s", 86_400)
    return settings


@pytest.fixture()
def api(http_api, gate, day_window):
    seed_wallet(gate, "w1", "acme", "u1", USD)
    client = http_api(create_keys({"owner": ("owner", "acme")}), headers={"Content-Type": "application/json"})
    client.h = client.h["owner"]  # this module's requests all go with the owner key
    return client


def _post(api, path: str, body) -> object:
    # json.dumps escapes a lone surrogate as \ud800 (what a client that sends one puts on the wire)
    return api.post(path, content=json.dumps(body).encode(), headers=api.h)


def _outbox_len(redis_client, gate, wallet_id: str = "w1") -> int:
    return redis_client.xlen(gate.wallet_key(wallet_id).replace(f":wallet:{wallet_id}", ":outbox"))


def _ledger_rows(db) -> int:
    with db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM wallet_transaction")).scalar_one()


def _fields(r) -> list[str]:
    return [e["field"] for e in r.json().get("errors", [])]


@pytest.mark.parametrize("bad", BAD_CHARS, ids=[f"U+{ord(c):04X}" for c in BAD_CHARS])
@pytest.mark.parametrize("field", TURN_TEXT_FIELDS)
def test_a_batch_with_one_unsafe_text_field_is_refused_whole_naming_it(api, redis_client, gate, field, bad):
    """Issue 14 item 1: a batch of one valid turn and one whose field holds ``bad`` was accepted and
    debited, then wedged the drain.  Now: 422 naming ``turns.1.<field>``, nothing debited or queued."""
    value = f"a{bad}b"
    batch = {"turns": [TURN, {**TURN, "turn_id": "t-2", field: value}]}
    r = _post(api, "/v1/turns/batch", batch)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert _fields(r) == [f"turns.1.{field}"]
    assert gate.balance("w1") == USD
    assert _outbox_len(redis_client, gate) == 0


@pytest.mark.parametrize("field", ["agent", "chat_id", "workflow", "turn_id"])
def test_a_single_turn_with_nul_is_refused_naming_the_field(api, redis_client, gate, field):
    r = _post(api, "/v1/turns", {**TURN, field: "a\x00b"})
    assert r.status_code == 422, r.text
    assert _fields(r) == [field]
    assert "U+0000" in r.json()["detail"]
    assert gate.balance("w1") == USD
    assert _outbox_len(redis_client, gate) == 0


def test_text_within_the_rules_is_accepted_and_persisted_as_sent(api, redis_client, gate, settings, db):
    """Non-ASCII that is not a control or format character (accents, CJK, emoji, a space in a model
    label is refused only at its ends) goes through the gate, the drain and PostgreSQL unchanged."""
    from worker.ledger.drain import OutboxDrain

    body = {**TURN, "turn_id": "t-é", "chat_id": "chat-日本", "agent": "agent-🤖", "workflow": "wf-ü"}
    r = _post(api, "/v1/turns", body)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    OutboxDrain(redis_client, settings=settings, consumer="test").drain()
    with db.connect() as conn:
        row = conn.execute(text("SELECT turn_id, chat_id, agent, workflow, cost_nanos FROM usage_event")).one()
    assert tuple(row) == ("t-é", "chat-日本", "agent-🤖", "wf-ü", COST)


@pytest.mark.parametrize(
    "value",
    [
        "a" * 201,  # longer than an id may be
    ],
)
def test_lengths_are_bounded(api, gate, value):
    r = _post(api, "/v1/turns", {**TURN, "agent": value})
    assert r.status_code == 422 and _fields(r) == ["agent"]
    r = _post(api, "/v1/turns", {**TURN, "turn_id": "t" * 301})
    assert r.status_code == 422 and _fields(r) == ["turn_id"]
    assert gate.balance("w1") == USD


# occurred_at --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:00:00+05:00",  # UTC would be year 0: OverflowError → 500 before
        "9999-12-31T23:59:59-05:00",  # UTC would be year 10000
        "0001-01-01T00:00:00Z",  # year 1, billed before, unreachable by every export
        "9999-12-31T23:59:59Z",
        "1999-12-31T23:59:59Z",  # before the window (2000-01-01)
        "2026-11-01T12:00:00",  # no time zone
    ],
)
def test_occurred_at_outside_the_window_or_at_the_year_limits_is_a_422(api, redis_client, gate, occurred_at):
    for path, body, field in (
        ("/v1/turns", {**TURN, "occurred_at": occurred_at}, "occurred_at"),
        (
            "/v1/turns/batch",
            {"turns": [TURN, {**TURN, "turn_id": "t-2", "occurred_at": occurred_at}]},
            "turns.1.occurred_at",
        ),
    ):
        r = _post(api, path, body)
        assert r.status_code == 422, r.text
        assert _fields(r) == [field]
    assert gate.balance("w1") == USD
    assert _outbox_len(redis_client, gate) == 0


def test_occurred_at_more_than_a_day_ahead_is_refused_and_inside_is_accepted(api, gate):
    ahead = (datetime.now(UTC) + timedelta(days=1, minutes=5)).isoformat()
    r = _post(api, "/v1/turns", {**TURN, "occurred_at": ahead})
    assert r.status_code == 422 and _fields(r) == ["occurred_at"]
    soon = (datetime.now(UTC) + timedelta(hours=23)).isoformat()
    assert _post(api, "/v1/turns", {**TURN, "turn_id": "t-soon", "occurred_at": soon}).json()["accepted"]
    first = _post(api, "/v1/turns", {**TURN, "turn_id": "t-2000", "occurred_at": "2000-01-01T05:00:00+05:00"})
    assert first.status_code == 200 and first.json()["accepted"], first.text  # exactly the window's start
    assert gate.balance("w1") == USD - 2 * COST


# unknown fields -------------------------------------------------------------------------------------
def test_a_batch_body_with_an_unknown_field_is_refused(api, redis_client, gate):
    r = _post(api, "/v1/turns/batch", {"turns": [TURN], "dry_run": True})
    assert r.status_code == 422 and _fields(r) == ["dry_run"]
    r = _post(api, "/v1/turns/batch", {"turns": [{**TURN, "cost_nanos": 0}]})
    assert r.status_code == 422 and _fields(r) == ["turns.0.cost_nanos"]
    assert gate.balance("w1") == USD and _outbox_len(redis_client, gate) == 0


# credits, reservations, path parameters ----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\x1b"], ids=["NUL", "surrogate", "ESC"])
@pytest.mark.parametrize("field", ["idempotency_key", "description"])
def test_a_credit_with_unsafe_text_is_refused_naming_the_field(api, db, gate, field, bad):
    body = {"amount_nanos": 5, "idempotency_key": "k-1", "description": "top-up", field: f"x{bad}y"}
    r = _post(api, "/v1/wallets/w1/credits", body)
    assert r.status_code == 422, r.text
    assert _fields(r) == [field]
    assert gate.balance("w1") == USD
    assert _ledger_rows(db) == 1  # the opening credit only


def test_a_credit_description_may_hold_newlines_and_emoji(api, db, gate):
    body = {"amount_nanos": 5, "idempotency_key": "k-2", "description": "line 1\nline 2 🎉"}
    assert _post(api, "/v1/wallets/w1/credits", body).status_code == 200
    assert gate.balance("w1") == USD + 5 and _ledger_rows(db) == 2


@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\u202e"], ids=["NUL", "surrogate", "RLO"])
def test_a_reservation_with_an_unsafe_id_is_refused(api, gate, bad):
    r = _post(api, "/v1/wallets/w1/reservations", {"amount_nanos": 5, "reservation_id": f"r{bad}1"})
    assert r.status_code == 422 and _fields(r) == ["reservation_id"], r.text
    assert gate.available("w1")[:2] == (USD, 0)


@pytest.mark.parametrize(
    "path", ["/v1/wallets/w%001", "/v1/wallets/w%001/ledger", "/v1/chats/c%001", "/v1/wallets/w1/reservations/r%001"]
)
def test_a_path_id_with_nul_is_a_422_naming_it(api, path):
    r = api.delete(path, headers=api.h) if "reservations" in path else api.get(path, headers=api.h)
    assert r.status_code == 422, r.text
    assert _fields(r) in (["wallet_id"], ["chat_id"], ["reservation_id"])


# Python callers ------------------------------------------------------------------------------------------
def test_python_callers_get_a_value_error_naming_the_field(db, redis_client, gate):
    from models.turn import TurnIn
    from worker.validation import InvalidInput

    with pytest.raises(ValidationError) as exc:
        TurnIn(**{**TURN, "agent": "a\x00b"})
    assert [e["loc"] for e in exc.value.errors()] == [("agent",)]
    with pytest.raises(InvalidInput, match="^wallet_id: ") as bad:
        open_wallet(gate, wallet_id="w\x00", enterprise_id="acme", owner_id="u")
    assert isinstance(bad.value, ValueError) and bad.value.field == "wallet_id"
    with pytest.raises(InvalidInput, match="^enterprise_id: "):
        open_wallet(gate, wallet_id="w2", enterprise_id="ac\u202eme", owner_id="u")
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    with pytest.raises(LedgerError, match="^idempotency_key: "):
        credit_wallet(gate, wallet_id="w1", amount_nanos=5, idempotency_key="k\x00")
    with pytest.raises(LedgerError, match="^description: "):
        credit_wallet(gate, wallet_id="w1", amount_nanos=5, idempotency_key="k", description="\ud800")
    with pytest.raises(ValueError, match="^reservation_id: "):
        gate.reserve("w1", 5, reservation_id="r\x00")
    assert gate.available("w1")[:2] == (0, 0)
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM wallet")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM wallet_transaction")).scalar_one() == 0


def test_the_celery_task_refuses_unsafe_text_naming_the_field(db, redis_client, gate):
    from tasks import usage

    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=USD, idempotency_key="open-w1")
    usage._gate = gate
    try:
        with pytest.raises(usage.TurnRejected, match=r"chat_id: contains a control character \(U\+0000\)"):
            usage.record_turn({**TURN, "chat_id": "c\x00"})
        with pytest.raises(usage.TurnRejected, match="occurred_at"):
            usage.record_turn({**TURN, "occurred_at": "9999-12-31T23:59:59-05:00"})
    finally:
        usage._gate = None
    assert gate.balance("w1") == USD
    assert _outbox_len(redis_client, gate) == 0


def test_the_cli_refuses_control_characters_naming_the_argument(cli, db):
    r = cli("wallet", "create", "w\x01x", "--enterprise", "acme")
    assert r.returncode == 2 and "U+0001" in r.stderr, r.stderr
    r = cli("wallet", "create", "wx", "--enterprise", "ac\u202eme")
    assert r.returncode == 2 and "--enterprise" in r.stderr and "U+202E" in r.stderr, r.stderr
    r = cli("wallet", "create", "w[bold]x", "--enterprise", "acme")  # not rich markup: an id
    assert r.returncode == 0, r.stderr
    with db.connect() as conn:
        assert conn.execute(text("SELECT id FROM wallet")).scalars().all() == ["w[bold]x"]
