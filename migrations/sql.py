"""Plain-SQL migrations: each revision's SQL sits beside it, in a .sql file of the same name."""

from __future__ import annotations

from pathlib import Path

from alembic import op


def run_sql_file(revision_file: str) -> None:
    """Run the .sql file beside `revision_file` as written (psycopg's simple query protocol: no
    parameter markers, so `%` and `:name` in the SQL are left alone)."""
    sql = Path(revision_file).with_suffix(".sql").read_text(encoding="utf-8")
    op.get_bind().connection.driver_connection.execute(sql.encode())  # type: ignore[union-attr]


def build_concurrently(function: str | None, index: str, definition: str) -> None:
    """Outside the revision's transaction, without stopping writes: `function` (a CREATE OR REPLACE,
    or None) and the index `index` (`definition`: what follows `ON`) built concurrently; an invalid
    one an interrupted run left is dropped first. Each step can run again. The revision's .sql, in
    the transaction, swaps them in."""
    run = op.get_bind().connection.driver_connection.execute  # type: ignore[union-attr]
    with op.get_context().autocommit_block():
        run("SET lock_timeout = '2s'")
        if function:
            run(function)
        invalid = run("SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                      "WHERE c.relname = %s AND NOT i.indisvalid", (index,)).fetchone()
        if invalid is not None:
            run(f"DROP INDEX CONCURRENTLY {index}")
        run(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {definition}")
