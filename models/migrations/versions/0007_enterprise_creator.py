"""the app creator of each enterprise (who may charge a platform-level wallet)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('enterprise', sa.Column('creator_id', sa.String(length=200), nullable=True))
    op.create_index('ix_enterprise_creator_id', 'enterprise', ['creator_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_enterprise_creator_id', table_name='enterprise')
    op.drop_column('enterprise', 'creator_id')
