"""the risk guard: securities carry their sector; entries remember the price they were admitted at

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 01:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('securities') as batch:
        batch.add_column(sa.Column('sector', sa.String(length=64), nullable=True))
    with op.batch_alter_table('orders') as batch:
        batch.add_column(sa.Column('reference_price', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders') as batch:
        batch.drop_column('reference_price')
    with op.batch_alter_table('securities') as batch:
        batch.drop_column('sector')
