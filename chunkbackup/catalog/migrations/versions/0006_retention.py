"""Retention: which schedule made a backup, pins, folds, schedule policies.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'


def upgrade() -> None:
    op.add_column('backups', sa.Column('schedule_name', sa.String(255)))
    op.create_index('ix_backups_schedule_name', 'backups', ['schedule_name'])
    # Backups schedules made before: their display name says which.
    op.execute("UPDATE backups SET schedule_name = substr(display_name, 10) "
               "WHERE display_name LIKE 'schedule:%'")
    op.add_column('backups', sa.Column('pinned', sa.Boolean, nullable=False,
                                       server_default=sa.false()))
    op.add_column('backups', sa.Column('fold_target', sa.String(36)))
    op.add_column('schedules', sa.Column('keep_policy', sa.JSON))
    op.add_column('schedules', sa.Column('retention_scope', sa.String(16),
                                         nullable=False,
                                         server_default='schedule'))
    op.add_column('schedules', sa.Column('synthetic_full', sa.Boolean,
                                         nullable=False,
                                         server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('schedules', 'synthetic_full')
    op.drop_column('schedules', 'retention_scope')
    op.drop_column('schedules', 'keep_policy')
    op.drop_column('backups', 'fold_target')
    op.drop_column('backups', 'pinned')
    op.drop_index('ix_backups_schedule_name', 'backups')
    op.drop_column('backups', 'schedule_name')
