"""The schema's version: only `migrate` changes the schema; every other process checks it.

Migrations are alembic revisions of plain SQL in `migrations/` (see its README); `schema.sql` is
the readable schema they produce. A process whose code knows a newer revision than the database
has waits (webhooks get 503) until `migrate` has run; a database newer than the code (the
release step ran before this process was replaced) is served, as migrations stay compatible
with the code before them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from . import store
from .config import DEFAULT_TIMEZONE
from .errors import Fatal

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"


@cache
def _revisions() -> tuple[str, frozenset[str]]:
    """(head, every revision) of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    if head is None:
        raise Fatal(f"no migrations in {MIGRATIONS}: this installation is incomplete")
    return head, frozenset(r.revision for r in script.walk_revisions())


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


def migrate(conninfo: str, timezone: str = DEFAULT_TIMEZONE) -> list[str]:
    """Apply every pending migration (one transaction, under an advisory lock), then make report
    days the account's (`timezone`); returns what was done."""
    from alembic import command

    applied: list[str] = []
    config = _config(conninfo)
    config.attributes["on_version_apply"] = lambda *, step, **_: applied.append(_describe(step.up_revision))
    command.upgrade(config, "head")
    if changed := _set_report_zone(conninfo, timezone):
        applied.append(changed)
    return applied


def _set_report_zone(conninfo: str, timezone: str) -> str | None:
    """Make report days the account's (`timezone`) when they are another zone's."""
    with psycopg.connect(conninfo) as conn:
        if not store.set_report_zone(conn, timezone, MIGRATE_LOCK):
            return None
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
    if have == need or (have is not None and have not in known):  # current, or newer than this code
        return None
    state = "has no schema" if have is None else f"schema is at revision {have}"
    return f"the database {state}, this code needs {need}: run `python -m receiver migrate`"
