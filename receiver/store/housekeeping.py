"""Health, the archive's daily partitions and their pruning, connection bounds, grants, locks and
the schema's version."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import Connection, sql

from .base import one, rows

# -- health -----------------------------------------------------------------------------------------

# Health: what the pollers last recorded (they run in other processes), from their one state row.
# The privileges recording a webhook needs (has_table_privilege() is true when any one of a list
# is held: each is asked alone).
_WRITES = ", ".join(f"('{table}', '{privilege}')" for table, privileges in (
    ("webhook_events", "INSERT"), ("messages", "SELECT INSERT UPDATE"), ("recipients", "SELECT INSERT UPDATE"),
    ("replies", "SELECT INSERT UPDATE")) for privilege in privileges.split())
HEALTH = f"""
SELECT s.unauthorized_since, s.unauthorized_error, s.backlog_needy, s.backlog_confirmation,
       s.oldest_needy_at, s.measured_at,
       (SELECT last_success_at FROM poll_sweeps WHERE name = 'received') AS last_received_sweep_at,
       webhook_event_days_ahead() AS archive_days_ahead,
       current_setting('transaction_read_only')::boolean AS read_only,
       ARRAY(SELECT privilege || ' ON ' || tablename FROM (VALUES {_WRITES}) AS w (tablename, privilege)
             WHERE NOT has_table_privilege(tablename, privilege)) AS missing_privileges
FROM (SELECT true AS id) one LEFT JOIN poller_state s USING (id)"""


def health(conn: Connection[Any]) -> dict[str, Any]:
    """The pollers' state as they last wrote it (all None before their first run), whether this
    session can record webhooks (`read_only`, the `missing_privileges` it needs), and how many
    days after today the archive has partitions for (`archive_days_ahead`; -1: not even today's)."""
    return one(conn, HEALTH, {})


# Old request records, a batch at a time (each its own short transaction); results and replies stay.
PRUNE_EVENTS = """
DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events WHERE received_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY id LIMIT %(batch)s)"""



ENSURE_EVENT_PARTITIONS = "SELECT ensure_webhook_event_partitions(%(days)s) AS made"


def missing_event_partition(exc: psycopg.Error) -> bool:
    """Whether `exc` is webhook_events' day missing (SQLSTATE 23514, "no partition ... found for
    row"): for ensure_event_partitions() to make, never the input's fault."""
    return exc.sqlstate == "23514" and "no partition" in (exc.diag.message_primary or "")


def ensure_event_partitions(conn: Connection[Any], days: int = 14) -> int:
    """webhook_events' daily partitions made up to `days` days ahead; how many were missing."""
    made: int = one(conn, ENSURE_EVENT_PARTITIONS, {"days": days})["made"]
    return made


# Whole days past the retention (the partition's upper bound before the cutoff), a detach an
# interrupted prune left pending, and a day it detached but did not drop.
OLD_EVENT_PARTITIONS = r"""
SELECT c.relname AS name, i.inhdetachpending AS pending, i.inhrelid IS NOT NULL AS attached
FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'webhook_events'::regclass
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace AND c.relkind = 'r'
  AND c.relname ~ '^webhook_events_(before_)?[0-9]{8}$'
  AND (i.inhrelid IS NULL AND NOT c.relispartition
       OR substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
          <= now() - make_interval(secs => %(older_than)s))
ORDER BY 1"""


def drop_old_event_partitions(conn: Connection[Any], older_than_seconds: float) -> list[str]:
    """Drop webhook_events' days older than the age given, whole: each detached concurrently (no
    lock that stops writes), then dropped. Needs autocommit. Returns their names."""
    dropped = []
    for row in rows(conn, OLD_EVENT_PARTITIONS, {"older_than": older_than_seconds}):
        name = sql.Identifier(row["name"])
        if row["attached"]:
            how = sql.SQL("FINALIZE" if row["pending"] else "CONCURRENTLY")
            conn.execute(sql.SQL("ALTER TABLE webhook_events DETACH PARTITION {} {}").format(name, how))
        conn.execute(sql.SQL("DROP TABLE {}").format(name))
        dropped.append(row["name"])
    return dropped


def prune_events(conn: Connection[Any], older_than_seconds: float, batch: int = 5000) -> int:
    """Delete webhook_events rows older than the age given, a batch (a transaction) at a time: what
    is left of them once whole days are dropped (drop_old_event_partitions), in the day the
    cutoff falls in."""
    deleted = 0
    while True:
        count = conn.execute(PRUNE_EVENTS, {"older_than": older_than_seconds, "batch": batch}).rowcount
        deleted += count
        if count < batch:
            return deleted


# -- connections and the schema's version -------------------------------------------------------------

def ping(conn: Connection[Any]) -> None:
    """One round trip (a server connection was given)."""
    conn.execute("SELECT 1")


def set_statement_timeout(conn: Connection[Any], ms: int, *, local: bool = False) -> None:
    """The server cancels (and so rolls back) a statement of this session (`local`: of this
    transaction) that runs or waits longer."""
    conn.execute("SELECT set_config('statement_timeout', %s, %s)", (f"{int(ms)}ms", local))


def set_session_bounds_for_migrate(conn: Connection[Any]) -> None:
    """`migrate`'s session: no statement or idle-in-transaction bound, whatever the role's defaults."""
    conn.execute("SET statement_timeout = 0")
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    if not conn.autocommit:
        conn.commit()  # a SET outside autocommit opened a transaction: its values stay for the session


# What the `reporting` role may not yet read in this schema (a role a DBA made after the first
# migrate, tables added since): granted by every migrate, and named.
UNGRANTED_TO_REPORTING = """
SELECT c.relname AS name FROM pg_class c
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
  AND NOT c.relispartition AND c.relname <> 'alembic_version'
  AND NOT has_table_privilege('reporting', c.oid, 'SELECT')
ORDER BY 1"""


def grant_reporting(conn: Connection[Any]) -> list[str]:
    """Grant the `reporting` role (when it exists) reading of this schema's tables and views, now
    and for tables made later; returns those it could not read before."""
    if not rows(conn, "SELECT FROM pg_roles WHERE rolname = 'reporting'", {}):
        return []
    schema_ = sql.Identifier(rows(conn, "SELECT current_schema() AS name", {})[0]["name"])
    missing = [r["name"] for r in rows(conn, UNGRANTED_TO_REPORTING, {})]
    if not missing and rows(conn, "SELECT FROM pg_namespace WHERE oid = quote_ident(current_schema())::regnamespace "
                                  "AND has_schema_privilege('reporting', oid, 'USAGE')", {}):
        return []
    with conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO reporting").format(schema_))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO reporting").format(schema_))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO reporting")
                     .format(schema_))
    return missing


def set_lock_timeout(conn: Connection[Any], ms: int) -> None:
    """A statement of this session waits at most `ms` for a lock (then LockNotAvailable)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(ms)}ms",))


def try_advisory_lock(conn: Connection[Any], key: int) -> bool:
    """This session takes the advisory lock `key` if it is free (held until the session ends)."""
    return conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)


def create_database(conn: Connection[Any], name: str) -> bool:
    """Create the database `name` unless it exists; True when it was created."""
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        return False
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


# The schema a migration creates in (None: the search_path names none that exists), and whether
# the database is new to this service there: no revision, none of its tables.
NEW_SCHEMA = """
SELECT current_schema() AS schema, NOT EXISTS (
    SELECT FROM pg_class WHERE relnamespace = quote_ident(current_schema())::regnamespace
      AND relname IN ('alembic_version', 'messages', 'recipients', 'replies', 'webhook_events')) AS new"""


def new_schema(conn: Connection[Any]) -> tuple[str | None, bool]:
    """(the current schema, whether this service has nothing in it yet)."""
    row = one(conn, NEW_SCHEMA, {})
    return row["schema"], bool(row["new"])


def schema_version(conn: Connection[Any]) -> str | None:
    """The database's schema revision (alembic's), None when no migration has run."""
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
    return str(row[0]) if row else None


def applied_replaceables(conn: Connection[Any]) -> set[str]:
    """The migrations/replaceable/ files `migrate` has applied here (by name; empty before 0012)."""
    if not one(conn, "SELECT to_regclass('schema_replaceables') IS NOT NULL AS present", {})["present"]:
        return set()
    return {r["name"] for r in rows(conn, "SELECT name FROM schema_replaceables", {})}
