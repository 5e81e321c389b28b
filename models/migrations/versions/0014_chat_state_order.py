"""chat state is ordered: chat_session records where in the gate's order its state was decided

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 16:20:00

A drain can commit an older turn after a newer one, or after the orchestrator paused the chat; a
chat's state must move only forward in the gate's decision order (``worker.ledger.turns.chat_order``).
``state_key`` holds the position of the chat's last transition: the deciding turn's outbox entry
as sortable text, or the outbox position at which a pause, resume or credit happened.  Existing
chats start at '' (nothing decided): their next persisted turn decides, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('chat_session', sa.Column('state_key', sa.String(length=100), server_default='', nullable=False))


def downgrade() -> None:
    op.drop_column('chat_session', 'state_key')
