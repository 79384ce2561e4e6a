"""alembic's entry point: runs the pending migrations in one transaction, under an advisory lock.

Called by `python -m receiver migrate` (which passes the connection string in
`config.attributes["conninfo"]`) or by `alembic upgrade head` (which reads DATABASE_URL).

A database new to the service (none of its tables in the connection's current schema) is built
from schema.sql and stamped at the head revision, as Rails loads schema.rb rather than replaying
history: the landed migrations name the `public` schema (0001, 0004, 0007), so replaying them
could not build a schema of another name, and a new database need not repeat what existing ones
went through. `config.attributes["replay"]` replays them instead (the test that they agree).
Either way, the functions and views of migrations/replaceable/ whose text changed are then made
again, in the same transaction (migrations/replaceable.py).
"""

from __future__ import annotations

import os
from typing import Any, cast

import psycopg
from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from migrations import replaceable
from receiver import store
from receiver.errors import Fatal
from receiver.migrator import ROOT, connect, take_migrate_lock

# One migration run at a time: a second `migrate` waits here, then finds nothing to do.
MIGRATE_LOCK = 7_460_817_344  # receiver.migrator.MIGRATE_LOCK
# A migration waits this long for a table lock; past it, it fails and `migrate` tries it again
# (receiver.migrator.LOCK_TIMEOUT_MS), rather than stalling every webhook queued behind its request.
LOCK_TIMEOUT = "2s"

config = context.config


def run_migrations_online() -> None:
    conninfo = config.attributes.get("conninfo") or os.environ.get("DATABASE_URL")
    if not conninfo:
        raise RuntimeError("DATABASE_URL is not set")
    # psycopg connects (it understands every libpq URL and key=value string); SQLAlchemy only carries it.
    # receiver.migrator.connect: a connect timeout, and migrate's own statement timeouts.
    engine = create_engine("postgresql+psycopg://", creator=lambda: connect(conninfo, autocommit=False),
                           poolclass=NullPool)
    with engine.connect() as connection:
        # A session lock, not a transaction's: it must outlive a revision's autocommit_block()
        # (CREATE INDEX CONCURRENTLY). Closing the connection releases it whatever happens.
        def try_lock() -> bool:
            taken = bool(connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATE_LOCK})").scalar())
            connection.commit()
            return taken

        take_migrate_lock(try_lock)
        context.configure(connection=connection, target_metadata=None,
                          on_version_apply=config.attributes.get("on_version_apply"))
        with context.begin_transaction():
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn = cast(psycopg.Connection[Any], connection.connection.driver_connection)
            new = _built_from_schema_sql(conn)
            if not new:
                context.run_migrations()
            if _to_head():
                # The functions and views whose file changed (on a database just built from
                # schema.sql, every one, with the text it has: recorded as applied, not reported).
                directory = config.attributes.get("replaceable_directory", replaceable.DIRECTORY)
                ran = replaceable.apply(conn, directory)
                if ran and not new and (callback := config.attributes.get("on_replaceables")):
                    callback(ran)
    engine.dispose()


def _to_head() -> bool:
    """Whether this run goes to the newest revision (the replaceable files are written for it: an
    upgrade to an earlier one, as the tests of a revision do, leaves them as that revision had them)."""
    head = ScriptDirectory.from_config(config).get_current_head()
    return context.get_revision_argument() in ("head", "heads", head)


def _built_from_schema_sql(conn: psycopg.Connection[Any]) -> bool:
    """A new database built from schema.sql, stamped at head; False: migrate it (it has a schema,
    the target is not the head, or replaying was asked for)."""
    schema, new = store.new_schema(conn)
    if schema is None:
        raise Fatal("no schema to create the tables in: the search_path names none that exists (create it, "
                    "or correct search_path in DATABASE_URL's options or the role's settings)")
    if not new or config.attributes.get("replay") or not _to_head():
        return False
    script = ScriptDirectory.from_config(config)
    conn.execute((ROOT / "schema.sql").read_text(encoding="utf-8").encode())
    context.get_context().stamp(script, "head")
    if callback := config.attributes.get("on_schema_sql"):
        callback(script.get_current_head(), schema)
    return True


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the migrations are plain SQL files already")
run_migrations_online()
