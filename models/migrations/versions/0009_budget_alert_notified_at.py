"""when each budget alert was sent, so an alert lost by a crash after its commit is sent again

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('budget_alert', sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE budget_alert SET notified_at = created_at")  # alerts before this were sent at once
    op.create_index('ix_budget_alert_unnotified', 'budget_alert', ['created_at'],
                    postgresql_where=sa.text('notified_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_budget_alert_unnotified', table_name='budget_alert', postgresql_where=sa.text('notified_at IS NULL'))
    op.drop_column('budget_alert', 'notified_at')
