"""Report days in the account's time zone: report_day() has the zone written in (an index on it
must be IMMUTABLE), so `migrate` changes the zone by building new functions and indexes beside the
old ones, concurrently, swapping them in one short transaction, then dropping the old ones. Each
step can be run again, and `clean_report_zone_change` finishes or undoes one an interrupted
`migrate` left. Called by receiver/migrator.py's `migrate` (BESTSMS_TIMEZONE).
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import Connection, sql

REPORT_DAY_INDEXES = ("recipients_report_day_idx", "recipients_report_month_idx", "replies_report_month_idx")
# report_day() and report_month(), in the order their replacements are made (month calls day).
_REPORT_FUNCTIONS = ("report_day", "report_month")
_ARGS = "(timestamptz)"


def report_zone(conn: Connection[Any]) -> str | None:
    """The time zone written into report_day() (None: no such function)."""
    row = conn.execute("SELECT pg_get_functiondef(to_regprocedure('report_day(timestamptz)'))").fetchone()
    found = re.search(r"AT TIME ZONE '((?:[^']|'')*)'", row[0]) if row and row[0] else None
    return found.group(1).replace("''", "'") if found else None


def clean_report_zone_change(conn: Connection[Any]) -> None:
    """Finish a report-day change that an interrupted `migrate` swapped in, or drop what it built
    before the swap: the start of every change (autocommit: CONCURRENTLY)."""
    swapped = conn.execute("SELECT to_regprocedure('report_day__old(timestamptz)')").fetchone()
    if swapped and swapped[0]:
        finish_report_zone_change(conn)
        return
    for index in REPORT_DAY_INDEXES:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(f"{index}__next")))
    for name in reversed(_REPORT_FUNCTIONS):
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}" + _ARGS).format(sql.Identifier(f"{name}__next")))


def build_report_zone(conn: Connection[Any], timezone: str) -> None:
    """The new report_day__next() and report_month__next() in `timezone`, and each report-day
    index built again on them, concurrently: writes go on meanwhile (autocommit)."""
    conn.execute("SELECT now() AT TIME ZONE %s", (timezone,))  # PostgreSQL knows the zone
    conn.execute(sql.SQL("CREATE FUNCTION report_day__next(t timestamptz) RETURNS date "
                         "LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN (t AT TIME ZONE {})::date")
                 .format(sql.Literal(timezone)))
    conn.execute("CREATE FUNCTION report_month__next(t timestamptz) RETURNS date LANGUAGE sql IMMUTABLE "
                 "PARALLEL SAFE RETURN date_trunc('month', report_day__next(t)::timestamp)::date")
    for index in REPORT_DAY_INDEXES:
        (definition,) = conn.execute("SELECT pg_get_indexdef(%s::regclass)", (index,)).fetchone() or ("",)
        for name in _REPORT_FUNCTIONS:
            definition = definition.replace(f"{name}(", f"{name}__next(")
        conn.execute(definition.replace(f"INDEX {index} ON", f"INDEX CONCURRENTLY {index}__next ON", 1))


def swap_report_zone(conn: Connection[Any], lock_timeout_ms: int) -> None:
    """In one short transaction: the __next functions become report_day() and report_month(),
    and the views that call them are made again on them (each waits `lock_timeout_ms` at most for
    the views' readers: LockNotAvailable, to be tried again)."""
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        views = conn.execute("""
            SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS definition
            FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class
            WHERE d.classid = 'pg_rewrite'::regclass
              AND d.refobjid IN ('report_day(timestamptz)'::regprocedure, 'report_month(timestamptz)'::regprocedure)
            ORDER BY 1""").fetchall()
        for name in _REPORT_FUNCTIONS:
            conn.execute(sql.SQL("ALTER FUNCTION {}" + _ARGS + " RENAME TO {}").format(
                sql.Identifier(name), sql.Identifier(f"{name}__old")))
            conn.execute(sql.SQL("ALTER FUNCTION {}" + _ARGS + " RENAME TO {}").format(
                sql.Identifier(f"{name}__next"), sql.Identifier(name)))
        for view, definition in views:  # parsed again: they call the functions now so named
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS ").format(sql.SQL(view)) + sql.SQL(definition))


def finish_report_zone_change(conn: Connection[Any]) -> None:
    """After the swap: the old indexes dropped concurrently, the new ones given their names, the
    old functions dropped (autocommit)."""
    for index in REPORT_DAY_INDEXES:
        if conn.execute("SELECT to_regclass(%s)", (f"{index}__next",)).fetchone() != (None,):
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index)))
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(f"{index}__next"), sql.Identifier(index)))
    for name in reversed(_REPORT_FUNCTIONS):
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}" + _ARGS).format(sql.Identifier(f"{name}__old")))
