"""alembic's entry point: runs the pending migrations in one transaction, under an advisory lock.

Called by `python -m receiver migrate` (which passes the connection string in
`config.attributes["conninfo"]`) or by `alembic upgrade head` (which reads DATABASE_URL).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from receiver.schema import connect, take_migrate_lock

# One migration run at a time: a second `migrate` waits here, then finds nothing to do.
MIGRATE_LOCK = 7_460_817_344  # receiver.schema.MIGRATE_LOCK
# A migration waits this long for a table lock; past it, it fails and `migrate` tries it again
# (receiver.schema.LOCK_TIMEOUT_MS), rather than stalling every webhook queued behind its request.
LOCK_TIMEOUT = "2s"

config = context.config


def run_migrations_online() -> None:
    conninfo = config.attributes.get("conninfo") or os.environ.get("DATABASE_URL")
    if not conninfo:
        raise RuntimeError("DATABASE_URL is not set")
    # psycopg connects (it understands every libpq URL and key=value string); SQLAlchemy only carries it.
    # receiver.schema.connect: a connect timeout, and migrate's own statement timeouts.
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
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the migrations are plain SQL files already")
run_migrations_online()
