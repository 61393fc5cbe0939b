"""credentials: token expiry and revocation, disabled users, a session epoch per user

Revision ID: d3a9f0c1e2b4
Revises: c4d8e1f2a7b9
Create Date: 2026-11-28 22:00:00

"""
from alembic import op
import sqlalchemy as sa

import app.models

revision = 'd3a9f0c1e2b4'
down_revision = 'c4d8e1f2a7b9'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled_at', app.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('session_epoch', sa.Integer(), server_default='0',
                                      nullable=False))
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', app.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', app.models.UTCDateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('expires_at')
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('session_epoch')
        batch_op.drop_column('disabled_at')
