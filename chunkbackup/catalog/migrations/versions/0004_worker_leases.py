"""Service workers sharing the catalog: leases, attempts, volume locks.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = '0004'
down_revision = '0003'


def _precise():
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql',
                                      'mariadb')


def upgrade() -> None:
    op.add_column('backups', sa.Column('lease_expires_at', _precise()))
    op.add_column('jobs', sa.Column('attempts', sa.Integer, nullable=False,
                                    server_default='0'))
    op.add_column('jobs', sa.Column('lease_expires_at', _precise()))
    op.create_table(
        'workers',
        sa.Column('name', sa.String(255), primary_key=True),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('pid', sa.Integer, nullable=False),
        sa.Column('started_at', _precise(), nullable=False),
        sa.Column('heartbeat_at', _precise(), nullable=False),
        sa.Column('lease_seconds', sa.Float, nullable=False),
        sa.Column('running_operations', sa.Integer, nullable=False,
                  server_default='0'),
        sa.Column('stopped_at', _precise()))
    op.create_table(
        'volume_locks',
        sa.Column('volume_id', sa.String(128), primary_key=True),
        sa.Column('owner', sa.String(255), nullable=False),
        sa.Column('lease_expires_at', _precise()),
        sa.Column('acquired_at', _precise(), nullable=False))


def downgrade() -> None:
    op.drop_table('volume_locks')
    op.drop_table('workers')
    op.drop_column('jobs', 'lease_expires_at')
    op.drop_column('jobs', 'attempts')
    op.drop_column('backups', 'lease_expires_at')
