"""billing_rollup and chat_rollup: the /billing report's sums per month, kept with the workflow rollups

The report of a month (lines, budgets, six-month history, top chats) reads these small tables instead
of scanning ``usage_event`` (issue 18: the owner page under 300 ms at 1,000,000 events).  Both are
recomputed whole with their ``workflow_rollup`` group (enterprise, workflow, month) by the rollup
refresh; groups marked in ``rollup_dirty`` are read from ``usage_event`` until refreshed.  The
upgrade fills both from the usage events already stored (one aggregate pass over ``usage_event``).
Also a partial index of the paused chat sessions by wallet (the page's paused counts).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_FIGURES = (
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
_PERIOD = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM')"
_SUMS = "count(*), " + ", ".join(f"sum({c})" for c in _FIGURES[1:])


def _figures() -> list[sa.Column]:
    return [sa.Column(c, sa.BigInteger(), server_default=sa.text("0"), nullable=False) for c in _FIGURES]


def _id(name: str, length: int) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=False)


def upgrade() -> None:
    op.create_table(
        "billing_rollup",
        *_figures(),
        _id("enterprise_id", 200),
        _id("period", 7),
        _id("workflow", 200),
        _id("wallet_id", 200),
        _id("provider", 100),
        _id("model", 200),
        _id("meter", 50),
        sa.PrimaryKeyConstraint("enterprise_id", "period", "workflow", "wallet_id", "provider", "model", "meter"),
    )
    op.create_table(
        "chat_rollup",
        *_figures(),
        _id("enterprise_id", 200),
        _id("period", 7),
        _id("workflow", 200),
        _id("wallet_id", 200),
        _id("chat_id", 200),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("enterprise_id", "period", "workflow", "wallet_id", "chat_id"),
    )
    op.create_index(
        "ix_chat_session_wallet_paused",
        "chat_session",
        ["wallet_id"],
        unique=False,
        postgresql_where=sa.text("status = 'paused'"),
    )
    cols = ", ".join(_FIGURES)
    op.execute(
        f"INSERT INTO billing_rollup (enterprise_id, period, workflow, wallet_id, provider, model, meter, {cols}) "
        f"SELECT enterprise_id, {_PERIOD}, workflow, wallet_id, provider, model, meter, {_SUMS} FROM usage_event "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
    op.execute(
        f"INSERT INTO chat_rollup (enterprise_id, period, workflow, wallet_id, chat_id, {cols}, first_at, last_at) "
        f"SELECT enterprise_id, {_PERIOD}, workflow, wallet_id, chat_id, {_SUMS}, min(occurred_at), max(occurred_at) "
        "FROM usage_event GROUP BY 1, 2, 3, 4, 5"
    )


def downgrade() -> None:
    op.drop_index(
        "ix_chat_session_wallet_paused", table_name="chat_session", postgresql_where=sa.text("status = 'paused'")
    )
    op.drop_table("chat_rollup")
    op.drop_table("billing_rollup")
