"""engine: step journal, task and group leases, the server's definition, the outbox

Revision ID: b7e1d2c3a4f5
Revises: 5f44af59fbdb
Create Date: 2026-11-28 21:50:00

"""
from alembic import op
import sqlalchemy as sa

import app.models

revision = 'b7e1d2c3a4f5'
down_revision = '5f44af59fbdb'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'migration_step',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('owner', sa.String(length=200), nullable=True),
        sa.Column('names', sa.JSON(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('started_at', app.models.UTCDateTime(), nullable=False),
        sa.Column('finished_at', app.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['migration_task.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id', 'seq'),
    )
    with op.batch_alter_table('migration_step', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_migration_step_task_id'), ['task_id'], unique=False)
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('args', sa.JSON(), nullable=False),
        sa.Column('queue', sa.String(length=50), nullable=False),
        sa.Column('timeout', sa.Integer(), nullable=True),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('created_at', app.models.UTCDateTime(), nullable=False),
        sa.Column('sent_at', app.models.UTCDateTime(), nullable=True),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['user.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_sent_at'), ['sent_at'], unique=False)
    for table in ('migration_task', 'migration_group'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('lease_owner', sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column('lease_job', sa.String(length=100), nullable=True))
            batch_op.add_column(sa.Column('lease_until', app.models.UTCDateTime(), nullable=True))
    with op.batch_alter_table('migration_task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('domain_xml', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('migration_task', schema=None) as batch_op:
        batch_op.drop_column('domain_xml')
    for table in ('migration_group', 'migration_task'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('lease_until')
            batch_op.drop_column('lease_job')
            batch_op.drop_column('lease_owner')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_sent_at'))
    op.drop_table('outbox')
    with op.batch_alter_table('migration_step', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_migration_step_task_id'))
    op.drop_table('migration_step')
