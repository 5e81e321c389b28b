"""Poison entries in the outbox (issue 14, item 1): a batch that fails for any reason is persisted
entry by entry, the entries that still fail are dead-lettered with their charge named in the
ledger, reconcile reports them, and an operator retries or discards them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis as redis_lib
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import worker.ledger.drain as drain_module
from models.turn import TurnIn
from tests.conftest import TEST_REDIS_URL, create_keys, seed_wallet
from worker.db import session_scope
from worker.gate.keys import deadletter_key, outbox_key
from worker.ledger.deadletter import DeadLetterNotFound, list_dead_letters
from worker.ledger.drain import GROUP, DrainStats, OutboxDrain
from worker.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
CREDIT = 10**12


def _turn(i: int, wallet_id: str = "w1", **poison) -> TurnIn:
    turn = TurnIn(
        turn_id=f"t-{i}",
        wallet_id=wallet_id,
        enterprise_id="acme",
        chat_id=f"chat-{i % 2}",
        workflow="wf",
        agent="planner",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=1000 + i,
        completion_tokens=50,
        occurred_at=T0 + timedelta(milliseconds=i),
    )
    # below the API's validation: an older writer, or a value PostgreSQL refuses for a reason nobody foresaw
    return TurnIn.model_construct(**{**turn.model_dump(), **poison}) if poison else turn


def _open(gate, wallet_id: str = "w1") -> None:
    seed_wallet(gate, wallet_id, "acme", "u1", CREDIT)


def _dead() -> list:
    with session_scope() as session:
        return list_dead_letters(session)


def _rows(db, sql: str, **params):
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


@pytest.mark.parametrize("field", ["agent", "chat_id", "workflow", "turn_id"])
def test_a_nul_in_one_turn_dead_letters_it_and_persists_the_rest(db, redis_client, gate, settings, field):
    _open(gate)
    good = gate.record_turns([_turn(1), _turn(2)])
    bad = gate.record_turns([_turn(3, **{field: "a\u0000b"})])[0]
    later = gate.record_turns([_turn(4)])
    assert all(d.accepted for d in [*good, bad, *later])
    billed_good = sum(d.billed_nanos for d in [*good, *later])
    assert bad.billed_nanos == 1003 * 2500 + 50 * 10_000  # gpt-4o: $2.50 / $10 per MTok

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()

    assert (stats.read, stats.inserted, stats.dead_lettered) == (4, 3, 1)
    assert _rows(db, "SELECT count(*), sum(billed_nanos) FROM usage_event") == [(3, billed_good)]
    assert redis_client.xlen(outbox_key(gate.shard("w1"))) == 0  # acknowledged and trimmed: nothing wedges
    # the dead letter's charge is a named debit: the wallet paid for the turn, the ledger says why
    assert _rows(
        db, "SELECT kind, amount_nanos FROM wallet_transaction WHERE idempotency_key LIKE 'tollgate:deadletter:%'"
    ) == [("debit", bad.billed_nanos)]
    assert _rows(db, "SELECT credits_nanos, debits_nanos FROM wallet WHERE id = 'w1'") == [
        (CREDIT, billed_good + bad.billed_nanos)
    ]
    assert gate.balance("w1") == CREDIT - billed_good - bad.billed_nanos
    # the record is PostgreSQL's: the turn's fields escaped, its turn_id column NULL when not storable
    assert _rows(
        db, "SELECT shard, turn_id, wallet_id, billed_nanos, charged, status, error_class FROM dead_letter"
    ) == [
        (
            gate.shard("w1"),
            None if field == "turn_id" else "t-3",
            "w1",
            bad.billed_nanos,
            True,
            "open",
            "builtins.ValueError",  # refused before PostgreSQL (its CharacterNotInRepertoire named no column)
        )
    ]
    ((error,),) = _rows(db, "SELECT error FROM dead_letter")
    assert f"usage row column {field!r}: contains a control character (U+0000)" in error, error
    (dl,) = _dead()
    assert "a\u0000b" in json.loads(dl.fields["t"]) and (dl.turn_id == "a\u0000b") == (field == "turn_id")


def _poisoned(gate, redis_client, settings, field: str = "agent"):
    """Two good turns and one with a NUL in ``field``, drained: (good decisions, bad decision, stats)."""
    _open(gate)
    good = gate.record_turns([_turn(1), _turn(2)])
    bad = gate.record_turns([_turn(3, **{field: "a\u0000b"})])[0]
    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    return good, bad, stats


def test_reconcile_reports_a_dead_letter_as_its_own_figure_and_no_drift(db, redis_client, gate, settings, cli):
    good, bad, _ = _poisoned(gate, redis_client, settings, "turn_id")
    shard = gate.shard("w1")
    report = reconcile(gate)
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (1, 0, 0)
    assert report.dead_letters == {
        "count": 1,
        "nanos": bad.billed_nanos,
        "by_shard": {str(shard): {"count": 1, "nanos": bad.billed_nanos}},
        "by_wallet": {"w1": {"count": 1, "nanos": bad.billed_nanos}},
    }
    result = cli("reconcile", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["dead_letters"]["nanos"] == bad.billed_nanos
    assert REGISTRY.get_sample_value("tollgate_reconciliation_dead_letters") == 1
    assert REGISTRY.get_sample_value("tollgate_reconciliation_dead_letter_nanos") == bad.billed_nanos


def test_a_nul_turn_id_still_queued_does_not_crash_reconcile(db, redis_client, gate, settings):
    _open(gate)
    bad = gate.record_turns([_turn(3, turn_id="a\u0000b")])[0]
    good = gate.record_turns([_turn(1)])[0]
    report = reconcile(gate)  # not drained yet: both are queued, neither is drift
    assert (report.wallets_checked, report.wallets_drifted, report.drift_nanos_abs) == (1, 0, 0)
    assert report.dead_letters["count"] == 0
    assert gate.balance("w1") == CREDIT - bad.billed_nanos - good.billed_nanos


def test_a_dead_letter_charged_but_not_yet_acknowledged_is_not_drift(db, redis_client, gate, settings):
    _open(gate)
    bad = gate.record_turns([_turn(3, workflow="w\u0000f")])[0]
    drain = OutboxDrain(redis_client, settings=settings, consumer="c1")
    shard = gate.shard("w1")
    entries, _ = drain.read_batch(shard)
    drain._persist_one_by_one(shard, entries, DrainStats())  # dead-lettered, charged; the XACK not yet sent
    assert redis_client.xlen(outbox_key(shard)) == 1
    report = reconcile(gate)
    assert (report.wallets_drifted, report.drift_nanos_abs, report.dead_letters["nanos"]) == (0, 0, bad.billed_nanos)
    # re-delivered after a crash: not dead-lettered or charged twice
    drain._persist_one_by_one(shard, entries, DrainStats())
    drain.acknowledge(shard, [i for i, _ in entries])
    assert redis_client.xlen(deadletter_key(shard)) == 1
    assert _rows(db, "SELECT count(*), sum(amount_nanos) FROM wallet_transaction WHERE kind = 'debit'") == [
        (1, bad.billed_nanos)
    ]
    assert reconcile(gate).drift_nanos_abs == 0


def test_stored_values_that_are_not_turns_never_crash_reconcile(db, redis_client, gate, settings):
    _open(gate)
    good = gate.record_turns([_turn(1)])[0]
    shard = gate.shard("w1")
    # dead letters with a NUL wallet id, a payload that is not a turn, fields that are not JSON
    with db.begin() as conn:
        for outbox_id, fields_json, billed in (
            ("0:1-0", json.dumps({"t": json.dumps([4, "t\u0000x", "w\u0000x"]), "b": "77"}), 77),
            ("0:2-0", json.dumps({"t": "{not json", "b": "a lot"}), 0),
            ("0:3-0", "[not json", 0),
        ):
            conn.execute(
                text(
                    "INSERT INTO dead_letter (outbox_id, shard, billed_nanos, error, error_class, "
                    "fields_json, status) VALUES (:o, 0, :b, '', '', :f, 'open')"
                ),
                {"o": outbox_id, "b": billed, "f": fields_json},
            )
    redis_client.xadd(outbox_key(shard), {"t": json.dumps([4, None, ["w1"]]), "b": "5", "a": "continue", "m": "x"})
    report = reconcile(gate)
    assert (report.wallets_drifted, report.drift_nanos_abs) == (0, 0)
    assert report.dead_letters["count"] == 3 and report.dead_letters["nanos"] == 77
    assert report.dead_letters["by_wallet"] == {"w\\x00x": {"count": 1, "nanos": 77}, "?": {"count": 2, "nanos": 0}}
    assert gate.balance("w1") == CREDIT - good.billed_nanos


@pytest.mark.parametrize("error", [TypeError("a bug"), KeyError("x"), RuntimeError("unforeseen")])
def test_any_exception_class_dead_letters_only_the_entry_that_raises(
    db, redis_client, gate, settings, monkeypatch, error
):
    _open(gate)
    decisions = gate.record_turns([_turn(i) for i in range(5)])
    real = drain_module.persist_turns

    def persist(session, rows):
        if any(r["turn_id"] == "t-2" for r in rows):
            raise error
        return real(session, rows)

    monkeypatch.setattr(drain_module, "persist_turns", persist)
    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (5, 4, 1)
    assert _rows(db, "SELECT count(*), sum(billed_nanos) FROM usage_event") == [
        (4, sum(d.billed_nanos for i, d in enumerate(decisions) if i != 2))
    ]
    (dl,) = _dead()
    assert (dl.turn_id, dl.billed_nanos, dl.error_class) == (
        "t-2",
        decisions[2].billed_nanos,
        f"builtins.{type(error).__name__}",
    )
    assert reconcile(gate).drift_nanos_abs == 0


def test_postgresql_down_dead_letters_nothing_and_the_batch_stays_for_a_retry(
    db, redis_client, gate, settings, monkeypatch
):
    _open(gate)
    decisions = gate.record_turns([_turn(i) for i in range(3)])
    real = drain_module.persist_turns

    def down(session, rows):
        raise OperationalError("INSERT …", {}, psycopg.OperationalError("connection refused"))

    monkeypatch.setattr(drain_module, "persist_turns", down)
    drain = OutboxDrain(redis_client, settings=settings.model_copy(update={"reclaim_idle_ms": 0}), consumer="c1")
    with pytest.raises(OperationalError):
        drain.drain()
    shard = gate.shard("w1")
    assert redis_client.xlen(deadletter_key(shard)) == 0
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 3
    assert _rows(db, "SELECT count(*) FROM wallet_transaction WHERE kind = 'debit'") == [(0,)]
    monkeypatch.setattr(drain_module, "persist_turns", real)
    stats = drain.drain()  # back up: the pending batch is reclaimed and persisted
    assert (stats.inserted, stats.dead_lettered) == (3, 0)
    assert _rows(db, "SELECT count(*), sum(billed_nanos) FROM usage_event") == [
        (3, sum(d.billed_nanos for d in decisions))
    ]


def _ledger(db):
    return _rows(
        db,
        "SELECT kind, amount_nanos, split_part(idempotency_key, ':', 2) FROM wallet_transaction "
        "WHERE idempotency_key LIKE 'tollgate:%' ORDER BY id",
    )


@pytest.fixture()
def blocked(db):
    """The cause an operator will fix: a constraint that refuses turn_ids starting 'blocked' (dropped
    after the test whatever happens: the database outlives it)."""
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE usage_row ADD CONSTRAINT no_blocked CHECK (turn_id NOT LIKE 'blocked%')"))
    yield
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE usage_row DROP CONSTRAINT IF EXISTS no_blocked"))


def test_cli_lists_retries_once_after_the_cause_is_fixed(db, redis_client, gate, settings, cli, blocked):
    _open(gate)
    good = gate.record_turns([_turn(1)])[0]
    bad = gate.record_turns([_turn(2, turn_id="blocked-2")])[0]
    OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    shard = gate.shard("w1")

    listed = cli("deadletter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)  # one JSON list
    outbox_id = row["outbox_id"]
    assert {k: row[k] for k in ("shard", "turn_id", "wallet_id", "billed_nanos", "charged")} == {
        "shard": shard,
        "turn_id": "blocked-2",
        "wallet_id": "w1",
        "billed_nanos": bad.billed_nanos,
        "charged": True,
    }
    assert "no_blocked" in row["error"] and row["error_class"] == "psycopg.errors.CheckViolation"

    still = cli("deadletter", "retry", outbox_id)  # not fixed yet: kept, nothing written
    assert still.returncode == 1 and "dead letter kept" in still.stderr
    assert len(_dead()) == 1

    with db.begin() as conn:
        conn.execute(text("ALTER TABLE usage_row DROP CONSTRAINT no_blocked"))
    fixed = cli("deadletter", "retry", outbox_id)
    assert fixed.returncode == 0, fixed.stderr
    again = cli("deadletter", "retry", outbox_id)
    assert again.returncode == 2 and "no open dead letter" in again.stderr

    assert _rows(db, "SELECT turn_id, billed_nanos, outbox_id FROM usage_event ORDER BY turn_id") == [
        ("blocked-2", bad.billed_nanos, outbox_id),
        (
            "t-1",
            good.billed_nanos,
            f"{shard}:"
            + _rows(db, "SELECT split_part(outbox_id, ':', 2) FROM usage_event WHERE turn_id = 't-1'")[0][0],
        ),
    ]
    assert _ledger(db) == [
        ("debit", good.billed_nanos, "usage"),
        ("debit", bad.billed_nanos, "deadletter"),
        ("debit", bad.billed_nanos, "usage"),
        ("credit", bad.billed_nanos, "deadletter-retried"),
    ]
    assert _rows(db, "SELECT credits_nanos, debits_nanos FROM wallet") == [
        (CREDIT + bad.billed_nanos, good.billed_nanos + 2 * bad.billed_nanos)
    ]
    assert gate.balance("w1") == CREDIT - good.billed_nanos - bad.billed_nanos  # charged once, never refunded
    report = reconcile(gate)
    assert (report.drift_nanos_abs, report.dead_letters["count"]) == (0, 0)


def test_a_retry_that_fails_midway_changes_nothing_and_the_next_persists_once(
    db, redis_client, gate, settings, monkeypatch, blocked
):
    _open(gate)
    bad = gate.record_turns([_turn(2, turn_id="blocked-2")])[0]
    drain = OutboxDrain(redis_client, settings=settings, consumer="c1")
    drain.drain()
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE usage_row DROP CONSTRAINT no_blocked"))
    (dl,) = _dead()

    def crash(session, dead):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(drain_module.deadletter, "settle_after_retry", crash)
    with pytest.raises(RuntimeError):
        drain.retry_dead_letter(dl.outbox_id)
    monkeypatch.undo()
    assert _rows(db, "SELECT count(*) FROM usage_event") == [(0,)]  # the turn and the mark commit together
    result = drain.retry_dead_letter(dl.outbox_id)
    assert (result.inserted, result.duplicates) == (1, 0)
    with pytest.raises(DeadLetterNotFound):
        drain.retry_dead_letter(dl.outbox_id)
    assert _rows(db, "SELECT count(*), sum(billed_nanos) FROM usage_event") == [(1, bad.billed_nanos)]
    assert _ledger(db) == [
        ("debit", bad.billed_nanos, "deadletter"),
        ("debit", bad.billed_nanos, "usage"),
        ("credit", bad.billed_nanos, "deadletter-retried"),
    ]
    assert _rows(db, "SELECT status, resolved_at IS NOT NULL FROM dead_letter") == [("retried", True)]
    assert _dead() == [] and redis_client.xlen(deadletter_key(gate.shard("w1"))) == 0
    assert reconcile(gate).drift_nanos_abs == 0


def test_cli_discard_refunds_the_charge_in_ledger_and_gate_once(db, redis_client, gate, settings, cli):
    good, bad, _ = _poisoned(gate, redis_client, settings, "chat_id")
    (dl,) = _dead()
    billed_good = sum(d.billed_nanos for d in good)
    assert gate.balance("w1") == CREDIT - billed_good - bad.billed_nanos

    done = cli("deadletter", "discard", dl.outbox_id)
    assert done.returncode == 0, done.stderr
    assert f"{bad.billed_nanos:,} nanos refunded" in done.stdout
    again = cli("deadletter", "discard", dl.outbox_id)
    assert again.returncode == 2

    assert gate.balance("w1") == CREDIT - billed_good
    # the failed batch was persisted one entry per transaction: one usage debit each
    assert _ledger(db) == [
        ("debit", good[0].billed_nanos, "usage"),
        ("debit", good[1].billed_nanos, "usage"),
        ("debit", bad.billed_nanos, "deadletter"),
        ("credit", bad.billed_nanos, "deadletter-refund"),
    ]
    assert _rows(db, "SELECT credits_nanos - debits_nanos FROM wallet") == [(CREDIT - billed_good,)]
    assert _rows(db, "SELECT count(*) FROM usage_event") == [(2,)]
    report = reconcile(gate)
    assert (report.drift_nanos_abs, report.dead_letters) == (
        0,
        {"count": 0, "nanos": 0, "by_shard": {}, "by_wallet": {}},
    )


def test_cli_list_shows_a_nul_escaped_and_markup_as_text(db, redis_client, gate, settings, cli):
    _poisoned(gate, redis_client, settings, "turn_id")
    _open(gate, "w2")
    gate.record_turns([_turn(9, "w2", turn_id="[/][bold]t-9\u0000")])  # not markup, and not storable
    OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    shown = cli("deadletter", "list", env={"COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    assert "'a\\x00b'" in shown.stdout and "'w1'" in shown.stdout and "[/][bold]t-9" in shown.stdout
    reconciled = cli("reconcile")
    assert reconciled.returncode == 0 and "2 dead-lettered turn(s)" in reconciled.stdout


def test_bytes_that_are_not_utf8_in_the_outbox_are_dead_lettered_not_wedging(db, redis_client, gate, settings, cli):
    _open(gate)
    good = gate.record_turns([_turn(1)])[0]
    bad = gate.record_turns([_turn(2)])[0]
    shard = gate.shard("w1")
    # another writer's bytes: turn t-2's entry rewritten with a turn_id that is not UTF-8
    raw = redis_lib.Redis.from_url(TEST_REDIS_URL)  # bytes in, bytes out
    entry_id, fields = raw.xrange(outbox_key(shard))[1]
    raw.xdel(outbox_key(shard), entry_id)
    raw.xadd(outbox_key(shard), {**fields, b"t": fields[b"t"].replace(b'"t-2"', b'"t-\xff"')})
    assert reconcile(gate).drift_nanos_abs == 0  # queued, read without crashing

    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (2, 1, 1)
    assert redis_client.xlen(outbox_key(shard)) == 0
    report = reconcile(gate)
    assert (report.drift_nanos_abs, report.dead_letters["count"], report.dead_letters["nanos"]) == (
        0,
        1,
        bad.billed_nanos,
    )
    listed = cli("deadletter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["turn_id"], row["wallet_id"], row["billed_nanos"]) == ("t-\udcff", "w1", bad.billed_nanos)
    assert cli("deadletter", "discard", row["outbox_id"]).returncode == 0
    assert gate.balance("w1") == CREDIT - good.billed_nanos
    assert reconcile(gate).drift_nanos_abs == 0
    raw.close()


def test_metrics_endpoint_shows_dead_letters_per_shard(db, redis_client, gate, settings, http_api):
    _, bad, _ = _poisoned(gate, redis_client, settings, "agent")
    shard = gate.shard("w1")
    api = http_api(create_keys({"admin": ("admin",)}))
    body = api.get("/metrics", headers=api.h["admin"]).text
    samples = dict(line.rsplit(" ", 1) for line in body.splitlines() if line.startswith("tollgate_dead"))
    assert float(samples[f'tollgate_deadletter_entries{{shard="{shard}"}}']) == 1
    assert float(samples[f'tollgate_deadletter_nanos{{shard="{shard}"}}']) == bad.billed_nanos
    assert float(samples["tollgate_dead_lettered_turns_total"]) == 1


def test_a_turn_id_too_long_for_its_column_is_dead_lettered(db, redis_client, gate, settings):
    import random
    import string

    _open(gate)
    huge = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=9000))
    good = gate.record_turns([_turn(1)])[0]
    bad = gate.record_turns([_turn(2, turn_id=huge)])[0]
    stats = OutboxDrain(redis_client, settings=settings, consumer="c1").drain()
    assert (stats.read, stats.inserted, stats.dead_lettered) == (2, 1, 1)
    (dl,) = _dead()
    # refused before PostgreSQL, naming the column (it was PostgreSQL's StringDataRightTruncation)
    assert (dl.turn_id, dl.billed_nanos, dl.error_class) == (huge, bad.billed_nanos, "builtins.ValueError")
    assert "'turn_id': 9000 characters, more than 300" in dl.error
    assert _rows(db, "SELECT turn_id FROM dead_letter") == [(None,)]  # too long for the column: kept in fields_json
    assert gate.balance("w1") == CREDIT - good.billed_nanos - bad.billed_nanos
    assert reconcile(gate).drift_nanos_abs == 0
