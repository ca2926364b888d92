"""The first catalog schema: backups, jobs, schedules.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

from chunkbackup.catalog.models import PreciseDateTime

revision = '0001'
down_revision = None


def upgrade() -> None:
    op.create_table(
        'backups',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('volume_id', sa.String(128), nullable=False, index=True),
        sa.Column('volume_path', sa.String(4096)),
        sa.Column('container', sa.String(1024)),
        sa.Column('service_metadata', sa.String(1024)),
        sa.Column('parent_id', sa.String(36), sa.ForeignKey('backups.id'),
                  index=True),
        sa.Column('size', sa.Integer, nullable=False),
        sa.Column('size_bytes', sa.BigInteger, nullable=False),
        sa.Column('object_count', sa.Integer, nullable=False),
        sa.Column('status', sa.String(32), nullable=False, index=True),
        sa.Column('fail_reason', sa.Text),
        sa.Column('display_name', sa.String(255)),
        sa.Column('display_description', sa.String(1024)),
        sa.Column('created_at', PreciseDateTime, nullable=False),
        sa.Column('updated_at', PreciseDateTime),
        sa.Column('data_timestamp', sa.DateTime),
        sa.Column('driver', sa.String(255), nullable=False),
        sa.Column('owner', sa.String(255)),
    )
    op.create_table(
        'jobs',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('kind', sa.String(32), nullable=False),
        sa.Column('params', sa.JSON, nullable=False),
        sa.Column('status', sa.String(32), nullable=False, index=True),
        sa.Column('backup_id', sa.String(36)),
        sa.Column('error', sa.Text),
        sa.Column('created_at', sa.DateTime, nullable=False),
        sa.Column('started_at', sa.DateTime),
        sa.Column('finished_at', sa.DateTime),
        sa.Column('owner', sa.String(255)),
    )
    op.create_table(
        'schedules',
        sa.Column('name', sa.String(255), primary_key=True),
        sa.Column('volume_path', sa.String(4096), nullable=False),
        sa.Column('volume_id', sa.String(128)),
        sa.Column('container', sa.String(1024)),
        sa.Column('interval_seconds', sa.Integer, nullable=False),
        sa.Column('full_every', sa.Integer, nullable=False),
        sa.Column('retain_full', sa.Integer, nullable=False),
        sa.Column('enabled', sa.Boolean, nullable=False),
        sa.Column('last_run_at', sa.DateTime),
        sa.Column('created_at', sa.DateTime, nullable=False),
    )
