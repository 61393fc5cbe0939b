"""preflight reuse: an inventory generation per compute resource, stored preflight reports

Revision ID: e5f1a2b3c4d6
Revises: d3a9f0c1e2b4
Create Date: 2026-11-28 22:10:00

"""
from alembic import op
import sqlalchemy as sa

import app.models

revision = 'e5f1a2b3c4d6'
down_revision = 'd3a9f0c1e2b4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('compute_resource', schema=None) as batch_op:
        batch_op.add_column(sa.Column('generation', sa.Integer(), nullable=False,
                                      server_default='0'))
    op.create_table(
        'preflight_report',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('created_at', app.models.UTCDateTime(), nullable=False),
        sa.Column('generations', sa.JSON(), nullable=False),
        sa.Column('report', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('preflight_report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_preflight_report_key'), ['key'], unique=False)
        batch_op.create_index(batch_op.f('ix_preflight_report_created_at'), ['created_at'],
                              unique=False)


def downgrade():
    with op.batch_alter_table('preflight_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_preflight_report_created_at'))
        batch_op.drop_index(batch_op.f('ix_preflight_report_key'))
    op.drop_table('preflight_report')
    with op.batch_alter_table('compute_resource', schema=None) as batch_op:
        batch_op.drop_column('generation')
