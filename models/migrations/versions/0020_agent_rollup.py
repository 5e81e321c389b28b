"""agent_rollup: the workflow rollup's per-agent sums per month, kept by the drain

Issue 16 (outbox lag p99): the beat's workflow refresh recomputed each dirty (enterprise, workflow,
month) group from the month's usage events, a per-chat and a per-agent aggregate over every event,
so a refresh took longer as the month grew (2.4 → 6.8 s at 10,000 turns/s) and the drains behind it
lagged.  The per-chat figures are ``chat_rollup``'s (0018); ``agent_rollup`` holds the per-agent
ones: one row per enterprise × UTC month × workflow × agent with the events, the turns' response
times (``duration_ms``), prompt and completion tokens and ``cost_nanos`` summed (BIGINT).  The drain
adds each batch's sums to it in the transaction that inserts the events, as it does to
``billing_rollup`` and ``chat_rollup``.  The upgrade fills it from the usage events already stored
(one aggregate pass over ``usage_event``); the downgrade drops it.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: the sums, in column order, and their aggregate over ``usage_event``
_FIGURES = (
    ("events", "count(*)"),
    ("duration_ms", "sum(duration_ms)"),
    ("prompt_tokens", "sum(prompt_tokens)"),
    ("completion_tokens", "sum(completion_tokens)"),
    ("cost_nanos", "sum(cost_nanos)"),
)


def _id(name: str, length: int) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=False)


def upgrade() -> None:
    op.create_table(
        "agent_rollup",
        _id("enterprise_id", 200),
        _id("period", 7),
        _id("workflow", 200),
        _id("agent", 200),
        *(sa.Column(c, sa.BigInteger(), server_default=sa.text("0"), nullable=False) for c, _ in _FIGURES),
        sa.PrimaryKeyConstraint("enterprise_id", "period", "workflow", "agent"),
    )
    op.execute(
        f"INSERT INTO agent_rollup (enterprise_id, period, workflow, agent, {', '.join(c for c, _ in _FIGURES)}) "
        "SELECT enterprise_id, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM'), workflow, agent, "
        f"{', '.join(a for _, a in _FIGURES)} FROM usage_event GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    op.drop_table("agent_rollup")
