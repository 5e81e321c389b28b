"""per-app usage schemas: usage_event's primary key takes enterprise_id; apps record their schema

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 22:45:00

An app that needs isolation keeps its usage events in its own PostgreSQL schema
(``worker.ledger.isolation``): each monthly partition of ``usage_event`` is then itself partitioned by
LIST (enterprise_id), the app's rows in ``<schema>.usage_event_YYYY_MM``.  PostgreSQL requires the
primary key of a partitioned table to contain every partitioning column, so the key becomes
``(id, occurred_at, enterprise_id)`` (``id`` alone is still unique: one sequence).
``enterprise.usage_schema`` names the app's schema (NULL: the shared tables).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('enterprise', sa.Column('usage_schema', sa.String(length=63), nullable=True))
    op.create_unique_constraint('uq_enterprise_usage_schema', 'enterprise', ['usage_schema'])
    op.execute("ALTER TABLE usage_event DROP CONSTRAINT usage_event_pkey")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (id, occurred_at, enterprise_id)")


def downgrade() -> None:
    # only possible while no app is isolated (a list-partitioned month needs enterprise_id in the key)
    op.execute("ALTER TABLE usage_event DROP CONSTRAINT usage_event_pkey")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (id, occurred_at)")
    op.drop_constraint('uq_enterprise_usage_schema', 'enterprise', type_='unique')
    op.drop_column('enterprise', 'usage_schema')
