"""What each backup did: bytes read and stored, holes, changed-block maps.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'


def upgrade() -> None:
    op.add_column('backups', sa.Column('stats', sa.JSON))


def downgrade() -> None:
    op.drop_column('backups', 'stats')
