"""usage_event partitioned by month; turn_id uniqueness moves to usage_turn_key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:40:00

PostgreSQL enforces a unique index on a partitioned table only if it contains the partition key,
so ``turn_id`` stays unique in its own unpartitioned table, ``usage_turn_key``.  The existing
table is renamed, a partitioned one created with the same columns and indexes, a DEFAULT
partition catches months without their own partition (e.g. replayed traces from years ago), the
current month and the next three get their own, and the rows are copied across.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_usage_event_wallet_occurred": "(wallet_id, occurred_at)",
    "ix_usage_event_enterprise_workflow_occurred": "(enterprise_id, workflow, occurred_at)",
    "ix_usage_event_enterprise_chat": "(enterprise_id, chat_id)",
    "ix_usage_event_turn_id": "(turn_id)",
}


def upgrade() -> None:
    op.create_table(
        'usage_turn_key',
        sa.Column('turn_id', sa.String(length=300), nullable=False),
        sa.Column('outbox_id', sa.String(length=60), nullable=False),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('turn_id'),
    )
    op.execute("INSERT INTO usage_turn_key (turn_id, outbox_id, occurred_at, recorded_at) "
               "SELECT turn_id, outbox_id, occurred_at, recorded_at FROM usage_event")
    op.execute("ALTER TABLE usage_event RENAME TO usage_event_unpartitioned")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    for name in _INDEXES:
        op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}_old")
    op.execute("ALTER TABLE usage_event_unpartitioned DROP CONSTRAINT IF EXISTS usage_event_pkey")
    op.execute("ALTER TABLE usage_event_unpartitioned DROP CONSTRAINT IF EXISTS usage_event_turn_id_key")
    op.execute("CREATE TABLE usage_event (LIKE usage_event_unpartitioned INCLUDING DEFAULTS) "
               "PARTITION BY RANGE (occurred_at)")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (id, occurred_at)")
    for name, cols in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON usage_event {cols}")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_event.id")
    op.execute("CREATE TABLE usage_event_default PARTITION OF usage_event DEFAULT")
    op.execute("""
        DO $$
        DECLARE m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
        BEGIN
          FOR i IN 0..3 LOOP
            EXECUTE format(
              'CREATE TABLE %I PARTITION OF usage_event FOR VALUES FROM (%L) TO (%L)',
              'usage_event_' || to_char(m + make_interval(months => i), 'YYYY_MM'),
              (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC',
              (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC');
          END LOOP;
        END $$""")
    op.execute("INSERT INTO usage_event SELECT * FROM usage_event_unpartitioned")
    op.execute("DROP TABLE usage_event_unpartitioned")


def downgrade() -> None:
    op.execute("CREATE TABLE usage_event_flat (LIKE usage_event INCLUDING DEFAULTS)")
    op.execute("INSERT INTO usage_event_flat SELECT * FROM usage_event")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    op.execute("DROP TABLE usage_event")
    op.execute("ALTER TABLE usage_event_flat RENAME TO usage_event")
    op.execute("ALTER TABLE usage_event ADD PRIMARY KEY (id)")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_turn_id_key UNIQUE (turn_id)")
    for name, cols in _INDEXES.items():
        if name != "ix_usage_event_turn_id":
            op.execute(f"CREATE INDEX {name} ON usage_event {cols}")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_event.id")
    op.drop_table('usage_turn_key')
