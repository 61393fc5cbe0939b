"""evacuations and webhook sources and events

Revision ID: 5f44af59fbdb
Revises: a1c0e2f3b4d5
Create Date: 2026-11-25 19:55:48.808521

"""
from alembic import op
import sqlalchemy as sa

import app.models


# revision identifiers, used by Alembic.
revision = '5f44af59fbdb'
down_revision = 'a1c0e2f3b4d5'
branch_labels = None
depends_on = None


def upgrade():

    op.create_table('webhook_source',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('hmac_secret', sa.String(length=255), nullable=True),
    sa.Column('policy', sa.String(length=20), nullable=False),
    sa.Column('host_labels', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', app.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('evacuation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('compute_resource_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('origin', sa.String(length=100), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('returns_id', sa.Integer(), nullable=True),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', app.models.UTCDateTime(), nullable=False),
    sa.Column('approved_at', app.models.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['compute_resource_id'], ['compute_resource.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['created_by_id'], ['user.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['group_id'], ['migration_group.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['returns_id'], ['evacuation.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evacuation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evacuation_compute_resource_id'), ['compute_resource_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evacuation_status'), ['status'], unique=False)

    op.create_table('webhook_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_id', sa.Integer(), nullable=True),
    sa.Column('received_at', app.models.UTCDateTime(), nullable=False),
    sa.Column('alert_status', sa.String(length=20), nullable=True),
    sa.Column('dedup_key', sa.String(length=128), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('compute_resource_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=30), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('evacuation_id', sa.Integer(), nullable=True),
    sa.Column('alert', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['compute_resource_id'], ['compute_resource.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['evacuation_id'], ['evacuation.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['source_id'], ['webhook_source.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_event_dedup_key'), ['dedup_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_event_received_at'), ['received_at'], unique=False)




def downgrade():

    with op.batch_alter_table('webhook_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_event_received_at'))
        batch_op.drop_index(batch_op.f('ix_webhook_event_dedup_key'))

    op.drop_table('webhook_event')
    with op.batch_alter_table('evacuation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evacuation_status'))
        batch_op.drop_index(batch_op.f('ix_evacuation_compute_resource_id'))

    op.drop_table('evacuation')
    op.drop_table('webhook_source')

