"""drop the backup table: nothing ever wrote it; a server's backups are what its node shows

Backup compatibility now comes from real signals gathered with the node's facts (libvirt
checkpoints and files in the node's backup directory named after the server), so the table
that no code path filled is dropped.

Revision ID: f2c6a8d0b1e3
Revises: b7d2e9a4c1f6
Create Date: 2026-11-29 01:30:00

"""
from alembic import op
import sqlalchemy as sa

revision = 'f2c6a8d0b1e3'
down_revision = 'b7d2e9a4c1f6'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_table('backup')


def downgrade():
    op.create_table(
        'backup',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('storage_type', sa.String(length=20), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['server_id'], ['server.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
