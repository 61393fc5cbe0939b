"""webhook source guardrails: allowlist, start cap, signed timestamp age

Revision ID: c4d8e1f2a7b9
Revises: b7e1d2c3a4f5
Create Date: 2026-11-28 22:00:00

"""
from alembic import op
import sqlalchemy as sa

revision = 'c4d8e1f2a7b9'
down_revision = 'b7e1d2c3a4f5'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('webhook_source', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_resources', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('allowed_tags', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('max_starts_per_hour', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('signature_max_age_s', sa.Integer(), nullable=False,
                                      server_default='300'))


def downgrade():
    with op.batch_alter_table('webhook_source', schema=None) as batch_op:
        batch_op.drop_column('signature_max_age_s')
        batch_op.drop_column('max_starts_per_hour')
        batch_op.drop_column('allowed_tags')
        batch_op.drop_column('allowed_resources')
