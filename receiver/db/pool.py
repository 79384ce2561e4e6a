"""Database connections: the web process's pool with bounded waits and its states, and single
connections for the CLI and the poller. No DDL here: see migrator.py."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import migrator, store
from ..config import Settings
from ..errors import Unavailable, first_line
from .watchdog import Watchdog

# A pool slot whose connection broke is re-made with back-off (1 s, then 2 s) for this long, then
# left empty until a request needs it: demand, not a growing back-off, decides when to try again,
# so requests succeed within a second or two of the database coming back.
RECONNECT_SECONDS = 2.0
POOL_IDLE_SECONDS = 60.0  # a pooled connection unused this long is closed (above the one kept ready)
# After a wait for a pooled connection got none, the next waits (for this long) are this short.
STARVED_SECONDS = 2.0
STARVED_WAIT_SECONDS = 0.25
# A statement cancelled from the client is abandoned only this long after the cancel (or less, in a
# short request): the time a live server has to roll it back and say so.
CANCEL_GRACE_SECONDS = 1.0

log = structlog.get_logger(__name__)
T = TypeVar("T")


def connect_kwargs(settings: Settings, role: str = "cli") -> dict[str, Any]:
    return {
        # pg_stat_activity says which process holds a connection: web (its worker's pid), poller, cli
        "application_name": f"bestsms-receiver {role} {os.getpid()}",
        # Every statement is prepared on its first use on a connection, so the webhook path pays
        # for parsing and planning once per connection, not once per request; never through a
        # transaction-mode pooler, which hands each transaction to any server connection.
        "autocommit": True, "prepare_threshold": None if settings.db_pooler == "transaction" else 0,
        "connect_timeout": settings.db_timeout_seconds,
        # A database host that vanishes without closing the connection is noticed within seconds,
        # not at the kernel's TCP timeout, idle or sending (ignored on Unix sockets).
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
        "tcp_user_timeout": int(settings.request_timeout_seconds * 1000),
    }


def connect(settings: Settings, conninfo: str, role: str = "cli") -> psycopg.Connection[Any]:
    """One connection configured like the pool's (for the CLI and the poller), that answers within
    DB_TIMEOUT_SECONDS: a session pooler with every server connection taken accepts the client and
    then holds its first query (pgbouncer's query_wait_timeout: 120 s); here that is an error at
    once, saying so, never a hang."""
    conn = psycopg.connect(conninfo, **connect_kwargs(settings, role))
    now = time.monotonic()
    bound = settings.db_timeout_seconds
    try:
        with _FIRST_QUERY.watching(conn, cancel_at=now + bound, abandon_at=now + bound + 1) as watched:
            store.ping(conn)
    except psycopg.Error as exc:
        conn.close()
        if watched.cancelled or watched.abandoned:
            raise psycopg.OperationalError(
                f"the database (or a pooler in front of it) gave no server connection within {bound} s: a "
                "session pooler whose pool is taken? (docs/operations.md, Scaling out: the connections to allow)"
            ) from exc
        raise
    return conn


# What an error says of the database's state (its SQLSTATE, or the first two characters: its
# class): a reason to answer 503 and retry later, not a bug. The input's faults (22, 23: DataError,
# IntegrityError) are neither: they are kept as rejected.
_STATES = {
    "08": "the connection to the database failed",
    "25006": "the database is read-only (a standby, a demoted primary, or default_transaction_read_only)",
    "28": "the database refused the credentials",
    "3D000": "the database does not exist",
    "40001": "a transaction conflicted with another (retry)",
    "40P01": "a deadlock (retry)",
    "42501": "the database user lacks a privilege",
    "26000": "a prepared statement is missing: a transaction-mode pooler? set DB_POOLER=transaction",
    "42P05": "a prepared statement exists already: a transaction-mode pooler? set DB_POOLER=transaction",
    "53": "the database is out of a resource (disk, memory or connections)",
    "55P03": "a lock was not available",
    "57014": "a statement took too long (a lock, or a slow database)",
    "57": "the database is shutting down or not accepting connections",
    "58": "the database had an I/O error",
    "XX001": "the database found corrupted data",
    "XX002": "the database found a corrupted index",
}


# What the database refuses because of a value it was given (a constraint, a type's range, an index
# key over its size): the input's fault, kept as rejected; neither the database's state nor a bug.
VALUE_REFUSED: tuple[type[psycopg.Error], ...] = (
    psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)


def refused_value(exc: psycopg.Error) -> str:
    """Why the database refused a value (one of VALUE_REFUSED), as a rejected event's error says it."""
    return f"value refused by the database: {exc.diag.message_primary or first_line(exc)}"


def database_state(exc: psycopg.Error) -> str | None:
    """What `exc` says of the database's state (a reason to answer 503 and retry), or None when
    it is not one (a bug, or the input's fault): the web and the poller classify errors here."""
    if store.missing_event_partition(exc):  # the web makes it itself: this is that failing too
        return ("no webhook_events partition for this day, and making it failed: "
                f"run `python -m receiver prune`: {exc.diag.message_primary}")
    code = exc.sqlstate or ("08" if isinstance(exc, psycopg.OperationalError) else "")
    label = _STATES.get(code) or _STATES.get(code[:2])
    if label is None:
        return None
    detail = exc.diag.message_primary if exc.sqlstate else first_line(exc)
    return f"{label}: {detail}" if detail else label


_FIRST_QUERY = Watchdog()  # one for every connect() of the process: a watchdog has a thread of its own


def _writable_health(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    state = store.health(conn)
    if state["read_only"]:
        raise Unavailable(_STATES["25006"])
    if state["missing_privileges"]:
        raise Unavailable(f"{_STATES['42501']}: {', '.join(state['missing_privileges'])}")
    return state


class _Failed(Exception):
    """A psycopg error of one attempt, with what became of its connection."""

    def __init__(self, error: psycopg.Error, *, broken: bool, abandoned: bool) -> None:
        super().__init__(str(error))
        self.error, self.broken, self.abandoned = error, broken, abandoned


class Database:
    """The web process's database: a pool that recovers by itself, a bound on every wait, and the
    schema version checked before the first write. Changes of state are logged once, not per request."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.timeout = settings.request_timeout_seconds
        # Half of a request's time for a pooled connection, half for its statement.
        self.statement_ms = int(self.timeout * 500)
        # One connection kept ready; more opened under load, up to DB_POOL_SIZE, and closed after
        # POOL_IDLE_SECONDS unused: a worker never holds server slots (a session pooler's, or
        # max_connections) that it does not use, so hosts x workers x DB_POOL_SIZE is a ceiling.
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=settings.db_pool_size,
            max_idle=POOL_IDLE_SECONDS,
            kwargs=connect_kwargs(settings, "web"),
            configure=self._configure,
            timeout=self.timeout / 2,
            reconnect_timeout=RECONNECT_SECONDS,
            open=False,
            name="receiver",
        )
        # Through a transaction-mode pooler a session's settings would stay on whichever server
        # connection ran them: the statement timeout is then set in each statement's transaction.
        self.pooled = settings.db_pooler == "transaction"
        self.watchdog = Watchdog()
        # In the background: a worker starts (and answers 503) while the database is away.
        self.pool.open(wait=False)
        self._schema_checked = False
        # The revisions this code knows, read now, at boot (alembic and its scripts: about 0.4 s):
        # the first probe must not spend that holding a connection, counted as the database's time.
        migrator.head()
        # Until then, a wait for a pooled connection is short: the last wait got none (a pool the
        # database will not refill, its connections exhausted by others), so each request is
        # answered 503 at once instead of holding a thread for half its time.
        self._starved_until = 0.0
        self._state: str | None = "starting"  # None: working; else what was last logged
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # The server cancels a statement (and so rolls it back) that runs or waits on a lock too
        # long: a request answered 503 for it was never applied.
        if not self.pooled:
            try:
                store.set_statement_timeout(conn, self.statement_ms)
            except psycopg.Error as exc:  # psycopg_pool drops the connection; the log says why it must
                reason = database_state(exc)  # (a pooler's "prepared statement exists": set DB_POOLER)
                if reason is not None:
                    self._down(reason.split(":", 1)[0], reason)
                raise

    def _bounded(self, conn: psycopg.Connection[Any], work: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self.pooled:
            return work(conn)
        with conn.transaction():
            store.set_statement_timeout(conn, self.statement_ms, local=True)
            return work(conn)

    def run(self, work: Callable[[psycopg.Connection[Any]], T], timeout: float | None = None) -> T:
        """`work(conn)` on a pooled connection, within `timeout` (REQUEST_TIMEOUT_SECONDS), or Unavailable.

        A connection found broken (the database restarted since it was made) is dropped, with the
        idle ones the same restart broke, and the work done again on another: work is one
        idempotent statement, so at worst a retry is a duplicate. A restart ends its sessions one
        by one, so a retry may meet another broken connection: up to one retry per pooled
        connection, within the deadline. psycopg's DataError and IntegrityError (the input's
        fault) pass through, and so does an error that says nothing of the database's state (a
        bug); one that does (read-only, a privilege, a full disk: see database_state) is Unavailable."""
        deadline = time.monotonic() + (timeout or self.timeout)
        retries = self.pool.max_size
        while True:
            try:
                result = self._attempt(work, deadline)
            except PoolTimeout:
                self._starved_until = time.monotonic() + STARVED_SECONDS
                raise self._down("unavailable", "no database connection within the request's time") from None
            except _Failed as failed:  # the input's fault (DataError, IntegrityError) and bugs pass through
                exc = failed.error
                if isinstance(exc, psycopg.errors.QueryCanceled):
                    raise self._down("unavailable", f"a statement took over {self.statement_ms} ms "
                                                    "(a lock, or a slow database)") from None
                if failed.abandoned:
                    raise self._down("unavailable", f"no answer from the database within {timeout or self.timeout:g} s "
                                                    "(a stopped server, or a network that lost it)") from None
                if failed.broken and retries > 0:
                    retries -= 1
                    self.pool.check()  # drop the idle connections the same restart broke
                    continue
                if (reason := database_state(exc)) is None:
                    raise exc from None
                raise self._down(reason.split(":", 1)[0], reason) from None
            except Unavailable as exc:  # the work found the database unfit (ready())
                raise self._down(exc.reason, exc.reason) from None
            self._up()
            return result

    def _attempt(self, work: Callable[[psycopg.Connection[Any]], T], deadline: float) -> T:
        """One try of `run`: a pooled connection within what is left of the time, then `work` on it,
        watched. A psycopg error comes out as _Failed, saying whether the connection broke and
        whether the watchdog abandoned it."""
        now = time.monotonic()
        remaining = deadline - now
        wait = remaining - min(self.statement_ms / 1000, remaining / 2)  # leave the statement its time
        if self._starved_until > now:
            wait = min(wait, STARVED_WAIT_SECONDS)
        if wait <= 0.01:
            raise PoolTimeout
        broken = abandoned = False
        try:
            with self.pool.connection(timeout=wait) as conn:
                self._starved_until = 0.0
                # Abandoned a little before the deadline (the answer still has to be written), and
                # cancelled well before that: a live server then rolls the statement back and answers.
                # Only one that does not answer the cancel (stopped, or cut off) is abandoned, so a
                # statement stuck on a lock cannot commit after its 503.
                abandon_at = deadline - min(0.3, remaining / 4)
                cancel_at = min(time.monotonic() + self.statement_ms / 1000 + 0.25,
                                abandon_at - min(CANCEL_GRACE_SECONDS, remaining / 3))
                try:
                    with self.watchdog.watching(conn, cancel_at=cancel_at, abandon_at=abandon_at) as watched:
                        if not self._schema_checked:
                            self._check_schema(conn)
                        return self._bounded(conn, work)
                except psycopg.Error:
                    broken, abandoned = conn.broken, watched.abandoned
                    raise
        except PoolTimeout:  # an OperationalError too, said apart by `run`
            raise
        except psycopg.Error as exc:
            raise _Failed(exc, broken=broken, abandoned=abandoned) from exc

    def ready(self, timeout: float) -> dict[str, Any]:
        """The pollers' row (store.health), when the database answers within `timeout`, its schema
        is current, and this session can record webhooks; else Unavailable, with why."""
        return self.run(_writable_health, timeout=timeout)

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        reason = migrator.behind(conn)
        if reason:
            raise Unavailable(reason)  # logged by run(), once for as long as it lasts
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
