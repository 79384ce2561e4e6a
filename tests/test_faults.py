"""The service stays up: worker kills, a database away at start, restarted, cut off or locked.

Each test records every answer and then checks what users care about: every webhook answered 2xx
is stored exactly once, and nothing answered 503 is stored. None stops or reconfigures the shared
PostgreSQL: they use a database of their own on it, a TCP proxy in front of it, or a PostgreSQL
of their own in a temporary directory.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from receiver.migrator import migrate
from tests.proxy import TcpProxy
from tests.support import Burst, check_stored, pg_ctl, start_gunicorn, stop

pytestmark = pytest.mark.slow


def workers_of(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.append(int(entry.name))
    return found


def test_killing_workers_during_a_burst_never_stops_the_server(own_database, tmp_path):
    _, url = own_database
    proc, base = start_gunicorn(url, workers=4, log_path=tmp_path / "gunicorn.log")
    kills = 0
    try:
        with Burst(base, senders=8, prefix="kill") as burst:
            burst.wait_for(300)
            for _ in range(5):
                victims = workers_of(proc.pid)
                assert victims, "no workers"
                os.kill(victims[kills % len(victims)], signal.SIGKILL)
                kills += 1
                time.sleep(1)
            burst.wait_for(3000)
            after_kills = burst.count(200)
            burst.wait_for(after_kills + 200, status=200)  # still served after the last kill
        assert proc.poll() is None, "the gunicorn master stopped"
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        stop(proc)
    statuses = check_stored(url, burst.answers)
    # A killed worker's requests in flight get no answer (0); no request gets a 5xx.
    assert set(statuses) <= {"200", "0"}, statuses
    print(f"\n{kills} workers killed; answers: {statuses}")


def test_database_unreachable_at_start_then_reachable(own_database, server_url, tmp_path):
    name, url = own_database
    proxy = TcpProxy(server_url)  # down: connections to it are refused
    log_path = tmp_path / "gunicorn.log"
    proc, base = start_gunicorn(proxy.url(name), workers=2, log_path=log_path, wait_for="/healthz",
                                extra_env={"REQUEST_TIMEOUT_SECONDS": "2"})
    try:
        with Burst(base, senders=2, prefix="away", pause=0.05) as burst:
            burst.wait_for(20, status=503)
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert "\nbestsms_ready 0.0\n" in httpx.get(f"{base}/metrics", timeout=10).text  # what alerts read
            assert proc.poll() is None, "the gunicorn master stopped"
            proxy.up()
            back_at = time.monotonic()
            burst.wait_for(50, status=200)
        first_2xx = min(a.started + a.seconds for a in burst.answers if a.status == 200)
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert "\nbestsms_ready 1.0\n" in httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        stop(proc)
        proxy.down()
    statuses = check_stored(url, burst.answers)
    assert set(statuses) <= {"200", "503"}, statuses
    assert all(a.status == 200 for a in burst.answers if a.started > first_2xx + 1), "503s after recovery"
    # The reason is logged once per worker when it becomes unusable, not once per request.
    text = log_path.read_text()
    assert 1 <= text.count("database not usable") <= 2, text.count("database not usable")
    recovery = first_2xx - back_at
    print(f"\nanswers: {statuses}; first 2xx {recovery:.2f} s after the database became reachable")
    assert recovery < 10  # the target is 2 s (docs/operations.md); the margin is for a loaded machine


def test_connections_cut_mid_burst_fail_no_request(own_database, server_url):
    """What the receiver sees of a database restart: every pooled connection broken at once. Each
    is replaced and its statement retried on a fresh one, so no request fails."""
    name, url = own_database
    proxy = TcpProxy(server_url)
    proxy.up()
    proc, base = start_gunicorn(proxy.url(name), workers=2)
    try:
        with Burst(base, senders=6, prefix="cut") as burst:
            for _ in range(3):
                burst.wait_for(burst.count() + 200)
                before = proxy.connections
                proxy.cut()
            burst.wait_for(burst.count() + 200)
        assert proxy.connections > before  # the pool did reconnect
    finally:
        stop(proc)
        proxy.down()
    statuses = check_stored(url, burst.answers)
    assert statuses.keys() == {"200"}, statuses
    print(f"\nconnections cut 3 times; answers: {statuses}")


def test_a_table_locked_for_20_s_gets_503_within_the_bound_then_2xx(own_database):
    """And the probes never wait behind the webhooks: with more senders than threads (24 for 2
    workers x 4), every thread but one waits on the stuck commit and the next webhooks are
    answered 503 at once, so /healthz and /readyz answer within a second or two (7.7-7.9 s before)."""
    _, url = own_database
    bound = 8.0
    proc, base = start_gunicorn(url, workers=2, extra_env={"REQUEST_TIMEOUT_SECONDS": str(bound),
                                                           "GUNICORN_THREADS": "4"})
    probes: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
    try:
        with Burst(base, senders=24, prefix="lock", pause=0.02) as burst, psycopg.connect(url) as locker:
            burst.wait_for(100, status=200)
            locker.execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
            locked_at = time.monotonic()
            time.sleep(bound / 2)  # every thread taken, the commit well past ordinary
            with httpx.Client(timeout=30) as prober:
                while time.monotonic() < locked_at + 18:
                    for path, took in probes.items():
                        started = time.monotonic()
                        answer = prober.get(f"{base}{path}")
                        took.append(time.monotonic() - started)
                        assert answer.status_code == 200, (path, answer.text)
                    time.sleep(0.5)
            time.sleep(max(locked_at + 20 - time.monotonic(), 0))
            # The lock goes when the server reads the rollback, before the call returns here: a
            # webhook waiting on it may be answered 200 in between. Only answers that came back
            # before the rollback was sent are "during".
            releasing_at = time.monotonic()
            locker.rollback()
            released_at = time.monotonic()
            burst.wait_for(burst.count(200) + 100, status=200)
    finally:
        stop(proc)
    statuses = check_stored(url, burst.answers)
    assert set(statuses) <= {"200", "503"}, statuses
    refused = [a for a in burst.answers if a.status == 503]
    assert len(refused) >= 6, statuses
    slowest = max(a.seconds for a in refused)
    assert slowest < bound + 3, f"a 503 took {slowest:.1f} s, the bound is {bound} s"  # margin: a loaded machine
    during = [a for a in burst.answers if locked_at + 0.5 < a.started and a.started + a.seconds < releasing_at]
    assert during and all(a.status == 503 for a in during), [a for a in during if a.status != 503]
    assert any(a.status == 200 and a.started > released_at for a in burst.answers)
    slowest_probe = {path: round(max(took), 2) for path, took in probes.items()}
    print(f"\nanswers: {statuses}; slowest 503 {slowest:.2f} s (bound {bound} s); slowest probes {slowest_probe}")
    assert all(took < bound / 2 for took in slowest_probe.values()), slowest_probe  # they waited the bound


# -- a PostgreSQL of the test's own, restarted -----------------------------------------------------

def test_database_restarted_mid_burst(own_postgres):
    url = own_postgres.get_uri("postgres")
    migrate(url)
    proc, base = start_gunicorn(url, workers=2)
    try:
        with Burst(base, senders=6, prefix="restart") as burst:
            burst.wait_for(300, status=200)
            restarted_at = time.monotonic()
            pg_ctl(own_postgres, "-w", "-m", "fast", "restart")
            back_at = time.monotonic()
            burst.wait_for(burst.count(200) + 300, status=200)
    finally:
        stop(proc)
    statuses = check_stored(url, burst.answers, stored_503_possible=True)
    assert set(statuses) <= {"200", "503"}, statuses
    late = [a for a in burst.answers if a.started > back_at + 2 and a.status != 200]
    assert not late, f"{len(late)} requests failed more than 2 s after the database was back"
    print(f"\nrestart took {back_at - restarted_at:.2f} s; answers: {statuses}")
