"""rollups, budgets, allowances, reconciliation, app callbacks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 05:16:02.398227
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reconciliation_run',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wallets_checked', sa.Integer(), nullable=False),
    sa.Column('wallets_busy', sa.Integer(), nullable=False),
    sa.Column('wallets_drifted', sa.Integer(), nullable=False),
    sa.Column('drift_nanos_abs', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('repair', sa.Boolean(), nullable=False),
    sa.Column('rebuild', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('rollup_dirty',
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('touched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('enterprise_id', 'workflow', 'period')
    )
    op.create_table('workflow_rollup',
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('document', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('total_sessions', sa.Integer(), nullable=False),
    sa.Column('total_turns', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cached_prompt_tokens', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cost_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('refreshed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('enterprise_id', 'workflow', 'period')
    )
    op.create_table('wallet_drift',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('gate_nanos', sa.BigInteger(), nullable=True),
    sa.Column('expected_nanos', sa.BigInteger(), nullable=False),
    sa.Column('drift_nanos', sa.BigInteger(), nullable=False),
    sa.Column('repaired', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['reconciliation_run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_wallet_drift_run_id'), 'wallet_drift', ['run_id'], unique=False)
    op.create_table('budget',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('enterprise_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('wallet_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('amount_nanos', sa.BigInteger(), nullable=False),
    sa.Column('auto_pause', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('(wallet_id IS NULL) <> (workflow IS NULL)', name='ck_budget_one_scope'),
    sa.CheckConstraint('amount_nanos > 0', name='ck_budget_positive'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprise.id'], ),
    sa.ForeignKeyConstraint(['wallet_id'], ['wallet.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_budget_enterprise_id'), 'budget', ['enterprise_id'], unique=False)
    op.create_table('budget_alert',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('budget_id', sa.BigInteger(), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('threshold_pct', sa.Integer(), nullable=False),
    sa.Column('spent_nanos', sa.BigInteger(), nullable=False),
    sa.Column('amount_nanos', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['budget_id'], ['budget.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('budget_id', 'period', 'threshold_pct', name='uq_budget_alert_once')
    )
    op.add_column('enterprise', sa.Column('callback_url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
    op.add_column('enterprise', sa.Column('webhook_secret', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
    op.add_column('wallet', sa.Column('monthly_allowance_nanos', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('wallet', sa.Column('blocked_reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column('wallet', 'blocked_reason')
    op.drop_column('wallet', 'monthly_allowance_nanos')
    op.drop_column('enterprise', 'webhook_secret')
    op.drop_column('enterprise', 'callback_url')
    op.drop_table('budget_alert')
    op.drop_index(op.f('ix_budget_enterprise_id'), table_name='budget')
    op.drop_table('budget')
    op.drop_index(op.f('ix_wallet_drift_run_id'), table_name='wallet_drift')
    op.drop_table('wallet_drift')
    op.drop_table('workflow_rollup')
    op.drop_table('rollup_dirty')
    op.drop_table('reconciliation_run')
