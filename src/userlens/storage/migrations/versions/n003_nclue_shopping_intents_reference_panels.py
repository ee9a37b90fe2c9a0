"""nclue shopping intents and reference panels

Revision ID: n003
Revises: n002
Create Date: 2026-11-22 10:16:56.958313
"""
from alembic import op
import sqlalchemy as sa
import userlens.storage.db


revision = 'n003'
down_revision = 'n002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nclue_panels',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('builtin', sa.Boolean(), nullable=False),
    sa.Column('source_bucket', sa.String(length=63), nullable=False),
    sa.Column('sequences_path', sa.String(length=1024), nullable=False),
    sa.Column('attributes_path', sa.String(length=1024), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('user_count', sa.BigInteger(), nullable=False),
    sa.Column('part_count', sa.Integer(), nullable=False),
    sa.Column('categories', sa.JSON(), nullable=False),
    sa.Column('prefix', sa.String(length=512), nullable=False),
    sa.Column('disk_usage', sa.BigInteger(), nullable=False),
    sa.Column('created_at', userlens.storage.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('nclue_panels', schema=None) as batch_op:
        batch_op.create_index('ix_nclue_panels_model_created', ['model_name', 'created_at'], unique=False)

    op.create_table('shopping_intents',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('account_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('task_name', sa.String(length=100), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('panel_id', sa.String(length=36), nullable=False),
    sa.Column('panel_name', sa.String(length=100), nullable=False),
    sa.Column('line_count', sa.BigInteger(), nullable=True),
    sa.Column('disk_usage', sa.BigInteger(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('result_key', sa.String(length=512), nullable=True),
    sa.Column('created_at', userlens.storage.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'name', name='uq_shopping_intents_account_name'),
    sa.UniqueConstraint('job_id')
    )
    with op.batch_alter_table('shopping_intents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shopping_intents_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shopping_intents_panel_id'), ['panel_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shopping_intents_task_id'), ['task_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shopping_intents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shopping_intents_task_id'))
        batch_op.drop_index(batch_op.f('ix_shopping_intents_panel_id'))
        batch_op.drop_index(batch_op.f('ix_shopping_intents_account_id'))

    op.drop_table('shopping_intents')
    with op.batch_alter_table('nclue_panels', schema=None) as batch_op:
        batch_op.drop_index('ix_nclue_panels_model_created')

    op.drop_table('nclue_panels')
