"""dead letters in PostgreSQL: outbox entries the drain could not persist, kept until retried or
discarded (Redis is a cache of PostgreSQL, never the only copy)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dead_letter',
        sa.Column('id', sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column('outbox_id', sa.String(length=100), nullable=False),
        sa.Column('shard', sa.Integer(), nullable=False),
        sa.Column('turn_id', sa.String(length=1000), nullable=True),
        sa.Column('wallet_id', sa.String(length=1000), nullable=True),
        sa.Column('billed_nanos', sa.BigInteger(), nullable=False, server_default=sa.text('0')),
        sa.Column('charged', sa.Boolean(), nullable=False, server_default=sa.text('false')),
        sa.Column('error', sa.String(length=2000), nullable=False),
        sa.Column('error_class', sa.String(length=200), nullable=False),
        sa.Column('fields_json', sa.String(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('outbox_id'),
    )
    op.create_index('ix_dead_letter_open', 'dead_letter', ['shard', 'id'], postgresql_where=sa.text("status = 'open'"))


def downgrade() -> None:
    op.drop_index('ix_dead_letter_open', table_name='dead_letter', postgresql_where=sa.text("status = 'open'"))
    op.drop_table('dead_letter')
