"""The chat family: a chat's billing session (``chat_session``), its per-agent figures
(``chat_agent_usage``) and pause records (``paused_chat``), and their API shapes."""

from __future__ import annotations

from datetime import datetime

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

    enterprise_id: str = Field(max_length=200)
    chat_id: str = Field(max_length=200)
    wallet_id: str = Field(foreign_key="wallet.id", max_length=200)
    workflow: str = Field(max_length=200)
    status: ChatStatus = Field(default=ChatStatus.active, sa_type=enum_type(ChatStatus, 20))
    connection_state: ConnectionState = Field(
        default=ConnectionState.connected,
        sa_type=enum_type(ConnectionState, 20),
        sa_column_kwargs={"server_default": "connected"},
    )
    pause_reason: str | None = Field(default=None, max_length=200)
    #: the chat is paused and its wallet can pay again: the orchestrator may resume it
    can_resume: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    started_at: datetime = Field(sa_column=ts(nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    last_turn_at: datetime = Field(sa_column=ts(nullable=False))
    turns: int = 0
    prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))


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
    """A chat's billing session to open: the paying ``wallet_id`` (of the caller's app, or the
    platform wallet the key was issued for) and the ``workflow`` its turns belong to."""

    wallet_id: Id
    workflow: Id = "default"
    #: when the chat started (aware datetime, UTC; default now; inside the ``occurred_at`` window)
    started_at: UtcInWindow | None = None


class ChatSessionEnd(InputModel):
    """When a chat ended (aware datetime, UTC; default now; inside the ``occurred_at`` window)."""

    ended_at: UtcInWindow | None = None


class ChatAgentUsageBase(SQLModel):
    """One agent's figures in a chat that its table and its API shape share: turns, tokens and
    cost (nano-USD, at the prices charged)."""

    turns: int = 0
    prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    cost_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))


class ChatAgentUsage(ChatAgentUsageBase, table=True):
    """Per-agent usage within one chat session (agents are discovered from the turns);
    ``duration_ms`` is the sum of their response times."""

    __tablename__ = "chat_agent_usage"

    chat_session_id: int = Field(sa_column=Column(BigInteger, ForeignKey("chat_session.id"), primary_key=True))
    agent: str = Field(primary_key=True, max_length=200)
    duration_ms: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))


class ChatAgentUsagePublic(ChatAgentUsageBase):
    """One agent's figures in a chat: turns, tokens and cost (nano-USD), and its response time:
    ``avg_response_ms`` (ms, 2 decimals) and ``total_response_ms`` (the table's ``duration_ms``)."""

    avg_response_ms: float
    total_response_ms: int
    total_tokens: int
    cost_usd: str


class ChatSessionPublic(ChatSessionBase):
    """A chat session: status, connection and pause state, totals and per-agent figures (as of the
    last drained batch); times in UTC, ISO 8601 with ``Z`` in JSON."""

    total_tokens: int
    cost_nanos: int
    cost_usd: str
    agents: dict[str, ChatAgentUsagePublic]


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
    """Why a chat is paused, and the nano-USD its wallet needs before it can go on (default: what
    it lacks now)."""

    reason: Label = "paused_by_orchestrator"
    needed_nanos: Nanos | None = None
    #: the paying wallet, needed only for a chat with no persisted turn yet
    wallet_id: Id | None = None
