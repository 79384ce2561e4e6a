"""Reporting: replies.price, recipients.final_at, days in the account's time zone, views, a read-only role.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from migrations.sql import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
