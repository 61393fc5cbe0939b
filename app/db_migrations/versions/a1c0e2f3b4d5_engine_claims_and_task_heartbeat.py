"""engine: concurrency claims, task mode/phase/heartbeat

Revision ID: a1c0e2f3b4d5
Revises: 14ecdd37b407
Create Date: 2026-11-25 20:05:00

"""
from alembic import op
import sqlalchemy as sa

import app.models

revision = 'a1c0e2f3b4d5'
down_revision = '14ecdd37b407'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'claim',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('slot', sa.Integer(), nullable=False),
        sa.Column('holder', sa.String(length=64), nullable=False),
        sa.Column('at', app.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('kind', 'key', 'slot'),
    )
    with op.batch_alter_table('claim', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_claim_holder'), ['holder'], unique=False)
    with op.batch_alter_table('migration_task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('phase', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', app.models.UTCDateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('migration_task', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('phase')
        batch_op.drop_column('mode')
    with op.batch_alter_table('claim', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_claim_holder'))
    op.drop_table('claim')
