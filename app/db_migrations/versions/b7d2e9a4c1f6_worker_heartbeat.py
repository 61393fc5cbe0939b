"""worker heartbeat: one row per worker process, touched every few seconds

Revision ID: b7d2e9a4c1f6
Revises: e5f1a2b3c4d6
Create Date: 2026-11-28 21:50:00

"""
from alembic import op
import sqlalchemy as sa

import app.models

revision = 'b7d2e9a4c1f6'
down_revision = 'e5f1a2b3c4d6'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'worker_heartbeat',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('hostname', sa.String(length=255), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started_at', app.models.UTCDateTime(), nullable=False),
        sa.Column('seen_at', app.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('hostname', 'name'),
    )
    with op.batch_alter_table('worker_heartbeat', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_heartbeat_seen_at'), ['seen_at'], unique=False)


def downgrade():
    with op.batch_alter_table('worker_heartbeat', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeat_seen_at'))
    op.drop_table('worker_heartbeat')
