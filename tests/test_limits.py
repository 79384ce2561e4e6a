"""No cliffs: a webhook at the edge of any limit is stored whole, or refused with a deliberate 4xx
and kept; never a 500, never lost. Each limit in docs/limits.md is tested at its edge here: the
archive's days through a real gunicorn with no poller, long GETs through gunicorn and the real
nginx site, every text field generated in every script and encoding through gunicorn."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import Settings, batch, store
from receiver.bestsms.api import PollParser
from receiver.bestsms.decode import MAX_FIELDS
from receiver.bestsms.events import Parser
from receiver.bestsms.fields import LIMITS
from receiver.db import connect
from receiver.migrator import migrate
from tests.support import (
    ROOT,
    TOKEN,
    Burst,
    check_stored,
    create_database,
    drop_database,
    encode,
    fetch,
    free_port,
    post_flask,
    raw_http,
    start_gunicorn,
    stop,
)

CJK_900 = "".join(chr(0x4E00 + i % 20000) for i in range(900))  # one unspaced "word", 2,700 bytes


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(database URL, base URL, log) of a production gunicorn on a database of this module's own,
    with no poller: the web alone keeps the archive's days."""
    name = f"receiver_limits_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    migrate(url)
    log = tmp_path_factory.mktemp("limits") / "gunicorn.log"
    proc, base = start_gunicorn(url, workers=2, log_path=log)
    yield url, base, log
    stop(proc)
    drop_database(server_url, name)


def _raw(base: str, request: bytes) -> tuple[int, bytes]:
    """A request as bytes, and its status and body."""
    head, _, body = raw_http(base, request).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _get(query: str) -> bytes:
    return f"GET /webhooks/bestsms?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


# -- free text and index keys ---------------------------------------------------------------------

def test_an_unspaced_900_character_reply_is_stored_by_webhook_and_by_poll(client, db):
    """Its one "word" was 3,016 bytes in the opt-out index, over btree's 2,704: a 500, nothing stored."""
    fields = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": "cjk-1", "Destination": "+61410010001",
              "Message": CJK_900}
    assert post_flask(client, fields).status_code == 200
    page = PollParser(ZoneInfo("Australia/Sydney"), "AU").received_page({
        "Result": "Success", "TotalRecords": 1, "RecordsPerPage": 100, "PageCount": 1, "Page": 1,
        "Messages": [{"ReceivedID": "cjk-2", "From": "+61410010002", "MessageText": CJK_900 * 3,
                      "ReceivedTimeUTC": "2026-11-30 01:02:03"}]})
    store.apply_many(db, "reply", page["replies"], "poll")
    assert fetch(db, "SELECT received_id, message_text FROM replies ORDER BY 1") == [
        {"received_id": "cjk-1", "message_text": CJK_900}, {"received_id": "cjk-2", "message_text": CJK_900 * 3}]


def test_opt_out_keys_are_bounded_at_64_letters(db):
    """The index key (a reply's text as a keyword is spelt) is at most 64 characters, and so is a keyword."""
    [row] = fetch(db, "SELECT opt_out_text(%s) AS at, opt_out_text(%s) AS over, opt_out_text(%s) AS stop",
                  "Ä" * 60 + "  now!", "Ä" * 61 + " now", "  Stop!! \n")
    assert row == {"at": "Ä" * 60 + " NOW", "over": None, "stop": "STOP"}
    db.execute("INSERT INTO opt_out_keywords VALUES (%s, true)", ("A" * 64,))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO opt_out_keywords VALUES (%s, true)", ("A" * 65,))
    db.execute("DELETE FROM opt_out_keywords WHERE length(keyword) = 64")


@pytest.mark.parametrize("kind", ["result", "reply"])
def test_the_widest_index_key_fits_two_255_character_columns_in_a_4_byte_script(client, db, kind):
    """recipients_billing_idx and replies_billing_idx hold sub account and department: 2,040 bytes."""
    wide = {"SubAccount": "\U0001F600" * 255, "Department": "\U0001F601" * 255}
    if kind == "result":
        fields = {"APIKey": TOKEN, "MessageID": "wide-1", "Destination": "+61410010001", "Status": "Success", **wide}
        table = "recipients"
    else:
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": "wide-1", "Destination": "+61410010001",
                  "Message": "hi", **wide}
        table = "replies"
    assert post_flask(client, fields).status_code == 200
    assert fetch(db, f"SELECT sub_account, department FROM {table}") == [
        {"sub_account": wide["SubAccount"], "department": wide["Department"]}]


# -- time from the sender: evidence, not authority -----------------------------------------------

def test_a_result_dated_years_ahead_does_not_outrank_a_later_real_one(client, db):
    base = {"APIKey": TOKEN, "MessageID": "clock-1", "DestSeq": "00000001", "Destination": "+61410010001"}
    later = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")  # sent after the first came
    assert post_flask(client, {**base, "Status": "Success", "Result": "delivered",
                               "SentTimeUTC_RFC3339": "2099-01-01T00:00:00Z"}).get_json()["status"] == "applied"
    answer = post_flask(client, {**base, "Status": "Failed", "Result": "Expired", "SentTimeUTC_RFC3339": later})
    assert answer.get_json()["status"] == "applied"
    [row] = fetch(db, "SELECT status, result, sent_at FROM recipients")
    assert (row["status"], row["result"]) == ("Failed", "Expired")
    # A time within a day of its receipt is still the sender's to order by: an older report stays stale.
    yesterday = (datetime.now(UTC) - timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale = post_flask(client, {**base, "Status": "Success", "Result": "delivered", "SentTimeUTC_RFC3339": yesterday})
    assert stale.get_json()["status"] == "stale"


def test_a_stop_dated_years_ahead_does_not_outrank_a_start_sent_today(client, db):
    def inbound(n: int, text: str, when: str) -> None:
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": f"clock-{n}", "Destination": "+61499000009",
                  "Message": text, "SentTimeUTC_RFC3339": when}
        assert post_flask(client, fields).status_code == 200

    inbound(1, "STOP", "2099-01-01T00:00:00Z")
    inbound(2, "START", (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert fetch(db, "SELECT opted_out, keyword, changed_at FROM opt_outs") == [
        {"opted_out": False, "keyword": "START", "changed_at": fetch(
            db, "SELECT received_at FROM replies WHERE received_id = 'clock-2'")[0]["received_at"]}]


# -- the archive's days, with no poller ---------------------------------------------------------------

# Each partition, by the first and last UTC day it covers (0007's first one: every day before its bound).
_DAYS = r"""
SELECT name, (coalesce(range_from, '2000-01-01') AT TIME ZONE 'UTC')::date AS first,
       (range_to AT TIME ZONE 'UTC' - interval '1 day')::date AS day
FROM (SELECT c.relname AS name,
             substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz AS range_from,
             substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS range_to
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = 'webhook_events'::regclass) p"""


def _drop_days(url: str, keep: Any) -> list[date]:
    """Detach and drop the archive's days for which `keep(day)` is false; the days dropped."""
    dropped = []
    with psycopg.connect(url, autocommit=True) as conn:
        for row in fetch(conn, _DAYS):
            if not keep(row["day"]):
                conn.execute(f'ALTER TABLE webhook_events DETACH PARTITION "{row["name"]}"')
                conn.execute(f'DROP TABLE "{row["name"]}"')
                dropped.append(row["day"])
    return dropped


def _days_ahead(url: str) -> int:
    """Days after today (UTC) with a partition, without a gap (-1: not even today's), read from the
    catalog here: what webhook_event_days_ahead() must say."""
    with psycopg.connect(url) as conn:
        parts = fetch(conn, _DAYS)
        said = fetch(conn, "SELECT webhook_event_days_ahead() AS n")[0]["n"] if fetch(
            conn, "SELECT FROM pg_proc WHERE proname = 'webhook_event_days_ahead'") else None
    today, ahead = datetime.now(UTC).date(), -1
    while any(p["first"] <= today + timedelta(days=ahead + 1) <= p["day"] for p in parts):
        ahead += 1
    assert said in (None, ahead)
    return ahead


def test_after_a_quiet_fortnight_the_web_alone_makes_its_day(served):
    """Day 15 of a web-only deployment: no partition for today or after. The first webhook makes
    them (it answered 503, then BestSMS gave up); /readyz and the metric say how many days ahead."""
    url, base, _ = served
    today = datetime.now(UTC).date()
    assert _drop_days(url, lambda day: day < today)
    assert _days_ahead(url) == -1
    answers = [httpx.post(f"{base}/webhooks/bestsms", timeout=30, json={
        "APIKey": TOKEN, "MessageID": f"quiet-{n}", "Destination": "+61410010001", "Status": "Success"})
        for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert _days_ahead(url) == 14
    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    assert ready["archive_days_ahead"] == 14
    assert "bestsms_archive_days_ahead 14.0" in httpx.get(f"{base}/metrics", timeout=10).text


def test_readyz_makes_the_days_ahead_a_quiet_web_only_deployment_lacks(served):
    """No webhook at all: the probes alone keep the days, before any webhook needs them."""
    url, base, _ = served
    today = datetime.now(UTC).date()
    _drop_days(url, lambda day: day <= today + timedelta(days=3))  # four days ahead left
    deadline = time.monotonic() + 60  # each worker tries every 10 s while days are few
    while httpx.get(f"{base}/readyz", timeout=10).json()["archive_days_ahead"] != 14:
        assert time.monotonic() < deadline, "/readyz did not make the days ahead"
        time.sleep(0.5)
    assert _days_ahead(url) == 14


def test_a_missing_day_between_others_is_made_and_a_webhook_is_never_rejected_for_it(served):
    """A gap (today's day dropped, later ones kept) while webhooks flow and `prune` heals it: every
    webhook 2xx and stored once, none kept as rejected (a missing day is never the input's fault)."""
    url, base, _ = served
    today = datetime.now(UTC).date()
    _drop_days(url, lambda day: day not in (today, today + timedelta(days=5)))
    assert _days_ahead(url) == -1
    env = {**os.environ, "DATABASE_URL": url}
    with Burst(base, senders=6, prefix=f"gap-{uuid.uuid4().hex[:6]}") as burst:
        burst.wait_for(5)
        pruned = subprocess.run([sys.executable, "-m", "receiver", "prune", "--events-older-than", "90d"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        burst.wait_for(200)
    assert pruned.returncode == 0, pruned.stderr
    statuses = check_stored(url, burst.answers)
    assert statuses == {"200": len(burst.answers)}, statuses
    with psycopg.connect(url) as conn:
        assert fetch(conn, "SELECT count(*) AS n FROM webhook_events WHERE outcome = 'rejected'") == [{"n": 0}]
    assert _days_ahead(url) == 14


def test_the_days_are_utc_whatever_the_callers_time_zone(own_database):
    """In a session whose TimeZone has daylight saving, each day made is 24 hours from UTC midnight."""
    _, url = own_database
    _drop_days(url, lambda day: False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Australia/Sydney'")
        assert store.ensure_event_partitions(conn, 200) == 201
        conn.execute("SET TimeZone = 'UTC'")
        bounds = fetch(conn, "SELECT range_from, range_to FROM webhook_event_partition_ranges() ORDER BY 1")
    assert len(bounds) == 201
    for b in bounds:
        assert (b["range_from"].hour, b["range_from"].minute) == (0, 0)
        assert b["range_to"] - b["range_from"] == timedelta(hours=24)


# -- GET webhooks: as long as a POST may be, through gunicorn and through the nginx site ------------

# The longest GET that fits MAX_BODY_BYTES (1 MiB): a reply in a 4-byte script, URL-encoded (12
# bytes a character).
EMOJI = "\U0001F600"


def _long_reply_query(characters: int, received_id: str) -> tuple[str, str]:
    text = EMOJI * characters
    return urlencode({"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": received_id,
                      "Destination": "+61410010001", "Message": text}), text


def test_a_get_as_long_as_the_body_limit_is_stored_and_one_over_is_414_and_kept(served):
    url, base, _ = served
    fits, text = _long_reply_query(87_000, "long-get-1")  # 1,044,084 bytes
    assert 1_000_000 < len(fits) <= 1024 * 1024
    status, body = _raw(base, _get(fits))
    assert status == 200, body
    over, _ = _long_reply_query(87_500, "long-get-2")
    status, body = _raw(base, _get(over))
    assert status == 414 and b"query string over 1048576 bytes" in body
    with psycopg.connect(url) as conn:
        assert fetch(conn, "SELECT message_text FROM replies WHERE received_id = 'long-get-1'") == [
            {"message_text": text}]
        [kept] = fetch(conn, "SELECT outcome, length(query_string) AS n FROM webhook_events "
                             "WHERE query_string LIKE 'Type=SMSInbound&ReceivedID=long-get-2%%'")
        assert kept["outcome"] == "rejected" and kept["n"] <= 1024 * 1024
        assert fetch(conn, "SELECT count(*) AS n FROM webhook_events WHERE query_string LIKE %s",
                     f"%{TOKEN}%") == [{"n": 0}]


def test_a_long_get_through_the_nginx_site(served, tmp_path):
    """The same GET through deploy/nginx's site: stored; longer than its buffers, a JSON 414."""
    from tests.test_nginx import NGINX, _raw_tls, _wait_for, render

    if not NGINX or not shutil_which("openssl"):
        pytest.skip("nginx (Debian's nginx-light) or openssl is not installed")
    url, base, _ = served
    upstream = int(base.rsplit(":", 1)[1])
    http_port, https_port = free_port(), free_port()
    conf = render(tmp_path, upstream, http_port, https_port)
    server = subprocess.Popen([NGINX, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(f"https://127.0.0.1:{https_port}")
        answers = {}
        for name, characters in (("short", 500), ("fits", 87_000), ("over-nginx", 90_000)):
            query, _ = _long_reply_query(characters, f"nginx-get-{name}")
            answers[name] = _raw_tls(https_port, _get(query))
    finally:
        server.terminate()
        server.wait(15)
    assert answers["short"].status_code == 200 and answers["fits"].status_code == 200, answers
    assert answers["over-nginx"].status_code == 414
    assert answers["over-nginx"].headers["content-type"] == "application/json"
    with psycopg.connect(url) as conn:
        stored = fetch(conn, "SELECT received_id, length(message_text) AS n FROM replies "
                             "WHERE received_id LIKE 'nginx-get-%%' ORDER BY 1")
    assert stored == [{"received_id": "nginx-get-fits", "n": 87_000}, {"received_id": "nginx-get-short", "n": 500}]


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


# -- every text field, generated, in every encoding, through gunicorn ----------------------------------

# Scripts a reply or a reference may come in: unspaced CJK, emoji and their ZWJ sequences,
# combining marks, right-to-left, and plain ASCII; never NUL, a lone surrogate or a control
# character (the first two are stored as U+FFFD, the last is not XML), and never blank at an end
# (BestSMS's values are trimmed, but for the reply's text).
_SCRIPTS = {
    "cjk": st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    "emoji": st.sampled_from(["\U0001F600", "\U0001F469\u200D\U0001F4BB", "\U0001F44D\U0001F3FD", "\u2764\uFE0F"]),
    "combining": st.sampled_from(["e\u0301", "a\u0308\u0323", "\u0915\u094D\u0937"]),
    "rtl": st.characters(min_codepoint=0x05D0, max_codepoint=0x05EA),
    "ascii": st.characters(min_codepoint=0x21, max_codepoint=0x7E),
}
# (kind, BestSMS field, column) of every free-text field a webhook carries.
_TEXT_FIELDS = [
    ("reply", "Message", "message_text"), ("reply", "SubAccount", "sub_account"),
    ("reply", "Department", "department"), ("reply", "ContactID", "contact_id"), ("reply", "Detail", "detail"),
    ("reply", "ReceivedID", "received_id"), ("reply", "JobNumber", "job_number"),
    ("result", "Result", "result"), ("result", "SubAccount", "sub_account"), ("result", "Department", "department"),
    ("result", "ContactID", "contact_id"), ("result", "Detail", "detail"), ("result", "JobNumber", "job_number"),
]
EXAMPLES = int(os.environ.get("LIMITS_EXAMPLES", "120"))


@st.composite
def _values(draw: st.DrawFn) -> tuple[str, str, str, str, str]:
    kind, field, column = draw(st.sampled_from(_TEXT_FIELDS))
    limit = LIMITS[column]
    edges = [1, 2, 255, 1000, 4000] if limit is None else [1, limit - 1, limit, limit + 1, 2 * limit]
    length = draw(st.sampled_from(edges) | st.integers(1, 3000))
    pieces = draw(st.lists(st.one_of(*_SCRIPTS.values()), min_size=length, max_size=length))
    value = "".join(pieces)[: max(length, 1)]
    if limit is not None:  # the limit in characters (code points), at its edge exactly
        value = (value * (length // max(len(value), 1) + 1))[:length]
    return kind, field, column, value, draw(st.sampled_from(["json", "xml", "form", "query"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=_values())
def test_every_text_field_at_any_length_in_any_script_is_stored_exactly_or_refused_and_kept(served, case):
    url, base, _ = served
    kind, field, column, value, fmt = case
    key = uuid.uuid4().hex[:20]
    if kind == "reply":
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": key, "Destination": "+61410010001"}
        where = ("replies", "received_id")
    else:
        fields = {"APIKey": TOKEN, "MessageID": key, "DestSeq": "00000001", "Destination": "+61410010001",
                  "Status": "Failed"}
        where = ("recipients", "message_id")
    fields[field] = value
    if field == "ReceivedID":  # the row is found by the value itself
        key = value
    e = encode(fields, fmt)
    target = f"/webhooks/bestsms?{e.query_string}" if e.query_string else "/webhooks/bestsms"
    head = "".join(f"{k}: {v}\r\n" for k, v in {**e.headers, "Content-Length": str(len(e.body))}.items())
    status, body = _raw(base, f"{e.method} {target} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode()
                        + e.body)
    with psycopg.connect(url) as conn:
        stored = fetch(conn, f"SELECT {column} AS v FROM {where[0]} WHERE {where[1]} = %s", key)
        answer = httpx.Response(status, content=body).json()
        event = fetch(conn, "SELECT outcome, error FROM webhook_events WHERE id = %s", answer.get("event_id"))
    limit = LIMITS[column]
    if limit is None or len(value) <= limit:
        assert status == 200, (field, fmt, len(value), answer)
        assert stored == [{"v": value}], (field, fmt, len(value))
    else:
        assert status == 400 and field in answer["fields"], (field, fmt, len(value), answer)
        assert stored == [] and event == [{"outcome": "rejected", "error": answer["error"]}]


# -- what gunicorn refuses, and what the database refuses ---------------------------------------------

def test_what_gunicorn_refuses_before_the_app_is_json_counted_and_logged(served):
    """A header over gunicorn's 8,190 bytes and a malformed request line: JSON (gunicorn's own
    answers were HTML), in bestsms_server_refused_total, and a log line without the token."""
    _, base, log = served
    status, body = _raw(base, b"GET /webhooks/bestsms?M=1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 9000
                        + b"\r\nConnection: close\r\n\r\n")
    assert status == 431 and httpx.Response(status, content=body).json()["error"].startswith("request header")
    status, body = _raw(base, f"GET /webhooks/bestsms?token={TOKEN} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode())
    assert status == 400 and "error" in httpx.Response(status, content=body).json() and TOKEN.encode() not in body
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'bestsms_server_refused_total{status="431"}' in metrics
    assert 'bestsms_server_refused_total{status="400"}' in metrics
    text = log.read_text()
    assert TOKEN not in text
    refused = [json.loads(line) for line in text.splitlines() if "Invalid request from ip=127.0.0.1" in line]
    assert refused and not any("request_id" in line for line in refused)  # not the thread's last request's


def test_a_value_over_an_index_key_limit_is_kept_as_rejected_and_its_batch_is_applied(own_database):
    """Defence in depth: were a free-text column indexed (a DBA's index on message_text), the value
    over btree's key limit is that webhook's 400, kept; the others of its batch are applied."""
    _, url = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE INDEX dba_text_idx ON replies (message_text)")
    parser = Parser(ZoneInfo("Australia/Sydney"), "AU")
    hooks = []
    for n, text in enumerate(["short", CJK_900 * 4, "also short"]):
        e = encode({"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": f"dba-{n}", "Destination": "+61410010001",
                    "Message": text}, "json")
        parsed = parser.webhook("POST", "application/json", e.body, "")
        request = store.Request("POST", parsed.format, "application/json", {}, None, e.body.decode())
        hooks.append(store.Webhook(request, parsed.kind, parsed.event, parsed.message_id))
    with connect(Settings(database_url=url), url) as conn:
        rows = batch.write(conn, hooks)
    assert [r["outcome"] for r in rows] == ["applied", "rejected", "applied"]
    assert "index row" in rows[1]["error"]
    with psycopg.connect(url) as conn:
        assert [r["received_id"] for r in fetch(conn, "SELECT received_id FROM replies ORDER BY 1")] == [
            "dba-0", "dba-2"]


# -- bodies of more fields than any webhook, and the memory a flood of them leaves ---------------------

def _shapes() -> dict[str, tuple[str, bytes]]:
    """Bodies of about 1 MB (MAX_BODY_BYTES) in every shape a parser could be made to build big."""
    return {
        "form of 90,000 fields": ("application/x-www-form-urlencoded",
                                  "&".join(f"f{i}=v" for i in range(90_000)).encode()),
        "XML of 45,000 elements": ("application/xml",
                                   ("<W>" + "".join(f"<f{i}>v</f{i}>" for i in range(45_000)) + "</W>").encode()),
        "XML 60,000 deep": ("application/xml", b"<a>" * 60_000 + b"</a>" * 60_000),
        "JSON of 45,000 members": ("application/json",
                                   json.dumps({f"f{i}": f"v{i}" for i in range(45_000)}).encode()),
        "one 1-MB string": ("application/json", json.dumps({"Message": "x" * 1_000_000}).encode()),
        "GET of 90,000 fields": ("", "&".join(f"f{i}=v" for i in range(90_000)).encode()),
    }


def test_a_body_over_the_field_limit_is_400_and_kept_when_authenticated(client, db):
    body = "&".join([f"APIKey={TOKEN}", "Type=SMSInbound", "ReceivedID=many-1"] +
                    [f"f{i}=v" for i in range(MAX_FIELDS)])
    answer = client.post("/webhooks/bestsms", data=body, content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400 and answer.json["error"].startswith(f"more than {MAX_FIELDS} fields")
    event = fetch(db, "SELECT outcome, error, body FROM webhook_events WHERE id = %s", answer.json["event_id"])[0]
    assert event["outcome"] == "rejected" and event["error"] == answer.json["error"]
    assert TOKEN not in event["body"] and event["body"].endswith(f"f{MAX_FIELDS - 1}=v")
    assert client.post("/webhooks/bestsms", data=body.replace(TOKEN, "not-it"),
                       content_type="application/x-www-form-urlencoded").status_code == 401


def test_a_refused_webhook_leaves_no_cycle_holding_its_body(client, db):
    """A refusal kept in the result still held its traceback, whose frames held the body and the
    result: a cycle only a full collection frees (refused 1-MB XML bodies kept 27 MB in a worker)."""
    filler = "y" * 200_000
    bodies = [  # refused by the parser, by the schema, over the field limit, malformed; some authentic
        ("application/json", json.dumps({"APIKey": TOKEN, "MessageID": "cycle-1", "Status": "Bogus", "x": filler})),
        ("application/json", json.dumps({"APIKey": "not-it", "MessageID": "cycle-2", "x": filler})),
        ("application/json", '{"MessageID": ' + filler),
        ("application/xml", "<W>" + "<f>v</f>" * (MAX_FIELDS + 1) + f"<x>{filler}</x></W>"),
        ("application/x-www-form-urlencoded", f"APIKey={TOKEN}&" + "f=v&" * MAX_FIELDS + f"x={filler}"),
        ("text/plain", filler),
    ]
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        statuses = [client.post("/webhooks/bestsms", data=body, content_type=ctype).status_code
                    for ctype, body in bodies]
        gc.collect()
        held = [type(o).__name__ for o in gc.garbage for r in gc.get_referents(o)
                if isinstance(r, str | bytes) and len(r) >= len(filler)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert statuses == [400, 401, 401, 401, 400, 401]
    assert held == [], f"cycles hold a body: {held}"


def _rss_mb(pid: int) -> float:
    """Resident memory of gunicorn's workers (the children of master `pid`), in MB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for child in children:
        status = Path(f"/proc/{child}/status").read_text()
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return total / 1024


def test_a_flood_of_anonymous_bodies_of_any_shape_leaves_the_worker_as_it_was(own_database):
    """Each body of such a flood was parsed whole before its token was looked for, and the memory
    stayed with the worker: 90,000-field forms took one from 61 to 1,355 MB. Now a body of more
    fields than any webhook is refused unparsed, XML is read without a tree, a refusal holds no
    frames (no cycle keeps a body until a full collection) and freed bodies go back to the system
    (gunicorn.conf.py). One worker of 8 threads, 8 senders, 40 bodies of each shape."""
    _, url = own_database
    proc, base = start_gunicorn(url, workers=1)
    try:
        small = json.dumps({"MessageID": "anon", "APIKey": "not-it"}).encode()
        with ThreadPoolExecutor(8) as pool:  # every thread has served an anonymous webhook
            assert set(pool.map(lambda _: httpx.post(f"{base}/webhooks/bestsms", content=small, headers={
                "Content-Type": "application/json"}, timeout=30).status_code, range(80))) == {401}
        before = _rss_mb(proc.pid)

        def send(shape: tuple[str, bytes]) -> int:
            content_type, body = shape
            if not content_type:
                return _raw(base, _get(body.decode()))[0]
            return httpx.post(f"{base}/webhooks/bestsms", content=body, headers={"Content-Type": content_type},
                              timeout=60).status_code

        shapes = _shapes()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, [shape for shape in shapes.values() for _ in range(40)]))
        assert set(answers) == {401}
        after = _rss_mb(proc.pid)
        deadline = time.monotonic() + 10  # the last connections closing
        while after > before + 30 and time.monotonic() < deadline:
            time.sleep(0.5)
            after = _rss_mb(proc.pid)
        assert after <= before + 30, f"RSS {before:.0f} MB before the flood, {after:.0f} MB after"
    finally:
        stop(proc)


# -- the body and the time range, at their edges -------------------------------------------------------

def test_a_body_of_exactly_the_limit_is_stored_and_one_byte_more_is_413_and_kept(client, db):
    def body(size: int, received_id: str) -> tuple[bytes, int]:
        head = f'{{"Type": "SMSInbound", "ReceivedID": "{received_id}", "Destination": "+61410010001", "Message": "'
        text = size - len(head) - 2
        return (head + "x" * text + '"}').encode(), text

    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    (at, text), (over, _) = body(1024 * 1024, "edge-at"), body(1024 * 1024 + 1, "edge-over")
    assert (len(at), len(over)) == (1024 * 1024, 1024 * 1024 + 1)
    assert client.post("/webhooks/bestsms", data=at, headers=auth).status_code == 200
    refused = client.post("/webhooks/bestsms", data=over, headers=auth)
    assert refused.status_code == 413 and refused.get_json()["event_id"]
    assert fetch(db, "SELECT received_id, length(message_text) AS n FROM replies") == [
        {"received_id": "edge-at", "n": text}]
    assert [e["outcome"] for e in fetch(db, "SELECT outcome FROM webhook_events ORDER BY id")] == [
        "applied", "rejected"]


@pytest.mark.parametrize(("when", "status"), [
    ("1999-12-31T23:59:59Z", 400), ("2000-01-01T00:00:00Z", 200),
    ("2099-12-31T23:59:59Z", 200), ("2100-01-01T00:00:00Z", 400)])
def test_a_time_at_the_edge_of_the_range_is_stored_or_refused_and_kept(client, db, when, status):
    answer = post_flask(client, {"APIKey": TOKEN, "MessageID": "range-1", "Destination": "+61410010001",
                                 "Status": "Success", "SentTimeUTC_RFC3339": when})
    assert answer.status_code == status, answer.get_json()
    [event] = fetch(db, "SELECT outcome FROM webhook_events")
    assert event["outcome"] == ("applied" if status == 200 else "rejected")
    stored = fetch(db, "SELECT sent_at FROM recipients")
    assert stored == ([{"sent_at": datetime.fromisoformat(when)}] if status == 200 else [])


def test_a_sender_time_exactly_a_day_after_receipt_is_kept_and_a_microsecond_more_is_not(db):
    """credible_time()'s edge: up to 24 hours after its receipt a report's time orders it."""
    [row] = fetch(db, """
        SELECT credible_time(r + interval '24 hours', r) = r + interval '24 hours' AS at_edge,
               credible_time(r + interval '24 hours 1 microsecond', r) = r AS over_edge
        FROM (SELECT timestamptz '2026-12-04 00:00:00+00' AS r) received""")
    assert row == {"at_edge": True, "over_edge": True}
