"""jobs.parent_id and jobs.sweep: learning-rate sweeps and optimizer comparisons

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('sweep', sa.JSON(), nullable=True))
        batch.create_index(batch.f('ix_jobs_parent_id'), ['parent_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index(batch.f('ix_jobs_parent_id'))
        batch.drop_column('sweep')
        batch.drop_column('parent_id')
