"""Plain-SQL migrations: each revision's SQL sits beside it, in a .sql file of the same name."""

from __future__ import annotations

from pathlib import Path

from alembic import op


def run_sql_file(revision_file: str) -> None:
    """Run the .sql file beside `revision_file` as written (psycopg's simple query protocol: no
    parameter markers, so `%` and `:name` in the SQL are left alone)."""
    sql = Path(revision_file).with_suffix(".sql").read_text(encoding="utf-8")
    op.get_bind().connection.driver_connection.execute(sql.encode())  # type: ignore[union-attr]
