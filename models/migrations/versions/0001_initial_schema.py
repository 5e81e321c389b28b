"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 04:36:13.830383
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('enterprise',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('default_mode', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('usage_event',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('turn_id', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('outbox_id', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('agent', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('duration_ms', sa.BigInteger(), nullable=False),
    sa.Column('input_nanos_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('cached_input_nanos_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('output_nanos_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('cost_nanos', sa.BigInteger(), nullable=False),
    sa.Column('billed_nanos', sa.BigInteger(), nullable=False),
    sa.Column('balance_after_nanos', sa.BigInteger(), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('turn_id')
    )
    op.create_index('ix_usage_event_enterprise_chat', 'usage_event', ['enterprise_id', 'chat_id'], unique=False)
    op.create_index('ix_usage_event_enterprise_workflow_occurred', 'usage_event', ['enterprise_id', 'workflow', 'occurred_at'], unique=False)
    op.create_index('ix_usage_event_wallet_occurred', 'usage_event', ['wallet_id', 'occurred_at'], unique=False)
    op.create_table('wallet',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('level', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('limited', sa.Boolean(), nullable=False),
    sa.Column('credits_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('debits_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprise.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_wallet_enterprise_id'), 'wallet', ['enterprise_id'], unique=False)
    op.create_table('chat_session',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('pause_reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_turn_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('turns', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cached_prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cost_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('billed_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.ForeignKeyConstraint(['wallet_id'], ['wallet.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('enterprise_id', 'chat_id', name='uq_chat_session_enterprise_chat')
    )
    op.create_index('ix_chat_session_wallet', 'chat_session', ['wallet_id'], unique=False)
    op.create_table('wallet_transaction',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('amount_nanos', sa.BigInteger(), nullable=False),
    sa.Column('turns', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['wallet_id'], ['wallet.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    op.create_index('ix_wallet_transaction_wallet_created', 'wallet_transaction', ['wallet_id', 'created_at'], unique=False)
    op.create_table('chat_agent_usage',
    sa.Column('chat_session_id', sa.BigInteger(), nullable=False),
    sa.Column('agent', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('turns', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cached_prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('duration_ms', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cost_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.ForeignKeyConstraint(['chat_session_id'], ['chat_session.id'], ),
    sa.PrimaryKeyConstraint('chat_session_id', 'agent')
    )


def downgrade() -> None:
    op.drop_table('chat_agent_usage')
    op.drop_index('ix_wallet_transaction_wallet_created', table_name='wallet_transaction')
    op.drop_table('wallet_transaction')
    op.drop_index('ix_chat_session_wallet', table_name='chat_session')
    op.drop_table('chat_session')
    op.drop_index(op.f('ix_wallet_enterprise_id'), table_name='wallet')
    op.drop_table('wallet')
    op.drop_index('ix_usage_event_wallet_occurred', table_name='usage_event')
    op.drop_index('ix_usage_event_enterprise_workflow_occurred', table_name='usage_event')
    op.drop_index('ix_usage_event_enterprise_chat', table_name='usage_event')
    op.drop_table('usage_event')
    op.drop_table('enterprise')
