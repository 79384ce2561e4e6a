"""Reporting at size: 1,000,000 recipients and 100,000 replies over 2026, then EXPLAIN ANALYZE of
each view's usual query (one day, or one sub account and month). Run by hand:

    python tests/bench/reporting_data.py [--server URL] [--keep]

It makes a database of its own on the server (dropped at the end unless --keep) and prints, per
query, the execution time PostgreSQL reports and the plan's top lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from receiver.migrator import migrate

FILL = """
INSERT INTO messages (message_id, sub_account, department, job_number, first_seen_at)
SELECT 'm' || lpad(i::text, 7, '0'), 'sub-' || lpad((i % 20)::text, 2, '0'), 'dept-' || (i % 5),
       upper(substr(md5(i::text), 1, 8)), timestamptz '2026-01-01 00:00Z' + (i * interval '95 seconds')
FROM generate_series(1, 333334) AS i;

INSERT INTO recipients (message_id, dest_seq, destination, type, status, result, sent_at, price, sms_parts,
                        sub_account, department, job_number, source, first_seen_at, updated_at, final_at)
SELECT m.message_id, lpad(n::text, 8, '0'), '+614' || lpad(((i * 7 + n) % 100000000)::text, 8, '0'), 'SMS',
       s.status, CASE s.status WHEN 'Success' THEN 'delivered' WHEN 'Failed' THEN 'undeliverable' ELSE 'submitted' END,
       m.first_seen_at + interval '5 seconds', CASE WHEN s.status = 'Pending' THEN NULL ELSE 0.1 END,
       1 + (i % 3), m.sub_account, m.department, m.job_number, 'webhook', m.first_seen_at, m.first_seen_at,
       CASE WHEN s.status = 'Pending' THEN NULL ELSE m.first_seen_at + (i % 120) * interval '1 second' END
FROM generate_series(1, 333334) AS i
JOIN messages m ON m.message_id = 'm' || lpad(i::text, 7, '0')
CROSS JOIN generate_series(1, 3) AS n
CROSS JOIN LATERAL (SELECT CASE WHEN (i + n) % 50 = 0 THEN 'Failed' WHEN (i + n) % 97 = 0 THEN 'Pending'
                                ELSE 'Success' END AS status) s
WHERE (i - 1) * 3 + n <= 1000000;

INSERT INTO replies (received_id, message_id, dest_seq, type, from_number, message_text, received_at,
                     sub_account, department, source, price)
SELECT 'r' || i, m.message_id, '00000001', 'SMSReply', '+614' || lpad(((i * 21 + 1) % 100000000)::text, 8, '0'),
       CASE WHEN i % 100 = 0 THEN 'STOP' WHEN i % 997 = 0 THEN 'start!' ELSE 'Yes' END,
       m.first_seen_at + interval '10 minutes', m.sub_account, m.department, 'webhook', 0.10
FROM generate_series(1, 100000) AS i
JOIN messages m ON m.message_id = 'm' || lpad((i * 3)::text, 7, '0');
UPDATE messages SET reference = 'ref-' || substr(message_id, 2) WHERE message_id LIKE 'm%';
ANALYZE;
"""

QUERIES = {
    "delivery_daily, one day": "SELECT * FROM delivery_daily WHERE day = '2026-06-15'",
    "rebilling_monthly, one sub account and month":
        "SELECT * FROM rebilling_monthly WHERE month = '2026-06-01' AND sub_account = 'sub-07'",
    "rebilling_monthly, one month": "SELECT * FROM rebilling_monthly WHERE month = '2026-06-01'",
    "message_status, one message": "SELECT * FROM message_status WHERE message_id = 'm0123456'",
    "message_status, one sub account's day": "SELECT * FROM message_status WHERE sub_account = 'sub-07' "
                                             "AND first_sent_at >= '2026-06-15' AND first_sent_at < '2026-06-16'",
    "failures, one day": "SELECT * FROM failures WHERE sent_at >= '2026-06-14T14:00Z' "
                         "AND sent_at < '2026-06-15T14:00Z'",
    "replies_inbox, one day": "SELECT * FROM replies_inbox WHERE received_at >= '2026-06-14T14:00Z' "
                              "AND received_at < '2026-06-15T14:00Z'",
    "delivery_latency_daily, one day": "SELECT * FROM delivery_latency_daily WHERE day = '2026-06-15'",
    "failures, one day (its day column)": "SELECT * FROM failures WHERE day = '2026-06-15'",
    "replies_inbox, one day (its day column)": "SELECT * FROM replies_inbox WHERE day = '2026-06-15'",
    "delivery_daily_by_sub_account, one day": "SELECT * FROM delivery_daily_by_sub_account WHERE day = '2026-06-15'",
    "message_status, one reference": "SELECT * FROM message_status WHERE reference = 'ref-0123456'",
    "opt_outs, every number": "SELECT * FROM opt_outs WHERE opted_out",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    name = f"bench_reporting_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(args.server, dbname=name)
    try:
        migrate(url)
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL.encode())
            counts = conn.execute("SELECT (SELECT count(*) FROM recipients), (SELECT count(*) FROM replies)").fetchone()
            print(f"filled: {counts[0]:,} recipients, {counts[1]:,} replies in {time.monotonic() - started:.0f} s")
            for title, query in QUERIES.items():
                conn.execute(query).fetchall()  # warm the cache, as a dashboard's second look would
                plan = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}").fetchall()]
                ms = float(re.search(r"Execution Time: ([\d.]+) ms", plan[-1])[1])  # type: ignore[index]
                rows = conn.execute(query).rowcount
                print(f"{ms:8.1f} ms  {rows:5} rows  {title}")
                for line in plan[:3]:
                    print(f"            {line.strip()[:110]}")
    finally:
        if not args.keep:
            with psycopg.connect(args.server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
