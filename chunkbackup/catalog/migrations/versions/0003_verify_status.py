"""Whether a backup passed its last verify, when, and what was wrong.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = '0003'
down_revision = '0002'


def upgrade() -> None:
    op.add_column('backups', sa.Column('verify_status', sa.String(32)))
    op.add_column('backups', sa.Column('verify_reason', sa.Text))
    op.add_column('backups', sa.Column(
        'verified_at', sa.DateTime().with_variant(mysql.DATETIME(fsp=6),
                                                  'mysql', 'mariadb')))


def downgrade() -> None:
    op.drop_column('backups', 'verified_at')
    op.drop_column('backups', 'verify_reason')
    op.drop_column('backups', 'verify_status')
