"""Poller state: one row that every poller writes and /readyz and /metrics read.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from migrations.sql import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
