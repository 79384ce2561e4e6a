"""Poll shapes: apply_reply learns a reply's listed recipient and keyless replies; messages.replies_due.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from migrations.sql import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
