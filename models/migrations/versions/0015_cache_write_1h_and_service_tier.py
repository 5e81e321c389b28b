"""1-hour cache-write tokens, their rate and the service tier on usage events

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # usage_event is partitioned: columns added to the parent reach every partition (per-app ones too)
    op.add_column('usage_event', sa.Column('cache_write_1h_tokens', sa.BigInteger(), server_default=sa.text('0'),
                                           nullable=False))
    op.add_column('usage_event', sa.Column('cache_write_1h_nanos_per_mtok', sa.BigInteger(),
                                           server_default=sa.text('0'), nullable=False))
    op.add_column('usage_event', sa.Column('service_tier', sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column('usage_event', 'service_tier')
    op.drop_column('usage_event', 'cache_write_1h_nanos_per_mtok')
    op.drop_column('usage_event', 'cache_write_1h_tokens')
