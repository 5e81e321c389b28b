"""cache-write tokens and their rate on usage events

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('usage_event', sa.Column('cache_write_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('usage_event', sa.Column('cache_write_nanos_per_mtok', sa.BigInteger(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    op.drop_column('usage_event', 'cache_write_nanos_per_mtok')
    op.drop_column('usage_event', 'cache_write_tokens')
