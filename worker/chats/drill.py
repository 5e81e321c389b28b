"""Drill-down reads for the ``/billing`` page: one chat (its running figures, per-agent figures and
a keyset-paged list of its turns), one workflow's month (the rollup's averages, agents and chats),
and the first month an app has data in (the month picker's lower bound).

Read only; money in integer nano-USD, tokens integers.  Every query is narrowed to one app:

- a chat's turns: ``usage_event`` by ``(enterprise_id, chat_id)`` (index
  ``ix_usage_event_enterprise_chat``) and ``occurred_at`` between the chat's ``started_at`` and
  ``last_turn_at`` (which the drain keeps as the least and greatest ``occurred_at`` of its turns), so
  PostgreSQL prunes the monthly partitions outside the chat's life; each page starts after a keyset
  cursor ``(occurred_at, id)``, never an OFFSET;
- a workflow's month: the stored rollup (``workflow_rollup``, one row by primary key), or when the
  group was never rolled up, :func:`worker.chats.rollups.build_document` (the group's drain-kept
  ``chat_rollup`` and ``agent_rollup`` rows, by primary-key prefix ``(enterprise_id, period,
  workflow)``);
- the first month: ``min(period)`` of the app's rollups (primary-key prefix ``enterprise_id``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Text, column, func, literal_column, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from models.chat import ChatAgentUsage, ChatSession
from models.rollup import WorkflowRollup
from models.turn import UsageEvent
from worker.chats.rollups import UnknownChat, build_document
from worker.errors import InvalidInput
from worker.periods import period_bounds

#: turns on one page of a chat's turn list (default and most)
TURNS_PER_PAGE = 50
MAX_TURNS_PER_PAGE = 200
#: chats listed on a workflow page (by cost, then chat id)
WORKFLOW_TOP_CHATS = 20
# ASCII digits only (``\d`` alone also takes other scripts' digits, which ``int`` reads)
_CURSOR = re.compile(r"(\d{1,17})\.(\d{1,19})", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AgentFigures:
    """One agent's figures in a chat (``chat_agent_usage``): turns, tokens, cost in nano-USD and the
    sum of its response times in ms."""

    agent: str
    turns: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    duration_ms: int

    @property
    def total_tokens(self) -> int:
        """Prompt + completion tokens (cached prompt tokens are part of the prompt)."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def avg_response_ms(self) -> int:
        """Mean response time, whole ms rounded half-up (0 without turns)."""
        return (2 * self.duration_ms + self.turns) // (2 * self.turns) if self.turns else 0


@dataclass(frozen=True, slots=True)
class TurnRow:
    """One persisted turn (a ``usage_event`` row): when, who, what it used and cost, how long the
    model took (``duration_ms``) and what the gate answered (``action``: continue or pause)."""

    id: int
    occurred_at: datetime
    agent: str
    provider: str
    model: str
    meter: str
    quantity: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    billed_nanos: int
    duration_ms: int
    action: str
    mode: str

    @property
    def cursor(self) -> str:
        """The keyset cursor just after this turn: ``"<µs since the epoch>.<id>"``."""
        return f"{(self.occurred_at - _EPOCH) // timedelta(microseconds=1)}.{self.id}"


@dataclass(frozen=True, slots=True)
class TurnPage:
    """``rows`` (oldest first) of one page and ``next_cursor`` for the page after it (None on the last)."""

    rows: list[TurnRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ChatView:
    """A chat as the drain left it: its session row (status, wallet, workflow, times, running totals
    over its whole life) and its agents (by cost, then name).  ``sum`` of the agents' figures equals
    the session's (the drain updates both in one statement)."""

    chat: ChatSession
    agents: list[AgentFigures]


def parse_cursor(raw: str | None, field: str = "cursor") -> tuple[datetime, int] | None:
    """A cursor from :attr:`TurnRow.cursor` → ``(occurred_at, id)``; None for None or ``""``.
    Raises InvalidInput naming ``field`` (the query parameter that carried it) for anything else."""
    if raw is None or raw == "":
        return None
    m = _CURSOR.fullmatch(raw)
    if not m:
        raise InvalidInput(field, f"{raw!r} is not a page cursor of this list (use the page's links)")
    try:
        at = _EPOCH + timedelta(microseconds=int(m.group(1)))
    except OverflowError:
        at = None
    if at is None or int(m.group(2)) > 2**63 - 1:
        raise InvalidInput(field, f"{raw!r} is out of range")
    return at, int(m.group(2))


def chat_view(session: Session, enterprise_id: str, chat_id: str) -> ChatView:
    """The session row and per-agent figures of ``chat_id`` in ``enterprise_id``.

    Raises UnknownChat (field ``chat_id``) when the app has no such chat (no turn persisted yet)."""
    chat = session.execute(
        select(ChatSession).where(col(ChatSession.enterprise_id) == enterprise_id, col(ChatSession.chat_id) == chat_id)
    ).scalar_one_or_none()
    if chat is None:
        raise UnknownChat(f"chat_id: no chat {chat_id!r} in this app", field="chat_id")
    au = ChatAgentUsage
    agents = [
        AgentFigures(
            a.agent, a.turns, a.prompt_tokens, a.cached_prompt_tokens, a.completion_tokens, a.cost_nanos, a.duration_ms
        )
        for a in session.execute(
            select(au).where(col(au.chat_session_id) == chat.id).order_by(col(au.cost_nanos).desc(), col(au.agent))
        ).scalars()
    ]
    return ChatView(chat, agents)


def turn_page(
    session: Session, chat: ChatSession, *, after: tuple[datetime, int] | None = None, limit: int = TURNS_PER_PAGE
) -> TurnPage:
    """Up to ``limit`` (1..:data:`MAX_TURNS_PER_PAGE`) turns of ``chat``, oldest first, after the
    keyset position ``after`` (``(occurred_at, id)`` from :func:`parse_cursor`; None: from the first).

    Raises InvalidInput naming ``limit``."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TURNS_PER_PAGE:
        raise InvalidInput("limit", f"must be 1..{MAX_TURNS_PER_PAGE}, got {limit!r}")
    ue = UsageEvent
    where = [
        col(ue.enterprise_id) == chat.enterprise_id,
        col(ue.chat_id) == chat.chat_id,
        col(ue.occurred_at) >= chat.started_at,  # partition pruning: the chat's life only
        col(ue.occurred_at) <= chat.last_turn_at,
    ]
    if after is not None:
        where += [col(ue.occurred_at) >= after[0], tuple_(col(ue.occurred_at), col(ue.id)) > tuple_(*after)]
    rows = session.execute(
        select(
            col(ue.id),
            col(ue.occurred_at),
            col(ue.agent),
            col(ue.provider),
            col(ue.model),
            col(ue.meter),
            col(ue.quantity),
            col(ue.prompt_tokens),
            col(ue.cached_prompt_tokens),
            col(ue.completion_tokens),
            col(ue.cost_nanos),
            col(ue.billed_nanos),
            col(ue.duration_ms),
            col(ue.action),
            col(ue.mode),
        )
        .where(*where)
        .order_by(col(ue.occurred_at), col(ue.id))
        .limit(limit + 1)
    ).all()
    turns = [
        TurnRow(
            int(r[0]),
            r[1],
            r[2],
            r[3],
            r[4],
            str(r[5]),
            int(r[6]),
            int(r[7]),
            int(r[8]),
            int(r[9]),
            int(r[10]),
            int(r[11]),
            int(r[12]),
            str(r[13]),
            str(r[14]),
        )
        for r in rows[:limit]
    ]
    return TurnPage(turns, turns[-1].cursor if len(rows) > limit else None)


@dataclass(frozen=True, slots=True)
class WorkflowView:
    """One workflow's month: ``averages`` (the rollup document's ``overall_avg``: counts, integer
    nano-USD, tokens with 2 decimals, seconds with 3), where they come from (``source``: ``rollup``
    or ``usage_event`` when never rolled up; ``refreshed_at``), and with ``detail`` its ``agents``
    (name → the document's agent figures) and ``chats`` (the :data:`WORKFLOW_TOP_CHATS` costliest,
    ``(chat_id, figures)``); ``chats_count`` chats in all."""

    enterprise_id: str
    workflow: str
    period: str
    source: str
    refreshed_at: datetime | None
    averages: dict[str, Any]
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    chats: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chats_count: int = 0


def workflow_view(session: Session, enterprise_id: str, workflow: str, period: str, *, detail: bool) -> WorkflowView:
    """The month ``period`` ('YYYY-MM') of ``workflow`` in ``enterprise_id``: from the stored rollup,
    else computed now (:func:`worker.chats.rollups.build_document`: from the drain-kept sums of its
    usage events; ``source`` ``usage_event``; nothing stored).  ``detail`` False (an admin) leaves
    out agents and chats (the document names chats; the API gives admins the averages only).

    With a stored rollup, PostgreSQL picks the parts out of its document (``overall_avg``,
    ``agents``, the number of chats and the costliest :data:`WORKFLOW_TOP_CHATS`): a month with
    100,000 chats is not shipped to and parsed by Python on every page view.

    Raises ValueError (InvalidInput) naming ``enterprise_id``, ``workflow`` or ``period``."""
    period_bounds(period)  # ValueError naming the period
    wr = WorkflowRollup
    doc = col(wr.document)
    key = (col(wr.enterprise_id) == enterprise_id, col(wr.workflow) == workflow, col(wr.period) == period)
    stored = session.execute(
        select(
            col(wr.refreshed_at),
            doc["overall_avg"],
            doc["agents"],
            select(func.count()).select_from(func.jsonb_object_keys(doc["chat_sessions"])).scalar_subquery(),
        ).where(*key)
    ).one_or_none()
    if stored is None:
        built = build_document(session, enterprise_id, workflow, period)
        chats = built["chat_sessions"]
        top = sorted(chats.items(), key=lambda kv: (-int(kv[1]["cost_nanos"]), kv[0]))[:WORKFLOW_TOP_CHATS]
        averages, agents, count, source, refreshed = (
            built["overall_avg"],
            built["agents"],
            len(chats),
            "usage_event",
            None,
        )
    else:
        refreshed, averages, agents, count = stored
        source = "rollup"
        top = []
        if detail:
            each = (
                func.jsonb_each(doc["chat_sessions"])
                .table_valued(column("key", Text), column("value", JSONB))
                .render_derived()
            )
            top = [
                (str(k), dict(v))
                for k, v in session.execute(
                    select(each.c.key, each.c.value)
                    .select_from(wr)
                    .join(each, literal_column("true"))
                    .where(*key)
                    .order_by(each.c.value["cost_nanos"].astext.cast(BigInteger).desc(), each.c.key)
                    .limit(WORKFLOW_TOP_CHATS)
                )
            ]
    return WorkflowView(
        enterprise_id,
        workflow,
        period,
        source,
        refreshed,
        dict(averages),
        dict(agents or {}) if detail else {},
        top if detail else [],
        int(count or 0),
    )


def chat_last_turns(session: Session, enterprise_id: str, chat_ids: list[str]) -> dict[str, tuple[str, datetime]]:
    """``{chat_id: (status, last_turn_at)}`` of the listed chats of ``enterprise_id`` that have a
    session row (one query on the unique ``(enterprise_id, chat_id)`` index; ``{}`` for no ids)."""
    if not chat_ids:
        return {}
    cs = ChatSession
    return {
        str(c): (str(status), last)
        for c, status, last in session.execute(
            select(col(cs.chat_id), col(cs.status), col(cs.last_turn_at)).where(
                col(cs.enterprise_id) == enterprise_id, col(cs.chat_id).in_(chat_ids)
            )
        )
    }


def workflow_rollups(session: Session, enterprise_id: str, period: str) -> list[WorkflowRollup]:
    """The stored rollups of ``enterprise_id`` in ``period``, by cost (descending) then workflow."""
    wr = WorkflowRollup
    return list(
        session.execute(
            select(wr)
            .where(col(wr.enterprise_id) == enterprise_id, col(wr.period) == period)
            .order_by(col(wr.cost_nanos).desc(), col(wr.workflow))
        ).scalars()
    )


def first_period(session: Session, enterprise_id: str) -> str | None:
    """The first month ('YYYY-MM') the app has rolled-up usage in (rollups are kept past the
    usage retention), or None when it has none yet."""
    wr = WorkflowRollup
    found = session.execute(
        select(func.min(col(wr.period))).where(col(wr.enterprise_id) == enterprise_id, col(wr.total_turns) > 0)
    ).scalar_one_or_none()
    return str(found) if found else None


__all__ = [
    "AgentFigures",
    "ChatView",
    "MAX_TURNS_PER_PAGE",
    "TURNS_PER_PAGE",
    "TurnPage",
    "TurnRow",
    "WORKFLOW_TOP_CHATS",
    "WorkflowView",
    "chat_last_turns",
    "chat_view",
    "first_period",
    "parse_cursor",
    "turn_page",
    "workflow_rollups",
    "workflow_view",
]
