"""per-app limit on the cost of one turn (enterprise.max_turn_cost_nanos, default $50)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 16:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # models.tables.DEFAULT_MAX_TURN_COST_NANOS: 50,000,000,000 nanos = $50
    op.add_column('enterprise', sa.Column('max_turn_cost_nanos', sa.BigInteger(),
                                          server_default=sa.text('50000000000'), nullable=False))
    op.create_check_constraint('ck_enterprise_max_turn_cost_nanos', 'enterprise',
                               'max_turn_cost_nanos >= 0 AND max_turn_cost_nanos <= 4611686018427387904')


def downgrade() -> None:
    op.drop_constraint('ck_enterprise_max_turn_cost_nanos', 'enterprise', type_='check')
    op.drop_column('enterprise', 'max_turn_cost_nanos')
