"""Poll queue: each due message's class (needy or confirmation), kept by the pollers, and its index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from migrations.sql import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
