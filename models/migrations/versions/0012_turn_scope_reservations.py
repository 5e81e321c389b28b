"""one idempotency scope; reservations that cannot be gamed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 16:30:00

A turn_id is unique per payer wallet within an app, the (enterprise_id, wallet_id) pair, in the gate
(Redis) and in PostgreSQL alike: ``usage_turn_key`` gains ``enterprise_id`` and ``wallet_id``
(filled from each key's usage event) and its primary key becomes ``(enterprise_id, wallet_id,
turn_id)``.  A key whose usage event is gone keeps empty ids: it can no longer match a turn.

Reservations: ``enterprise.reservations_required`` (default false) and
``wallet.reservations_required`` (NULL: follow the app) make a live reservation mandatory for every
charged turn; ``usage_event.debt_nanos`` is the part of a turn's cost its wallet could not pay
(charged from its reservation plus the free balance only) and ``wallet.debt_nanos`` their total.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('usage_turn_key', sa.Column('enterprise_id', sa.String(length=200), nullable=True))
    op.add_column('usage_turn_key', sa.Column('wallet_id', sa.String(length=200), nullable=True))
    op.execute(
        "UPDATE usage_turn_key k SET enterprise_id = e.enterprise_id, wallet_id = e.wallet_id "
        "FROM usage_event e WHERE e.turn_id = k.turn_id AND e.outbox_id = k.outbox_id"
    )
    op.execute("UPDATE usage_turn_key SET enterprise_id = '', wallet_id = '' WHERE enterprise_id IS NULL")
    op.alter_column('usage_turn_key', 'enterprise_id', nullable=False)
    op.alter_column('usage_turn_key', 'wallet_id', nullable=False)
    op.execute("ALTER TABLE usage_turn_key DROP CONSTRAINT usage_turn_key_pkey")
    op.execute("ALTER TABLE usage_turn_key ADD CONSTRAINT usage_turn_key_pkey "
               "PRIMARY KEY (enterprise_id, wallet_id, turn_id)")
    op.add_column('enterprise', sa.Column('reservations_required', sa.Boolean(), nullable=False,
                                          server_default=sa.text('false')))
    op.add_column('wallet', sa.Column('reservations_required', sa.Boolean(), nullable=True))
    op.add_column('wallet', sa.Column('debt_nanos', sa.BigInteger(), nullable=False, server_default=sa.text('0')))
    op.add_column('usage_event', sa.Column('debt_nanos', sa.BigInteger(), nullable=False, server_default=sa.text('0')))


def downgrade() -> None:
    # only possible while no turn_id is used in two scopes
    op.drop_column('usage_event', 'debt_nanos')
    op.drop_column('wallet', 'debt_nanos')
    op.drop_column('wallet', 'reservations_required')
    op.drop_column('enterprise', 'reservations_required')
    op.execute("ALTER TABLE usage_turn_key DROP CONSTRAINT usage_turn_key_pkey")
    op.execute("ALTER TABLE usage_turn_key ADD CONSTRAINT usage_turn_key_pkey PRIMARY KEY (turn_id)")
    op.drop_column('usage_turn_key', 'wallet_id')
    op.drop_column('usage_turn_key', 'enterprise_id')
