"""The rollup family: pre-computed workflow × month summaries (``workflow_rollup``), the finer sums
of the same groups that the drain keeps (``billing_rollup``, ``chat_rollup``, ``agent_rollup``), their
dirty marks (``rollup_dirty``), and the API's aggregate shapes (rollups, averages, analytics buckets)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
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

    enterprise_id: str = Field(primary_key=True, max_length=200, description="The app.")
    workflow: str = Field(primary_key=True, max_length=200, description="The workflow.")
    period: str = Field(primary_key=True, max_length=7, description="The month, UTC: `YYYY-MM`.")
    total_sessions: int = Field(default=0, description="Chats of the workflow with turns in the month.")
    total_turns: int = Field(
        default=0, sa_column=big(nullable=False, server_default=text("0")), description="Recorded turns."
    )
    prompt_tokens: int = Field(
        default=0, sa_column=big(nullable=False, server_default=text("0")), description="Input tokens."
    )
    completion_tokens: int = Field(
        default=0, sa_column=big(nullable=False, server_default=text("0")), description="Output tokens."
    )
    cached_prompt_tokens: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="The part of `prompt_tokens` read from the provider's cache.",
    )
    cost_nanos: int = Field(
        default=0,
        sa_column=big(nullable=False, server_default=text("0")),
        description="Cost at the prices charged, nano-USD.",
    )
    refreshed_at: datetime = Field(
        sa_column=ts(nullable=False, server_default=func.now()),
        description="When these totals were last computed (UTC).",
    )


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
    ``usage_event``).  Kept incrementally by the drain, in the transaction that inserts the events
    (``worker.ledger.turns._ROLLUPS``); recomputed whole per group (enterprise, workflow, month) from
    the events by ``worker.chats.rollups.refresh_billing_rollups``, the repair path."""

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


class AgentRollup(SQLModel, table=True):
    """The usage events of one enterprise × UTC month × workflow × agent, summed: ``events`` rows,
    ``duration_ms`` (the turns' response times, milliseconds), tokens, and ``cost_nanos`` (cost at
    the prices charged, nano-USD); BIGINT sums.  The workflow rollup's per-agent figures
    (``worker.chats.rollups.build_document``) read these, not the month's events.  Kept as
    :class:`BillingRollup` is: by the drain in the transaction that inserts the events, recomputed
    from the events by ``worker.chats.rollups.refresh_billing_rollups``, the repair path."""

    __tablename__ = "agent_rollup"

    enterprise_id: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    workflow: str = Field(primary_key=True, max_length=200)
    agent: str = Field(primary_key=True, max_length=200)
    events: int = _figure()
    duration_ms: int = _figure()
    prompt_tokens: int = _figure()
    completion_tokens: int = _figure()
    cost_nanos: int = _figure()


# WorkflowRollupPublic: ``document`` is the seed's ``mon_{enterprise}_{workflow}`` document, given to
# the app's owner only (it names chats): ``model_validate(row, update={"document": None})`` for others.
class WorkflowRollupPublic(WorkflowRollupBase):
    """One workflow's totals in one month (UTC): chats, turns, tokens and cost (nano-USD)."""

    document: dict[str, Any] | None = Field(
        default=None,
        description="Owner keys only (null otherwise): the month's full summary, with per-chat and per-agent detail; money in nano-USD.",
    )


class WorkflowRollupsPublic(BaseModel):
    """An app's monthly totals in one month, one per workflow."""

    data: list[WorkflowRollupPublic] = PydanticField(description="One summary per workflow, by workflow name.")
    count: int = PydanticField(description="The number of summaries in `data`.")


class WorkflowAveragesPublic(BaseModel):
    """One workflow's totals and per-chat averages in one month (UTC)."""

    # computed by worker.chats.rollups.workflow_averages

    enterprise_id: str = PydanticField(description="The app.")
    workflow: str = PydanticField(description="The workflow.")
    period: str = PydanticField(description="The month, UTC: `YYYY-MM`.")
    source: Literal["rollup", "usage_event"] = PydanticField(
        description="`rollup`: from the monthly summary; `usage_event`: computed from the recorded turns (never summarized)."
    )
    refreshed_at: str | None = PydanticField(
        description="When the summary was computed (UTC, ISO 8601); null when computed now from the turns."
    )
    total_sessions: int = PydanticField(description="Chats of the workflow in the month.")
    total_turns: int = PydanticField(description="Recorded turns.")
    total_cost_nanos: int = PydanticField(description="Total cost, nano-USD.")
    total_cost_usd: str = PydanticField(description="`total_cost_nanos` as a decimal USD string, for display.")
    avg_cost_nanos: int = PydanticField(description="Average cost per chat, nano-USD.")
    avg_cost_usd: str = PydanticField(description="`avg_cost_nanos` as a decimal USD string, for display.")
    avg_prompt_tokens: float = PydanticField(description="Average input tokens per chat.")
    avg_completion_tokens: float = PydanticField(description="Average output tokens per chat.")
    avg_total_tokens: float = PydanticField(description="Average input + output tokens per chat.")
    avg_duration_sec: float = PydanticField(
        description="Average response time per chat (sum of its turns' response times), seconds."
    )


class UsageBucketPublic(BaseModel):
    """Usage in one time bucket (and group): turns, tokens, cost and billed nano-USD. Group keys not
    asked for are null."""

    bucket: date = PydanticField(
        description="The bucket's first day (UTC): the day, the Monday of the ISO week, or the 1st of the month."
    )
    workflow: str | None = PydanticField(None, description="The workflow, when grouped by workflow; else null.")
    agent: str | None = PydanticField(None, description="The agent, when grouped by agent; else null.")
    model: str | None = PydanticField(None, description="The model, when grouped by model; else null.")
    provider: str | None = PydanticField(None, description="The provider, when grouped by provider; else null.")
    turns: int = PydanticField(description="Recorded turns.")
    prompt_tokens: int = PydanticField(description="Input tokens.")
    completion_tokens: int = PydanticField(description="Output tokens.")
    cached_prompt_tokens: int = PydanticField(description="The part of `prompt_tokens` read from the provider's cache.")
    cost_nanos: int = PydanticField(description="Cost at the prices charged, nano-USD.")
    billed_nanos: int = PydanticField(
        description="What was debited, nano-USD (less than the cost when turns were free)."
    )


class UsageBucketsPublic(BaseModel):
    """An app's usage over `[start, end)`, by bucket and group."""

    enterprise_id: str = PydanticField(description="The app.")
    granularity: str = PydanticField(description="`day`, `week` or `month`.")
    group_by: list[str] = PydanticField(description="The keys each bucket is split by, as asked.")
    start: date = PydanticField(description="The first day (UTC, included).")
    end: date = PydanticField(description="The day after the last (UTC, excluded).")
    data: list[UsageBucketPublic] = PydanticField(
        description="One row per bucket and group, oldest first; buckets without turns are left out."
    )
    count: int = PydanticField(description="The number of rows in `data`.")
