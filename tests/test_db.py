"""receiver/db/: the web process's pool, with a bound on every wait and recovery by itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from receiver import store
from receiver.config import Settings
from receiver.db import Database, connect
from receiver.errors import Unavailable
from tests.conftest import drop_database
from tests.support import TOKEN, free_port


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    found = Database(Settings(database_url=database_url, webhook_tokens=(TOKEN,), db_pool_size=2,
                              request_timeout_seconds=2), database_url)
    yield found
    found.close()


def test_every_connection_bounds_its_statements_by_half_the_request_time(database):
    assert database.run(lambda conn: conn.execute("SHOW statement_timeout").fetchone()) == ("1s",)


def test_a_statement_over_its_bound_is_unavailable_and_the_next_one_works(database):
    with pytest.raises(Unavailable, match="a statement took over 1000 ms"):
        database.run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
    assert database.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)


def test_connections_broken_by_a_restart_are_replaced_within_the_request(database, db):
    """Every pooled connection's server process ended (as a restart does): the work is done again
    on a new connection, and the caller sees an answer, not an error."""
    with database.pool.connection() as a, database.pool.connection() as b:
        pids = [a.info.backend_pid, b.info.backend_pid]
    db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    assert database.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    assert database.run(lambda conn: conn.info.backend_pid) not in pids


def test_no_database_is_unavailable_within_the_bound():
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    away = Database(Settings(database_url=url, webhook_tokens=(TOKEN,), db_pool_size=1, request_timeout_seconds=1), url)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            away.run(lambda conn: conn.execute("SELECT 1"))
        assert time.monotonic() - started < 1 + 5  # its bound, with a loaded machine's margin
    finally:
        away.close()


def test_single_connections_are_configured_like_the_pool(database_url):
    with connect(Settings(), database_url) as conn:
        assert conn.autocommit and conn.prepare_threshold == 0


def test_the_embedded_database_is_created_once(server_url):
    name = f"receiver_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            assert store.create_database(conn, name) is True
            assert store.create_database(conn, name) is False
    finally:
        drop_database(server_url, name)


@pytest.mark.parametrize(("statement", "says"), [
    ("BEGIN READ ONLY; INSERT INTO webhook_events (method, outcome) VALUES ('POST', 'applied')", "read-only"),
    ("SELECT 1/0", None),  # the input's fault (a DataError): not the database's state
    ("SELEC 1", None),  # a bug
    ("SET ROLE pg_read_all_stats; INSERT INTO webhook_events (method, outcome) VALUES ('POST', 'applied')",
     "lacks a privilege"),
])
def test_errors_are_classed_as_the_databases_state_or_not(database_url, statement, says):
    """Real errors from PostgreSQL (the web and the poller class them with database_state)."""
    from receiver.db import database_state

    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.Error) as raised:
        for part in statement.split("; "):
            conn.execute(part)
    found = database_state(raised.value)
    assert (found is None) if says is None else (says in (found or "")), found



def test_the_code_s_revisions_are_read_when_a_worker_starts_not_at_its_first_probe(database_url):
    """Reading the migrations (alembic: about 0.4 s) on a fresh worker's first /readyz was counted as
    the database's time: 503 "no answer from the database within 0.9 s" while it was healthy."""
    from receiver import migrator

    migrator._revisions.cache_clear()
    database = Database(Settings(database_url=database_url, db_pool_size=1), database_url)
    try:
        assert migrator._revisions.cache_info().currsize == 1  # read before any request
        assert database.ready(5)["read_only"] is False
    finally:
        database.close()
