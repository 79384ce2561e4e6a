"""webhook_events partitioned by day: days made ahead, old days dropped whole by `prune` (what is
left deleted inside the day the cutoff falls in), and a day nobody can make answered 503, not 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from receiver import Settings, create_app
from receiver.web import services
from tests.support import ROOT, TOKEN, post_flask

pytestmark = pytest.mark.slow


def _days(conn: psycopg.Connection) -> list[str]:
    return [name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'webhook_events'::regclass ORDER BY 1").fetchall()]


def _day_partitions(conn: psycopg.Connection, first: datetime, days: int) -> None:
    """The steady state, and nothing made ahead: one partition a day, the first one (all before
    migrate) gone."""
    for name in _days(conn):
        conn.execute(f'ALTER TABLE webhook_events DETACH PARTITION "{name}"')
        conn.execute(f'DROP TABLE "{name}"')
    for n in range(days):
        start = first + timedelta(days=n)
        conn.execute(f"CREATE TABLE webhook_events_{start:%Y%m%d} PARTITION OF webhook_events "
                     f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')")


def test_prune_drops_old_days_whole_and_deletes_inside_the_boundary_day(own_database):
    _, url = own_database
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        _day_partitions(conn, today - timedelta(days=40), 41)  # 40 days back, and today
        conn.execute("""INSERT INTO webhook_events (received_at, method, outcome)
                        SELECT now() - make_interval(hours => h), 'POST', 'applied'
                        FROM generate_series(0, 40 * 24 - 1, 6) AS h""")  # every 6 hours for 40 days
    done = subprocess.run([sys.executable, "-m", "receiver", "prune", "--events-older-than", "30d"], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT min(received_at), count(*) FROM webhook_events").fetchone()
        days = _days(conn)
    assert left[0] >= cutoff - timedelta(minutes=5) and left[1] == 4 * 30, left  # 30 days of 4 a day stay
    gone = sorted(f"webhook_events_{today - timedelta(days=n):%Y%m%d}" for n in range(31, 41))
    assert sorted(result["dropped_days"]) == gone  # whole days past the cutoff: dropped, not deleted
    assert result["deleted_events"] <= 4  # the rest of the boundary day, row by row
    assert not set(gone) & set(days)
    assert f"webhook_events_{today + timedelta(days=14):%Y%m%d}" in days  # and the days ahead made
    assert result["days_made"] == 14


def test_a_day_nobody_can_make_is_answered_503_not_500(own_database, samples):
    """Nothing made the days ahead and the webhook cannot make its own day either (the function's
    lock held past its lock_timeout): 503 with Retry-After, nothing half-written, never 500 or a
    400 (a missing day is not the input's fault); once the lock is free, the webhook makes it: 200."""
    _, url = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        _day_partitions(conn, datetime.now(UTC), 0)
    app = create_app(Settings(database_url=url, webhook_tokens=(TOKEN,), db_pool_size=2))
    try:
        client = app.test_client()
        with psycopg.connect(url) as holder:  # ensure_webhook_event_partitions()'s own lock, held
            holder.execute("SELECT pg_advisory_xact_lock(7460817345)")
            answer = post_flask(client, samples["result-delivered"]["fields"])
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.get_data(as_text=True)
        assert "lock" in answer.get_json()["reason"]
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM recipients").fetchone() == (0,)  # nothing half-written
            assert conn.execute("SELECT count(*) FROM webhook_events").fetchone() == (0,)
        assert post_flask(client, samples["result-delivered"]["fields"]).status_code == 200
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT webhook_event_days_ahead()").fetchone() == (14,)
    finally:
        services(app).database.close()
