"""a Stripe price belongs to one token package

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('uq_token_package_stripe_price', 'token_package', ['stripe_price_id'], unique=True,
                    postgresql_where=sa.text('stripe_price_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('uq_token_package_stripe_price', table_name='token_package',
                  postgresql_where=sa.text('stripe_price_id IS NOT NULL'))
