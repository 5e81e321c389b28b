"""The chat family: a chat's billing session (``chat_session``), its per-agent figures
(``chat_agent_usage``) and pause records (``paused_chat``), and their API shapes."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field as PydanticField
from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    UniqueConstraint,
    func,
    text,
)
from sqlmodel import Field, SQLModel

from models.columns import big, enum_type, ts
from models.enums import ChatStatus, ConnectionState
from models.validation import Id, InputModel, Label, Nanos, UtcInWindow


class ChatSessionBase(SQLModel):
    """The fields of a chat's billing session that its table and its API shape share, in the API's
    order: the chat (``enterprise_id``, ``chat_id``), its paying wallet and workflow, its status,
    connection and pause state, when it started, ended and last had a turn, and its turn and token
    totals (as of the last drained batch)."""

    enterprise_id: str = Field(max_length=200, description="The app.")
    chat_id: str = Field(max_length=200, description="The chat's id.")
    wallet_id: str = Field(foreign_key="wallet.id", max_length=200, description="The wallet paying for the chat.")
    workflow: str = Field(max_length=200, description="The chat's workflow.")
    status: ChatStatus = Field(
        default=ChatStatus.active, sa_type=enum_type(ChatStatus, 20), description="`active`, `paused` or `completed`."
    )
    connection_state: ConnectionState = Field(
        default=ConnectionState.connected,
        sa_type=enum_type(ConnectionState, 20),
        sa_column_kwargs={"server_default": "connected"},
        description=(
            "`connected` (turns flow), `paused` (stopped), `resumable` (paused, and its wallet can pay "
            "again: resume it) or `ended`."
        ),
    )
    pause_reason: str | None = Field(
        default=None,
        max_length=200,
        description="Why the chat is paused (e.g. `wallet_exhausted`, `budget_exceeded`), or null.",
    )
    #: the chat is paused and its wallet can pay again: the orchestrator may resume it
    can_resume: bool = Field(
        default=False,
        sa_column_kwargs={"server_default": text("false")},
        description="True: the chat is paused and its wallet can pay again; `POST …/resume` will succeed.",
    )
    started_at: datetime = Field(sa_column=ts(nullable=False), description="When the chat started (UTC).")
    ended_at: datetime | None = Field(
        default=None, sa_column=ts(nullable=True), description="When the chat ended (UTC), or null."
    )
    last_turn_at: datetime = Field(
        sa_column=ts(nullable=False), description="When its latest recorded turn finished (UTC)."
    )
    turns: int = Field(default=0, description="Recorded turns.")
    prompt_tokens: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="Input tokens of its recorded turns.",
    )
    completion_tokens: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="Output tokens of its recorded turns.",
    )
    cached_prompt_tokens: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="The part of `prompt_tokens` read from the provider's cache.",
    )


class ChatSession(ChatSessionBase, table=True):
    """A billing session over one chat: its status and running token and cost totals."""

    __tablename__ = "chat_session"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "chat_id", name="uq_chat_session_enterprise_chat"),
        Index("ix_chat_session_wallet", "wallet_id"),
        # the /billing page's paused-chat counts per wallet (migration 0018): only the paused few
        Index("ix_chat_session_wallet_paused", "wallet_id", postgresql_where=text("status = 'paused'")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    paused_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    #: where in the gate's decision order the chat's state was last decided (``worker.ledger.turns.chat_order``):
    #: the deciding turn's outbox entry, or the outbox position of a pause, resume or credit; ''
    #: nothing decided yet.  Only a later position changes the state.
    state_key: str = Field(default="", max_length=100, sa_column_kwargs={"server_default": ""})
    cost_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    billed_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))


class ChatSessionCreate(InputModel):
    """A chat to open: who pays for it and the workflow its turns belong to."""

    wallet_id: Id = PydanticField(
        description="The wallet that pays for the chat: one of your app's, or the platform wallet your key was issued for."
    )
    workflow: Id = PydanticField("default", description="The workflow the chat runs, for analytics.")
    #: aware datetime, stored in UTC, inside the ``occurred_at`` window
    started_at: UtcInWindow | None = PydanticField(
        None, description="When the chat started: ISO 8601 with a UTC offset (default now)."
    )


class ChatSessionEnd(InputModel):
    """When a chat ended."""

    # aware datetime, stored in UTC; default now; inside the ``occurred_at`` window

    ended_at: UtcInWindow | None = PydanticField(
        None, description="When the chat ended: ISO 8601 with a UTC offset (default now)."
    )


class ChatAgentUsageBase(SQLModel):
    """One agent's figures in a chat that its table and its API shape share: turns, tokens and
    cost (nano-USD, at the prices charged)."""

    turns: int = Field(default=0, description="The agent's recorded turns.")
    prompt_tokens: int = Field(
        default=0, sa_column=big(nullable=False, server_default=text("0")), description="Its input tokens."
    )
    completion_tokens: int = Field(
        default=0, sa_column=big(nullable=False, server_default=text("0")), description="Its output tokens."
    )
    cached_prompt_tokens: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="The part of its input tokens read from the provider's cache.",
    )
    cost_nanos: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="Its cost at the prices charged, nano-USD.",
    )


class ChatAgentUsage(ChatAgentUsageBase, table=True):
    """Per-agent usage within one chat session (agents are discovered from the turns);
    ``duration_ms`` is the sum of their response times."""

    __tablename__ = "chat_agent_usage"

    chat_session_id: int = Field(sa_column=Column(BigInteger, ForeignKey("chat_session.id"), primary_key=True))
    agent: str = Field(primary_key=True, max_length=200)
    duration_ms: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))


class ChatAgentUsagePublic(ChatAgentUsageBase):
    """One agent's figures in a chat: turns, tokens, cost (nano-USD) and response time (ms)."""

    # total_response_ms is the table's duration_ms

    avg_response_ms: float = Field(description="Its average response time, milliseconds (2 decimals).")
    total_response_ms: int = Field(description="The sum of its response times, milliseconds.")
    total_tokens: int = Field(description="`prompt_tokens` + `completion_tokens`.")
    cost_usd: str = Field(description="`cost_nanos` as a decimal USD string, for display.")


class ChatSessionPublic(ChatSessionBase):
    """A chat: its state, and its totals and per-agent figures over its recorded turns (up to a few
    seconds ago). Times are UTC, ISO 8601."""

    # totals as of the last drained batch

    total_tokens: int = Field(description="`prompt_tokens` + `completion_tokens`.")
    cost_nanos: int = Field(description="The chat's cost at the prices charged, nano-USD.")
    cost_usd: str = Field(description="`cost_nanos` as a decimal USD string, for display.")
    agents: dict[str, ChatAgentUsagePublic] = Field(description="Per-agent figures, by agent name.")


class PausedChat(SQLModel, table=True):
    """A chat stopped for lack of funds (or by a budget): why, when, and what is needed to resume.

    At most one open record (``resumed_at IS NULL``) per chat (partial unique index).  A credit that
    makes the wallet able to pay again marks every open record of that wallet resumed, once
    (``UPDATE … WHERE resumed_at IS NULL RETURNING``), and tells the orchestrator.
    """

    __tablename__ = "paused_chat"
    __table_args__ = (
        Index(
            "uq_paused_chat_open", "enterprise_id", "chat_id", unique=True, postgresql_where=text("resumed_at IS NULL")
        ),
        Index("ix_paused_chat_wallet_open", "wallet_id", postgresql_where=text("resumed_at IS NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enterprise_id: str = Field(max_length=200)
    chat_id: str = Field(max_length=200)
    wallet_id: str = Field(max_length=200)
    reason: str = Field(max_length=200)  # 'wallet_exhausted', 'trial_exhausted', 'budget_exceeded', …
    #: nano-USD the wallet needs on top of its balance and reservations before the chat can go on
    needed_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    paused_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    resumed_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    #: what resumed it: the credit's idempotency key, 'mode_change', …
    resumed_by: str | None = Field(default=None, max_length=300)


class PausedChatCreate(InputModel):
    """Why a chat is paused, and what its wallet needs before it can go on."""

    reason: Label = PydanticField(
        "paused_by_orchestrator", description="Why you pause it: a short label (default `paused_by_orchestrator`)."
    )
    needed_nanos: Nanos | None = PydanticField(
        None,
        description="Nano-USD the wallet must have available before the chat can go on (default: what it lacks now).",
    )
    wallet_id: Id | None = PydanticField(
        None, description="The paying wallet: needed only for a chat with no recorded turn yet."
    )
