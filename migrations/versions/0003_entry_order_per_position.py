"""at most one position per entry order; entries remember their requested bracket; refused exits wait

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 20:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders') as batch:
        batch.add_column(sa.Column('stop_loss_price', sa.Float(), nullable=True))
        batch.add_column(sa.Column('take_profit_price', sa.Float(), nullable=True))
    with op.batch_alter_table('positions') as batch:
        batch.add_column(sa.Column('entry_order_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('exit_blocked_until', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('exit_blocked_reason', sa.Text(), nullable=True))
        batch.create_unique_constraint('uq_positions_entry_order_id', ['entry_order_id'])
        batch.create_foreign_key('fk_positions_entry_order', 'orders', ['entry_order_id'], ['id'])
    # Existing positions: each is linked to the entry order that points at it (an order points at one position).
    op.execute("UPDATE positions SET entry_order_id = (SELECT MIN(o.id) FROM orders o "
               "WHERE o.position_id = positions.id AND o.purpose = 'entry')")


def downgrade() -> None:
    with op.batch_alter_table('positions') as batch:
        batch.drop_constraint('fk_positions_entry_order', type_='foreignkey')
        batch.drop_constraint('uq_positions_entry_order_id', type_='unique')
        batch.drop_column('entry_order_id')
        batch.drop_column('exit_blocked_until')
        batch.drop_column('exit_blocked_reason')
    with op.batch_alter_table('orders') as batch:
        batch.drop_column('take_profit_price')
        batch.drop_column('stop_loss_price')
