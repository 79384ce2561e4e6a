"""Cheaper merge: report_month() inlined, ensure_message() reads first, no lock when nothing changes, an index dropped.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

First, outside the migration's transaction and without stopping writes: recipients_updated_at_idx,
which no query, view or dashboard reads, dropped concurrently (every recipient written paid for
it). Then 0008_cheaper_merge.sql, in the transaction: report_month(), ensure_message() and apply_result()
replaced (the same values and rows, for less work: the indexes on report_month() keep their
entries, see the .sql; apply_result() answers a report that would change nothing without locking
the recipient's row).
"""

from alembic import op

from migrations.sql import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind().connection.driver_connection
    with op.get_context().autocommit_block():
        connection.execute("SET lock_timeout = '2s'")  # type: ignore[union-attr]
        connection.execute("DROP INDEX CONCURRENTLY IF EXISTS recipients_updated_at_idx")  # type: ignore[union-attr]
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
