"""The rollup family: pre-computed workflow × month summaries (``workflow_rollup``), the billing
page's finer sums of the same groups (``billing_rollup``, ``chat_rollup``), their dirty marks
(``rollup_dirty``), and the API's aggregate shapes (rollups, averages, analytics buckets)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import BigInteger, Column, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from models.columns import big, ts


class RollupDirty(SQLModel, table=True):
    """A (enterprise, workflow, month) whose rollup is out of date: the drain marks it in the same
    transaction as the usage events (``ON CONFLICT DO UPDATE``, so the row lock orders it against a
    refresh that is deleting it); the rollup job refreshes and deletes it."""

    __tablename__ = "rollup_dirty"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    touched_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class WorkflowRollupBase(SQLModel):
    """The totals of one enterprise × workflow × calendar month (UTC) that the rollup table and its
    API shape share: sessions, turns, tokens, cost (nano-USD), when it was refreshed."""

    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)
    total_sessions: int = 0
    total_turns: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    completion_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    cached_prompt_tokens: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    cost_nanos: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    refreshed_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class WorkflowRollup(WorkflowRollupBase, table=True):
    """The pre-computed summary of one enterprise × workflow × calendar month (UTC): the seed's
    ``mon_{enterprise_id}_{workflow_name}`` document (JSONB, money in nanos) plus typed totals."""

    __tablename__ = "workflow_rollup"

    document: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))


def _figure() -> Any:
    """A BIGINT NOT NULL DEFAULT 0 sum column (a new Column per table that inherits it)."""
    return Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")})


class RollupFigures(SQLModel):
    """The sums over a set of usage events that the billing rollups keep (``worker.billing.report.Figures``):
    ``events`` rows, meter ``quantity`` (base units), tokens, and money in integer nano-USD."""

    events: int = _figure()
    quantity: int = _figure()
    prompt_tokens: int = _figure()
    cached_prompt_tokens: int = _figure()
    completion_tokens: int = _figure()
    cost_nanos: int = _figure()
    billed_nanos: int = _figure()
    creator_share_nanos: int = _figure()
    platform_fee_nanos: int = _figure()


class BillingRollup(RollupFigures, table=True):
    """The usage events of one enterprise × UTC month × workflow × wallet × provider × model × meter,
    summed (the ``/billing`` report's lines, budgets and six-month history read these, not
    ``usage_event``).  Recomputed whole with its workflow rollup group (enterprise, workflow, month)
    by ``worker.chats.rollups.refresh_rollup``; while the group is marked in ``rollup_dirty`` the
    report reads that group from ``usage_event`` instead (``worker.billing.report``)."""

    __tablename__ = "billing_rollup"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    workflow: str = Field(primary_key=True, max_length=200)
    wallet_id: str = Field(primary_key=True, max_length=200)
    provider: str = Field(primary_key=True, max_length=100)
    model: str = Field(primary_key=True, max_length=200)
    meter: str = Field(primary_key=True, max_length=50)


class ChatRollup(RollupFigures, table=True):
    """The usage events of one enterprise × UTC month × workflow × wallet × chat, summed, with the
    chat's first and last turn in the month (the ``/billing`` report's top chats).  Kept as
    :class:`BillingRollup` is."""

    __tablename__ = "chat_rollup"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    workflow: str = Field(primary_key=True, max_length=200)
    wallet_id: str = Field(primary_key=True, max_length=200)
    chat_id: str = Field(primary_key=True, max_length=200)
    first_at: datetime = Field(sa_column=ts(nullable=False))
    last_at: datetime = Field(sa_column=ts(nullable=False))


class WorkflowRollupPublic(WorkflowRollupBase):
    """The totals of one enterprise × workflow × month (UTC) rollup.  ``document`` is the seed's
    ``mon_{enterprise}_{workflow}`` document, given to the app's owner only (it names chats):
    ``WorkflowRollupPublic.model_validate(row, update={"document": None})`` for anyone else."""

    document: dict[str, Any] | None = None


class WorkflowRollupsPublic(BaseModel):
    """The rollups of one app in one period, by workflow."""

    data: list[WorkflowRollupPublic]
    count: int


class WorkflowAveragesPublic(BaseModel):
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


class UsageBucketPublic(BaseModel):
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


class UsageBucketsPublic(BaseModel):
    """Usage analytics of one app over ``[start, end)``."""

    enterprise_id: str
    granularity: str
    group_by: list[str]
    start: date
    end: date
    data: list[UsageBucketPublic]
    count: int
