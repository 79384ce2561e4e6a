"""The command line: only `migrate` changes the schema; every error is one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from receiver import migrator
from tests.conftest import create_database, drop_database
from tests.fake_bestsms import TOKEN as BESTSMS_TOKEN
from tests.support import ROOT, TOKEN


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LOG_LEVEL": "WARNING", **env})


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    name = f"receiver_cli_{uuid.uuid4().hex[:10]}"
    yield create_database(server_url, name)
    drop_database(server_url, name)


@pytest.mark.parametrize("command", [["track", "m-1"], ["poll", "--once"], ["reprocess"]])
def test_commands_wait_for_migrate_and_never_change_the_schema(empty_database, command):
    done = run(*command, DATABASE_URL=empty_database, BESTSMS_AUTH_TOKEN=TOKEN,
               BESTSMS_API_URL="http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "has no schema" in done.stderr and "receiver migrate" in done.stderr
    import psycopg

    with psycopg.connect(empty_database) as conn:
        assert migrator.version(conn) is None
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_migrate_then_the_commands_work(empty_database):
    first = run("migrate", DATABASE_URL=empty_database)
    assert first.returncode == 0, first
    assert first.stdout == (f"applied {migrator.head()}: a new database, built from schema.sql in schema public\n"
                            f"schema is at revision {migrator.head()}\n")
    again = run("init-db", DATABASE_URL=empty_database)  # the old name still works
    assert again.returncode == 0 and again.stdout == f"schema is at revision {migrator.head()} (nothing to apply)\n"
    tracked = run("track", "m-1", DATABASE_URL=empty_database)
    assert tracked.returncode == 0 and tracked.stdout == "m-1: tracked\n", tracked


def test_poll_without_a_bestsms_token_is_one_line(database_url):
    done = run("poll", "--once", DATABASE_URL=database_url, BESTSMS_AUTH_TOKEN="")
    assert done.returncode == 1
    assert done.stderr == "error: BESTSMS_AUTH_TOKEN is not set: the poller cannot authenticate to BestSMS\n"


def test_a_bad_setting_is_one_line():
    done = run("migrate", DATABASE_URL="postgresql://x@127.0.0.1:9/none", REQUEST_TIMEOUT_SECONDS="soon")
    assert done.returncode == 1 and done.stderr == "error: REQUEST_TIMEOUT_SECONDS must be a number, got 'soon'\n"


def test_a_bad_argument_is_one_line_naming_iso_8601():
    done = run("reprocess", "--since", "yesterday")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "expected an ISO 8601 date or time" in done.stderr


def test_psql_opens_the_database(database_url):
    done = run("psql", "-At", "-c", "SELECT version_num FROM alembic_version", DATABASE_URL=database_url)
    assert done.returncode == 0 and done.stdout == f"{migrator.head()}\n", done


@pytest.mark.slow
def test_the_embedded_database_left_by_a_crash_is_reused_then_stopped(tmp_path):
    """A `serve` killed with -9 leaves its embedded PostgreSQL running; the next command takes it
    over and, being its only user, stops it when it exits."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    crash = ("import os, pathlib; from receiver.db import start_embedded; "
             f"start_embedded(pathlib.Path({str(tmp_path)!r})); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", crash], cwd=ROOT, env=env, timeout=120, check=False)
    pid_file = tmp_path / "pgdata" / "postmaster.pid"
    stale = int(pid_file.read_text().split()[0])
    assert psutil.pid_exists(stale), "the crash should have left the server running"

    done = subprocess.run([sys.executable, "-m", "receiver", "psql", "-At", "-c", "SELECT 1"], cwd=ROOT,
                          env={**env, "RECEIVER_DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "1\n", done
    # It says what it did (attached, not started) and nothing else: no platformdirs warning.
    assert "embedded postgresql attached" in done.stderr and "started" not in done.stderr, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert not psutil.pid_exists(stale) or psutil.Process(stale).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()


def test_track_says_what_it_did(database_url):
    env = {"DATABASE_URL": database_url}
    assert run("track", "say-1", **env).stdout == "say-1: tracked\n"
    assert run("track", "say-1", **env).stdout == "say-1: already tracked\n"
    assert run("track", "say-1", "--recipients", "3", "--reference", "R-1", **env).stdout == \
        "say-1: already tracked, updated with what was given\n"


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://root:S3cret-pw@db.example/x", "must be a PostgreSQL connection string"),
    ("postgresql://root:S3cret-pw@127.0.0.1:1/x?bogus=1", 'invalid URI query parameter: "bogus"'),
    ("host=127.0.0.1 bogus=1 password=S3cret-pw port=1", 'invalid connection option "bogus"'),
    ("host=127.0.0.1 password=S3cret-pw rest", "cannot be read by libpq: the form is"),
    ("postgresql://root:S3cret-pw@127.0.0.1:1/x?sslmode=bogus", 'invalid sslmode value: "bogus"'),
])
def test_a_wrong_database_url_is_named_without_its_password(url, says):
    """The password was printed back ("missing "=" after "mysql://root:S3cret..." ...")."""
    for command in (("migrate",), ("report", "delivery", "--from", "2026-01-01", "--to", "2026-01-02")):
        done = run(*command, DATABASE_URL=url)
        assert done.returncode == 1 and says in done.stderr and done.stdout == "", done
        assert "S3cret" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: ")


def test_one_shot_commands_are_quiet_unless_asked(database_url, fake):
    """Every command printed its INFO lines ("embedded postgresql attached", each poll request):
    now a one-shot command says only its answer and its warnings; -v (before or after the command)
    or LOG_LEVEL brings the lines back."""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    env.update(DATABASE_URL=database_url, BESTSMS_API_URL=fake.url, BESTSMS_AUTH_TOKEN=BESTSMS_TOKEN,
               POLL_AFTER_SECONDS="0", POLL_RATE_PER_SECOND="200")
    fake.add_message("QUIET-1", 1)

    def run_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=env)

    assert run_("track", "QUIET-1").stderr == ""
    quiet = run_("poll", "--once")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    for n, args in enumerate((("-v", "poll", "--once"), ("poll", "--once", "-v"))):
        fake.add_message(f"LOUD-{n}", 1)
        assert run_("track", f"LOUD-{n}").returncode == 0
        loud = run_(*args)
        assert loud.returncode == 0 and ('"level": "info"' in loud.stderr or "[info" in loud.stderr), loud.stderr
        assert "HTTP Request" not in loud.stderr  # httpx's own line per request: at DEBUG only


def test_psql_honours_its_own_connection_options(database_url):
    """`psql -U billing` connected as DATABASE_URL's user: psql lets a connection string override
    its options. Now -U, -h, -p and -d change the connection string (and -U drops its password)."""
    import shutil

    import psycopg

    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    name = f"billing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE reporting")
    try:
        for args in (("-U", name), (f"--username={name}",)):
            done = run("psql", *args, "-At", "-c", "SELECT current_user", DATABASE_URL=database_url)
            assert done.returncode == 0 and done.stdout == f"{name}\n", done
        assert run("psql", "-At", "-c", "SELECT current_user", DATABASE_URL=database_url).stdout == "postgres\n"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {name}")


def test_serve_on_a_busy_port_says_so_in_one_line_naming_bind(database_url):
    """It logged 10 JSON errors over 5 s, then "Can't connect", with no word of --bind."""
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run("serve", "--bind", f"127.0.0.1:{port}", DATABASE_URL=database_url, WEBHOOK_TOKEN=TOKEN)
        took = time.monotonic() - started
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "--bind" in done.stderr and done.stdout == ""
    assert took < 30, took  # refused before the database is touched, not after gunicorn's 5 s of tries
