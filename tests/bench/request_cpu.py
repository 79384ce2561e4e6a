"""The receiver's own CPU for each webhook, by fixed work (by hand, not in CI):

    python tests/bench/request_cpu.py [--webhooks 6000] [--rounds 5] [--profile out.txt] [--afternoon]

Rates on this shared 2-core machine drift 15-25 % between runs; the CPU a fixed amount of work
costs drifts less, and a change to the request path is seen here first. It builds the app as a
gunicorn worker does (production settings, a database of its own migrated by this checkout) and
calls it as WSGI from one thread with the result webhooks tests/bench/webhooks.lua sends (1-5
recipients a message, 15 % Pending, 5 % sent twice), and divides the process's CPU time (every
thread: the group commit's hand-off, the watchdog, the pool's) by the webhooks. gunicorn's HTTP
parsing and the socket are not in it; each webhook is its own commit (one sender, no batching),
so it counts the per-batch work once a webhook, as a quiet hour does. PostgreSQL's side is
tests/bench/merge_cpu.py's. With --profile, py-spy records the calling process meanwhile
(collapsed stacks, --gil). With --afternoon, the same for tests/bench/afternoon_app.py (the same job
written in an afternoon: throughput.py's comparison), part by part beside the receiver's.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from receiver import create_app  # noqa: E402
from receiver.config import Settings  # noqa: E402
from receiver.migrator import migrate  # noqa: E402
from tests.support import create_database, drop_database  # noqa: E402

TOKEN = "benchmark-token-2026"


def bodies(n: int, seed: int) -> list[bytes]:
    """`n` result webhooks as tests/bench/webhooks.lua makes them."""
    rng = random.Random(seed)
    prefix = f"cpu{seed}-{rng.randrange(10**9)}"
    made: list[bytes] = []
    for counter in range(1, n + 1):
        if made and rng.random() < 0.05:
            made.append(made[-1])
            continue
        message, seq = counter // 3, counter % 5 + 1
        status, result = ("Pending", "submitted") if rng.random() < 0.15 else ("Success", "delivered")
        clock = f"0{message % 7}:{counter % 60:02d}:{counter % 60:02d}"
        made.append((
            f'{{"Version":"v2.04","Sender":"webhooks@example.com.au","APIKey":"{TOKEN}","Type":"SMS",'
            f'"Destination":"+6141{(counter * 13) % 10_000_000:07d}","MessageID":"{prefix}-{message}",'
            f'"DestSeq":"{seq:08d}","SubAccount":"Clinic-{message % 7}","Department":"Reminders",'
            f'"JobNumber":"10AB20CE","SendTimeUTC":"2026-11-27 {clock}",'
            f'"SentTimeUTC_RFC3339":"2026-11-27T{clock}.000Z","Status":"{status}","Result":"{result}",'
            f'"Message":"","Price":"0.10","Detail":"SMSParts:1","URL":""}}').encode())
    return made


def environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/webhooks/bestsms", "QUERY_STRING": "",
        "RAW_URI": "/webhooks/bestsms", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


def run(app: Any, webhooks: list[bytes]) -> float:
    """CPU microseconds of this process per webhook; every answer must be a 200."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    started = time.process_time()
    for body in webhooks:
        for _ in app(environ(body), start_response):
            pass
    used = time.process_time() - started
    wrong = [s for s in statuses if not s.startswith("200")]
    if wrong:
        raise SystemExit(f"{len(wrong)} answers not 200, e.g. {wrong[:3]}")
    return used / len(webhooks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--webhooks", type=int, default=6000, help="a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", help="py-spy's collapsed stacks (--gil) to this file, over the rounds")
    parser.add_argument("--afternoon", action="store_true", help="the afternoon version instead of the receiver")
    args = parser.parse_args()
    name = f"bench_request_{uuid.uuid4().hex[:8]}"
    url = create_database(args.server, name)
    try:
        migrate(url)
        if args.afternoon:
            from tests.bench.throughput import PEER_TABLES

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(PEER_TABLES)
            os.environ.update({"DATABASE_URL": url, "WEBHOOK_TOKEN": TOKEN, "PEER_POOL_SIZE": "1"})
            from tests.bench.afternoon_app import app
        else:
            app = create_app(Settings.from_env({"DATABASE_URL": url, "WEBHOOK_TOKEN": TOKEN, "LOG_LEVEL": "INFO"}))
        run(app, bodies(500, 0))  # warm up: the pool, prepared statements
        spy = subprocess.Popen(["py-spy", "record", "--gil", "-r", "250", "-f", "raw", "-o", args.profile,
                                "-p", str(os.getpid())], stdout=subprocess.DEVNULL) if args.profile else None
        found = [run(app, bodies(args.webhooks, n + 1)) for n in range(args.rounds)]
        if spy:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait()
    finally:
        drop_database(args.server, name)
    program = "the afternoon version" if args.afternoon else "the receiver"
    print(f"median {statistics.median(found):.0f} us of {program}'s CPU a webhook "
          f"({', '.join(f'{v:.0f}' for v in found)})")


if __name__ == "__main__":
    main()
