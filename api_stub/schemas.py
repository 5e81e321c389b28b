"""Pydantic schemas of the HTTP API's requests and answers (beyond ``models.schemas``' turn and
decision).  Money is integer nano-USD (``*_nanos``); ``*_usd`` fields are decimal strings for display;
token counts are integers; times are ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.validation import FreeText, Id, Label, UtcInWindow

#: nano-USD of one credit or hold: an integer, strictly typed (no floats, no strings)
Nanos = Annotated[int, Field(strict=True, ge=0, le=2**62)]
PositiveNanos = Annotated[int, Field(strict=True, gt=0, le=2**62)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReservationIn(_In):
    """A hold to place on a wallet before an LLM call, for ``ttl_s`` seconds (1..86,400): either
    ``amount_nanos`` (the estimate, nano-USD, 1..2^62), or ``model`` (+ ``provider``),
    ``prompt_tokens`` and ``max_tokens``, which the gate prices at the worst case (every prompt
    token at the input price, ``max_tokens`` at the output price).  The same ``reservation_id``
    twice is one hold.  422 naming ``amount_nanos`` for neither or both, 0 or a negative amount.
    ``service_tier`` (with ``model``): the provider tier the call asks for (OpenAI's ``priority``,
    ``flex``, …), priced as a turn of that tier; 422 naming ``service_tier`` for a tier the model has
    no price for, or a tier without ``model``."""

    amount_nanos: PositiveNanos | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    prompt_tokens: Annotated[int, Field(strict=True, ge=0, le=10**9)] = 0
    max_tokens: Annotated[int, Field(strict=True, ge=0, le=10**9)] | None = None
    service_tier: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")] | None = None
    ttl_s: Annotated[int, Field(strict=True, ge=1, le=86_400)] = 300
    reservation_id: Id | None = None


class ReservationPublic(BaseModel):
    """The gate's answer to a reservation: ``granted`` or refused; ``amount_nanos`` held; the
    wallet's ``balance_nanos`` and total ``held_nanos`` right after (available = balance − held)."""

    reservation_id: str
    wallet_id: str
    granted: bool
    amount_nanos: int
    balance_nanos: int
    held_nanos: int
    duplicate: bool


class ReleasePublic(BaseModel):
    """A hold given back: ``released_nanos`` (0 when it was already settled, released or expired)."""

    reservation_id: str
    wallet_id: str
    released_nanos: int


class CreditIn(_In):
    """A credit to a wallet: ``amount_nanos`` (> 0, nano-USD) once per ``idempotency_key``
    (1..200 characters, e.g. a payment id; the same key again credits nothing more)."""

    amount_nanos: PositiveNanos
    idempotency_key: Id
    description: FreeText = ""


class CreditPublic(BaseModel):
    """A credit applied: the wallet's gate balance after it, nano-USD (None for an admin key: an
    admin sees aggregates, never one end user's balance); ``replayed`` when the key had already been
    used (nothing changed)."""

    wallet_id: str
    amount_nanos: int
    idempotency_key: str
    balance_nanos: int | None
    replayed: bool


class LedgerEntry(BaseModel):
    """One ledger entry of a wallet (``wallet_transaction``): a credit, or the debit of the turns of
    one drained batch (``turns`` of them), nano-USD."""

    id: int
    kind: str
    amount_nanos: int
    turns: int
    idempotency_key: str
    description: str
    created_at: datetime


class LedgerPage(BaseModel):
    """A page of ledger entries, newest first; pass ``next_cursor`` as ``cursor`` for the next page
    (``None``: last page)."""

    wallet_id: str
    data: list[LedgerEntry]
    count: int
    next_cursor: int | None


class AgentPerformance(BaseModel):
    """One agent's figures in a chat: turns, response time (ms), tokens and cost (nano-USD)."""

    turns: int
    avg_response_ms: float
    total_response_ms: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    total_tokens: int
    cost_nanos: int
    cost_usd: str


class ChatPublic(BaseModel):
    """A chat session: status, connection and pause state, totals and per-agent figures (as of the
    last drained batch)."""

    enterprise_id: str
    chat_id: str
    wallet_id: str
    workflow: str
    status: str
    connection_state: str
    pause_reason: str | None
    can_resume: bool
    started_at: str | None
    ended_at: str | None
    last_turn_at: str | None
    turns: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    total_tokens: int
    cost_nanos: int
    cost_usd: str
    agents: dict[str, AgentPerformance]


class ChatEndIn(_In):
    """When a chat ended (aware datetime, UTC; default now; inside the ``occurred_at`` window)."""

    ended_at: UtcInWindow | None = None


class ChatStartIn(_In):
    """A chat's billing session to open: the paying ``wallet_id`` (of the caller's app, or the
    platform wallet the key was issued for) and the ``workflow`` its turns belong to."""

    wallet_id: Id
    workflow: Id = "default"
    #: when the chat started (aware datetime, UTC; default now; inside the ``occurred_at`` window)
    started_at: UtcInWindow | None = None


class ChatPauseIn(_In):
    """Why a chat is paused, and the nano-USD its wallet needs before it can go on (default: what
    it lacks now)."""

    reason: Label = "paused_by_orchestrator"
    needed_nanos: Nanos | None = None
    #: the paying wallet, needed only for a chat with no persisted turn yet
    wallet_id: Id | None = None


class ModeIn(_In):
    """A billing mode: production, development, trial or track_only.  On a wallet, ``null`` makes it
    follow its app's default mode again."""

    mode: Literal["production", "development", "trial", "track_only"] | None


class ModePublic(BaseModel):
    """A mode after a change: the app's default (``wallets_changed`` followed it) or one wallet's."""

    mode: str
    enterprise_id: str | None = None
    wallet_id: str | None = None
    wallets_changed: int | None = None


class RollupSummary(BaseModel):
    """The totals of one enterprise × workflow × month (UTC) rollup.  ``document`` is the seed's
    ``mon_{enterprise}_{workflow}`` document, given to the app's owner only (it names chats)."""

    enterprise_id: str
    workflow: str
    period: str
    total_sessions: int
    total_turns: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cost_nanos: int
    refreshed_at: datetime
    document: dict[str, Any] | None = None


class RollupList(BaseModel):
    """The rollups of one app in one period, by workflow."""

    data: list[RollupSummary]
    count: int


class WorkflowAverages(BaseModel):
    """Per-session averages of one workflow in one month (see ``worker.chats.rollups.workflow_averages``)."""

    enterprise_id: str
    workflow: str
    period: str
    source: Literal["rollup", "usage_event"]
    refreshed_at: str | None
    total_sessions: int
    total_turns: int
    total_cost_nanos: int
    total_cost_usd: str
    avg_cost_nanos: int
    avg_cost_usd: str
    avg_prompt_tokens: float
    avg_completion_tokens: float
    avg_total_tokens: float
    avg_duration_sec: float


class AnalyticsRow(BaseModel):
    """Usage of one time bucket (and group): turns, tokens, cost and billed nano-USD.  Group keys
    not asked for are ``None``."""

    bucket: date
    workflow: str | None = None
    agent: str | None = None
    model: str | None = None
    provider: str | None = None
    turns: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cost_nanos: int
    billed_nanos: int


class AnalyticsPage(BaseModel):
    """Usage analytics of one app over ``[start, end)``."""

    enterprise_id: str
    granularity: str
    group_by: list[str]
    start: date
    end: date
    data: list[AnalyticsRow]
    count: int


class UsageRow(BaseModel):
    """One persisted turn, with the prices it was charged at (nano-USD per million tokens)."""

    id: int
    turn_id: str
    occurred_at: datetime
    enterprise_id: str
    wallet_id: str
    chat_id: str
    workflow: str
    agent: str
    model: str
    provider: str
    mode: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    duration_ms: int
    input_nanos_per_mtok: int
    cached_input_nanos_per_mtok: int
    output_nanos_per_mtok: int
    cost_nanos: int
    billed_nanos: int
    action: str


class UsagePage(BaseModel):
    """A page of persisted turns of one month (UTC), oldest first; pass ``next_cursor`` as
    ``cursor`` for the next page (``None``: last page)."""

    period: str
    data: list[UsageRow]
    count: int
    next_cursor: int | None
