"""media retention: when a job's output media were deleted

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('media_deleted_at', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'media_deleted_at')
