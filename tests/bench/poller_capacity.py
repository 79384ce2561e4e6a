"""Poller capacity: a day of messages against the fake BestSMS, at the equivalent of 1 request/s.

Run by hand (not in CI), from the repository root:

    python tests/bench/poller_capacity.py --messages-per-day 100000 200000

A day runs in 86400/SPEEDUP seconds: every duration (POLL_AFTER_SECONDS, the give-up time, ...)
is divided by SPEEDUP and the rate multiplied by it. To keep the real request rate within what one
process and the local fake serve, the day is also scaled by SCALE: SCALE x the messages and SCALE x
the request budget, which leaves the ratio of work to budget, and every wait, as they are; backlog
figures are scaled back up. The database's work per request is not compressed (each claim costs
what it costs in real time, and the queue is re-classed every 30 real seconds), so the figures
are a lower bound on what one poller does at 1 request/s. Each recipient sends a Pending then a
final webhook, each lost with probability LOSS: a lost final leaves a Pending row (the message is
needy); both lost leave no row (only a confirmation poll finds that recipient). Messages are not
registered, so their recipient count is unknown until polled. Prints one JSON line per volume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from pytest_httpserver import HTTPServer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from receiver import store  # noqa: E402
from receiver.bestsms.events import result_event  # noqa: E402
from receiver.migrator import migrate  # noqa: E402
from tests.fake_bestsms import TOKEN, FakeBestSMS  # noqa: E402

DAY = 86_400.0
POLL_AFTER, MAX_INTERVAL, GIVE_UP, SWEEP = 600.0, 3600.0, 21_600.0, 300.0
WITHIN = 600.0  # "polled within 10 minutes of becoming due"


def run_day(server: str, messages_per_day: int, *, speedup: float, scale: float, loss: float,
            seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    name = f"bench_poller_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    migrate(url)
    fake = FakeBestSMS()
    http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    http.expect_request("/get/status/", method="GET").respond_with_handler(fake.handle)
    import re

    http.expect_request(re.compile(r"^/get/.*"), method="GET").respond_with_handler(fake.handle)
    http.start()
    day = DAY / speedup  # real seconds
    n = int(messages_per_day * scale)
    plan = []  # (arrival, message_id, [(dest_seq, destination, status or None)])
    for i in range(n):
        message_id = f"m{i:07d}"
        recipients = rng.randint(1, 5)
        message = fake.add_message(message_id, recipients, replies=1 if rng.random() < 0.05 else 0)
        for r in message["Recipients"]:
            r["Status"], r["Result"] = ("Success", "delivered") if rng.random() < 0.95 else ("Failed", "undeliverable")
        rows = []
        for r in message["Recipients"]:
            final_lost, pending_lost = rng.random() < loss, rng.random() < loss
            status = None if final_lost and pending_lost else "Pending" if final_lost else r["Status"]
            rows.append((r["DestSeq"], r["Destination"], status))
        plan.append((rng.uniform(0, day), message_id, rows))
    plan.sort()
    arrivals = {mid: at for at, mid, _ in plan}
    # Needy: a recipient left Pending, or nothing heard at all. Hidden: a recipient never heard of
    # in a message that otherwise looks complete (only a confirmation poll can find it).
    needy = {mid for _, mid, rows in plan if any(r[2] == "Pending" for r in rows) or all(r[2] is None for r in rows)}
    hidden = {mid for _, mid, rows in plan if any(r[2] is None for r in rows) and mid not in needy}

    env = {**os.environ, "DATABASE_URL": url, "BESTSMS_API_URL": http.url_for("/").rstrip("/"),
           "BESTSMS_AUTH_TOKEN": TOKEN, "LOG_LEVEL": "WARNING",
           "POLL_RATE_PER_SECOND": str(1.0 * scale * speedup), "POLL_AFTER_SECONDS": str(POLL_AFTER / speedup),
           "POLL_MAX_INTERVAL_SECONDS": str(MAX_INTERVAL / speedup),
           "POLL_GIVE_UP_SECONDS": str(GIVE_UP / speedup), "RECEIVED_SWEEP_SECONDS": str(SWEEP / speedup),
           "POLL_IDLE_SECONDS": str(max(5.0 / speedup, 0.01)), "POLL_TIMEOUT_SECONDS": "10"}
    started = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def feed() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            for at, message_id, rows in plan:
                delay = started + at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                events = [result_event({"message_id": message_id, "dest_seq": seq, "destination": dest,
                                        "status": status, "result": "delivered" if status == "Success" else None,
                                        "type": "SMS"}, "AU")
                          for seq, dest, status in rows if status is not None]
                if events:
                    store.apply_many(conn, "result", events, "webhook")
                else:  # no callback at all: the message is known only if the application registered it
                    conn.execute("INSERT INTO messages (message_id) VALUES (%s) ON CONFLICT DO NOTHING", (message_id,))

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(600 / speedup):
                backlog = store.classify(conn, after=POLL_AFTER / speedup)
                samples.append((time.monotonic() - started, backlog.needy, backlog.confirmation))

    feeder = threading.Thread(target=feed)
    sampler = threading.Thread(target=sample)
    poller = subprocess.Popen([sys.executable, "-m", "receiver", "poll"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    feeder.start()
    sampler.start()
    tail = 3600 / speedup  # an hour after the day, for the last arrivals to become due and be polled
    time.sleep(day + tail)
    stop.set()
    feeder.join()
    sampler.join()
    poller.terminate()
    _, err = poller.communicate(timeout=60)
    http.stop()

    first_poll: dict[str, float] = {}
    requests = 0
    for at, path, _ in fake.requests:
        requests += 1
        if path.startswith("/get/status/"):
            first_poll.setdefault(path.rsplit("/", 1)[1], at - started)
    waits = sorted(max(first_poll[m] - arrivals[m] - POLL_AFTER / speedup, 0) * speedup
                   for m in needy if m in first_poll)
    due_in_window = [m for m in needy if arrivals[m] + POLL_AFTER / speedup < day + tail - WITHIN / speedup]
    within = sum(1 for m in due_in_window if m in first_poll
                 and (first_poll[m] - arrivals[m]) * speedup - POLL_AFTER <= WITHIN)
    with psycopg.connect(url) as conn:
        states = dict(conn.execute("SELECT poll_state, count(*) FROM messages GROUP BY 1").fetchall())
        found_hidden = conn.execute("SELECT count(DISTINCT message_id) FROM recipients WHERE source = 'poll' "
                                    "AND message_id = ANY(%s)", (list(hidden),)).fetchone()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return {
        "messages_per_day": messages_per_day, "simulated_messages": n, "scale": scale, "speedup": speedup,
        "needy": len(needy), "needy_polled_within_10_min": round(within / max(len(due_in_window), 1), 4),
        "needy_wait_minutes_p50": round(statistics.median(waits) / 60, 2) if waits else None,
        "needy_wait_minutes_p95": round(waits[int(len(waits) * 0.95) - 1] / 60, 2) if waits else None,
        "needy_never_polled": len(needy) - len(waits),
        "confirmation_polls": len(first_poll) - len(waits),
        "hidden_losses_found_by_confirmation": found_hidden[0] if found_hidden else 0,
        "hidden_loss_messages": len(hidden),
        "requests_per_simulated_day": round(requests / ((day + tail) * speedup / DAY) / scale),
        "backlog_needy_max": round(max((s[1] for s in samples), default=0) / scale),
        "backlog_confirmation_max": round(max((s[2] for s in samples), default=0) / scale),
        "backlog_confirmation_mean": round(statistics.mean(s[2] for s in samples) / scale) if samples else 0,
        "poll_states": states, "poller_errors": [line for line in err.splitlines() if '"error"' in line][:3],
    }


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's request lines
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages-per-day", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--speedup", type=float, default=1000.0, help="simulated seconds per real second")
    parser.add_argument("--scale", type=float, default=0.1, help="share of the day's messages and budget simulated")
    parser.add_argument("--loss", type=float, default=0.02, help="probability that a callback is lost")
    parser.add_argument("--server", default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for volume in args.messages_per_day:
        print(json.dumps(run_day(args.server, volume, speedup=args.speedup, scale=args.scale, loss=args.loss,
                                 seed=args.seed), default=str), flush=True)


if __name__ == "__main__":
    main()
