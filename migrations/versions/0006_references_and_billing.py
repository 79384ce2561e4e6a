"""References and billing: the sender's references kept, replies billed to their message, views for billing, opt-outs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from migrations.sql import run_sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
