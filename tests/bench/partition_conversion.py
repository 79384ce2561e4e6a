"""The archive's conversion to daily partitions (migration 0007) at size, with writes going on.
Run by hand:

    python tests/bench/partition_conversion.py [--server URL] [--events 1000000] [--keep]

It makes a database of its own (dropped at the end unless --keep), migrates it to 0006, fills
webhook_events with `--events` rows spread over 90 days (about 600 bytes each, like stored JSON
webhooks), then runs `migrate` to the head while a writer inserts webhook rows continuously, and
prints: the time of each step, the longest insert the writer saw (what a webhook would have
waited), and a prune of the days past 30 (dropped whole) against the old way (DELETE in batches).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from receiver import migrator, store

FILL = """
INSERT INTO webhook_events (received_at, method, format, content_type, headers, body, kind, message_id, outcome)
SELECT now() - (90 * 86400 * random()) * interval '1 second', 'POST', 'json', 'application/json',
       '{"content-type": "application/json", "user-agent": "BestSMS"}',
       '{"Sender": "application@example.com", "Type": "SMS", "Destination": "+61410'
       || lpad((i %% 1000000)::text, 6, '0') || '", "MessageID": "m' || i || '", "JobNumber": "10AB20CE", '
       || '"SubAccount": "Clinic-North", "Department": "Reminders", "Status": "SUCCESS", "Result": "delivered", '
       || '"SentTimeUTC": "2026-06-12 20:44:30", "Price": "0.10", '
       || '"Message": "Your appointment is tomorrow at 10:00. Reply YES to confirm."}',
       'result', 'm' || i, 'applied'
FROM generate_series(%(start)s, %(stop)s) AS i"""

INSERT = ("INSERT INTO webhook_events (method, format, body, kind, message_id, outcome) "
          "VALUES ('POST', 'json', '{}', 'result', %s, 'applied')")


class Writer(threading.Thread):
    """Inserts webhook rows one at a time (autocommit), noting the longest wait."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.longest, self.count, self.errors = url, threading.Event(), 0.0, 0, 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute(INSERT, (f"w{self.count}",))
                except psycopg.Error:
                    self.errors += 1
                self.longest = max(self.longest, time.monotonic() - started)
                self.count += 1
                time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL", "host=127.0.0.1 user=postgres"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--conversion-only", action="store_true", help="skip the prune measurements")
    args = parser.parse_args()
    name = f"receiver_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(args.server, dbname=name)
    try:
        from alembic import command

        command.upgrade(migrator._config(url), "0006")
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            for start in range(1, args.events + 1, 500_000):
                conn.execute(FILL, {"start": start, "stop": min(start + 499_999, args.events)})
            conn.execute("VACUUM ANALYZE webhook_events")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('webhook_events'))").fetchone()
        print(f"filled {args.events:,} events ({size[0]}) in {time.monotonic() - started:.1f} s")

        writer = Writer(url)
        writer.start()
        time.sleep(2)
        started = time.monotonic()
        applied = migrator.migrate(url)
        took = time.monotonic() - started
        time.sleep(2)
        writer.stop.set()
        writer.join()
        print(f"migrate to {migrator.head()} took {took:.1f} s ({', '.join(a.split(' ')[0] for a in applied)}); "
              f"the writer made {writer.count:,} inserts meanwhile, the longest {writer.longest * 1000:.0f} ms, "
              f"{writer.errors} errors")
        with psycopg.connect(url, autocommit=True) as conn:
            counted = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
            print(f"rows after: {counted[0]:,} (before + the writer's)")
            if args.conversion_only:
                return
            # What retention costs now: days past 30 dropped whole, against DELETE in batches.
            conn.execute("SELECT ensure_webhook_event_partitions()")
            started = time.monotonic()
            dropped = store.drop_old_event_partitions(conn, 30 * 86400)
            deleted = store.prune_events(conn, 30 * 86400)
            print(f"prune 30 days, the first partition still in the retention: dropped {len(dropped)} "
                  f"partition(s), deleted {deleted:,} rows, {time.monotonic() - started:.1f} s")
            # The steady state, once the first partition is gone: one partition a day, 90 days.
            (legacy,) = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                     "WHERE i.inhparent = 'webhook_events'::regclass "
                                     "AND c.relname LIKE 'webhook%%before%%'").fetchone() or ("",)
            conn.execute(f'ALTER TABLE webhook_events DETACH PARTITION "{legacy}"')
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            for day in range(90, -1, -1):  # 90 days back to today (the days ahead exist)
                start = today - timedelta(days=day)
                conn.execute(f"CREATE TABLE webhook_events_{start:%Y%m%d} PARTITION OF webhook_events FOR VALUES "
                             f"FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')")
            conn.execute(f'INSERT INTO webhook_events OVERRIDING SYSTEM VALUE SELECT * FROM "{legacy}" '
                         f"WHERE received_at < date_trunc('day', now())")
            conn.execute(f'DROP TABLE "{legacy}"')
            conn.execute(f"""INSERT INTO webhook_events (received_at, method, outcome, body)
                SELECT now() - (90 * 86400 * random()) * interval '1 second', 'POST', 'applied', repeat('x', 500)
                FROM generate_series(1, {args.events})""")
            conn.execute("VACUUM ANALYZE webhook_events")
            (rows_,) = conn.execute("SELECT count(*) FROM webhook_events").fetchone() or (0,)
            started = time.monotonic()
            dropped = store.drop_old_event_partitions(conn, 30 * 86400)
            deleted = store.prune_events(conn, 30 * 86400)
            print(f"prune 30 days of {rows_:,} rows over 90 daily partitions: dropped {len(dropped)} partitions, "
                  f"deleted {deleted:,} rows, {time.monotonic() - started:.1f} s")
    finally:
        if not args.keep:
            with psycopg.connect(args.server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
