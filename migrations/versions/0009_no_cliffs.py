"""No cliffs: opt-out keys bounded, sender times ordered by when they arrived, archive days without gaps.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

First, outside the migration's transaction and without stopping writes: opt_out_keyword() and
an index on it built concurrently (an invalid one left by an interrupted run is dropped first).
Then 0009_no_cliffs.sql, in the transaction: that index swapped in for replies_opt_out_idx, the
opt_outs view and the merge ordering reports by credible_time(), recipients.reported_at, and
ensure_webhook_event_partitions() filling gaps. Every step before the .sql can run again.
"""

from alembic import op

from migrations.sql import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OPT_OUT_KEYWORD = r"""
CREATE OR REPLACE FUNCTION opt_out_keyword(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (SELECT CASE WHEN w ~ '^\s*OPT\s+OUT\M' THEN 'OPT OUT'
                        ELSE (regexp_match(w, '^\s*([[:alpha:]]{1,64})(?![[:alpha:]])'))[1] END
            FROM (SELECT upper(regexp_replace(t, '[^[:alpha:][:space:]]', '', 'g')) AS w) letters)"""

INVALID_INDEX = """
SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = 'replies_opt_out_keyword_idx' AND NOT i.indisvalid"""


def upgrade() -> None:
    connection = op.get_bind().connection.driver_connection
    run = connection.execute  # type: ignore[union-attr]
    with op.get_context().autocommit_block():
        run("SET lock_timeout = '2s'")
        run(OPT_OUT_KEYWORD)
        if run(INVALID_INDEX).fetchone() is not None:
            run("DROP INDEX CONCURRENTLY replies_opt_out_keyword_idx")
        run("CREATE INDEX CONCURRENTLY IF NOT EXISTS replies_opt_out_keyword_idx "
            "ON replies (opt_out_keyword(message_text))")
    run_sql_file(__file__)


def downgrade() -> None:
    raise NotImplementedError("forward only: write a new migration to undo this one")
