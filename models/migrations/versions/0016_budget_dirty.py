"""budget_dirty: the budget scopes and months whose spend the drain changed (late turns reach their month)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('budget_dirty',
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('touched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('wallet_id', 'enterprise_id', 'workflow', 'period')
    )


def downgrade() -> None:
    op.drop_table('budget_dirty')
