"""The schema's version: only `migrate` changes the schema; every other process checks it.

Migrations are alembic revisions of plain SQL in `migrations/` (see its README); `schema.sql` is
the readable schema they produce. A process whose code knows a newer revision than the database
has waits (webhooks get 503) until `migrate` has run; a database newer than the code (the
release step ran before this process was replaced) is served, as migrations stay compatible
with the code before them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo

from migrations import report_zone

from . import store
from .config import DEFAULT_TIMEZONE
from .errors import Fatal

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
T = TypeVar("T")


@cache
def _revisions() -> tuple[str, frozenset[str]]:
    """(head, every revision) of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    if head is None:
        raise Fatal(f"no migrations in {MIGRATIONS}: this installation is incomplete")
    return head, frozenset(r.revision for r in script.walk_revisions())


@cache
def _replaceables() -> frozenset[str]:
    """The names of the migrations/replaceable/ files shipped with this code."""
    from migrations.replaceable import shipped

    return frozenset(r.name for r in shipped())


def head() -> str:
    """The revision this code needs."""
    return _revisions()[0]


def _config(conninfo: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if conninfo:
        config.attributes["conninfo"] = conninfo
    return config


MIGRATE_LOCK = 7_460_817_344  # pg_advisory_lock key of `migrate` (migrations/env.py holds it too)


# Every step of `migrate` waits at most LOCK_TIMEOUT_MS for a lock (migrations/env.py sets it for
# the migrations): webhooks queued behind its lock request wait no longer than that. A step that
# times out is tried again, until MIGRATE_LOCK_BUDGET_SECONDS have passed.
LOCK_TIMEOUT_MS = 2000
MIGRATE_LOCK_BUDGET_SECONDS = 300.0


# `migrate`'s own session settings, whatever the role's defaults (managed PostgreSQL often sets a
# short statement_timeout): no statement bound (an index built concurrently takes what it takes;
# lock waits are bounded by LOCK_TIMEOUT_MS), no idle-in-transaction bound.
MIGRATE_CONNECT_TIMEOUT_SECONDS = 10


def bounded(conninfo: str, seconds: int = MIGRATE_CONNECT_TIMEOUT_SECONDS) -> str:
    """`conninfo` with a connect timeout, unless it gives one: each host of a multi-host URL is
    given up on after it, so a first host that never answers is passed, never waited on forever."""
    if "connect_timeout" in psycopg.conninfo.conninfo_to_dict(conninfo):
        return conninfo
    return psycopg.conninfo.make_conninfo(conninfo, connect_timeout=seconds)


def connect(conninfo: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection for `migrate` (and alembic's env.py): a connect timeout, and its own timeouts."""
    conn = psycopg.connect(bounded(conninfo), autocommit=autocommit)
    store.set_session_bounds_for_migrate(conn)
    return conn


def migrate(conninfo: str, timezone: str = DEFAULT_TIMEZONE,
            connect_timeout: int = MIGRATE_CONNECT_TIMEOUT_SECONDS, *, replay: bool = False) -> list[str]:
    """Apply every pending migration (one transaction, under an advisory lock), or build a new
    database from schema.sql (see migrations/env.py; `replay`: run every migration instead), then
    make report days the account's (`timezone`) and grant the `reporting` role what it lacks;
    returns what was done. Each connection gives up on a host after `connect_timeout` seconds
    (unless the URL says otherwise)."""
    from alembic import command

    conninfo = bounded(conninfo, connect_timeout)
    applied: list[str] = []
    config = _config(conninfo)
    config.attributes["on_version_apply"] = lambda *, step, **_: applied.append(_describe(step.up_revision))
    config.attributes["on_schema_sql"] = lambda revision, schema: applied.append(
        f"{revision}: a new database, built from schema.sql in schema {schema}")
    config.attributes["on_replaceables"] = lambda names: applied.append(
        f"migrations/replaceable/ (changed since the last migrate): {', '.join(names)}")
    config.attributes["replay"] = replay
    _retrying_locks(lambda: command.upgrade(config, "head"))
    with connect(conninfo) as conn:  # the days ahead, whatever else runs
        _retrying_locks(lambda: store.ensure_event_partitions(conn))
    if changed := _set_report_zone(conninfo, timezone):
        applied.append(changed)
    with connect(conninfo) as conn:  # every run: a role made (or tables added) since is served
        if granted := _retrying_locks(lambda: store.grant_reporting(conn)):
            applied.append(f"reporting granted SELECT on {len(granted)} tables and views: {', '.join(granted)}")
    return applied


def _retrying_locks(step: Callable[[], T]) -> T:
    """`step`, tried again while it fails for a lock it could not take within LOCK_TIMEOUT_MS (it
    rolled back: nothing of it is left), for up to MIGRATE_LOCK_BUDGET_SECONDS."""
    deadline = time.monotonic() + MIGRATE_LOCK_BUDGET_SECONDS
    while True:
        try:
            return step()
        except Exception as exc:  # alembic and SQLAlchemy wrap psycopg's error
            if not isinstance(getattr(exc, "orig", exc), psycopg.errors.LockNotAvailable):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"a lock stayed taken for {MIGRATE_LOCK_BUDGET_SECONDS:g} s (a long report or "
                                   "transaction?): nothing was changed by the last step; run migrate again") from exc
            time.sleep(random.uniform(0.2, 1.0))  # noqa: S311 - a pause, not a secret


def take_migrate_lock(try_lock: Callable[[], bool]) -> None:
    """Wait for `migrate`'s advisory lock by trying it again and again (`try_lock`: one
    pg_try_advisory_lock in a transaction of its own). Waiting inside one statement would hold a
    snapshot that CREATE INDEX CONCURRENTLY, run by the migrate holding the lock, waits for: a
    deadlock between two migrate runs."""
    while not try_lock():
        time.sleep(random.uniform(0.1, 0.3))  # noqa: S311 - a pause, not a secret


def _set_report_zone(conninfo: str, timezone: str) -> str | None:
    """Make report days the account's (`timezone`) when they are another zone's, without holding
    up writes: new functions and indexes built concurrently beside the old ones, swapped in one
    short transaction (its views made again), the old ones then dropped concurrently."""
    with connect(conninfo) as conn:
        # one migrate at a time; held until the session ends
        take_migrate_lock(lambda: store.try_advisory_lock(conn, MIGRATE_LOCK))
        store.set_lock_timeout(conn, LOCK_TIMEOUT_MS)
        _retrying_locks(lambda: report_zone.clean_report_zone_change(conn))
        if report_zone.report_zone(conn) in (None, timezone):
            return None
        _retrying_locks(lambda: report_zone.build_report_zone(conn, timezone))
        _retrying_locks(lambda: report_zone.swap_report_zone(conn, LOCK_TIMEOUT_MS))
        _retrying_locks(lambda: report_zone.finish_report_zone_change(conn))
    return f"report days in {timezone} (BESTSMS_TIMEZONE): report_day() and its indexes rebuilt"


def history() -> list[str]:
    """Every revision shipped with this code, oldest first, as `migrate` names them."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    return [_describe(r) for r in reversed(list(script.walk_revisions()))]


def _describe(revision: Any) -> str:
    return f"{revision.revision} ({(revision.doc or '').splitlines()[0].rstrip('.')})"


def version(conn: psycopg.Connection[Any]) -> str | None:
    """The database's schema revision (None: no migration has run)."""
    return store.schema_version(conn)


def behind(conn: psycopg.Connection[Any]) -> str | None:
    """Why this code cannot use the database's schema yet, or None when it can."""
    have = version(conn)
    need, known = _revisions()
    if have is not None and have not in known:  # newer than this code: served
        return None
    if have == need:
        # a function or view this code calls that was never made here (one whose text changed
        # is served: a new body keeps the contract of the old)
        if missing := sorted(_replaceables() - store.applied_replaceables(conn)):
            return (f"the database lacks {', '.join(missing)} from migrations/replaceable/: "
                    "run `python -m receiver migrate`")
        return None
    state = "has no schema" if have is None else f"schema is at revision {have}"
    return f"the database {state}, this code needs {need}: run `python -m receiver migrate`"
