"""Cancelling running jobs; how each schedule's last run ended.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cancel_requested', sa.Boolean,
                                    nullable=False,
                                    server_default=sa.false()))
    op.add_column('schedules', sa.Column('last_status', sa.String(32)))
    op.add_column('schedules', sa.Column('last_error', sa.Text))
    op.add_column('schedules', sa.Column('last_backup_id', sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table('schedules') as batch:
        batch.drop_column('last_backup_id')
        batch.drop_column('last_error')
        batch.drop_column('last_status')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('cancel_requested')
