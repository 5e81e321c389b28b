"""Turn rows: the usage of drained turns persisted exactly once (``usage_event`` + ``usage_turn_key``),
their aggregates (wallet debits, chat and agent totals, dirty rollups, pauses) and outbox positions.

Functions that take a ``session`` never commit: the caller (the drain) commits once per batch, then
acknowledges the outbox.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg
import redis
from sqlalchemy import BigInteger, Boolean, DateTime, case, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.budget import BudgetDirty
from models.chat import ChatAgentUsage, ChatSession, PausedChat
from models.enums import BillingMode, ChatStatus, ConnectionState, TransactionKind
from models.rollup import RollupDirty
from models.turn import UsageEvent, UsageTurnKey
from models.wallet import Wallet, WalletTransaction
from worker.db import table_of
from worker.gate.gate import WalletGate
from worker.gate.keys import USAGE_PREFIX, outbox_key, transitions_key
from worker.periods import period_of

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
    if isinstance(column.type, BigInteger):
        return "bigint"
    if isinstance(column.type, DateTime):
        return "timestamptz"
    if isinstance(column.type, Boolean):
        return "boolean"
    return "text"


#: One statement per batch whatever its size: the rows travel as one typed array per column, so
#: psycopg sends one parameter per column instead of one per value (a 30,000-placeholder text would
#: be re-parsed per batch).  The turns (turn_id in its scope) go into ``usage_turn_key`` first (unique, unpartitioned);
#: only the keys inserted there get their ``usage_event`` row (partitioned by month), in the same
#: statement, so a re-delivered or retried turn is one row whatever its ``occurred_at``.
_INSERT_USAGE = text(
    f"WITH batch AS (SELECT * FROM unnest("
    f"{', '.join(f'CAST(:{c} AS {_column_sql_type(c)}[])' for c in USAGE_COLUMNS)}) "
    f"AS b({', '.join(USAGE_COLUMNS)})), "
    "fresh AS (INSERT INTO usage_turn_key (enterprise_id, wallet_id, turn_id, outbox_id, occurred_at) "
    "SELECT enterprise_id, wallet_id, turn_id, outbox_id, occurred_at FROM batch "
    "ON CONFLICT (enterprise_id, wallet_id, turn_id) DO NOTHING RETURNING enterprise_id, wallet_id, turn_id) "
    f"INSERT INTO usage_event ({', '.join(USAGE_COLUMNS)}) "
    f"SELECT {', '.join('batch.' + c for c in USAGE_COLUMNS)} FROM batch "
    "JOIN fresh USING (enterprise_id, wallet_id, turn_id) "
    "RETURNING enterprise_id, wallet_id, turn_id"
)


#: the same statement for psycopg itself, ``%(column)b`` placeholders: binary format (see :func:`_insert_usage`)
_INSERT_USAGE_PG = re.sub(r"(?<!:):(\w+)", r"%(\1)b", _INSERT_USAGE.text)


def _insert_usage(session: Session, params: dict[str, list]) -> set[tuple[str, str, str]]:
    """Run :data:`_INSERT_USAGE` on the session's own connection (its transaction), with the column
    arrays sent in PostgreSQL's binary format: psycopg's text format quotes and escapes every
    element of every array (a regular-expression search each, 30 per row), which cost more than
    the statement.  Returns the (enterprise_id, wallet_id, turn_id) keys inserted.  On a driver other
    than psycopg, the SQLAlchemy statement."""
    dbapi = session.connection().connection.driver_connection
    if not isinstance(dbapi, psycopg.Connection):
        return {tuple(row) for row in session.execute(_INSERT_USAGE, params).all()}
    with dbapi.cursor() as cur:
        cur.execute(_INSERT_USAGE_PG, params)
        return {tuple(row) for row in cur.fetchall()}


_TOTALS = ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos")


def _add(acc: dict[str, Any], row: dict[str, Any]) -> None:
    acc["turns"] += 1
    for name in _TOTALS[1:]:
        acc[name] += row[name]


def pause_reason_of(row: dict[str, Any]) -> str:
    """Why a turn answered ``pause``: its trial allowance ran out (a free trial turn) or its wallet
    did (``wallet_exhausted``)."""
    return "trial_exhausted" if row["mode"] == BillingMode.trial and not row["billable"] else "wallet_exhausted"


def needed_nanos_of(row: dict[str, Any]) -> int:
    """Nanos a paused chat's wallet needs before its next turn is accepted: enough to bring the
    balance after the pausing turn above zero (0 when the balance is unknown or positive)."""
    balance = row["balance_after_nanos"]
    return 1 - balance if balance is not None and balance <= 0 else 0


def _aggregate(fresh: Sequence[dict[str, Any]]):
    """Per-wallet debits, per-chat and per-agent totals of the inserted rows (sorted keys)."""
    debits: dict[str, list] = {}
    chats: dict[tuple[str, str], dict[str, Any]] = {}
    agents: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in fresh:
        # nanos, turns, first entry, trial tokens, debt nanos
        d = debits.setdefault(r["wallet_id"], [0, 0, r["outbox_id"], 0, 0])
        d[0] += r["billed_nanos"]
        d[1] += 1
        d[3] += r["trial_tokens"]
        d[4] += r["debt_nanos"]
        key = (r["enterprise_id"], r["chat_id"])
        chat = chats.get(key)
        if chat is None:
            chat = chats[key] = {
                "enterprise_id": r["enterprise_id"],
                "chat_id": r["chat_id"],
                "wallet_id": r["wallet_id"],
                "workflow": r["workflow"],
                "started_at": r["occurred_at"],
                "last_turn_at": r["occurred_at"],
                "billed_nanos": 0,
                "state_key": "",
                **dict.fromkeys(_TOTALS, 0),
            }
        _add(chat, r)
        chat["billed_nanos"] += r["billed_nanos"]
        chat["started_at"] = min(chat["started_at"], r["occurred_at"])
        chat["last_turn_at"] = max(chat["last_turn_at"], r["occurred_at"])
        # the batch's newest turn in the chat's order (chat_order) decides, whatever order the rows
        # came in; whether it moves the chat is the upsert's (only if newer than the chat's state)
        position = chat_order(r["outbox_id"])
        if not chat["state_key"] or position > chat["state_key"]:
            paused = r["action"] == "pause"
            chat["state_key"] = position
            chat["status"] = ChatStatus.paused.value if paused else ChatStatus.active.value
            chat["pause_reason"] = pause_reason_of(r) if paused else None
            chat["connection_state"] = ConnectionState.paused.value if paused else ConnectionState.connected.value
            chat["paused_at"] = r["occurred_at"] if paused else None
            chat["needed_nanos"] = needed_nanos_of(r) if paused else 0
            chat["balance_nanos"] = r["balance_after_nanos"]
        akey = (r["enterprise_id"], r["chat_id"], r["agent"])
        agent = agents.get(akey)
        if agent is None:
            agent = agents[akey] = {"duration_ms": 0, **dict.fromkeys(_TOTALS, 0)}
        _add(agent, r)
        agent["duration_ms"] += r["duration_ms"]
    return debits, chats, agents


def persist_turns(session: Session, rows: Sequence[dict[str, Any]]) -> PersistResult:
    """Insert usage events (``INSERT … SELECT unnest(…) ON CONFLICT (enterprise_id, wallet_id,
    turn_id) DO NOTHING RETURNING``) and add only the rows actually inserted to the wallet ledger,
    chat sessions and per-agent usage.

    ``rows`` are dicts with the keys of :data:`USAGE_COLUMNS` (money in nano-USD, ``occurred_at``
    an aware datetime).  A turn is its turn_id in its scope, the (enterprise_id, wallet_id) pair
    (:data:`TURN_KEY`): re-delivered rows, also a turn twice in one batch, are counted as
    duplicates and change nothing; the same turn_id in another scope is another turn.  Rows are locked in a fixed (sorted) order, so concurrent drains
    do not deadlock.  The caller commits.
    """
    if not rows:
        return PersistResult(0, 0, 0)
    unique = list({turn_key_of(r): r for r in reversed(rows)}.values())[::-1]  # first copy of each turn
    params = {c: [r[c] for r in unique] for c in USAGE_COLUMNS}
    inserted_ids = _insert_usage(session, params)
    fresh = [r for r in unique if turn_key_of(r) in inserted_ids]
    conflicts = _second_acceptances(session, rows, inserted_ids)
    duplicates = len(rows) - len(fresh) - len(conflicts)
    if not fresh:
        return PersistResult(0, duplicates, 0, conflicts)
    debits, chats, agents = _aggregate(fresh)

    billed_total = 0
    for wallet_id in sorted(debits):
        nanos, turns, first_entry, trial_tokens, debt = debits[wallet_id]
        billed_total += nanos
        session.execute(
            insert(WalletTransaction).values(
                wallet_id=wallet_id,
                kind=TransactionKind.debit,
                amount_nanos=nanos,
                turns=turns,
                idempotency_key=f"{USAGE_PREFIX}{first_entry}",
                description=f"usage of {turns} turn(s)",
            )
        )
        if nanos or trial_tokens or debt:
            session.execute(
                update(Wallet)
                .where(Wallet.id == wallet_id)
                .values(
                    debits_nanos=Wallet.debits_nanos + nanos,
                    trial_tokens_used=Wallet.trial_tokens_used + trial_tokens,
                    debt_nanos=Wallet.debt_nanos + debt,
                )
            )

    # statements without values, the rows as parameter sets (SQLAlchemy's "insertmanyvalues"): one
    # INSERT per batch all the same, and compiled once per process instead of once per batch
    ct = table_of(ChatSession)
    chat_insert = insert(ct)
    ex = chat_insert.excluded
    # a chat's state moves forward in its order only (chat_order): a batch whose newest turn is not
    # after the chat's last transition (a newer batch, or the orchestrator's pause or resume, came
    # first) adds its totals but leaves the state alone; a completed chat stays completed
    keep = or_(ct.c.status == ChatStatus.completed.value, ex.state_key <= ct.c.state_key)
    stmt = chat_insert.on_conflict_do_update(
        constraint="uq_chat_session_enterprise_chat",
        set_={
            **{name: ct.c[name] + ex[name] for name in (*_TOTALS, "billed_nanos")},
            "started_at": func.least(ct.c.started_at, ex.started_at),
            "last_turn_at": func.greatest(ct.c.last_turn_at, ex.last_turn_at),
            "status": case((keep, ct.c.status), else_=ex.status),
            "pause_reason": case((keep, ct.c.pause_reason), else_=ex.pause_reason),
            "connection_state": case((keep, ct.c.connection_state), else_=ex.connection_state),
            "paused_at": case((keep, ct.c.paused_at), else_=ex.paused_at),
            "can_resume": case((keep, ct.c.can_resume), else_=False),
            "state_key": case((keep, ct.c.state_key), else_=ex.state_key),
        },
    ).returning(ct.c.id, ct.c.enterprise_id, ct.c.chat_id, ct.c.state_key)
    chat_ids, states = {}, {}
    chat_rows = [
        {k: v for k, v in chats[k].items() if k not in ("needed_nanos", "balance_nanos")} for k in sorted(chats)
    ]
    for i, e, c, state_key in session.execute(stmt, chat_rows):
        chat_ids[(e, c)], states[(e, c)] = i, state_key
    # only the batches that moved a chat's state open or close its paused record
    decided = [chats[k] for k in sorted(chats) if states[k] == chats[k]["state_key"]]
    paused, resumed = _open_pauses(session, decided)

    at = table_of(ChatAgentUsage)
    agent_insert = insert(at)
    ex = agent_insert.excluded
    session.execute(
        agent_insert.on_conflict_do_update(
            index_elements=["chat_session_id", "agent"],
            set_={name: at.c[name] + ex[name] for name in ("duration_ms", *_TOTALS)},
        ),
        [{"chat_session_id": chat_ids[(e, c)], "agent": a, **agents[(e, c, a)]} for (e, c, a) in sorted(agents)],
    )
    rd = table_of(RollupDirty)
    dirty = sorted({(r["enterprise_id"], r["workflow"], period_of(r["occurred_at"])) for r in fresh})
    # DO UPDATE, not DO NOTHING: the row lock makes a concurrent rollup refresh that is deleting this
    # mark wait for our commit, so it can never delete the mark and miss these rows
    session.execute(
        insert(rd).on_conflict_do_update(
            index_elements=["enterprise_id", "workflow", "period"], set_={"touched_at": func.now()}
        ),
        [{"enterprise_id": e, "workflow": w, "period": p} for e, w, p in dirty],
    )
    # the same marks for budgets (worker.billing.budgets.check_budgets takes them): a turn persisted after its
    # month ended is checked against its own month's budgets
    bd = table_of(BudgetDirty)
    session.execute(
        insert(bd).on_conflict_do_update(
            index_elements=["wallet_id", "enterprise_id", "workflow", "period"], set_={"touched_at": func.now()}
        ),
        [
            {"wallet_id": w, "enterprise_id": e, "workflow": f, "period": p}
            for w, e, f, p in sorted(
                {(r["wallet_id"], r["enterprise_id"], r["workflow"], period_of(r["occurred_at"])) for r in fresh}
            )
        ],
    )
    return PersistResult(len(fresh), duplicates, billed_total, conflicts, paused, resumed)


def _open_pauses(
    session: Session, chats: Sequence[dict[str, Any]]
) -> tuple[tuple[PausedNotice, ...], tuple[ResumedNotice, ...]]:
    """For the chats whose state this batch moved: open a ``paused_chat`` record for each one its
    newest turn paused (none if one is open already); a chat whose newest turn went on closes its
    open record (resumed by the turn itself, e.g. after a credit), ``UPDATE … WHERE resumed_at IS
    NULL RETURNING``, so a concurrent resumer and this batch cannot both close it.  Returns the
    records opened and those closed here (one ``chat.paused`` / ``chat.resumable`` each)."""
    pc = table_of(PausedChat)
    notices = []
    for chat in chats:
        if chat["status"] == ChatStatus.paused.value:
            opened = session.execute(
                insert(pc)
                .values(
                    enterprise_id=chat["enterprise_id"],
                    chat_id=chat["chat_id"],
                    wallet_id=chat["wallet_id"],
                    reason=chat["pause_reason"],
                    needed_nanos=chat["needed_nanos"],
                    paused_at=chat["paused_at"],
                )
                .on_conflict_do_nothing(
                    index_elements=["enterprise_id", "chat_id"], index_where=text("resumed_at IS NULL")
                )
                .returning(pc.c.id)
            ).first()
            if opened is not None:
                notices.append(
                    PausedNotice(
                        chat["enterprise_id"],
                        chat["chat_id"],
                        chat["wallet_id"],
                        chat["pause_reason"],
                        chat["needed_nanos"],
                    )
                )
    going_on = {(c["enterprise_id"], c["chat_id"]): c for c in chats if c["status"] == ChatStatus.active.value}
    resumed = []
    if going_on:
        closed = session.execute(
            update(pc)
            .where(pc.c.resumed_at.is_(None), tuple_(pc.c.enterprise_id, pc.c.chat_id).in_(sorted(going_on)))
            .values(resumed_at=func.now(), resumed_by="turn")
            .returning(pc.c.enterprise_id, pc.c.chat_id, pc.c.wallet_id)
        ).all()
        resumed = [ResumedNotice(e, c, w, going_on[(e, c)]["balance_nanos"]) for e, c, w in sorted(closed)]
    return tuple(notices), tuple(resumed)


def _second_acceptances(
    session: Session, rows: Sequence[dict[str, Any]], inserted_ids: set[tuple[str, str, str]]
) -> tuple[Conflict, ...]:
    """Rows not inserted whose turn (turn_id in its scope) is persisted from *another* outbox entry:
    the gate debited that turn twice.  A row whose own entry is the persisted one is a plain
    re-delivery; a turn_id persisted only in another scope is no conflict (it was inserted)."""
    stored: dict[tuple[str, str, str], str] = {}
    candidates = [r for r in rows if turn_key_of(r) not in inserted_ids]
    if candidates:
        tk = UsageTurnKey
        stored = {
            (e, w, t): o
            for e, w, t, o in session.execute(
                select(col(tk.enterprise_id), col(tk.wallet_id), col(tk.turn_id), col(tk.outbox_id)).where(
                    tuple_(col(tk.enterprise_id), col(tk.wallet_id), col(tk.turn_id)).in_(
                        {turn_key_of(r) for r in candidates}
                    )
                )
            ).all()
        }
    first_in_batch: dict[tuple[str, str, str], str] = {}
    for r in rows:
        first_in_batch.setdefault(turn_key_of(r), r["outbox_id"])
    conflicts = []
    for r in rows:
        key = turn_key_of(r)
        persisted = first_in_batch[key] if key in inserted_ids else stored.get(key)
        if persisted is not None and persisted != r["outbox_id"]:
            conflicts.append(Conflict(r["turn_id"], r["wallet_id"], r["outbox_id"], r["billed_nanos"]))
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
