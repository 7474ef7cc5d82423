"""admin API: runtime price overrides per model, the stored admin token, job indexes for the
operator's listings and usage

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('model_states', sa.Column('price_micros', sa.BigInteger(), nullable=True))
    op.create_table(
        'admin_tokens',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('token_prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_jobs_created', 'jobs', ['created_at'], unique=False)
    op.create_index('ix_jobs_completed', 'jobs', ['completed_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_completed', table_name='jobs')
    op.drop_index('ix_jobs_created', table_name='jobs')
    op.drop_table('admin_tokens')
    with op.batch_alter_table('model_states') as batch:
        batch.drop_column('price_micros')
