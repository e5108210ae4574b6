"""Per-language over-refusal, degenerate answers, selectivity and the second test set in edit_results.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None

FLOATS = (
    'degenerate_before', 'degenerate_after', 'harmless_refusal_before', 'harmless_refusal_after',
    'harmless_degenerate_before', 'harmless_degenerate_after', 'borderline_refusal_before',
    'borderline_refusal_after', 'borderline_degenerate_before', 'borderline_degenerate_after', 'selectivity',
    'second_asr_before', 'second_asr_after',
)
INTS = ('harmless_n', 'borderline_n', 'second_n')


def upgrade() -> None:
    with op.batch_alter_table('edit_results', schema=None) as batch_op:
        for name in FLOATS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
        for name in INTS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('edit_results', schema=None) as batch_op:
        for name in reversed(FLOATS + INTS):
            batch_op.drop_column(name)
