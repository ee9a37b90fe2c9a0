"""aep: profile system jobs (delete requests, issue 7) and the loads they have retired but not yet
purged (see profiles/system_jobs.py).

Revision ID: a004
Revises: a002
Create Date: 2026-11-22 13:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "a004"
down_revision = "a002"  # a sibling of a003 (segments and exports): the aep branch has two heads
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aep_system_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("sandbox_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=24), nullable=True),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("active_key", sa.String(length=120), nullable=True),
        sa.Column("records_total", sa.BigInteger(), nullable=True),
        sa.Column("records_processed", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=True),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("active_key", name="uq_aep_system_jobs_active_key"),
    )
    with op.batch_alter_table("aep_system_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_aep_system_jobs_scope", ["sandbox_id", "created_ms"], unique=False)
    op.create_table(
        "aep_store_deletions",
        sa.Column("load_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("load_id"),
    )
    with op.batch_alter_table("aep_store_deletions", schema=None) as batch_op:
        batch_op.create_index("ix_aep_store_deletions_request", ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("aep_store_deletions", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_store_deletions_request")
    op.drop_table("aep_store_deletions")
    with op.batch_alter_table("aep_system_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_system_jobs_scope")
    op.drop_table("aep_system_jobs")
