"""usage rows without what they imply (zeros, the fee, the billing target); 64-B turn keys

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 07:00:00

Issue 16 (target 4): PostgreSQL ≤ 400 B per persisted turn.  The soak measured 401 B: ``usage_row``
266 (heap about 207 + five indexes), ``usage_turn_key`` 117 (a 72-B tuple + its line pointer, the
primary key about 40), ``wallet_transaction`` 17.

``usage_row``
    stores what a row implies as NULL or ``''`` (``models.usage_codes``: ``IMPLIED``, ``store_sql``,
    ``read_sql``; frozen copies below): the numbers of ``ZERO_AS_NULL`` as NULL when 0 (an LLM
    turn's ``quantity``, ``debt_nanos``, ``trial_tokens``, cache-write tokens, often its cached
    tokens; a platform-level turn's ``creator_share_nanos``), ``platform_fee_nanos`` as NULL when
    it is ``billed_nanos − creator_share_nanos`` (the gate's always, ``worker.gate.outbox``), and
    ``billing_target`` as ``''`` when the payer level implies it (``'platform'`` at level platform,
    else the app's ``enterprise_id``: every drained turn's) and as NULL for a literal ``''`` that it
    does not (only a write through the view can give one).  The 14 columns become nullable.  A row
    with a NULL has a null bitmap (4 bytes: the header rounds to 32 bytes instead of 24), once;
    each NULL saves 4 or 8 bytes, and a drained row has at least its fee's 8: no drained row grows.
    The ``usage_event`` view reads every column back as it was given (``read_sql``), its INSTEAD OF
    INSERT trigger and the drain (``worker.ledger.usage_rows``) store them so (``store_sql``).
    Rows stored before keep their values, which read the same: no rewrite (the upgrade only turns
    a stored ``''`` billing target, none expected, into NULL).
``usage_turn_key``
    retention forgets a key when its turn occurred before the cutoff *and* it was persisted before
    it (``occurred_at < cutoff AND recorded_on < cutoff``); the cutoff is a UTC midnight (the first
    of a month), so that is ``greatest(UTC date of occurred_at, recorded_on) < cutoff``: one date.
    ``recorded_on`` becomes ``retention_date`` (no default: a writer gives it), holding that
    greatest for keys written from now on, whose ``occurred_at`` (read by nothing else) is NULL:
    16 + 4 + an outbox id of up to 19 characters fits a 64-B tuple (72 before; the five columns'
    null bitmap fits the 24-B header).  Keys written before keep ``occurred_at`` and their
    ``recorded_on`` as ``retention_date``; retention reads both forms (``retention_date < :d AND
    (occurred_at IS NULL OR occurred_at < :c)``).  No rewrite either: only catalog changes.

Downgrade: every ``usage_row`` value back in full (the rows holding an implied form rewritten) and
NOT NULL, 0019's view and trigger; each key without an ``occurred_at`` gets its turn's (from its
``usage_row``), or midnight UTC of its ``retention_date`` when the row is gone (retention then
treats it exactly as before), ``retention_date`` becomes ``recorded_on`` with its default again
(for a turn dated after the day it was persisted it holds the turn's date: the same retention)."""

from __future__ import annotations

import importlib

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

#: 0019's view and trigger SQL, changed below only where this revision changes them
_R0019 = importlib.import_module("models.migrations.versions.0019_usage_row")

#: frozen copies of models.usage_codes.ZERO_AS_NULL, store_sql and read_sql and of
#: models.turn.retention_date_sql at this revision (tests/integration/test_implied_forms.py checks
#: they agree)
ZERO_AS_NULL = (
    "cost_nanos",
    "billed_nanos",
    "creator_share_nanos",
    "debt_nanos",
    "quantity",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "trial_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)
IMPLIED = (*ZERO_AS_NULL, "platform_fee_nanos", "billing_target")


def store_sql(column: str, src: str) -> str:
    if column in ZERO_AS_NULL:
        return f"nullif({src}.{column}, 0)"
    if column == "platform_fee_nanos":
        return f"nullif({src}.platform_fee_nanos, {src}.billed_nanos - {src}.creator_share_nanos)"
    if column == "billing_target":
        implied = f"CASE {src}.level WHEN 'platform' THEN 'platform' ELSE {src}.enterprise_id END"
        return f"CASE WHEN {src}.billing_target = {implied} THEN '' ELSE nullif({src}.billing_target, '') END"
    raise KeyError(column)


def read_sql(column: str, src: str) -> str:
    if column in ZERO_AS_NULL:
        return f"coalesce({src}.{column}, 0)"
    if column == "platform_fee_nanos":
        billed, share = read_sql("billed_nanos", src), read_sql("creator_share_nanos", src)
        return f"coalesce({src}.platform_fee_nanos, {billed} - {share})"
    if column == "billing_target":
        implied = f"CASE {src}.level WHEN 'p' THEN 'platform' ELSE {src}.enterprise_id END"
        return f"CASE WHEN {src}.billing_target = '' THEN {implied} ELSE coalesce({src}.billing_target, '') END"
    raise KeyError(column)


def retention_date_sql(occurred_at: str) -> str:
    return f"greatest(({occurred_at} AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date)"


#: the view's types of the implied columns (0019's: usage_row's)
_TYPES = {c: "bigint" if c.endswith("_nanos") or c == "quantity" else "integer" for c in IMPLIED}
_TYPES["billing_target"] = "varchar(200)"


def _once(sql: str, old: str, new: str) -> str:
    """``sql`` with its one ``old`` replaced by ``new``; RuntimeError if ``old`` is not there once."""
    if sql.count(old) != 1:  # pragma: no cover (0019 is frozen)
        raise RuntimeError(f"0019's SQL has {sql.count(old)} of {old!r}, expected 1")
    return sql.replace(old, new)


def _view_sql() -> str:
    sql = _once(_R0019._view_sql(), "CREATE VIEW", "CREATE OR REPLACE VIEW")
    for c in IMPLIED:
        sql = _once(sql, f" r.{c},", f" CAST({read_sql(c, 'r')} AS {_TYPES[c]}) AS {c},")
    return sql


def _trigger_sql() -> str:
    sql = _once(_R0019._trigger_sql(), "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    # (NEW.level is the text, 'platform' or 'app_usage', as in the drain's staged rows)
    for c in IMPLIED:
        end = ")" if c == _R0019.ROW[-1] else ", "
        sql = _once(sql, f"NEW.{c}{end}", store_sql(c, "NEW") + end)
    sql = _once(
        sql,
        "INSERT INTO usage_turn_key (turn_key, occurred_at, outbox_id)",
        "INSERT INTO usage_turn_key (turn_key, retention_date, outbox_id)",
    )
    return _once(sql, "NEW.occurred_at, NEW.outbox_id)", f"{retention_date_sql('NEW.occurred_at')}, NEW.outbox_id)")


def upgrade() -> None:
    for c in IMPLIED:
        op.execute(f"ALTER TABLE usage_row ALTER COLUMN {c} DROP NOT NULL")
    op.execute("UPDATE usage_row SET billing_target = NULL WHERE billing_target = ''")
    op.execute(_view_sql())
    op.execute(_trigger_sql())
    op.execute("ALTER TABLE usage_turn_key ALTER COLUMN occurred_at DROP NOT NULL")
    op.execute("ALTER TABLE usage_turn_key RENAME COLUMN recorded_on TO retention_date")
    op.execute("ALTER TABLE usage_turn_key ALTER COLUMN retention_date DROP DEFAULT")


def downgrade() -> None:
    # the keys' turn times, from their rows (one aggregate pass, hashed: usage_row has no key index)
    op.execute(
        "UPDATE usage_turn_key k SET occurred_at = r.occurred_at FROM (SELECT "
        "usage_turn_key_of(enterprise_id, wallet_id, turn_id) AS turn_key, min(occurred_at) AS occurred_at "
        "FROM usage_row GROUP BY 1) r WHERE k.occurred_at IS NULL AND r.turn_key = k.turn_key"
    )
    op.execute(
        "UPDATE usage_turn_key SET occurred_at = retention_date::timestamp AT TIME ZONE 'UTC' WHERE occurred_at IS NULL"
    )
    op.execute("ALTER TABLE usage_turn_key ALTER COLUMN occurred_at SET NOT NULL")
    op.execute("ALTER TABLE usage_turn_key RENAME COLUMN retention_date TO recorded_on")
    op.execute(
        "ALTER TABLE usage_turn_key ALTER COLUMN recorded_on SET DEFAULT ((now() AT TIME ZONE 'UTC'::text))::date"
    )
    # (every SET reads the row as it was: the fee from the stored billed and share)
    sets = ", ".join(f"{c} = {read_sql(c, 'usage_row')}" for c in IMPLIED)
    implied = " OR ".join(f"{c} IS NULL" for c in IMPLIED)
    op.execute(f"UPDATE usage_row SET {sets} WHERE {implied} OR billing_target = ''")
    for c in IMPLIED:
        op.execute(f"ALTER TABLE usage_row ALTER COLUMN {c} SET NOT NULL")
    op.execute(_once(_R0019._view_sql(), "CREATE VIEW", "CREATE OR REPLACE VIEW"))
    op.execute(_once(_R0019._trigger_sql(), "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
