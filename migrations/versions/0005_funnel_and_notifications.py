"""the candidate funnel and notifications: every scanned symbol keeps the stage it reached and its
evidence; every alert keeps what was said and where it was delivered; entry reviews count their
consults per trading cycle, apart from the monitor's

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 03:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('scan_results') as batch:
        batch.add_column(sa.Column('stage', sa.String(length=16), nullable=False, server_default='selected'))
        batch.add_column(sa.Column('rejected_reason', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('details', JSON, nullable=False, server_default='{}'))
        batch.alter_column('rank', existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table('trading_cycles') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='session'))
        batch.add_column(sa.Column('funnel', JSON, nullable=False, server_default='{}'))
    with op.batch_alter_table('schedule_entries') as batch:
        batch.add_column(sa.Column('anchor', sa.String(length=16), nullable=False, server_default='session'))
        batch.add_column(sa.Column('offset_seconds', sa.Float(), nullable=False, server_default='0'))
    op.create_table(
        'entry_review_consults',
        sa.Column('cycle_id', sa.Integer(), nullable=False),
        sa.Column('consults', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('cycle_id'),
    )
    op.create_table(
        'notifications',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('event', sa.String(length=64), nullable=False),
        sa.Column('severity', sa.String(length=10), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('context', JSON, nullable=False),
        sa.Column('dedupe_key', sa.String(length=128), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('deliveries', JSON, nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedupe_key'),
    )
    op.create_index('ix_notifications_created_at', 'notifications', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_notifications_created_at', table_name='notifications')
    op.drop_table('notifications')
    op.drop_table('entry_review_consults')
    with op.batch_alter_table('schedule_entries') as batch:
        batch.drop_column('offset_seconds')
        batch.drop_column('anchor')
    with op.batch_alter_table('trading_cycles') as batch:
        batch.drop_column('funnel')
        batch.drop_column('kind')
    with op.batch_alter_table('scan_results') as batch:
        batch.alter_column('rank', existing_type=sa.Integer(), nullable=False)
        batch.drop_column('details')
        batch.drop_column('rejected_reason')
        batch.drop_column('stage')
