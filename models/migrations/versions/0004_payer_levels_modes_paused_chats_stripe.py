"""payer levels modes paused chats stripe meters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:00:08.325688
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('paused_chat',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('needed_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resumed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resumed_by', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_paused_chat_wallet_open', 'paused_chat', ['wallet_id'], unique=False, postgresql_where=sa.text('resumed_at IS NULL'))
    op.create_index('uq_paused_chat_open', 'paused_chat', ['enterprise_id', 'chat_id'], unique=True, postgresql_where=sa.text('resumed_at IS NULL'))
    op.create_table('stripe_event',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('token_package',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('price_cents', sa.BigInteger(), nullable=False),
    sa.Column('credit_nanos', sa.BigInteger(), nullable=False),
    sa.Column('monthly', sa.Boolean(), server_default=sa.text("false"), nullable=False),
    sa.Column('stripe_price_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text("true"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.add_column('chat_session', sa.Column('connection_state', sqlmodel.sql.sqltypes.AutoString(length=20), server_default=sa.text("'connected'"), nullable=False))
    op.add_column('chat_session', sa.Column('can_resume', sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column('chat_session', sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('enterprise', sa.Column('creator_share_bps', sa.Integer(), server_default=sa.text('7000'), nullable=False))
    op.add_column('enterprise', sa.Column('trial_token_allowance', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('enterprise', sa.Column('trial_then', sqlmodel.sql.sqltypes.AutoString(length=10), server_default=sa.text("'pause'"), nullable=False))
    op.add_column('enterprise', sa.Column('flat_fee_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('enterprise', sa.Column('fee_wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
    op.add_column('enterprise', sa.Column('stripe_account_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('usage_event', sa.Column('level', sqlmodel.sql.sqltypes.AutoString(length=20), server_default=sa.text("'app_usage'"), nullable=False))
    op.add_column('usage_event', sa.Column('billing_target', sqlmodel.sql.sqltypes.AutoString(length=200), server_default=sa.text("'platform'"), nullable=False))
    op.add_column('usage_event', sa.Column('billable', sa.Boolean(), server_default=sa.text("true"), nullable=False))
    op.add_column('usage_event', sa.Column('creator_share_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('usage_event', sa.Column('platform_fee_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('usage_event', sa.Column('trial_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('usage_event', sa.Column('meter', sqlmodel.sql.sqltypes.AutoString(length=50), server_default=sa.text("'llm'"), nullable=False))
    op.add_column('usage_event', sa.Column('quantity', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('wallet', sa.Column('mode_override', sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column('wallet', sa.Column('trial_tokens_used', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('wallet', sa.Column('stripe_customer_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('wallet', sa.Column('stripe_subscription_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('wallet', sa.Column('subscription_status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True))
    op.create_index(op.f('ix_wallet_stripe_customer_id'), 'wallet', ['stripe_customer_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_wallet_stripe_customer_id'), table_name='wallet')
    op.drop_column('wallet', 'subscription_status')
    op.drop_column('wallet', 'stripe_subscription_id')
    op.drop_column('wallet', 'stripe_customer_id')
    op.drop_column('wallet', 'trial_tokens_used')
    op.drop_column('wallet', 'mode_override')
    op.drop_column('usage_event', 'quantity')
    op.drop_column('usage_event', 'meter')
    op.drop_column('usage_event', 'trial_tokens')
    op.drop_column('usage_event', 'platform_fee_nanos')
    op.drop_column('usage_event', 'creator_share_nanos')
    op.drop_column('usage_event', 'billable')
    op.drop_column('usage_event', 'billing_target')
    op.drop_column('usage_event', 'level')
    op.drop_column('enterprise', 'stripe_account_id')
    op.drop_column('enterprise', 'fee_wallet_id')
    op.drop_column('enterprise', 'flat_fee_nanos')
    op.drop_column('enterprise', 'trial_then')
    op.drop_column('enterprise', 'trial_token_allowance')
    op.drop_column('enterprise', 'creator_share_bps')
    op.drop_column('chat_session', 'paused_at')
    op.drop_column('chat_session', 'can_resume')
    op.drop_column('chat_session', 'connection_state')
    op.drop_table('token_package')
    op.drop_table('stripe_event')
    op.drop_index('uq_paused_chat_open', table_name='paused_chat', postgresql_where=sa.text('resumed_at IS NULL'))
    op.drop_index('ix_paused_chat_wallet_open', table_name='paused_chat', postgresql_where=sa.text('resumed_at IS NULL'))
    op.drop_table('paused_chat')
