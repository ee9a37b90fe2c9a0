"""aep: the identity graph's version per sandbox and the lake export plan built for it (issue 6:
exports that do not read the graph; see profiles/lakeplan.py).

Revision ID: a005
Revises: a004
Create Date: 2026-12-07 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "a005"
down_revision = "a004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aep_lake_plans",
        sa.Column("sandbox_id", sa.String(length=36), nullable=False),
        sa.Column("graph_version", sa.BigInteger(), nullable=False),
        sa.Column("current", sa.JSON(), nullable=True),
        sa.Column("retired", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("sandbox_id"),
    )


def downgrade() -> None:
    op.drop_table("aep_lake_plans")
