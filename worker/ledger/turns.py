"""Turn rows: the usage of drained turns persisted exactly once (``usage_event`` + ``usage_turn_key``),
their aggregates (wallet debits, chat and agent totals, dirty rollups, pauses) and outbox positions.

Functions that take a ``session`` never commit: the caller (the drain) commits once per batch, then
acknowledges the outbox.
"""

from __future__ import annotations

import logging
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence, cast, overload

import psycopg
import redis
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import Boolean, DateTime, Integer, String, func, select
from sqlmodel import Session, col

from models.enums import BillingMode, ChatStatus, ConnectionState, TransactionKind
from models.turn import UsageEvent, UsageTurnKey, retention_date_sql, turn_key_bytes, turn_key_digest
from models.validation import occurred_at_window, text_problem
from worker.db import table_of
from worker.gate.gate import WalletGate
from worker.gate.keys import USAGE_PREFIX, outbox_key, transitions_key
from worker.ledger.usage_rows import insert_usage_rows

log = logging.getLogger(__name__)


USAGE_COLUMNS = (
    "turn_id",
    "outbox_id",
    "wallet_id",
    "enterprise_id",
    "chat_id",
    "workflow",
    "agent",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "input_nanos_per_mtok",
    "cached_input_nanos_per_mtok",
    "output_nanos_per_mtok",
    "cost_nanos",
    "occurred_at",
    "billed_nanos",
    "action",
    "mode",
    "balance_after_nanos",
    "level",
    "billing_target",
    "billable",
    "creator_share_nanos",
    "platform_fee_nanos",
    "trial_tokens",
    "meter",
    "quantity",
    "cache_write_tokens",
    "cache_write_nanos_per_mtok",
    "cache_write_1h_tokens",
    "cache_write_1h_nanos_per_mtok",
    "service_tier",
    "debt_nanos",
)


#: a turn's idempotency scope and id: unique in ``usage_turn_key`` (the gate keys its answers alike)
TURN_KEY = ("enterprise_id", "wallet_id", "turn_id")


def turn_key_of(row: dict[str, Any]) -> tuple[str, str, str]:
    """``(enterprise_id, wallet_id, turn_id)`` of a usage row: the turn_id in its scope."""
    return row["enterprise_id"], row["wallet_id"], row["turn_id"]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A turn_id the gate accepted a second time (another outbox entry): its debit must be refunded."""

    turn_id: str
    wallet_id: str
    outbox_id: str
    billed_nanos: int


@dataclass(frozen=True, slots=True)
class PersistResult:
    """Outcome of persisting one batch: rows inserted, re-deliveries of persisted entries dropped,
    nanos debited, and second acceptances of persisted turn_ids (:class:`Conflict`)."""

    inserted: int
    duplicates: int
    billed_nanos: int
    conflicts: tuple[Conflict, ...] = ()
    #: chats this batch paused (new open ``paused_chat`` records), to announce after commit
    paused: tuple["PausedNotice", ...] = ()
    #: chats whose open ``paused_chat`` record a newer ``continue`` turn of this batch closed
    resumed: tuple["ResumedNotice", ...] = ()


@dataclass(frozen=True, slots=True)
class PausedNotice:
    """A chat paused by a turn's ``pause`` answer: where, why, and the nanos its wallet needs."""

    enterprise_id: str
    chat_id: str
    wallet_id: str
    reason: str
    needed_nanos: int


@dataclass(frozen=True, slots=True)
class ResumedNotice:
    """A paused chat that a newer accepted ``continue`` turn resumed (its record closed, ``resumed_by``
    'turn'): where, and the wallet's balance after that turn (nano-USD; None when unlimited)."""

    enterprise_id: str
    chat_id: str
    wallet_id: str
    balance_nanos: int | None


_OUTBOX_ID = re.compile(r"(\d+):(\d+)-(\d+)")


def _order_key(shard: int, stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{int(ms):020d}-{int(seq):020d}-{shard:06d}"


def chat_order(outbox_id: str) -> str:
    """A turn's position in its chat's order, the order a chat's state moves by (``chat_session.state_key``).

    The order is the gate's decision order: the turn's outbox entry ``<shard>:<ms>-<seq>`` (a wallet's
    turns are all decided, one at a time, on its shard's stream, so its entry ids follow the balance
    the ``continue`` / ``pause`` answers were given on), as zero-padded text that sorts like the
    stream id: ``<ms:20>-<seq:20>-<shard:6>``.  ``occurred_at`` is the caller's clock and may be
    backdated (backfills, replays), so it orders nothing here.  Between shards (a chat on two
    wallets) the Redis time in the id orders, the shard breaks ties.  An outbox id of another form
    sorts as its own text.  See :func:`outbox_position` for a pause, resume or credit.
    """
    shard, colon, stream_id = (outbox_id or "").partition(":")
    ms, dash, seq = stream_id.partition("-")
    # the usual form (ASCII digits, no wider than their padding) padded as text: the same key as
    # the general path below, without the regex and the int round trips (the drain stages one a row)
    if (
        colon
        and dash
        and 0 < len(shard) <= 6
        and 0 < len(ms) <= 20
        and 0 < len(seq) <= 20
        and (shard + ms + seq).isascii()
        and (shard + ms + seq).isdigit()
    ):
        return f"{ms:0>20}-{seq:0>20}-{shard:0>6}"
    m = _OUTBOX_ID.fullmatch(outbox_id or "")
    if m is None:
        return outbox_id or ""
    return _order_key(int(m.group(1)), f"{m.group(2)}-{m.group(3)}")


def outbox_position(gate: WalletGate, wallet_id: str) -> str:
    """The position, in :func:`chat_order`, of something that happens now to a chat of ``wallet_id``
    (the orchestrator's pause or resume, a credit's resume): just after the last turn its shard
    has decided (the stream's ``last-generated-id``, ``<key>+``), so every turn the gate answered
    before is older and every turn it answers after is newer.  One XINFO STREAM."""
    shard = gate.shard(wallet_id)
    try:
        last = gate.redis.xinfo_stream(outbox_key(shard))["last-generated-id"]
    except redis.ResponseError:  # no stream yet: no turn decided on this shard since Redis started
        last = None
    return _order_key(shard, _last_decided(gate, last)) + "+"


def _last_decided(gate: WalletGate, last: str | bytes | None) -> str:
    """The id of the last turn a shard decided (its outbox's ``last-generated-id``), or, when the
    stream does not exist (``last`` None: no turn yet, or Redis lost its data), just below the
    first id a turn decided from now on can get (``<now ms − 1>-<2^64 − 1>``, Redis ``TIME``): so a
    transition made after a Redis loss still sorts after every turn persisted before it, whose
    stream ids were taken from Redis's clock too."""
    if last is None:
        seconds, micros = gate.redis.time()
        return f"{int(seconds) * 1000 + int(micros) // 1000 - 1}-{2**64 - 1}"
    return last.decode() if isinstance(last, bytes) else last


def transition_position(gate: WalletGate, wallet_id: str) -> str:
    """The position of a chat transition that happens now (a pause, a denial's pause, a resume, a
    credit's resume, a budget's pause or release) to a chat of ``wallet_id``: :func:`outbox_position`
    followed by the shard's transition count (``<outbox_position><n:20>``, one INCR of
    :func:`~worker.gate.keys.transitions_key`, pipelined with the XINFO STREAM).  Like
    :func:`outbox_position` it sorts after every turn the shard decided before and before every
    turn it decides after; unlike it, two transitions with no turn between them are ordered too,
    so a denial's pause queued before a credit's resume sorts before it.  The count restarts after
    a Redis loss, as the stream's ids do."""
    shard = gate.shard(wallet_id)
    pipe = gate.redis.pipeline(transaction=False)
    pipe.xinfo_stream(outbox_key(shard))
    pipe.incr(transitions_key(shard))
    info, count = pipe.execute(raise_on_error=False)
    for result in (info, count):
        if isinstance(result, Exception) and not (result is info and isinstance(info, redis.ResponseError)):
            raise result
    last = _last_decided(gate, None if isinstance(info, redis.ResponseError) else info["last-generated-id"])
    return f"{_order_key(shard, last)}+{int(count):020d}"


def _column_sql_type(name: str) -> str:
    column = table_of(UsageEvent).c[name]
    if isinstance(column.type, Integer):  # INTEGER token counts too: staged as bigint, cast on insert
        return "bigint"
    if isinstance(column.type, DateTime):
        return "timestamptz"
    if isinstance(column.type, Boolean):
        return "boolean"
    return "text"


#: the batch's staging table: a TEMP table per connection (never WAL-logged, emptied at every
#: commit), ``ord`` the row's position in the batch, ``sk`` its :func:`chat_order`, ``turn_key`` its
#: key in ``usage_turn_key`` (:func:`models.turn.turn_key_bytes`, computed here), ``fresh`` cleared
#: for a turn already persisted
STAGE = "tollgate_drain_stage"

#: :data:`USAGE_COLUMNS` in the staging table's order: the fixed-width columns first (the nullable
#: one last of them), the texts after, so PostgreSQL reads the figures of a staged row at fixed
#: offsets (every aggregate of the batch scans the staging table); the column list itself stays
#: :data:`USAGE_COLUMNS`
_STAGE_COLUMNS = tuple(
    sorted(USAGE_COLUMNS, key=lambda c: (_column_sql_type(c) == "text", bool(table_of(UsageEvent).c[c].nullable)))
)

_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (ord integer NOT NULL, turn_key uuid NOT NULL, "
    + ", ".join(f"{c} {_column_sql_type(c)}" for c in _STAGE_COLUMNS if _column_sql_type(c) != "text")
    + ', fresh boolean NOT NULL DEFAULT true, sk text COLLATE "C" NOT NULL, '
    + ", ".join(f'{c} text COLLATE "C"' for c in _STAGE_COLUMNS if _column_sql_type(c) == "text")
    + ") ON COMMIT DELETE ROWS"
)

#: the staged columns' types, for binary COPY (PostgreSQL then checks every text, a NUL byte as any)
_STAGE_TYPES = [
    "int4",
    "uuid",
    "text",
    *(
        {"bigint": "int8", "timestamptz": "timestamptz", "boolean": "bool", "text": "text"}[_column_sql_type(c)]
        for c in _STAGE_COLUMNS
    ),
]

_COPY_STAGE = f"COPY {STAGE} (ord, turn_key, sk, {', '.join(_STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"

#: the row's values in :data:`_STAGE_COLUMNS` order (one C call per row)
_usage_values = operator.itemgetter(*_STAGE_COLUMNS)

#: the Python type each staged column takes (None: SQL NULL)
_PY_TYPES = tuple(
    {"bigint": int, "timestamptz": datetime, "boolean": bool, "text": str}[_column_sql_type(c)] for c in _STAGE_COLUMNS
)


class _KeyDumper(Dumper):
    """A turn key's 16 bytes (:func:`models.turn.turn_key_bytes`) as a binary ``uuid``, as they are
    (registered by oid only, for the staging COPY: no ``uuid.UUID`` object per row)."""

    format = Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: Any) -> bytes:
        if type(obj) is not bytes or len(obj) != 16:
            raise TypeError(f"a turn key is 16 bytes, not {obj!r}")
        return obj


#: the value-type tuples of rows already checked against :data:`_PY_TYPES` (a handful: None or not)
_CHECKED: set[tuple[type, ...]] = set()

_INT4_MAX = 2**31 - 1
_INT8_MAX = 2**63 - 1
#: the one signed column: the wallet's balance after the turn may be below zero (a debt)
_SIGNED = frozenset({"balance_after_nanos"})
#: the integer columns no gate writes below zero, by width (PostgreSQL ``integer`` / ``bigint``)
_UNSIGNED_INT4 = tuple(c for c in USAGE_COLUMNS if c not in _SIGNED and type(table_of(UsageEvent).c[c].type) is Integer)
_UNSIGNED_INT8 = tuple(
    c for c in USAGE_COLUMNS if c not in _SIGNED and c not in _UNSIGNED_INT4 and _column_sql_type(c) == "bigint"
)
_int4_values = operator.itemgetter(*_UNSIGNED_INT4)
_int8_values = operator.itemgetter(*_UNSIGNED_INT8)
#: the text columns an edge check gives the id rules (:mod:`models.validation`) and those it gives
#: the label rules (a space inside allowed); every text column's length is its varchar's
_ID_TEXTS = ("turn_id", "wallet_id", "enterprise_id", "chat_id", "workflow", "agent")
_LABEL_TEXTS = ("model", "provider", "meter")
_id_texts = operator.itemgetter(*_ID_TEXTS)
_label_texts = operator.itemgetter(*_LABEL_TEXTS)
_TEXT_LENGTHS = tuple(
    (c, cast(String, table_of(UsageEvent).c[c].type).length or 0)
    for c in USAGE_COLUMNS
    if _column_sql_type(c) == "text"
)
#: the text columns that are never NULL (service_tier may be), with their lengths: one C-level pass
_REQUIRED_TEXTS = tuple((c, n) for c, n in _TEXT_LENGTHS if not table_of(UsageEvent).c[c].nullable)
_required_texts = operator.itemgetter(*(c for c, _ in _REQUIRED_TEXTS))
_required_limits = tuple(n for _, n in _REQUIRED_TEXTS)
_TIER_LIMIT = dict(_TEXT_LENGTHS)["service_tier"]
#: clock skew allowed between the host whose gate accepted a turn and the draining worker
_DRAIN_SKEW = timedelta(minutes=5)


def drain_window() -> tuple[datetime, datetime]:
    """``(earliest, latest)`` an ``occurred_at`` may be when a turn is drained: the edge's window
    (:func:`models.validation.occurred_at_window`, read once per batch) with
    :data:`_DRAIN_SKEW` of clock skew on both sides."""
    earliest, latest = occurred_at_window()
    return earliest - _DRAIN_SKEW, latest + _DRAIN_SKEW


def check_domains(row: dict[str, Any], window: tuple[datetime, datetime]) -> None:
    """Refuse a usage row holding a figure no gate writes, before it is staged: every token count,
    duration, rate and nano-USD amount is an integer in ``0..2^31-1`` (an ``integer`` column) or
    ``0..2^63-1`` (``bigint``), ``balance_after_nanos`` is None or any ``bigint`` (a debt is
    negative), the creator's share is at most ``billed_nanos`` (a share over 10,000 bps would make
    the platform fee negative), every text fits its varchar, the ids and labels follow the edge's
    text rules (:func:`models.validation.text_problem`: no NUL, control, format or invisible
    character, no whitespace in an id) and ``occurred_at`` lies inside ``window``
    (:func:`drain_window`).
    Types are :func:`_stage_values`'s business (it runs first).  Raises ValueError naming the
    column, so the entry is dead-lettered with that error and the rest of its batch persisted.
    Costs a few C-level calls per group (min/max, len, isascii/isprintable) in the usual case."""
    small = _int4_values(row)
    big = _int8_values(row)
    billed, share = row["billed_nanos"], row["creator_share_nanos"]
    if share > billed >= 0:  # before the ranges: the fee it makes negative is not the cause
        raise ValueError(f"usage row column 'creator_share_nanos': {share!r} exceeds billed_nanos {billed!r}")
    if min(small) < 0 or max(small) > _INT4_MAX or min(big) < 0 or max(big) > _INT8_MAX:
        for name in (*_UNSIGNED_INT4, *_UNSIGNED_INT8):
            top = _INT4_MAX if name in _UNSIGNED_INT4 else _INT8_MAX
            if not 0 <= row[name] <= top:
                raise ValueError(f"usage row column {name!r}: {row[name]!r} is outside 0..{top}")
    balance = row["balance_after_nanos"]
    if balance is not None and not -_INT8_MAX - 1 <= balance <= _INT8_MAX:
        raise ValueError(f"usage row column 'balance_after_nanos': {balance!r} is outside the bigint range")
    tier = row["service_tier"]
    if not all(map(operator.le, map(len, _required_texts(row)), _required_limits)) or (
        tier and len(tier) > _TIER_LIMIT
    ):
        for name, limit in _TEXT_LENGTHS:
            if row[name] is not None and len(row[name]) > limit:
                raise ValueError(f"usage row column {name!r}: {len(row[name])} characters, more than {limit}")
    id_values = _id_texts(row)
    ids = "".join(id_values)
    if not (ids.isascii() and ids.isprintable() and " " not in ids and all(id_values)):  # else one by one
        for name in _ID_TEXTS:
            problem = text_problem(row[name], "id") or ("is empty" if not row[name] else None)
            if problem:
                raise ValueError(f"usage row column {name!r}: {problem}")
    labels = "".join(_label_texts(row))
    if not (labels.isascii() and labels.isprintable()):
        for name in _LABEL_TEXTS:
            problem = text_problem(row[name], "label")
            if problem:
                raise ValueError(f"usage row column {name!r}: {problem}")
    at = row["occurred_at"]
    if at.tzinfo is None or not window[0] <= at <= window[1]:
        raise ValueError(
            f"usage row column 'occurred_at': {at.isoformat()} is outside "
            f"{window[0].isoformat()}..{window[1].isoformat()}"
        )


def _stage_values(row: dict[str, Any], window: tuple[datetime, datetime]) -> tuple[Any, ...]:
    """The row's values in :data:`_STAGE_COLUMNS` order, as the binary COPY takes them.  A row of the
    usual types (:func:`worker.gate.outbox.parse_entry`'s) passes after one C-level look at its value
    types; otherwise a ``str`` subclass (an enum) is written as its ``str``, an ``int`` subclass as
    its ``int``, 0 or 1 in a boolean column as ``bool``.  Raises TypeError naming the column for
    anything else, so the entry is dead-lettered with that error rather than stored as something it
    is not: a float in an integer column (money is never a float), a bool in an integer column
    (``true`` read as 1 token), a number in a text column (a turn_id ``12345`` that no gate wrote).
    Then the figures' domains (:func:`check_domains`: ValueError naming the column)."""
    values = _usage_values(row)
    kinds = tuple(map(type, values))
    if kinds in _CHECKED:
        check_domains(row, window)
        return values
    out = []
    for name, value, want in zip(_STAGE_COLUMNS, values, _PY_TYPES):
        if value is None or type(value) is want:
            out.append(value)
        elif want is str and isinstance(value, str):  # a StrEnum
            out.append(str(value))
        elif want is bool and isinstance(value, int) and value in (0, 1):
            out.append(bool(value))
        elif want is int and isinstance(value, int) and not isinstance(value, bool):  # an IntEnum
            out.append(int(value))
        elif want is datetime and isinstance(value, datetime):
            out.append(value)
        else:
            raise TypeError(f"usage row column {name!r}: {type(value).__name__} {value!r}, expected {want.__name__}")
    if tuple(map(type, out)) == kinds:
        _CHECKED.add(kinds)
    check_domains(dict(zip(_STAGE_COLUMNS, out)), window)
    return tuple(out)


#: The staged turns (turn_id in its scope) go into ``usage_turn_key`` first (unique by its 16-byte
#: key, unpartitioned, ``ON CONFLICT DO NOTHING``), in key order (every drain takes the keys' locks
#: in that one order, and the index is filled page by page); the staged rows whose key was not
#: inserted there (a re-delivery, a second acceptance) are marked not ``fresh`` and their ``ord``
#: returned; then only the fresh rows get their ``usage_event`` row (a view since migration 0019:
#: written to ``usage_row``, partitioned by month, with a ``usage_price`` id, by
#: :func:`insert_usage_rows`), so a re-delivered or retried turn is one row whatever its
#: ``occurred_at``.  A key's ``retention_date``: :func:`models.turn.retention_date_sql`.  The first statement returns (keys inserted, ords not inserted).
_INSERT_USAGE = (
    "WITH fresh AS (INSERT INTO usage_turn_key (turn_key, outbox_id, retention_date) "
    f"SELECT turn_key, outbox_id, {retention_date_sql('occurred_at')} FROM {STAGE} ORDER BY turn_key "
    "ON CONFLICT (turn_key) DO NOTHING RETURNING turn_key), "
    # (skipped, a one-time filter, when every staged row was inserted: ``staged`` is their count)
    f"stale AS (UPDATE {STAGE} s SET fresh = false WHERE (SELECT count(*) FROM fresh) < %(staged)s::bigint "
    "AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.turn_key = s.turn_key) RETURNING s.ord) "
    "SELECT (SELECT count(*) FROM fresh), (SELECT array_agg(ord) FROM stale);\n" + insert_usage_rows(STAGE)
)

#: the fresh staged rows' sums per (enterprise_id, chat_id, agent, wallet_id, workflow, provider,
#: model, meter, period: the UTC month 'YYYY-MM'), a TEMP table per connection emptied at every
#: commit like :data:`STAGE`: filled by one pass over the staged rows (:data:`_FILL_GROUPS`), then
#: every aggregate of the batch (:data:`_LEDGER`, :data:`_ROLLUPS`) reads these few dozen rows
#: instead of the batch's rows.  ``ord``: the group's first row in the batch; ``sk``: its newest
#: (:func:`chat_order`).
GROUPS = "tollgate_drain_groups"

_GROUP_KEYS = ("enterprise_id", "chat_id", "agent", "wallet_id", "workflow", "provider", "model", "meter", "period")
_GROUP_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cost_nanos",
    "billed_nanos",
    "duration_ms",
    "quantity",
    "creator_share_nanos",
    "platform_fee_nanos",
    "trial_tokens",
    "debt_nanos",
)

_CREATE_GROUPS = (
    f"CREATE TEMP TABLE IF NOT EXISTS {GROUPS} ("
    + ", ".join(f'{c} text COLLATE "C"' for c in _GROUP_KEYS)
    + ", events bigint, "
    + ", ".join(f"{c} numeric" for c in _GROUP_SUMS)
    + ', ord integer, sk text COLLATE "C", started_at timestamptz, last_turn_at timestamptz) ON COMMIT DELETE ROWS'
)

#: (grouped by the month's start, formatted once per group: ``to_char`` per row costs more than the sums)
_MONTH = "date_trunc('month', occurred_at AT TIME ZONE 'UTC')"

_FILL_GROUPS = (
    f"INSERT INTO {GROUPS} SELECT {', '.join(_GROUP_KEYS[:-1])}, to_char({_MONTH}, 'YYYY-MM'), count(*), "
    + ", ".join(f"sum({c})" for c in _GROUP_SUMS)
    + ", min(ord), max(sk), min(occurred_at), max(occurred_at) "
    f"FROM {STAGE} WHERE fresh GROUP BY {', '.join(_GROUP_KEYS[:-1])}, {_MONTH}"
)

_KEEP = f"(ct.status = '{ChatStatus.completed.value}' OR excluded.state_key <= ct.state_key)"

_T = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos")

#: The ledger side of the inserted rows, from their sums (:data:`GROUPS`), in the same transaction (no
#: parameters; sent in the batch's one pipeline, :data:`_STATEMENTS`).  Every row lock is taken in a fixed order
#: (wallets by id, chats by (enterprise_id, chat_id), agents by (enterprise_id, chat_id, agent)), so
#: concurrent drains do not deadlock.
#:
#: 1. the wallets whose debits, trial tokens or debt move, locked in id order;
#: 2. one ``wallet_transaction`` debit per wallet (``idempotency_key`` from the wallet's first entry in
#:    the batch) and the wallet's running totals;
#: 3. the chat sessions (totals; the state moves only to the batch's newest turn in :func:`chat_order`
#:    and only if it is newer than the chat's state, a completed chat stays completed), their per-agent
#:    usage, the ``paused_chat`` records of the chats this batch moved (opened by a ``pause``, closed by
#:    a newer ``continue``: see :func:`pause_reason_of`, :func:`needed_nanos_of`), and the rollup and
#:    budget dirty marks (DO UPDATE, not DO NOTHING: the row lock makes a concurrent refresh that is
#:    deleting a mark wait for our commit, so it never deletes the mark and misses these rows).
#:    Returns the paused ('p') and resumed ('r') notices.
_LEDGER = (
    f"SELECT 1 FROM wallet WHERE id IN (SELECT wallet_id FROM {GROUPS} GROUP BY wallet_id "
    "HAVING sum(billed_nanos) <> 0 OR sum(trial_tokens) <> 0 OR sum(debt_nanos) <> 0) "
    'ORDER BY id COLLATE "C" FOR NO KEY UPDATE;\n'
    # the wallet's first entry in the batch: the staged row of its groups' lowest ord
    "WITH agg AS (SELECT a.wallet_id, a.nanos, a.turns, a.trial, a.debt, s.outbox_id AS first FROM ("
    "SELECT wallet_id, sum(billed_nanos) AS nanos, sum(events) AS turns, sum(trial_tokens) AS trial, "
    f"sum(debt_nanos) AS debt, min(ord) AS ord FROM {GROUPS} GROUP BY wallet_id) a JOIN {STAGE} s USING (ord)), "
    "tx AS (INSERT INTO wallet_transaction (wallet_id, kind, amount_nanos, turns, idempotency_key, description) "
    f"SELECT wallet_id, '{TransactionKind.debit.value}', nanos, turns, '{USAGE_PREFIX}' || first, "
    "'usage of ' || turns || ' turn(s)' FROM agg ORDER BY wallet_id COLLATE \"C\") "
    "UPDATE wallet w SET debits_nanos = w.debits_nanos + a.nanos, "
    "trial_tokens_used = w.trial_tokens_used + a.trial, debt_nanos = w.debt_nanos + a.debt "
    "FROM agg a WHERE w.id = a.wallet_id AND (a.nanos <> 0 OR a.trial <> 0 OR a.debt <> 0);\n"
    # the sums per (chat, agent, wallet, workflow, month), a few hundred groups at most, which
    # every aggregate below reads
    f"WITH g AS MATERIALIZED (SELECT enterprise_id, chat_id, agent, wallet_id, workflow, period, "
    "sum(events) AS turns, "
    + ", ".join(f"sum({c}) AS {c}" for c in (*_T, "billed_nanos", "duration_ms"))
    + ', min(ord) AS ord, max(sk COLLATE "C") AS sk, min(started_at) AS started_at, '
    f"max(last_turn_at) AS last_turn_at FROM {GROUPS} GROUP BY 1, 2, 3, 4, 5, 6), "
    # the chat's wallet and workflow: its first row's (the group holding its lowest ord)
    "first AS (SELECT DISTINCT ON (enterprise_id, chat_id) enterprise_id, chat_id, wallet_id, workflow "
    "FROM g ORDER BY enterprise_id, chat_id, ord), "
    "sums AS (SELECT enterprise_id, chat_id, sum(turns) AS turns, "
    + ", ".join(f"sum({c}) AS {c}" for c in (*_T, "billed_nanos"))
    + ', min(started_at) AS started_at, max(last_turn_at) AS last_turn_at, max(sk COLLATE "C") AS sk '
    "FROM g GROUP BY enterprise_id, chat_id), "
    # its state: its newest turn's (the row of the chat's greatest sk; the first of them on a tie)
    "last AS (SELECT DISTINCT ON (s.enterprise_id, s.chat_id) s.enterprise_id, s.chat_id, s.sk, s.action, "
    f"s.occurred_at, s.balance_after_nanos, s.mode, s.billable FROM {STAGE} s JOIN sums m "
    "ON s.enterprise_id = m.enterprise_id AND s.chat_id = m.chat_id AND s.sk = m.sk "
    "WHERE s.fresh ORDER BY s.enterprise_id, s.chat_id, s.ord), "
    "chats AS (SELECT f.enterprise_id, f.chat_id, f.wallet_id, f.workflow, m.turns, "
    + ", ".join(f"m.{c}" for c in (*_T, "billed_nanos"))
    + ", m.started_at, m.last_turn_at, l.sk AS state_key, l.balance_after_nanos AS balance_nanos, "
    f"CASE WHEN l.action = 'pause' THEN '{ChatStatus.paused.value}' ELSE '{ChatStatus.active.value}' END AS status, "
    f"CASE WHEN l.action <> 'pause' THEN NULL WHEN l.mode = '{BillingMode.trial.value}' AND NOT l.billable "
    "THEN 'trial_exhausted' ELSE 'wallet_exhausted' END AS pause_reason, "
    f"CASE WHEN l.action = 'pause' THEN '{ConnectionState.paused.value}' "
    f"ELSE '{ConnectionState.connected.value}' END AS connection_state, "
    "CASE WHEN l.action = 'pause' THEN l.occurred_at END AS paused_at, "
    "CASE WHEN l.action = 'pause' AND l.balance_after_nanos <= 0 THEN 1 - l.balance_after_nanos ELSE 0 END "
    "AS needed_nanos "
    "FROM first f JOIN last l USING (enterprise_id, chat_id) JOIN sums m USING (enterprise_id, chat_id)), "
    "up AS (INSERT INTO chat_session AS ct (enterprise_id, chat_id, wallet_id, workflow, turns, "
    + ", ".join((*_T, "billed_nanos"))
    + ", started_at, last_turn_at, state_key, status, pause_reason, connection_state, paused_at) "
    "SELECT enterprise_id, chat_id, wallet_id, workflow, turns, "
    + ", ".join((*_T, "billed_nanos"))
    + ", started_at, last_turn_at, state_key, status, pause_reason, connection_state, paused_at FROM chats "
    'ORDER BY enterprise_id COLLATE "C", chat_id COLLATE "C" '
    "ON CONFLICT ON CONSTRAINT uq_chat_session_enterprise_chat DO UPDATE SET "
    + ", ".join(f"{c} = ct.{c} + excluded.{c}" for c in ("turns", *_T, "billed_nanos"))
    + ", started_at = least(ct.started_at, excluded.started_at), "
    "last_turn_at = greatest(ct.last_turn_at, excluded.last_turn_at), "
    + ", ".join(
        f"{c} = CASE WHEN {_KEEP} THEN ct.{c} ELSE {new} END"
        for c, new in (
            ("status", "excluded.status"),
            ("pause_reason", "excluded.pause_reason"),
            ("connection_state", "excluded.connection_state"),
            ("paused_at", "excluded.paused_at"),
            ("can_resume", "false"),
            ("state_key", "excluded.state_key"),
        )
    )
    + " RETURNING ct.id, ct.enterprise_id, ct.chat_id, ct.state_key), "
    # only the batches that moved a chat's state open or close its paused record
    "moved AS (SELECT c.* FROM chats c JOIN up USING (enterprise_id, chat_id) WHERE up.state_key = c.state_key), "
    "opened AS (INSERT INTO paused_chat (enterprise_id, chat_id, wallet_id, reason, needed_nanos, paused_at) "
    f"SELECT enterprise_id, chat_id, wallet_id, pause_reason, needed_nanos, paused_at FROM moved "
    f'WHERE status = \'{ChatStatus.paused.value}\' ORDER BY enterprise_id COLLATE "C", chat_id COLLATE "C" '
    "ON CONFLICT (enterprise_id, chat_id) WHERE resumed_at IS NULL DO NOTHING "
    "RETURNING enterprise_id, chat_id, wallet_id, reason, needed_nanos), "
    "closed AS (UPDATE paused_chat pc SET resumed_at = now(), resumed_by = 'turn' FROM moved m "
    f"WHERE m.status = '{ChatStatus.active.value}' AND pc.resumed_at IS NULL "
    "AND pc.enterprise_id = m.enterprise_id AND pc.chat_id = m.chat_id "
    "RETURNING pc.enterprise_id, pc.chat_id, pc.wallet_id, m.balance_nanos), "
    "agents AS (INSERT INTO chat_agent_usage AS at (chat_session_id, agent, turns, duration_ms, "
    + ", ".join(_T)
    + ") SELECT up.id, g.agent, sum(g.turns), sum(g.duration_ms), "
    + ", ".join(f"sum(g.{c})" for c in _T)
    + " FROM g JOIN up USING (enterprise_id, chat_id) GROUP BY up.id, g.enterprise_id, g.chat_id, g.agent "
    'ORDER BY g.enterprise_id COLLATE "C", g.chat_id COLLATE "C", g.agent COLLATE "C" '
    "ON CONFLICT (chat_session_id, agent) DO UPDATE SET "
    + ", ".join(f"{c} = at.{c} + excluded.{c}" for c in ("turns", "duration_ms", *_T))
    + "), "
    "rollups AS (INSERT INTO rollup_dirty (enterprise_id, workflow, period) "
    "SELECT enterprise_id, workflow, period FROM g GROUP BY enterprise_id, workflow, period "
    "ORDER BY 1, 2, 3 ON CONFLICT (enterprise_id, workflow, period) DO UPDATE SET touched_at = now()), "
    # the same marks for budgets (worker.billing.budgets.check_budgets takes them): a turn persisted
    # after its month ended is checked against its own month's budgets
    "budgets AS (INSERT INTO budget_dirty (wallet_id, enterprise_id, workflow, period) "
    "SELECT wallet_id, enterprise_id, workflow, period FROM g "
    "GROUP BY wallet_id, enterprise_id, workflow, period ORDER BY 1, 2, 3, 4 "
    "ON CONFLICT (wallet_id, enterprise_id, workflow, period) DO UPDATE SET touched_at = now()) "
    "SELECT 'p' AS notice, enterprise_id, chat_id, wallet_id, reason, needed_nanos FROM opened "
    "UNION ALL SELECT 'r', enterprise_id, chat_id, wallet_id, NULL, balance_nanos FROM closed"
)


#: the billing rollups' sums (``models.rollup.RollupFigures``; ``events`` is ``count(*)``), as
#: :data:`worker.chats.rollups.BILLING_FIGURES` recomputes them
_FIGURES = (
    "quantity",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "billed_nanos",
    "creator_share_nanos",
    "platform_fee_nanos",
)


def _rollup_upsert(table: str, keys: tuple[str, ...], extra: tuple[tuple[str, str, str], ...] = ()) -> str:
    """One statement adding the fresh staged rows' sums (:data:`GROUPS`), grouped by (enterprise_id,
    period, workflow, *keys), to ``table`` (``ON CONFLICT DO UPDATE SET x = r.x + excluded.x``), rows inserted (so
    locked) in key order.  ``extra``: (column, aggregate, how it merges with the stored value)."""
    cols = ("enterprise_id", "period", "workflow", *keys)
    figures = ("events", *_FIGURES, *(c for c, _, _ in extra))
    aggs = ("sum(events)", *(f"sum({c})" for c in _FIGURES), *(a for _, a, _ in extra))
    group = ", ".join(str(i + 1) for i in range(len(cols)))
    return (
        f"INSERT INTO {table} AS r ({', '.join(cols)}, {', '.join(figures)}) "
        f"SELECT enterprise_id, period, workflow, {', '.join(keys)}, {', '.join(aggs)} "
        # in key order (the text columns are COLLATE "C"; the period is digits and '-')
        f"FROM {GROUPS} GROUP BY {group} ORDER BY {group} "
        f"ON CONFLICT ({', '.join(cols)}) DO UPDATE SET "
        + ", ".join(f"{c} = r.{c} + excluded.{c}" for c in ("events", *_FIGURES))
        + "".join(f", {c} = {merge}(r.{c}, excluded.{c})" for c, _, merge in extra)
    )


#: ``agent_rollup``'s sums (``models.rollup.AgentRollup``; ``events`` is ``count(*)``), as
#: :data:`worker.chats.rollups.AGENT_FIGURES` recomputes them
_AGENT_FIGURES = ("duration_ms", "prompt_tokens", "completion_tokens", "cost_nanos")

#: One statement adding the fresh staged rows' per-agent sums (:data:`GROUPS`), grouped by
#: (enterprise_id, period, workflow, agent), to ``agent_rollup``, rows inserted in key order.
_AGENT_ROLLUP = (
    f"INSERT INTO agent_rollup AS r (enterprise_id, period, workflow, agent, events, {', '.join(_AGENT_FIGURES)}) "
    f"SELECT enterprise_id, period, workflow, agent, sum(events), {', '.join(f'sum({c})' for c in _AGENT_FIGURES)} "
    f"FROM {GROUPS} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
    "ON CONFLICT (enterprise_id, period, workflow, agent) DO UPDATE SET "
    + ", ".join(f"{c} = r.{c} + excluded.{c}" for c in ("events", *_AGENT_FIGURES))
)

#: The billing rollups (``billing_rollup``, ``chat_rollup``) and the workflow rollup's per-agent sums
#: (``agent_rollup``) of the fresh rows, kept incrementally in the drain's transaction (issue 18: the
#: ``/billing`` report reads the first two for every group, never the events; issue 16: the workflow
#: refresh reads ``chat_rollup`` and ``agent_rollup``, a few hundred rows, not the month's events).
#: First the shared advisory lock of every (enterprise_id, workflow, month) group of the batch, in
#: sorted order, held until commit (the key :func:`worker.chats.rollups._lock_billing`'s exclusive
#: lock takes; not the workflow refresh's, so the beat never makes a drain wait): a repair
#: recomputing a group from ``usage_event`` (:func:`worker.chats.rollups.refresh_billing_rollups`)
#: takes that lock before its statements read the events, so it either waits for this drain's commit
#: and reads its rows, or runs first and this drain adds its sums to the repaired rows after it
#: commits: nothing counted twice or lost.  Taken after the ``rollup_dirty`` upsert
#: (:data:`_LEDGER`), so a drain never holds a group's lock while it waits for a mark that a refresh
#: deleting it holds.  Then the three upserts, each statement's
#: rows locked in key order, ``billing_rollup``, ``chat_rollup``, ``agent_rollup`` in that order in
#: every drain (no deadlock).
_ROLLUPS = (
    "SELECT count(pg_advisory_xact_lock_shared(hashtextextended(k, 0))) FROM ("
    "SELECT 'tollgate:billing-rollup:' || enterprise_id || chr(31) || workflow || chr(31) || period AS k FROM ("
    f"SELECT DISTINCT enterprise_id, workflow, period FROM {GROUPS}) g "
    'ORDER BY enterprise_id COLLATE "C", workflow COLLATE "C", period COLLATE "C") s;\n'
    + _rollup_upsert("billing_rollup", ("wallet_id", "provider", "model", "meter"))
    + ";\n"
    + _rollup_upsert(
        "chat_rollup",
        ("wallet_id", "chat_id"),
        (("first_at", "min(started_at)", "least"), ("last_at", "max(last_turn_at)", "greatest")),
    )
    + ";\n"
    + _AGENT_ROLLUP
)


#: every statement after the staging COPY, in order: each is prepared on its connection (parsed and
#: planned once, not at every batch) and all are sent in one pipeline (one round trip); the first
#: takes ``staged``, the number of staged rows; :data:`_NOTICES` is the one returning the notices
_STATEMENTS = tuple(f"{_INSERT_USAGE};\n{_FILL_GROUPS};\n{_LEDGER};\n{_ROLLUPS}".split(";\n"))
_NOTICES = next(i for i, sql in enumerate(_STATEMENTS) if "AS notice" in sql)

#: :data:`_STATEMENTS`' first statement without ``ON CONFLICT``: the turn keys of a batch none of
#: whose turns is persisted yet (nearly every batch) go in as a plain insert, which spares each key
#: the speculative insertion (a conflict probe before the insert, a speculative lock taken and
#: released, a confirmation record in the WAL: about 1 µs of PostgreSQL CPU per row, a third of
#: the statement).  Sent inside :data:`_KEYS_SAVEPOINT`: a key already persisted (a re-delivery,
#: a second acceptance, a concurrent drain) fails it with a unique violation of
#: :data:`_KEYS_CONSTRAINT`; :func:`persist_turns` then rolls back to the savepoint (the staged rows
#: stay) and runs the batch again with ``ON CONFLICT DO NOTHING``.
_FAST_KEYS = _STATEMENTS[0].replace(" ON CONFLICT (turn_key) DO NOTHING", "", 1)
if _FAST_KEYS == _STATEMENTS[0]:  # pragma: no cover (a changed statement must change this too)
    raise RuntimeError("the turn keys' statement has no ON CONFLICT to leave out")
_KEYS_SAVEPOINT = "tollgate_drain_keys"
#: the unique index the plain insert of :data:`_FAST_KEYS` can violate
_KEYS_CONSTRAINT = "usage_turn_key_pkey"


def pause_reason_of(row: dict[str, Any]) -> str:
    """Why a turn answered ``pause``: its trial allowance ran out (a free trial turn) or its wallet
    did (``wallet_exhausted``).  The drain's SQL counterpart is in :data:`_LEDGER` (``pause_reason``)."""
    return "trial_exhausted" if row["mode"] == BillingMode.trial and not row["billable"] else "wallet_exhausted"


def needed_nanos_of(row: dict[str, Any]) -> int:
    """Nanos a paused chat's wallet needs before its next turn is accepted: enough to bring the
    balance after the pausing turn above zero (0 when the balance is unknown or positive).  The
    drain's SQL counterpart is in :data:`_LEDGER` (``needed_nanos``)."""
    balance = row["balance_after_nanos"]
    return 1 - balance if balance is not None and balance <= 0 else 0


def _psycopg(session: Session) -> psycopg.Connection:
    """The session's psycopg connection (its transaction).  Raises TypeError on another driver."""
    dbapi = session.connection().connection.driver_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError(f"persist_turns needs PostgreSQL through psycopg 3, not {type(dbapi).__name__}")
    return dbapi


def persist_turns(session: Session, rows: Sequence[dict[str, Any]]) -> PersistResult:
    """Insert usage events and add only the rows actually inserted to the wallet ledger, chat
    sessions, per-agent usage, paused-chat records, rollup / budget dirty marks and the billing and
    agent rollups (:data:`_ROLLUPS`).

    ``rows`` are dicts with the keys of :data:`USAGE_COLUMNS` (money in nano-USD, ``occurred_at``
    an aware datetime).  A turn is its turn_id in its scope, the (enterprise_id, wallet_id) pair
    (:data:`TURN_KEY`): re-delivered rows, also a turn twice in one batch, are counted as
    duplicates and change nothing; the same turn_id in another scope is another turn.

    How: the batch (first copy of each turn, with its turn key computed here) is COPied, binary,
    into a TEMP staging table (:data:`STAGE`, emptied at commit); then one pipeline of prepared
    statements (:data:`_STATEMENTS`, one round trip) inserts ``usage_turn_key`` ``ON CONFLICT DO
    NOTHING`` (first without ``ON CONFLICT``: :data:`_FAST_KEYS`), the ``usage_event`` rows of the
    keys inserted (:data:`_INSERT_USAGE`), sums those rows once (:data:`GROUPS`) and adds the sums to
    the ledger (:data:`_LEDGER`) and the billing and agent rollups (:data:`_ROLLUPS`).  Rows are
    locked in a fixed order, so concurrent drains do not deadlock.  The caller commits (a rollback discards the
    staged rows too).  Raises whatever PostgreSQL raises (the session must then be rolled back).
    """
    if isinstance(rows, StagedRows):  # staged from outbox entries (the drain): checked already
        return persist_staged(session, rows.staged)
    if not rows:
        return PersistResult(0, 0, 0)
    return persist_staged(session, stage_rows(rows, drain_window()))


class StagedRows(Sequence[dict[str, Any]]):
    """A batch already staged (:func:`worker.ledger.staging.stage_entries`: tuples in
    :data:`_STAGE_COLUMNS` order, every first copy of a turn checked), which :func:`persist_turns`
    persists as it is.  Read as a sequence it gives each row as a usage-row dict (keys of
    :data:`USAGE_COLUMNS`), built on access only: what looks at a batch's rows (a wrapper, a test)
    sees what it saw before, the drain builds no dict per row."""

    __slots__ = ("staged",)

    def __init__(self, staged: list[tuple[Any, ...]]) -> None:
        self.staged = staged

    def __len__(self) -> int:
        return len(self.staged)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> "StagedRows": ...

    def __getitem__(self, index: int | slice) -> "dict[str, Any] | StagedRows":
        if isinstance(index, slice):
            return StagedRows(self.staged[index])
        return dict(zip(_STAGE_COLUMNS, self.staged[index]))


#: positions in a staged tuple (:data:`_STAGE_COLUMNS` order) of what the batch reads back
_AT_ENTERPRISE = _STAGE_COLUMNS.index("enterprise_id")
_AT_WALLET = _STAGE_COLUMNS.index("wallet_id")
_AT_TURN = _STAGE_COLUMNS.index("turn_id")
_AT_OUTBOX = _STAGE_COLUMNS.index("outbox_id")
_AT_BILLED = _STAGE_COLUMNS.index("billed_nanos")
_staged_key = operator.itemgetter(_AT_ENTERPRISE, _AT_WALLET, _AT_TURN)


def stage_rows(rows: Sequence[dict[str, Any]], window: tuple[datetime, datetime]) -> list[tuple[Any, ...]]:
    """The staged tuples (values in :data:`_STAGE_COLUMNS` order) of usage rows (dicts with the keys
    of :data:`USAGE_COLUMNS`), for :func:`persist_staged`: the first copy of each turn (turn_id in
    its scope) through :func:`_stage_values` (types, then :func:`check_domains` against ``window``,
    :func:`drain_window`), a later copy as it is (it is not staged: a duplicate or a second
    acceptance, of which only the ids and ``billed_nanos`` are read).  Raises TypeError / ValueError
    naming the column (the first bad row's)."""
    seen: set[tuple[str, str, str]] = set()
    out: list[tuple[Any, ...]] = []
    for r in rows:
        key = turn_key_of(r)
        out.append(_usage_values(r) if key in seen else _stage_values(r, window))
        seen.add(key)
    return out


def persist_staged(session: Session, staged: Sequence[tuple[Any, ...]]) -> PersistResult:
    """:func:`persist_turns` of rows already staged (:func:`stage_rows`, or
    :func:`worker.ledger.staging.stage_entries` straight from outbox entries): tuples of the values
    in :data:`_STAGE_COLUMNS` order, every first copy of a turn checked.  Same result, same errors
    from PostgreSQL."""
    if not staged:
        return PersistResult(0, 0, 0)
    first: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for v in staged:
        first.setdefault(_staged_key(v), v)
    unique = list(first.values())
    conn = _psycopg(session)
    with conn.cursor() as cur:
        # the table made on the connection's first batch (a CREATE rolled back with its transaction
        # is made again); emptied at each commit, and here for a caller that persists twice in one
        # transaction
        cur.execute(f"{_CREATE_STAGE};\n{_CREATE_GROUPS};\nDELETE FROM {STAGE};\nDELETE FROM {GROUPS}")
        cur.adapters.register_dumper(None, _KeyDumper)
        with cur.copy(_COPY_STAGE) as copy:
            copy.set_types(_STAGE_TYPES)
            write_row = copy.write_row
            for i, ((enterprise_id, wallet_id, turn_id), v) in enumerate(first.items()):
                key = turn_key_bytes(enterprise_id, wallet_id, turn_id)
                write_row((i, key, chat_order(v[_AT_OUTBOX]), *v))
    # one round trip: the usage rows, then the ledger of the fresh ones (a no-op without any); a
    # failing statement is raised when the pipeline ends, the ones after it not run.  The turn keys
    # first as a plain insert (:data:`_FAST_KEYS`); if one is persisted already, again with ON CONFLICT
    with conn.cursor() as keys, conn.cursor() as ledger, conn.cursor() as cur:
        try:
            _send_batch(conn, keys, ledger, cur, len(unique), fast=True)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != _KEYS_CONSTRAINT:
                raise
            cur.execute(f"ROLLBACK TO SAVEPOINT {_KEYS_SAVEPOINT}; RELEASE SAVEPOINT {_KEYS_SAVEPOINT}")
            _send_batch(conn, keys, ledger, cur, len(unique), fast=False)
        summary = keys.fetchone()
        if summary is None:  # the INSERT statement always returns its one summary row
            raise RuntimeError("the staged INSERT returned no summary row")
        inserted, stale = summary
        notices: list[tuple[Any, ...]] = ledger.fetchall()
    if stale:
        stale_keys = {_staged_key(unique[i]) for i in stale}
        inserted_ids = {k for k in first if k not in stale_keys}
    else:
        inserted_ids = set(first)
    conflicts = _second_acceptances(session, staged, inserted_ids) if stale or len(unique) < len(staged) else ()
    duplicates = len(staged) - inserted - len(conflicts)
    if not inserted:
        return PersistResult(0, duplicates, 0, conflicts)
    billed_total = sum(v[_AT_BILLED] for k, v in first.items() if k in inserted_ids)
    paused = tuple(
        PausedNotice(e, c, w, reason, needed)
        for _kind, e, c, w, reason, needed in sorted(n for n in notices if n[0] == "p")
    )
    resumed = tuple(
        ResumedNotice(e, c, w, balance)
        for _kind, e, c, w, _r, balance in sorted((n for n in notices if n[0] == "r"), key=lambda n: n[1:4])
    )
    return PersistResult(inserted, duplicates, billed_total, conflicts, paused, resumed)


def _send_batch(
    conn: psycopg.Connection,
    keys: psycopg.Cursor[Any],
    ledger: psycopg.Cursor[Any],
    cur: psycopg.Cursor[Any],
    staged: int,
    fast: bool,
) -> None:
    """Send :data:`_STATEMENTS` (prepared) in one pipeline: ``keys`` gets the turn keys' summary,
    ``ledger`` the notices.  ``fast``: the turn keys by :data:`_FAST_KEYS` in the savepoint
    :data:`_KEYS_SAVEPOINT` (released once they are in).  Raises what PostgreSQL raises (with
    ``fast``, a :class:`psycopg.errors.UniqueViolation` of :data:`_KEYS_CONSTRAINT` when a key is
    persisted already: the savepoint is then still open, nothing after the keys ran)."""
    with conn.pipeline():
        if fast:
            cur.execute(f"SAVEPOINT {_KEYS_SAVEPOINT}")
        keys.execute(_FAST_KEYS if fast else _STATEMENTS[0], {"staged": staged}, prepare=True)
        if fast:
            cur.execute(f"RELEASE SAVEPOINT {_KEYS_SAVEPOINT}")
        for i, sql in enumerate(_STATEMENTS[1:], 1):
            (ledger if i == _NOTICES else cur).execute(sql, prepare=True)


def _second_acceptances(
    session: Session, staged: Sequence[tuple[Any, ...]], inserted_ids: set[tuple[str, str, str]]
) -> tuple[Conflict, ...]:
    """Staged rows not inserted whose turn (turn_id in its scope) is persisted from *another* outbox
    entry: the gate debited that turn twice.  A row whose own entry is the persisted one is a plain
    re-delivery; a turn_id persisted only in another scope is no conflict (it was inserted)."""
    stored: dict[tuple[str, str, str], str] = {}
    candidates = [_staged_key(v) for v in staged if _staged_key(v) not in inserted_ids]
    if candidates:
        tk = UsageTurnKey
        digests = {turn_key_digest(*k): k for k in candidates}
        stored = {
            digests[k]: o
            for k, o in session.execute(
                select(col(tk.turn_key), col(tk.outbox_id)).where(col(tk.turn_key).in_(list(digests)))
            ).all()
        }
    first_in_batch: dict[tuple[str, str, str], str] = {}
    for v in staged:
        first_in_batch.setdefault(_staged_key(v), v[_AT_OUTBOX])
    conflicts = []
    for v in staged:
        key = _staged_key(v)
        persisted = first_in_batch[key] if key in inserted_ids else stored.get(key)
        if persisted is not None and persisted != v[_AT_OUTBOX]:
            conflicts.append(Conflict(v[_AT_TURN], v[_AT_WALLET], v[_AT_OUTBOX], v[_AT_BILLED]))
    return tuple(conflicts)


def wallet_usage(session: Session, wallet_id: str) -> dict[str, int]:
    """Totals of the usage events persisted for a wallet: turns, tokens and nanos (all integers)."""
    ue = UsageEvent
    row = session.execute(
        select(
            func.count(col(ue.id)),
            func.coalesce(func.sum(ue.prompt_tokens), 0),
            func.coalesce(func.sum(ue.completion_tokens), 0),
            func.coalesce(func.sum(ue.cached_prompt_tokens), 0),
            func.coalesce(func.sum(ue.cost_nanos), 0),
            func.coalesce(func.sum(ue.billed_nanos), 0),
        ).where(col(ue.wallet_id) == wallet_id)
    ).one()
    keys = ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos", "billed_nanos")
    return {k: int(v) for k, v in zip(keys, row)}
