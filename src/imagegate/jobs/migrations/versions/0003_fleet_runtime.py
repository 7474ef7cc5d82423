"""fleet runtime: webhook events keep the job's snapshot; progress details; worker registry, shared
rate-limit buckets, uploads and the audit log

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_events') as batch:
        batch.add_column(sa.Column('job_snapshot', sa.JSON(), nullable=True))
        batch.alter_column('payload', existing_type=sa.Text(), nullable=True)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('progress_detail', sa.JSON(), nullable=True))
        # Jobs belong to their worker's heartbeat now, not to a per-job lease.
        batch.drop_column('lease_expires_at')
        batch.alter_column('lease_owner', existing_type=sa.String(length=80), type_=sa.String(length=120))
        batch.create_index('ix_jobs_model_queue', ['status', 'model_id', 'created_at'], unique=False)
    op.create_table(
        'workers',
        sa.Column('id', sa.String(length=120), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('device', sa.String(length=32), nullable=False),
        sa.Column('gpu', sa.Integer(), nullable=True),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('models', sa.JSON(), nullable=True),
        sa.Column('loaded', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('current_job', sa.String(length=120), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('heartbeat_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_workers_heartbeat', 'workers', ['heartbeat_at'], unique=False)
    op.create_table(
        'rate_limits',
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key_id'),
    )
    op.create_table(
        'uploads',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('storage_key', sa.String(length=255), nullable=False),
        sa.Column('content_type', sa.String(length=100), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_uploads_key', 'uploads', ['key_id'], unique=False)
    op.create_index('ix_uploads_expires', 'uploads', ['expires_at'], unique=False)
    op.create_table(
        'audit_log',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('actor', sa.String(length=80), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=200), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_log_at', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_index('ix_uploads_expires', table_name='uploads')
    op.drop_index('ix_uploads_key', table_name='uploads')
    op.drop_table('uploads')
    op.drop_table('rate_limits')
    op.drop_index('ix_workers_heartbeat', table_name='workers')
    op.drop_table('workers')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_model_queue')
        batch.alter_column('lease_owner', existing_type=sa.String(length=120), type_=sa.String(length=80))
        batch.add_column(sa.Column('lease_expires_at', sa.Float(), nullable=True))
        batch.drop_column('progress_detail')
    with op.batch_alter_table('webhook_events') as batch:
        batch.alter_column('payload', existing_type=sa.Text(), nullable=False)
        batch.drop_column('job_snapshot')
