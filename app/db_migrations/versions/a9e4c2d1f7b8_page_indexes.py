"""page indexes: servers by name and by compute resource and state, disks by server

The servers list orders a page by name and filters by compute resource; the dashboard counts a
page of compute resources' servers by state; a page of servers reads its disks by server id.
Without these every page read all 5,000 servers of a large fleet (and all their disks).

Revision ID: a9e4c2d1f7b8
Revises: f2c6a8d0b1e3
Create Date: 2026-11-29 01:45:00

"""
from alembic import op

revision = 'a9e4c2d1f7b8'
down_revision = 'f2c6a8d0b1e3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('server', schema=None) as batch_op:
        batch_op.create_index('ix_server_name_id', ['name', 'id'], unique=False)
        batch_op.create_index('ix_server_compute_resource_id_state',
                              ['compute_resource_id', 'state'], unique=False)
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_disk_server_id'), ['server_id'], unique=False)


def downgrade():
    with op.batch_alter_table('disk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_disk_server_id'))
    with op.batch_alter_table('server', schema=None) as batch_op:
        batch_op.drop_index('ix_server_compute_resource_id_state')
        batch_op.drop_index('ix_server_name_id')
