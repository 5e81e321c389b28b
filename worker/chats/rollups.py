"""Rollups: the pre-computed summary of one enterprise × workflow × calendar month (UTC).

A rollup is the seed's ``mon_{enterprise_id}_{workflow_name}`` document, stored in
``workflow_rollup`` (JSONB, money in integer nano-USD) together with typed totals.  It is always
recomputed *whole*, never added to incrementally, so refreshing a group any number of times yields
the same row; but not from the month's ``usage_event`` rows: from the group's finer sums, which the
drain adds each batch to in the transaction that inserts its events
(:data:`worker.ledger.turns._ROLLUPS`), so they are exact at every commit.  The per-chat figures are
the group's ``chat_rollup`` rows (per wallet × chat, summed over wallets; first and last turn), the
per-agent figures its ``agent_rollup`` rows: a refresh reads a few hundred rows whatever the month's
number of events (issue 16: a month's events made the beat's refresh run for seconds).  The group's
``billing_rollup`` rows, which the ``/billing`` report reads, are kept the same way.  Recomputing
these three tables from the events (:func:`refresh_billing_rollups`) is only the repair path for
events written or deleted other than by the drain (then refresh the workflow rollup after it), and
the beat never runs it (it would make the group's drains wait).

How a rollup stays current:

- the drain marks ``(enterprise_id, workflow, period)`` in ``rollup_dirty`` in the same transaction
  as the usage events it inserts (:func:`worker.ledger.turns.persist_turns`);
- the beat job (:func:`refresh_dirty`, every 60 s) deletes marks and refreshes their groups: only
  what changed since the last run;
- :func:`end_chat` marks a chat completed and refreshes its groups at once.

Concurrency, in READ COMMITTED (PostgreSQL's default):

- marks are taken with ``FOR UPDATE SKIP LOCKED``: two refreshes never take the same mark, and a
  mark a drain is writing right now (its ``ON CONFLICT DO UPDATE`` holds the row lock) is left alone,
  so it survives the drain's commit and the next run picks its rows up.  A drain that marks a group
  whose mark a refresh has just deleted waits for the refresh to commit, then inserts a new mark.
- each group is refreshed under a transaction-scoped advisory lock taken *before* its aggregates are
  read, so of two refreshes of one group the one that commits last also read last: an older
  snapshot never overwrites a newer one.  Groups are locked in sorted order (no deadlocks).
- the drain holds the *shared* lock of another key (``tollgate:billing-rollup:…``) for every group
  of its batch (sorted order, until it commits) while it adds the batch's sums to ``billing_rollup``
  / ``chat_rollup`` / ``agent_rollup``.  A repair (:func:`refresh_billing_rollups`) takes that key's
  exclusive lock, so it waits for every drain that has added to the group to commit, and its
  statements (each with a new READ COMMITTED snapshot, taken after the lock) read those drains'
  events; a drain that comes later waits for the repair to commit and adds its sums to the
  recomputed rows.  A repair
  must run in READ COMMITTED: a REPEATABLE READ snapshot taken before the lock could miss a drain's
  events that its rows already count.  The workflow refresh takes only its own key: it never waits
  for a drain and no drain waits for it.  Each of its statements reads the rollup rows of the drains
  committed before it (READ COMMITTED), and a drain that commits later has marked the group (the
  mark survives, see above), so the next run reads it.

``refreshed_at`` is bumped only when the stored document or totals change: a refresh that finds
nothing new writes nothing at all.

Money is integer nano-USD everywhere; ``*_usd`` fields are decimal strings for display
(:func:`worker.pricing.prices.nanos_to_usd`).  Token averages are numbers rounded half-up to 2 decimals,
durations are seconds rounded half-up to 3 decimals (milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import and_, func, literal_column, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.chat import ChatAgentUsage, ChatSession, PausedChat
from models.enums import ChatStatus
from models.rollup import AgentRollup, ChatRollup, RollupDirty, WorkflowRollup
from models.turn import UsageEvent
from worker.db import table_of
from worker.errors import InvalidInput, NotFound
from worker.periods import past_retention, period_bounds
from worker.pricing.prices import nanos_to_usd
from worker.settings import get_settings


class UnknownChat(NotFound, LookupError):
    """No such chat (of this enterprise), or none with a persisted turn; ``field`` is ``chat_id``.  HTTP 404."""

    title = "Unknown chat"


#: how many dirty marks one :func:`refresh_dirty` call takes (one transaction)
DEFAULT_DIRTY_LIMIT = 200

_US = timedelta(microseconds=1)
#: the keys of the document's ``overall_avg``, in display order
OVERALL_AVG_KEYS = (
    "total_sessions",
    "total_turns",
    "total_cost_nanos",
    "total_cost_usd",
    "avg_cost_nanos",
    "avg_cost_usd",
    "avg_prompt_tokens",
    "avg_completion_tokens",
    "avg_total_tokens",
    "avg_duration_sec",
)


def rollup_id(enterprise_id: str, workflow: str) -> str:
    """The seed's document id: ``mon_{enterprise_id}_{workflow_name}``."""
    return f"mon_{enterprise_id}_{workflow}"


def _check_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidInput(name, f"must be a non-empty string of at most 200 characters, got {value!r}")
    return value


def _check_group(enterprise_id: str, workflow: str, period: str) -> tuple[datetime, datetime]:
    _check_id(enterprise_id, "enterprise_id")
    _check_id(workflow, "workflow")
    return period_bounds(period)  # ValueError naming the period


def _avg_int(total: int, count: int) -> int:
    """``total / count`` in integers, rounded half-up (0 when ``count`` is 0).  Never a float."""
    if count <= 0:
        return 0
    q, r = divmod(total, count)
    return q + (2 * r >= count)


def _avg(total: int, count: int, places: int = 2) -> float:
    """``total / count`` rounded half-up to ``places`` decimals, as a JSON number (tokens, ms, s)."""
    if count <= 0:
        return 0.0
    exp = Decimal(1).scaleb(-places)
    return float((Decimal(total) / Decimal(count)).quantize(exp, rounding=ROUND_HALF_UP))


def _seconds(micros: int) -> float:
    """Integer microseconds → seconds rounded half-up to milliseconds."""
    return _avg(micros, 1_000_000, 3)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _lock_group(session: Session, enterprise_id: str, workflow: str, period: str) -> None:
    """Serialize refreshes of one group's workflow rollup until the transaction ends (see the module
    docstring; drains do not take this key)."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"tollgate:rollup:{enterprise_id}\x1f{workflow}\x1f{period}"},
    )


def _lock_billing(session: Session, enterprise_id: str, workflow: str, period: str) -> None:
    """Exclude, until the transaction ends, the drains adding to one group's billing rollups (they take
    the shared lock of this key: ``worker.ledger.turns._ROLLUPS``) and other repairs of it.  Not the
    workflow refresh's key (:func:`_lock_group`): the beat's refreshes never make a drain wait."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"tollgate:billing-rollup:{enterprise_id}\x1f{workflow}\x1f{period}"},
    )


def _take_own_mark(session: Session, enterprise_id: str, workflow: str, period: str) -> None:
    """Delete the group's dirty mark unless another transaction holds it (a drain writing it, or a
    refresh that already took it: either way the group is refreshed again after that commits)."""
    session.execute(
        text(
            "DELETE FROM rollup_dirty d USING ("
            "  SELECT enterprise_id, workflow, period FROM rollup_dirty"
            "  WHERE enterprise_id = :e AND workflow = :w AND period = :p FOR UPDATE SKIP LOCKED"
            ") t WHERE d.enterprise_id = t.enterprise_id AND d.workflow = t.workflow AND d.period = t.period"
        ),
        {"e": enterprise_id, "w": workflow, "p": period},
    )


def build_document(session: Session, enterprise_id: str, workflow: str, period: str) -> dict[str, Any]:
    """Compute the rollup document of one group from its ``chat_rollup`` and ``agent_rollup`` rows,
    the drain-kept sums of its usage events (read only; nothing stored).

    Shape (money in integer nano-USD, ``*_usd`` decimal strings, tokens integers)::

        {"_id": "mon_{enterprise_id}_{workflow}", "enterprise_id", "workflow_name", "period": "YYYY-MM",
         "overall_avg": {"avg_duration_sec", "avg_prompt_tokens", "avg_completion_tokens",
                         "avg_total_tokens", "avg_cost_usd", "avg_cost_nanos", "total_sessions",
                         "total_turns", "total_cost_usd", "total_cost_nanos"},
         "chat_sessions": {chat_id: {"status", "turns", "prompt_tokens", "completion_tokens",
                                     "total_tokens", "cost_usd", "cost_nanos", "duration_sec",
                                     "started_at", "ended_at"}},
         "agents": {agent: {"turns", "avg_response_ms", "prompt_tokens", "completion_tokens",
                            "total_tokens", "cost_usd", "cost_nanos"}}}

    Definitions:

    - The group's turns are the usage events of ``enterprise_id`` × ``workflow`` with
      ``occurred_at`` in ``[period start, period end)`` (UTC).  ``cost`` is each turn's cost at the
      prices it was charged at (``usage_event.cost_nanos``; what was debited may be less, e.g. 0 in
      development mode).  ``total_tokens = prompt_tokens + completion_tokens`` (cached prompt
      tokens are part of the prompt).
    - A session is a chat (``chat_id``) with at least one turn in the period; averages are per
      session: ``avg_x = total_x / total_sessions``, tokens rounded half-up to 2 decimals,
      ``avg_cost_nanos`` an integer rounded half-up.
    - ``duration_sec`` of a session *in this period*: from its first turn in the period to its end
      in the period, which is the chat's ``ended_at`` when the chat is completed and ``ended_at``
      falls in ``[first turn, period end)``, else its last turn in the period (and never before
      that last turn).  Seconds, rounded half-up to 3 decimals.  A chat spanning two months
      contributes each month's part to that month.
    - ``status``, ``started_at`` (first turn ever) and ``ended_at`` (null until completed) come from
      ``chat_session``: the chat's whole life, ISO 8601 UTC strings.
    - Agents are discovered from the turns; ``avg_response_ms`` is the mean of the turns'
      ``duration_ms`` (response time), rounded half-up to 2 decimals.

    Raises: ValueError naming ``enterprise_id``, ``workflow`` or ``period`` (not ``'YYYY-MM'``).
    """
    return _compute(session, enterprise_id, workflow, period)[0]


def _compute(session: Session, enterprise_id: str, workflow: str, period: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The document and the typed totals (turns, tokens, ``cost_nanos``, ``duration_us``), from the
    group's ``chat_rollup`` rows (summed over wallets per chat) and ``agent_rollup`` rows: two
    statements reading a few hundred rows whatever the month's number of events."""
    _start, end = _check_group(enterprise_id, workflow, period)
    cr = table_of(ChatRollup)
    per_chat = (
        select(
            cr.c.chat_id.label("chat_id"),
            func.sum(cr.c.events).label("turns"),
            func.sum(cr.c.prompt_tokens).label("prompt_tokens"),
            func.sum(cr.c.completion_tokens).label("completion_tokens"),
            func.sum(cr.c.cached_prompt_tokens).label("cached_prompt_tokens"),
            func.sum(cr.c.cost_nanos).label("cost_nanos"),
            func.min(cr.c.first_at).label("first_turn"),
            func.max(cr.c.last_at).label("last_turn"),
        )
        .where(cr.c.enterprise_id == enterprise_id, cr.c.period == period, cr.c.workflow == workflow)
        .group_by(cr.c.chat_id)
        .subquery()
    )
    cs = table_of(ChatSession)
    chat_rows = session.execute(
        select(per_chat, cs.c.status, cs.c.started_at, cs.c.ended_at)
        .select_from(
            per_chat.outerjoin(cs, and_(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == per_chat.c.chat_id))
        )
        .order_by(per_chat.c.chat_id)
    ).all()
    ar = table_of(AgentRollup)
    agent_rows = session.execute(
        select(ar.c.agent, ar.c.events, ar.c.duration_ms, ar.c.prompt_tokens, ar.c.completion_tokens, ar.c.cost_nanos)
        .where(ar.c.enterprise_id == enterprise_id, ar.c.period == period, ar.c.workflow == workflow)
        .order_by(ar.c.agent)
    ).all()

    chats: dict[str, dict[str, Any]] = {}
    totals = dict.fromkeys(
        ("turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_nanos", "duration_us"), 0
    )
    for r in chat_rows:
        prompt, completion, cost = int(r.prompt_tokens), int(r.completion_tokens), int(r.cost_nanos)
        session_end = r.last_turn
        if r.status == ChatStatus.completed and r.ended_at is not None and r.first_turn <= r.ended_at < end:
            session_end = max(r.ended_at, r.last_turn)
        duration_us = (session_end - r.first_turn) // _US
        chats[r.chat_id] = {
            "status": r.status,
            "turns": int(r.turns),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": nanos_to_usd(cost),
            "cost_nanos": cost,
            "duration_sec": _seconds(duration_us),
            "started_at": _iso(r.started_at),
            "ended_at": _iso(r.ended_at),
        }
        totals["turns"] += int(r.turns)
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        totals["cached_prompt_tokens"] += int(r.cached_prompt_tokens)
        totals["cost_nanos"] += cost
        totals["duration_us"] += duration_us

    agents: dict[str, dict[str, Any]] = {}
    for agent, turns, duration_ms, prompt, completion, cost in agent_rows:
        agents[agent] = {
            "turns": int(turns),
            "avg_response_ms": _avg(int(duration_ms), int(turns)),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "total_tokens": int(prompt) + int(completion),
            "cost_usd": nanos_to_usd(int(cost)),
            "cost_nanos": int(cost),
        }

    sessions = len(chats)
    avg_cost = _avg_int(totals["cost_nanos"], sessions)
    return (
        {
            "_id": rollup_id(enterprise_id, workflow),
            "enterprise_id": enterprise_id,
            "workflow_name": workflow,
            "period": period,
            "overall_avg": {
                "avg_duration_sec": _seconds(_avg_int(totals["duration_us"], sessions)),
                "avg_prompt_tokens": _avg(totals["prompt_tokens"], sessions),
                "avg_completion_tokens": _avg(totals["completion_tokens"], sessions),
                "avg_total_tokens": _avg(totals["prompt_tokens"] + totals["completion_tokens"], sessions),
                "avg_cost_usd": nanos_to_usd(avg_cost),
                "avg_cost_nanos": avg_cost,
                "total_sessions": sessions,
                "total_turns": totals["turns"],
                "total_cost_usd": nanos_to_usd(totals["cost_nanos"]),
                "total_cost_nanos": totals["cost_nanos"],
            },
            "chat_sessions": chats,
            "agents": agents,
        },
        totals,
    )


def _past_retention(period: str) -> bool:
    """Is ``period`` older than ``settings.usage_retention_months`` (its usage events dropped)?"""
    return past_retention(period, get_settings().usage_retention_months)


#: the sums the billing rollups keep (``models.rollup.RollupFigures``), in order; ``events`` is ``count(*)``
BILLING_FIGURES = (
    "events",
    "quantity",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "billed_nanos",
    "creator_share_nanos",
    "platform_fee_nanos",
)


#: ``agent_rollup``'s sums (``models.rollup.AgentRollup``), in order; ``events`` is ``count(*)``
AGENT_FIGURES = ("events", "duration_ms", "prompt_tokens", "completion_tokens", "cost_nanos")


def _billing_rollup_sql(
    table: str,
    keys: tuple[str, ...],
    extra: tuple[tuple[str, str], ...] = (),
    figures: tuple[str, ...] = BILLING_FIGURES,
) -> str:
    """One statement recomputing ``table``'s rows of one group (``:e`` enterprise, ``:w`` workflow,
    ``:p`` period in ``[:s, :t)``) from ``usage_event`` grouped by ``keys``: rows upserted only when
    a figure changed, rows of keys without events any more deleted.  ``figures``: the summed
    columns, the first (``events``) ``count(*)``; ``extra``: (column, aggregate)."""
    sums = ("count(*)", *(f"sum({c})" for c in figures[1:]))
    names = (*figures, *(c for c, _ in extra))
    aggregates = (*sums, *(a for _, a in extra))
    key_list = ", ".join(keys)
    return (
        f"WITH fresh AS (SELECT {key_list}, "
        + ", ".join(f"{a} AS {n}" for a, n in zip(aggregates, names))
        + " FROM usage_event WHERE enterprise_id = :e AND workflow = :w AND occurred_at >= :s AND occurred_at < :t"
        f" GROUP BY {key_list}), "
        f"up AS (INSERT INTO {table} AS r (enterprise_id, period, workflow, {key_list}, {', '.join(names)}) "
        f"SELECT :e, :p, :w, {key_list}, {', '.join(names)} FROM fresh "
        f"ON CONFLICT (enterprise_id, period, workflow, {key_list}) DO UPDATE SET "
        + ", ".join(f"{n} = excluded.{n}" for n in names)
        + f" WHERE ({', '.join(f'r.{n}' for n in names)}) IS DISTINCT FROM ({', '.join(f'excluded.{n}' for n in names)})) "
        f"DELETE FROM {table} r WHERE r.enterprise_id = :e AND r.period = :p AND r.workflow = :w "
        f"AND NOT EXISTS (SELECT 1 FROM fresh f WHERE " + " AND ".join(f"f.{k} = r.{k}" for k in keys) + ")"
    )


_BILLING_ROLLUP = _billing_rollup_sql("billing_rollup", ("wallet_id", "provider", "model", "meter"))
_CHAT_ROLLUP = _billing_rollup_sql(
    "chat_rollup", ("wallet_id", "chat_id"), (("first_at", "min(occurred_at)"), ("last_at", "max(occurred_at)"))
)
_AGENT_ROLLUP = _billing_rollup_sql("agent_rollup", ("agent",), figures=AGENT_FIGURES)


def refresh_billing_rollups(session: Session, enterprise_id: str, workflow: str, period: str) -> None:
    """Recompute the ``billing_rollup`` (per wallet × provider × model × meter), ``chat_rollup`` (per
    wallet × chat, with first and last turn) and ``agent_rollup`` (per agent) rows of one group from
    its usage events.  The drain keeps these rows exact at every commit
    (:data:`worker.ledger.turns._ROLLUPS`); this is the repair path for usage events written or
    deleted other than by the drain (a hand-made repair, tests' seeds), and the beat never runs it.
    Writes only rows whose figures changed; deletes rows whose events are gone.  Takes the group's
    exclusive billing lock first (:func:`_lock_billing`), so no drain adds to the group between the
    read of its events and this transaction's commit (see the module docstring); run it in READ
    COMMITTED.  Does not mark the group's workflow rollup dirty: refresh it (:func:`refresh_rollup`,
    in this transaction or later) or mark it (:func:`mark_dirty`).  Does not commit.  Raises ValueError naming
    ``enterprise_id``, ``workflow`` or ``period``."""
    start, end = _check_group(enterprise_id, workflow, period)
    _lock_billing(session, enterprise_id, workflow, period)
    params = {"e": enterprise_id, "w": workflow, "p": period, "s": start, "t": end}
    session.execute(text(_BILLING_ROLLUP), params)
    session.execute(text(_CHAT_ROLLUP), params)
    session.execute(text(_AGENT_ROLLUP), params)


def refresh_rollup(session: Session, enterprise_id: str, workflow: str, period: str) -> WorkflowRollup:
    """Recompute one group's rollup from its drain-kept sums (``chat_rollup``, ``agent_rollup``) and
    upsert ``workflow_rollup``.

    The group is ``enterprise_id`` × ``workflow`` × ``period`` (``'YYYY-MM'``, UTC); its dirty mark,
    if present and not held by another transaction, is consumed.  The document is
    :func:`build_document`'s; the typed columns hold the same totals (turns, sessions, tokens,
    ``cost_nanos``).  The drain-kept sums are read as they stand: after usage events were written or
    deleted other than by the drain, run :func:`refresh_billing_rollups` first (``tollgate rollup
    refresh … --repair`` does both).  Deterministic: a second refresh with no new turns writes nothing, not even
    ``refreshed_at`` (bumped only when the document or totals change).  A group without turns is
    stored as a rollup of zeros.  A period past ``settings.usage_retention_months`` keeps its stored
    rollup (its events are dropped; a late turn there must not shrink it).  Does not commit.

    Returns the stored :class:`WorkflowRollup` row.
    Raises: ValueError naming ``enterprise_id``, ``workflow`` or ``period``.
    """
    _check_group(enterprise_id, workflow, period)
    _lock_group(session, enterprise_id, workflow, period)
    _take_own_mark(session, enterprise_id, workflow, period)
    if _past_retention(period):  # its events are dropped: the stored rollup is the record now
        kept = get_rollup(session, enterprise_id, workflow, period)
        if kept is not None:
            return kept
    document, totals = _compute(session, enterprise_id, workflow, period)
    values = {
        "enterprise_id": enterprise_id,
        "workflow": workflow,
        "period": period,
        "document": document,
        "total_sessions": document["overall_avg"]["total_sessions"],
        "total_turns": totals["turns"],
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "cached_prompt_tokens": totals["cached_prompt_tokens"],
        "cost_nanos": totals["cost_nanos"],
    }
    wr = table_of(WorkflowRollup)
    stmt = insert(wr).values(**values)
    ex = stmt.excluded
    changed = [
        wr.c[name].is_distinct_from(ex[name]) for name in values if name not in ("enterprise_id", "workflow", "period")
    ]
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["enterprise_id", "workflow", "period"],
            set_={**{name: ex[name] for name in values}, "refreshed_at": func.now()},
            where=or_(*changed),
        )
    )
    return session.execute(
        select(WorkflowRollup)
        .where(
            col(WorkflowRollup.enterprise_id) == enterprise_id,
            col(WorkflowRollup.workflow) == workflow,
            col(WorkflowRollup.period) == period,
        )
        .execution_options(populate_existing=True)
    ).scalar_one()


def refresh_dirty(session: Session, limit: int = DEFAULT_DIRTY_LIMIT) -> int:
    """Take up to ``limit`` dirty marks (oldest first) and refresh their groups, all in this one
    transaction (the beat job and ``tollgate rollup refresh --all-dirty`` use
    :func:`worker.chats.jobs.refresh_dirty_groups` instead: one transaction per group).

    Marks are deleted in one statement (``DELETE … USING (SELECT … FOR UPDATE SKIP LOCKED)
    RETURNING``): concurrent jobs never take the same mark, and a mark a drain is writing right now
    is skipped (it stays and is taken by a later run).  If the transaction rolls back, the marks come
    back with it.  Running it twice in a row: the second run takes no mark and changes nothing.
    Does not commit.

    Returns the number of groups refreshed.
    Raises: ValueError for a ``limit`` that is not a positive integer.
    """
    groups = take_dirty(session, limit)
    for enterprise_id, workflow, period in groups:
        refresh_rollup(session, enterprise_id, workflow, period)
    return len(groups)


def take_dirty(session: Session, limit: int = DEFAULT_DIRTY_LIMIT) -> list[tuple[str, str, str]]:
    """Delete up to ``limit`` dirty marks (oldest first; marks a drain is writing are skipped) and
    return their groups ``(enterprise_id, workflow, period)``, sorted.  Commit this on its own before
    refreshing, so no drain waits on a mark for the length of a refresh; if a refresh then fails,
    :func:`mark_dirty` puts its groups back.  Raises ValueError for a bad ``limit``."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise InvalidInput("limit", f"must be a positive integer, got {limit!r}")
    taken = session.execute(
        text(
            "WITH taken AS MATERIALIZED ("
            "  SELECT enterprise_id, workflow, period FROM rollup_dirty"
            "  ORDER BY touched_at, enterprise_id, workflow, period LIMIT :limit FOR UPDATE SKIP LOCKED"
            ") DELETE FROM rollup_dirty d USING taken t"
            " WHERE d.enterprise_id = t.enterprise_id AND d.workflow = t.workflow AND d.period = t.period"
            " RETURNING d.enterprise_id, d.workflow, d.period"
        ),
        {"limit": limit},
    ).all()
    return sorted({(e, w, p) for e, w, p in taken})


def pending_dirty(session: Session, limit: int = DEFAULT_DIRTY_LIMIT) -> list[tuple[str, str, str]]:
    """Up to ``limit`` dirty groups ``(enterprise_id, workflow, period)``, oldest mark first, without
    taking them: each mark is deleted by :func:`refresh_rollup` in the transaction that stores the
    group's new rollup, so a job killed mid-run (SIGKILL: no handler runs) leaves every group it did
    not refresh marked.  Raises ValueError for a bad ``limit``."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise InvalidInput("limit", f"must be a positive integer, got {limit!r}")
    rd = RollupDirty
    return [
        tuple(row)
        for row in session.execute(
            select(col(rd.enterprise_id), col(rd.workflow), col(rd.period))
            .order_by(col(rd.touched_at), col(rd.enterprise_id), col(rd.workflow), col(rd.period))
            .limit(limit)
        ).all()
    ]


def mark_dirty(session: Session, groups: list[tuple[str, str, str]]) -> None:
    """Mark groups ``(enterprise_id, workflow, period)`` as needing a refresh (idempotent)."""
    if not groups:
        return
    rd = table_of(RollupDirty)
    stmt = insert(rd).values([{"enterprise_id": e, "workflow": w, "period": p} for e, w, p in sorted(groups)])
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["enterprise_id", "workflow", "period"], set_={"touched_at": func.now()}
        )
    )


def get_rollup(session: Session, enterprise_id: str, workflow: str, period: str) -> WorkflowRollup | None:
    """The stored rollup of one group, or None if it was never refreshed.  Raises ValueError."""
    _check_group(enterprise_id, workflow, period)
    return session.get(WorkflowRollup, (enterprise_id, workflow, period))


def workflow_averages(session: Session, enterprise_id: str, workflow: str, period: str) -> dict[str, Any]:
    """Per-session averages of one workflow in one period (UTC month).

    Source: the stored rollup (current up to the beat interval, ~60 s, or since the last
    :func:`end_chat`); if the group was never rolled up, computed now as :func:`build_document` does
    (from the drain-kept sums of its usage events; ``source`` ``usage_event``; nothing stored).  Returns::

        {"enterprise_id", "workflow", "period", "source": "rollup"|"usage_event",
         "refreshed_at": ISO string | None,
         "total_sessions", "total_turns",                       # counts
         "avg_prompt_tokens", "avg_completion_tokens", "avg_total_tokens",   # tokens, 2 decimals
         "avg_cost_nanos", "total_cost_nanos",                  # integer nano-USD
         "avg_cost_usd", "total_cost_usd",                      # decimal strings
         "avg_duration_sec"}                                    # seconds, 3 decimals

    See :func:`build_document` for the definitions.
    Raises: ValueError naming ``enterprise_id``, ``workflow`` or ``period``.
    """
    rollup = get_rollup(session, enterprise_id, workflow, period)
    if rollup is not None:
        overall, source, refreshed = rollup.document["overall_avg"], "rollup", _iso(rollup.refreshed_at)
    else:
        overall, source, refreshed = (
            build_document(session, enterprise_id, workflow, period)["overall_avg"],
            "usage_event",
            None,
        )
    return {
        "enterprise_id": enterprise_id,
        "workflow": workflow,
        "period": period,
        "source": source,
        "refreshed_at": refreshed,
        **overall,
    }


def chat_performance(session: Session, enterprise_id: str, chat_id: str) -> dict[str, Any]:
    """Performance metrics of one chat over its whole life, per agent.

    Source: the chat's running aggregates (``chat_session``, ``chat_agent_usage``), which the drain
    updates in the same transaction as the usage events: current as of the last drained batch.
    Returns::

        {"enterprise_id", "chat_id", "workflow", "status", "started_at", "ended_at", "last_turn_at",
         "turns", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "total_tokens",
         "cost_nanos", "cost_usd",
         "agents": {agent: {"turns", "avg_response_ms",            # ms, 2 decimals
                            "total_response_ms",                   # integer ms
                            "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "total_tokens",
                            "cost_nanos", "cost_usd"}}}

    Raises: LookupError naming ``enterprise_id`` and ``chat_id`` when the chat has no persisted turn;
    ValueError for an empty id.
    """
    _check_id(enterprise_id, "enterprise_id")
    _check_id(chat_id, "chat_id")
    chat = session.execute(
        select(ChatSession).where(col(ChatSession.enterprise_id) == enterprise_id, col(ChatSession.chat_id) == chat_id)
    ).scalar_one_or_none()
    if chat is None:
        raise UnknownChat(
            f"unknown chat: enterprise_id={enterprise_id!r} chat_id={chat_id!r} has no persisted turns", field="chat_id"
        )
    agents = {}
    for a in session.execute(
        select(ChatAgentUsage).where(col(ChatAgentUsage.chat_session_id) == chat.id).order_by(col(ChatAgentUsage.agent))
    ).scalars():
        agents[a.agent] = {
            "turns": a.turns,
            "avg_response_ms": _avg(a.duration_ms, a.turns),
            "total_response_ms": a.duration_ms,
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "cached_prompt_tokens": a.cached_prompt_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "cost_nanos": a.cost_nanos,
            "cost_usd": nanos_to_usd(a.cost_nanos),
        }
    return {
        "enterprise_id": enterprise_id,
        "chat_id": chat_id,
        "workflow": chat.workflow,
        "status": chat.status,
        "started_at": _iso(chat.started_at),
        "ended_at": _iso(chat.ended_at),
        "last_turn_at": _iso(chat.last_turn_at),
        "turns": chat.turns,
        "prompt_tokens": chat.prompt_tokens,
        "completion_tokens": chat.completion_tokens,
        "cached_prompt_tokens": chat.cached_prompt_tokens,
        "total_tokens": chat.prompt_tokens + chat.completion_tokens,
        "cost_nanos": chat.cost_nanos,
        "cost_usd": nanos_to_usd(chat.cost_nanos),
        "agents": agents,
    }


@dataclass(frozen=True)
class EndedChat:
    """What :func:`end_chat` did: the chat's ``ended_at`` (UTC), whether it was already completed
    before this call, and the rollups it refreshed (one per workflow × period with turns)."""

    enterprise_id: str
    chat_id: str
    ended_at: datetime
    already_completed: bool
    rollups: list[WorkflowRollup] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (rollups as ``[{"workflow", "period", "total_sessions", "total_turns",
        "cost_nanos"}]``)."""
        return {
            "enterprise_id": self.enterprise_id,
            "chat_id": self.chat_id,
            "ended_at": _iso(self.ended_at),
            "already_completed": self.already_completed,
            "rollups": [
                {
                    "workflow": r.workflow,
                    "period": r.period,
                    "total_sessions": r.total_sessions,
                    "total_turns": r.total_turns,
                    "cost_nanos": r.cost_nanos,
                }
                for r in self.rollups
            ],
        }


def chat_groups(session: Session, enterprise_id: str, chat_id: str) -> list[tuple[str, str]]:
    """The ``(workflow, period)`` groups a chat has persisted turns in, sorted."""
    utc = func.timezone(literal_column("'UTC'"), col(UsageEvent.occurred_at))  # occurred_at AT TIME ZONE 'UTC'
    period = func.to_char(utc, literal_column("'YYYY-MM'"))
    rows = session.execute(
        select(col(UsageEvent.workflow), period)
        .where(col(UsageEvent.enterprise_id) == enterprise_id, col(UsageEvent.chat_id) == chat_id)
        .group_by(col(UsageEvent.workflow), period)
    ).all()
    return sorted((w, p) for w, p in rows)


def end_chat(session: Session, *, enterprise_id: str, chat_id: str, ended_at: datetime | None = None) -> EndedChat:
    """Mark a chat completed and refresh, in this transaction, the rollup of every workflow × period
    the chat has persisted turns in (no wait for the beat job).

    ``ended_at`` (aware datetime; default: now, UTC) is recorded once: ending an already completed
    chat keeps its first ``ended_at`` (a retried task does not move it) and refreshes again.  Turns
    persisted later keep the chat completed (the drain never reopens it) and reach the rollup through
    the beat job.  Does not commit.

    Returns :class:`EndedChat`.
    Raises: LookupError naming ``enterprise_id`` and ``chat_id`` when no turn of the chat has been
    persisted yet (none drained, or a wrong id); ValueError for a naive ``ended_at`` or an empty id.
    """
    _check_id(enterprise_id, "enterprise_id")
    _check_id(chat_id, "chat_id")
    if ended_at is None:
        ended_at = datetime.now(UTC)
    elif not isinstance(ended_at, datetime) or ended_at.tzinfo is None:
        raise InvalidInput("ended_at", f"must be an aware datetime (UTC), got {ended_at!r}")
    ended_at = ended_at.astimezone(UTC)
    cs = table_of(ChatSession)
    # lock the chat row first (the drain locks chats before marks; we lock groups only after)
    row = session.execute(
        select(cs.c.id, cs.c.status, cs.c.ended_at)
        .where(cs.c.enterprise_id == enterprise_id, cs.c.chat_id == chat_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownChat(
            f"unknown chat: enterprise_id={enterprise_id!r} chat_id={chat_id!r} has no persisted turns", field="chat_id"
        )
    already = row.status == ChatStatus.completed and row.ended_at is not None
    if already:
        ended_at = row.ended_at.astimezone(UTC)
    else:
        session.execute(
            update(cs)
            .where(cs.c.id == row.id)
            .values(
                status=ChatStatus.completed.value,
                ended_at=ended_at,
                pause_reason=None,
                connection_state="ended",
                can_resume=False,
            )
        )
        pc = table_of(PausedChat)  # an ended chat is not waiting for funds any more
        session.execute(
            update(pc)
            .where(pc.c.enterprise_id == enterprise_id, pc.c.chat_id == chat_id, pc.c.resumed_at.is_(None))
            .values(resumed_at=ended_at, resumed_by="ended")
        )
    rollups = [
        refresh_rollup(session, enterprise_id, workflow, period)
        for workflow, period in chat_groups(session, enterprise_id, chat_id)
    ]
    return EndedChat(enterprise_id, chat_id, ended_at, already, rollups)
