"""Per-tenant webhook signing secrets; per-job result destination.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_secrets',
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('previous_secret', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('tenant', name=op.f('pk_webhook_secrets'))
    )
    with op.batch_alter_table('edit_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('destination', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('edit_jobs', schema=None) as batch_op:
        batch_op.drop_column('destination')
    op.drop_table('webhook_secrets')
