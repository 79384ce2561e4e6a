"""The poller against a fake BestSMS on a real local HTTP server, and the real database."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from receiver import Settings
from receiver.poller import Poller
from receiver.poller.session import Session
from receiver.poller.status import backoff
from receiver.poller.sweep import ReceivedSweep
from tests.fake_bestsms import TOKEN, FakeBestSMS
from tests.support import ROOT, counts, fetch, post_flask


def poller(settings: Settings, **changes: Any) -> Poller:
    return Poller(dataclasses.replace(settings, **changes), settings.database_url or "")


def track(db: psycopg.Connection[Any], *message_ids: str) -> None:
    """Track the way the simplest sending application would: a plain INSERT."""
    for message_id in message_ids:
        db.execute("INSERT INTO messages (message_id) VALUES (%s) ON CONFLICT DO NOTHING", (message_id,))


def run_once(settings: Settings, **changes: Any) -> Counter[str]:
    p = poller(settings, **changes)
    try:
        return p.run_once()
    finally:
        p.close()


def message(db: psycopg.Connection[Any], message_id: str) -> dict[str, Any]:
    return fetch(db, "SELECT * FROM messages WHERE message_id = %s", message_id)[0]


def test_pagination_fetches_every_page(db, fake, poll_settings):
    fake.add_message("big", 250, replies=3)
    track(db, "big")
    assert run_once(poll_settings) == {"polled": 1}
    status_queries = [q for _, p, q in fake.requests if p == "/get/status/big"]
    assert [dict(kv.split("=") for kv in q.split("&"))["page"] for q in status_queries] == ["1", "2", "3"]
    assert all("recordsPerPage=100" in q for q in status_queries)
    rows = fetch(db, "SELECT dest_seq, destination, status, price, source FROM recipients ORDER BY dest_seq")
    assert len(rows) == 250 and rows[0]["dest_seq"] == "00000001" and rows[-1]["dest_seq"] == "00000250"
    assert {(r["status"], str(r["price"]), r["source"]) for r in rows} == {("Success", "0.1", "poll")}
    assert counts(db)["replies"] == 3
    m = message(db, "big")
    assert (m["poll_state"], m["job_status"], m["recipient_count"], m["success_count"]) == \
        ("complete", "Completed", 250, 250)
    assert m["created_at"].isoformat() == "2025-06-12T20:44:16+00:00" and m["lease_until"] is None


def test_poll_never_regresses_a_final_webhook_result(db, client, fake, poll_settings, samples):
    fields = dict(samples["result-delivered"]["fields"], MessageID="m1", Destination="+61400000000")
    assert post_flask(client, fields).status_code == 200
    fake.add_message("m1", 2, status="Pending")  # BestSMS's poll lags behind its webhook
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour'")
    db.execute("UPDATE recipients SET updated_at = now() - interval '1 hour'")
    run_once(poll_settings)
    rows = fetch(db, "SELECT dest_seq, destination, status, result, sms_parts FROM recipients ORDER BY dest_seq")
    assert rows == [
        {"dest_seq": "00000001", "destination": "+61400000000", "status": "Success", "result": "delivered",
         "sms_parts": 1},
        {"dest_seq": "00000002", "destination": "+61400000001", "status": "Pending", "result": "Submitted",
         "sms_parts": None},
    ]
    assert message(db, "m1")["poll_state"] == "active"  # one recipient still pending


def test_destseq_less_webhook_rows_are_adopted(db, client, fake, poll_settings, samples):
    fake.add_message("m2", 3)
    for i in range(3):  # webhooks without DestSeq, in local number format
        fields = dict(samples["result-delivered"]["fields"], MessageID="m2", Destination=f"04000000{i:02d}")
        assert post_flask(client, fields).status_code == 200
    assert [r["dest_seq"] for r in fetch(db, "SELECT dest_seq FROM recipients")] == [None, None, None]
    run_once(poll_settings)
    rows = fetch(db, "SELECT dest_seq, destination, source FROM recipients ORDER BY dest_seq")
    assert [(r["dest_seq"], r["destination"]) for r in rows] == [
        ("00000001", "+61400000000"), ("00000002", "+61400000001"), ("00000003", "+61400000002")]
    assert {r["source"] for r in rows} == {"webhook"}  # the same report: the webhook's row stands


def test_replies_from_both_endpoints_and_webhooks_are_one_row_each(db, client, fake, poll_settings, samples):
    fake.add_message("m3", 2, replies=2)
    fake.received = [
        {"ReceivedID": "m3-reply-1", "MessageID": "m3", "From": "+61400000000", "MessageText": "Reply 1 👍",
         "ReceivedTimeUTC": "2025-06-12T21:00:00", "Timezone": "AUS Eastern"},
        {"ReceivedID": "inbound-1", "From": "0499 000 111", "MessageText": "STOP", "ContactID": "",
         "ReceivedTimeLocal": "2025-06-13T07:00:00", "Timezone": "AUS Eastern"},
    ]
    webhook = dict(samples["reply-matched"]["fields"], ReceivedID="m3-reply-2", MessageID="m3",
                   Destination="+61400000001", Message="Reply 2 👍")
    assert post_flask(client, webhook).status_code == 200
    track(db, "m3")
    run_once(poll_settings)
    rows = fetch(db, "SELECT received_id, message_id, dest_seq, type, from_number, message_text, source "
                     "FROM replies ORDER BY received_id")
    assert rows == [
        {"received_id": "inbound-1", "message_id": None, "dest_seq": None, "type": "SMSInbound",
         "from_number": "+61499000111", "message_text": "STOP", "source": "poll"},
        {"received_id": "m3-reply-1", "message_id": "m3", "dest_seq": "00000001", "type": "SMSReply",
         "from_number": "+61400000000", "message_text": "Reply 1 👍", "source": "poll"},
        {"received_id": "m3-reply-2", "message_id": "m3", "dest_seq": "00000002", "type": "SMSReply",
         "from_number": "+61400000001", "message_text": "Reply 2 👍", "source": "webhook"},
    ]
    assert fake.paths("/get/sms/received") and "timePeriod=1440" in fake.requests[0][2]


def test_the_sweeps_windows_alone_cover_a_gap_in_local_days_an_hour_early(poll_settings):
    """The sweep's part alone (no database, no BestSMS): a 50-hour gap in Sydney (UTC+11 in
    December) is three windows of the account's local time, each from an hour before the last's end."""
    session = Session(poll_settings, poll_settings.database_url or "")
    try:
        now = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
        windows = ReceivedSweep(session).windows(now - timedelta(hours=50), now)
        short = ReceivedSweep(session).windows(now - timedelta(minutes=30), now)
    finally:
        session.close()
    assert [params for params, _ in windows] == [
        {"dateFrom": "2026-12-03T11:00:00", "dateTo": "2026-12-04T12:00:00"},
        {"dateFrom": "2026-12-04T11:00:00", "dateTo": "2026-12-05T12:00:00"},
        {"dateFrom": "2026-12-05T11:00:00", "dateTo": "2026-12-05T14:00:00"}]
    assert windows[-1][1] == now
    assert short == [({"timePeriod": 31}, now)]


def test_received_sweep_covers_the_time_since_the_last_success(db, fake, poll_settings):
    assert run_once(poll_settings, received_sweep_seconds=0) == {}
    db.execute("UPDATE poll_sweeps SET last_success_at = now() - interval '30 minutes'")
    run_once(poll_settings, received_sweep_seconds=0)
    periods = [q for _, p, q in fake.requests if p == "/get/sms/received"]
    # 30 minutes and a little, rounded up, plus a minute of overlap
    assert "timePeriod=1440" in periods[0] and "timePeriod=32" in periods[1]
    run_once(poll_settings, received_sweep_seconds=300)  # not due again yet
    assert len(fake.paths("/get/sms/received")) == 2


@pytest.mark.parametrize("mode", [429, 500, 503, "timeout", "garbage", "bad-shape", "nul"])
def test_transient_failures_back_off_record_the_error_and_write_nothing(db, fake, poll_settings, mode):
    fake.add_message("m4", 3)
    fake.fail("m4", mode)
    track(db, "m4")
    outcomes = run_once(poll_settings)
    assert outcomes == {"retry": 1} if mode in (429, 500, 503, "timeout") else {"error": 1}
    m = message(db, "m4")
    assert m["last_poll_error"] and m["poll_state"] == "active" and m["poll_attempts"] == 1
    assert m["next_poll_at"] is not None and m["lease_until"] is None
    assert counts(db)["recipients"] == 0
    # The back-off is over: the next poll succeeds.
    db.execute("UPDATE messages SET next_poll_at = now() - interval '1 second'")
    assert run_once(poll_settings) == {"polled": 1}
    m = message(db, "m4")
    assert (m["poll_state"], m["last_poll_error"], counts(db)["recipients"]) == ("complete", None, 3)


def test_malformed_second_page_keeps_the_valid_first_page_and_retries(db, fake, poll_settings):
    fake.add_message("m5", 150)
    fake.fail("m5:page2", "bad-shape")
    track(db, "m5")
    assert run_once(poll_settings) == {"error": 1}
    assert counts(db)["recipients"] == 100  # page 1, whole and valid; nothing of page 2
    m = message(db, "m5")
    assert "Malformed" in m["last_poll_error"] and m["poll_state"] == "active"
    db.execute("UPDATE messages SET next_poll_at = now() - interval '1 second'")
    assert run_once(poll_settings) == {"polled": 1}
    assert counts(db)["recipients"] == 150 and message(db, "m5")["poll_state"] == "complete"


def test_not_found_backs_off_then_gives_up(db, fake, poll_settings):
    track(db, "ghost")
    fake.fail("ghost", "not-found")  # HTTP 404 with the error body; later ones: HTTP 200 "NOT found"
    assert run_once(poll_settings) == {"not_found": 1}
    m = message(db, "ghost")
    assert m["poll_state"] == "active" and "not found" in m["last_poll_error"].lower()
    backoff = (m["next_poll_at"] - m["last_polled_at"]).total_seconds()
    assert 1 <= backoff <= 2  # doubling from max(POLL_AFTER_SECONDS, 1), jittered down at most 25 %
    db.execute("UPDATE messages SET next_poll_at = now(), first_seen_at = now() - interval '7 hours'")
    requests_before = len(fake.requests)
    assert run_once(poll_settings) == {}
    assert message(db, "ghost")["poll_state"] == "given_up"
    assert len(fake.requests) == requests_before  # given up without asking BestSMS again


def test_backoff_doubles_and_is_capped(poll_settings):
    settings = dataclasses.replace(poll_settings, poll_after_seconds=600, poll_max_interval_seconds=3600)
    for attempts, upper in [(0, 1200), (1, 2400), (2, 3600), (10, 3600)]:
        delays = [backoff(settings, attempts) for _ in range(50)]
        assert all(0.75 * upper <= d <= upper for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 1  # jitter


def test_401_stops_polling_and_readyz_and_metrics_agree_until_it_clears(db, client, fake, poll_settings):
    fake.add_message("a", 1)
    fake.add_message("b", 1)
    track(db, "a", "b")
    fake.fail("received", 401)
    p = poller(poll_settings)
    try:
        assert p.run_once() == {}
        assert p.unauthorized
        assert len(fake.requests) == 1  # nothing after the 401
        [sweep] = fetch(db, "SELECT last_error, last_success_at FROM poll_sweeps")
        assert "unauthorized" in sweep["last_error"] and sweep["last_success_at"] is None
        assert visible_unauthorized(client) == (True, 1.0)

        fake.fail("received", 401)  # still refused: one probe request, nothing else
        assert p.run_once() == {} and len(fake.requests) == 2
        assert visible_unauthorized(client) == (True, 1.0)

        # BestSMS takes the token again: the next run's probe clears the state, and polling resumes.
        assert p.run_once() == {"polled": 2}
        assert p.unauthorized is None
        assert visible_unauthorized(client) == (False, 0.0)
    finally:
        p.close()


def visible_unauthorized(client: Any) -> tuple[bool, float]:
    """What /readyz and /metrics say of the poller's token (they read the same row)."""
    ready = client.get("/readyz")
    assert ready.status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    [value] = re.findall(r"^bestsms_poller_unauthorized (\S+)$", metrics, re.MULTILINE)
    return ready.get_json()["poller"]["unauthorized"], float(value)


def test_wrong_token_on_a_message_poll_stops_the_run(db, fake, poll_settings):
    fake.add_message("a", 1)
    track(db, "a")
    p = poller(poll_settings, bestsms_auth_token="wrong")
    try:
        outcomes = p.run_once()
    finally:
        p.close()
    assert p.unauthorized and outcomes == {}
    assert fake.paths() == ["/get/sms/received"]


def test_give_up_after_the_deadline_without_polling(db, fake, poll_settings):
    fake.add_message("old", 1, status="Pending")
    track(db, "old")
    db.execute("UPDATE messages SET first_seen_at = now() - interval '6 hours 1 minute'")
    run_once(poll_settings)
    assert message(db, "old")["poll_state"] == "given_up"
    assert not fake.paths("/get/status/")


def test_the_give_up_time_at_its_edge_and_from_a_scheduled_send_time(db):
    """poll_given_up(), which FINISH gives up by and every claim refuses by: exactly
    POLL_GIVE_UP_SECONDS after the clock starts is still within the time, a microsecond more is
    past it; a scheduled message's clock starts at its send time when that is later."""
    [row] = fetch(db, """
        SELECT poll_given_up(now() - interval '6 hours', NULL, 21600) AS at_edge,
               poll_given_up(now() - interval '6 hours 1 microsecond', NULL, 21600) AS past,
               poll_given_up(now() - interval '7 hours', now() - interval '1 hour', 21600) AS sent_later,
               poll_given_up(now() - interval '7 hours', now() - interval '8 hours', 21600) AS sent_earlier""")
    assert row == {"at_edge": False, "past": True, "sent_later": False, "sent_earlier": True}


def test_a_message_past_its_give_up_time_during_a_long_run_is_not_polled(db, fake, poll_settings):
    """A run can outlast the give-up time of a message it has not polled yet: that message is
    never claimed (the claim itself checks the time), and it is given up when the run classifies
    again (POLL_CLASSIFY_SECONDS), else at the next run's start."""
    fake.add_message("first", 1, status="Pending")
    fake.add_message("late", 1, status="Pending")
    track(db, "first", "late")

    def late_passes_its_give_up_time(path: str) -> None:  # while "first", the older, is polled
        if path == "/get/status/first":
            with psycopg.connect(poll_settings.database_url or "", autocommit=True) as conn:
                conn.execute("UPDATE messages SET first_seen_at = now() - interval '6 hours 1 minute' "
                             "WHERE message_id = 'late'")

    fake.on_request = late_passes_its_give_up_time
    for classify_seconds in (3600.0, 0.001):  # a run that never classifies again, and one that does at each poll
        db.execute("UPDATE messages SET poll_state = 'active', next_poll_at = NULL, last_polled_at = NULL, "
                   "first_seen_at = now() - CASE message_id WHEN 'first' THEN interval '5 hours 1 minute' "
                   "ELSE interval '5 hours' END")
        fake.requests.clear()
        outcomes = run_once(poll_settings, poll_classify_seconds=classify_seconds)
        assert outcomes == {"polled": 1} and fake.paths("/get/status/") == ["/get/status/first"], classify_seconds
        if classify_seconds < 1:
            assert message(db, "late")["poll_state"] == "given_up"
        else:
            assert message(db, "late")["poll_state"] == "active"
            run_once(poll_settings)
            assert message(db, "late")["poll_state"] == "given_up"
            assert "/get/status/late" not in fake.paths()


def test_quiet_period_and_complete_messages_are_not_polled(db, client, fake, poll_settings, samples):
    fake.add_message("recent", 1)
    track(db, "recent")
    run_once(poll_settings, poll_after_seconds=600)  # tracked just now: not due
    assert not fake.paths("/get/status/")
    db.execute("UPDATE messages SET recipient_count = 1")
    post_flask(client, dict(samples["result-delivered"]["fields"], MessageID="recent"))
    run_once(poll_settings)  # complete from webhooks alone
    assert message(db, "recent")["poll_state"] == "complete" and not fake.paths("/get/status/")


def test_two_pollers_poll_each_message_exactly_once(db, fake, poll_settings):
    ids = [f"shared-{i}" for i in range(30)]
    for message_id in ids:
        fake.add_message(message_id, 2)
    track(db, *ids)
    fake.delay = 0.01
    results: list[Counter[str]] = []
    pollers = [poller(poll_settings, poll_rate_per_second=100) for _ in range(2)]
    threads = [threading.Thread(target=lambda p=p: results.append(p.run_once())) for p in pollers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in pollers:
        p.close()
    polled = Counter(path.rsplit("/", 1)[1] for path in fake.paths("/get/status/"))
    assert polled == dict.fromkeys(ids, 1)
    assert sum(r["polled"] for r in results) == 30 and all(r["polled"] > 0 for r in results)
    assert counts(db)["recipients"] == 60


def test_a_dead_pollers_lease_expires(db, fake, poll_settings):
    fake.add_message("leased", 1)
    track(db, "leased")
    db.execute("UPDATE messages SET lease_until = now() + interval '1 minute'")  # a poller holds it
    assert run_once(poll_settings) == {}
    db.execute("UPDATE messages SET lease_until = now() - interval '1 second'")  # ... and died
    assert run_once(poll_settings) == {"polled": 1}


def test_rate_limit_is_respected(db, fake, poll_settings):
    for i in range(6):
        fake.add_message(f"r{i}", 1)
    track(db, *[f"r{i}" for i in range(6)])
    run_once(poll_settings, poll_rate_per_second=5)
    times = [t for t, _, _ in fake.requests]
    assert len(times) == 13  # the sweep, then status and reply for each message
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2 * 0.9, gaps  # request starts 1/5 s apart; arrival jitter is far below 20 ms


def cli(database_url: str, fake: FakeBestSMS, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DATABASE_URL": database_url,
                                            "BESTSMS_API_URL": fake.url,  # type: ignore[attr-defined]
                                            "BESTSMS_AUTH_TOKEN": TOKEN, **env})


def test_fifty_tracked_messages_become_complete_with_poll_once(database_url, db, fake):
    """The issue's 'done when': no webhooks at all, 50 tracked messages, `poll --once` until quiet."""
    rate = 20
    ids = [f"done-{i:02d}" for i in range(50)]
    for i, message_id in enumerate(ids):
        fake.add_message(message_id, 1 + i % 4, replies=i % 3)
    fake.received = [{"ReceivedID": f"inbound-{i}", "From": f"+6149900{i:04d}", "MessageText": "STOP",
                      "ReceivedTimeUTC": "2025-06-12T21:00:00"} for i in range(5)]
    assert cli(database_url, fake, "track", *ids[:25]).returncode == 0
    track(db, *ids[25:])
    env = {"POLL_AFTER_SECONDS": "0", "POLL_RATE_PER_SECOND": str(rate)}
    for _ in range(5):
        run = cli(database_url, fake, "poll", "--once", **env)
        assert run.returncode == 0, run.stderr
        if json.loads(run.stdout.strip().splitlines()[-1])["polls"] == 0:
            break
    expected_recipients = sum(len(m["Recipients"]) for m in fake.messages.values())
    expected_replies = sum(len(r["SMSReplies"]) for m in fake.messages.values() for r in m["Recipients"]) + 5
    assert counts(db)["recipients"] == expected_recipients
    assert counts(db)["replies"] == expected_replies
    assert {m["poll_state"] for m in fetch(db, "SELECT poll_state FROM messages")} == {"complete"}
    # The limiter spaces request starts 1/rate apart; arrivals at the fake jitter by a few ms, so a
    # one-second window may hold rate + 1 of them. Far more would mean the limiter is not limiting.
    times = sorted(t for t, _, _ in fake.requests)
    assert max(sum(1 for u in times if t <= u < t + 1) for t in times) <= rate + 2


def test_sigterm_finishes_the_current_request_and_exits_cleanly(database_url, db, fake):
    ids = [f"slow-{i}" for i in range(20)]
    for message_id in ids:
        fake.add_message(message_id, 1)
    track(db, *ids)
    proc = subprocess.Popen([sys.executable, "-m", "receiver", "poll"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DATABASE_URL": database_url, "BESTSMS_API_URL": fake.url,  # type: ignore[attr-defined]
                                 "BESTSMS_AUTH_TOKEN": TOKEN, "POLL_AFTER_SECONDS": "0",
                                 "POLL_RATE_PER_SECOND": "4"})
    deadline = time.monotonic() + 30
    while len(fake.paths("/get/status/")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "poller stopped" in err
    assert fetch(db, "SELECT count(*) AS n FROM messages WHERE lease_until > now()")[0]["n"] == 0
    assert len(fake.paths("/get/status/")) < len(ids)  # it did stop


def test_a_running_poller_waits_for_migrate_logging_once_then_polls(server_url, fake):
    """The poller never changes the schema: on a database not yet migrated it waits, says why once."""
    import uuid

    from receiver.migrator import migrate
    from tests.conftest import create_database, drop_database

    name = f"receiver_wait_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    fake.add_message("late-1", 1)
    proc = subprocess.Popen([sys.executable, "-m", "receiver", "poll"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DATABASE_URL": url, "BESTSMS_API_URL": fake.url,  # type: ignore[attr-defined]
                                 "BESTSMS_AUTH_TOKEN": TOKEN, "POLL_AFTER_SECONDS": "0"})
    try:
        time.sleep(7)  # a first attempt, and a second one 5 s later, on a database with no schema
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
            migrate(url)
            track(conn, "late-1")
        deadline = time.monotonic() + 30
        while not fake.paths("/get/status/late-1") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        drop_database(server_url, name)
    assert fake.paths("/get/status/late-1"), f"the poller never polled after migrate: {err}"
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    waiting = [line for line in lines if line["event"] == "database not usable, poller waiting"]
    assert len(waiting) == 1 and "has no schema" in waiting[0]["reason"], err
    assert [line["event"] for line in lines].count("database usable again, poller resumed") == 1


def test_poll_once_exits_non_zero_when_no_poll_succeeded(database_url, db, fake):
    """For cron: every request failing (BestSMS down) is an error exit, not a quiet 0."""
    fake.add_message("down-1", 1)
    fake.fail("down-1", 500, 500, 500)
    fake.fail("received", 500)
    track(db, "down-1")
    run = cli(database_url, fake, "poll", "--once", POLL_AFTER_SECONDS="0", POLL_RATE_PER_SECOND="50")
    assert run.returncode == 1, run
    assert run.stderr.strip().splitlines()[-1] == "error: no poll succeeded (see the log for why)"
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"polls": 1, "retry": 1}


# -- priority by need, and leases that follow the poller's life -----------------------------------

def test_needy_messages_are_polled_first_when_the_budget_cannot_cover_everything(db, fake, poll_settings):
    """200 older messages whose every known recipient is final, then 20 needy ones (10 never heard
    of, 10 with a Pending recipient). Stopped after 30 polls, the poller has polled all 20 needy
    ones first, then the oldest confirmations."""
    confirmations = [f"final-{i:03d}" for i in range(200)]
    never_heard = [f"silent-{i:02d}" for i in range(10)]
    pending = [f"pending-{i:02d}" for i in range(10)]
    for message_id in confirmations + never_heard + pending:
        fake.add_message(message_id, 1)
    db.execute("""
        INSERT INTO messages (message_id, first_seen_at)
        SELECT id, now() - interval '2 hours' + n * interval '1 second'
        FROM unnest(%s::text[]) WITH ORDINALITY AS t(id, n)""", (confirmations,))
    track(db, *never_heard, *pending)
    db.execute("""
        INSERT INTO recipients (message_id, dest_seq, destination, status, source)
        SELECT id, '00000001', '+61400000000', CASE WHEN id LIKE 'final-%%' THEN 'Success' ELSE 'Pending' END, 'webhook'
        FROM unnest(%s::text[]) AS t(id)""", (confirmations + pending,))
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour' WHERE message_id NOT LIKE 'final-%%'")

    p = poller(poll_settings)
    thread = threading.Thread(target=p.run_once)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while len(fake.paths("/get/status/")) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        p.stop.set()
        thread.join(30)
    finally:
        p.close()
    polled = [path.rsplit("/", 1)[1] for path in fake.paths("/get/status/")]
    assert set(polled[:20]) == set(never_heard + pending), polled[:20]
    assert polled[20:] == confirmations[:len(polled) - 20]  # then the oldest confirmations, in order
    [state] = fetch(db, "SELECT backlog_needy, backlog_confirmation FROM poller_state")
    assert (state["backlog_needy"], state["backlog_confirmation"]) == (0, 200 - (len(polled) - 20))


def test_confirmations_off_polls_only_needy_messages_and_completes_the_rest(db, fake, poll_settings):
    for message_id in ("done-1", "missing-1"):
        fake.add_message(message_id, 1)
    db.execute("INSERT INTO messages (message_id) VALUES ('done-1')")
    db.execute("INSERT INTO recipients (message_id, dest_seq, destination, status, source) "
               "VALUES ('done-1', '00000001', '+61400000000', 'Failed', 'webhook')")
    track(db, "missing-1")
    assert run_once(poll_settings, poll_confirmations="never") == {"polled": 1}
    assert fake.paths("/get/status/") == ["/get/status/missing-1"]
    states = {r["message_id"]: r["poll_state"] for r in fetch(db, "SELECT message_id, poll_state FROM messages")}
    assert states == {"done-1": "complete", "missing-1": "complete"}


def test_a_killed_pollers_lease_is_taken_over_after_the_lease_time(database_url, db, fake, poll_settings):
    """`kill -9` of a poller in the middle of a slow request: its message is polled by another
    poller once POLL_LEASE_SECONDS have passed, not before."""
    fake.add_message("orphan", 1)
    track(db, "orphan")
    fake.delay = 30.0  # the first poller's request never ends
    proc = subprocess.Popen([sys.executable, "-m", "receiver", "poll"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "DATABASE_URL": database_url, "BESTSMS_API_URL": fake.url,  # type: ignore[attr-defined]
                                 "BESTSMS_AUTH_TOKEN": TOKEN, "POLL_AFTER_SECONDS": "0", "POLL_LEASE_SECONDS": "3",
                                 "RECEIVED_SWEEP_SECONDS": "86400"})
    try:
        deadline = time.monotonic() + 30
        while not fake.paths("/get/status/orphan") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.paths("/get/status/orphan"), "the first poller never started"
        time.sleep(1.5)  # two heartbeats: the lease is being renewed
    finally:
        proc.kill()
        proc.wait()
    killed_at = time.monotonic()
    fake.delay = 0.0
    [lease] = fetch(db, "SELECT lease_until > now() AS held FROM messages WHERE message_id = 'orphan'")
    assert lease["held"]  # still leased: nobody may take it yet
    settings = dataclasses.replace(poll_settings, poll_lease_seconds=3, received_sweep_seconds=86400)
    while run_once(settings) != {"polled": 1}:
        assert time.monotonic() - killed_at < 30, "never taken over"
        time.sleep(0.2)
    taken_after = time.monotonic() - killed_at
    assert taken_after < 3 + 10  # within the lease time (and a loaded machine's margin), not 5 minutes


def test_a_slow_live_poller_keeps_its_lease(db, fake, poll_settings):
    """A request slower than the lease: the heartbeat renews it, and a second poller never takes
    the message meanwhile."""
    fake.add_message("slow", 1)
    track(db, "slow")
    settings = dataclasses.replace(poll_settings, poll_lease_seconds=3, received_sweep_seconds=86400,
                                   poll_timeout_seconds=30)
    db.execute("INSERT INTO poll_sweeps (name, last_success_at) VALUES ('received', now())")
    fake.delay = 5.0  # each request takes longer than the 3-s lease
    first = poller(settings)
    thread = threading.Thread(target=first.run_once)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not fake.paths("/get/status/slow") and time.monotonic() < deadline:
            time.sleep(0.05)
        others = []
        while thread.is_alive():
            others.append(run_once(settings))
            time.sleep(0.5)
    finally:
        thread.join(60)
        first.close()
    assert others and all(o == {} for o in others), others  # the second poller found nothing to take
    assert fake.paths("/get/status/slow") == ["/get/status/slow"]


def test_the_poll_predicates_are_inlined_into_every_poll_statement(db):
    """The predicates are SQL functions written once (replaceable/30_ to 36_), and each poll
    statement plans as if they were written out: no function call is left in the plan (which
    index a claim reads is the planner's choice, by the table's statistics)."""
    from receiver.store import polling

    predicates = [re.sub(r"^\d+_", "", path.stem) for path in (ROOT / "migrations/replaceable").glob("3[0-6]_*.sql")]
    assert {"poll_due", "poll_needy", "poll_complete", "poll_given_up", "recipient_tally"} <= set(predicates)
    params = {"confirm": True, "given_up_only": False, "after": 600.0, "give_up": 21600.0, "lease": 60.0, "delay": 60.0,
              "run_started_at": datetime.now(UTC), "message_id": "m", "counted": True, "error": None,
              "replies_fetched": None, "name": "s", "every": 60.0}
    statements = {"finish": polling.FINISH, "classify": polling.CLASSIFY, "finish_poll": polling.FINISH_POLL,
                  "claim_sweep": polling.CLAIM_SWEEP, **{f"claim {k}": v for k, v in polling.CLAIM.items()}}
    for name, sql in statements.items():
        plan = "\n".join(row[0] for row in db.execute("EXPLAIN VERBOSE " + sql, params).fetchall())
        assert not [p for p in predicates if p in plan], (name, plan)
