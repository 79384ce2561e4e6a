"""End to end through a real gunicorn process, the way BestSMS reaches the service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import (
    FORMATS,
    TOKEN,
    assert_row_matches,
    counts,
    fetch,
    post_http,
    raw_http,
    start_gunicorn,
    stop,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gunicorn(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    proc, base = start_gunicorn(database_url, log_path=log_path)
    yield base, log_path
    stop(proc)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_sample_in_every_format(gunicorn, db: psycopg.Connection[Any], samples, fmt):
    base, _ = gunicorn
    # reply-matched's description: send result-delivered first; the others are independent.
    order = sorted(samples, key=lambda name: name == "reply-matched")
    for name in order:
        sample = samples[name]
        response = post_http(base, sample["fields"], fmt)
        expect = sample["expect"]
        if "status" in expect:
            assert response.status_code == expect["status"], (name, response.text)
            continue
        assert response.status_code == 200, (name, response.text)
        [(table, columns)] = expect.items()
        key = "received_id" if table == "replies" else "message_id"
        rows = fetch(db, f"SELECT * FROM {table} WHERE {key} = %s", columns.get(key) or sample["fields"][
            "ReceivedID" if table == "replies" else "MessageID"])
        assert len(rows) == 1, (name, fmt, rows)
        assert_row_matches(rows[0], columns, f"{name}/{fmt}: ")
    assert counts(db)["webhook_events"] == len(samples)


def test_one_json_log_line_per_webhook_and_no_secrets(gunicorn, db, samples):
    base, log_path = gunicorn
    for fmt in FORMATS:
        assert post_http(base, samples["result-delivered"]["fields"], fmt).status_code == 200
    text = log_path.read_text()
    assert TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    webhook_lines = [line for line in lines if line.get("event") == "webhook"]
    mine = [line for line in webhook_lines if line.get("message_id") == samples["result-delivered"]["fields"][
        "MessageID"]][-4:]
    assert [line["outcome"] for line in mine] == ["applied", "duplicate", "duplicate", "duplicate"]
    assert all({"event_id", "ms", "status", "format"} <= line.keys() for line in mine)


def test_metrics_count_every_worker(gunicorn, db, samples):
    import re

    import httpx

    base, _ = gunicorn
    before = _webhook_count(httpx.get(f"{base}/metrics").text)
    for _ in range(3):
        for fmt in FORMATS:
            assert post_http(base, samples["result-pending"]["fields"], fmt).status_code == 200
    scrapes = [httpx.get(f"{base}/metrics").text for _ in range(6)]
    # 12 requests over 2 workers: every scrape (answered by either) counts all of them, and it is
    # the multi-process aggregate (which has no per-process collectors such as python_gc_*)
    assert [_webhook_count(text) - before for text in scrapes] == [12] * 6
    text = scrapes[-1]
    assert "python_gc_objects_collected_total" not in text
    assert re.search(r'^bestsms_webhook_seconds_count \d', text, re.MULTILINE)


def _webhook_count(text: str) -> float:
    import re

    return sum(float(m.group(1)) for m in re.finditer(
        r'^bestsms_webhooks_total\{kind="result",outcome="(?:applied|duplicate)",status="200"\} (\S+)$',
        text, re.MULTILINE))


def _chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                    for i in range(0, len(body), 65536)) + b"0\r\n\r\n"


CHUNKED_HEAD = (f"POST /webhooks/bestsms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n").encode()


def test_a_chunked_body_over_the_limit_is_413_and_kept_not_applied(gunicorn, db):
    base, _ = gunicorn
    body = b"ReceivedID=r1&Destination=0410010001&Type=SMSInbound&Message=" + b"x" * 1_250_000
    answer = raw_http(base, CHUNKED_HEAD + _chunked(body))
    assert answer.startswith(b"HTTP/1.1 413") and b'"error":"request body over 1048576 bytes: kept' in answer
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}
    [kept] = fetch(db, "SELECT outcome, left(body, 30) AS head, length(body) AS n FROM webhook_events")
    assert kept["outcome"] == "rejected" and kept["head"] == body[:30].decode() and kept["n"] <= 1024 * 1024
    db.execute("TRUNCATE webhook_events")
    # ... and one within the limit, chunked, is applied whole
    small = b"ReceivedID=r2&Destination=0410010001&Type=SMSInbound&Message=" + b"y" * 900
    assert raw_http(base, CHUNKED_HEAD + _chunked(small)).startswith(b"HTTP/1.1 200")
    assert fetch(db, "SELECT length(message_text) AS n FROM replies") == [{"n": 900}]


def test_a_broken_chunked_body_is_400_in_json(gunicorn, db):
    base, _ = gunicorn
    answer = raw_http(base, CHUNKED_HEAD + b"zz\r\nabc\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer
    assert b"request body could not be read" in answer


def test_gunicorn_never_logs_a_token_from_a_request_line(gunicorn):
    base, log_path = gunicorn
    raw_http(base, f"GET /webhooks/bestsms?token={TOKEN}\r\n\r\n".encode())
    raw_http(base, f"GET /webhooks/bestsms?%74oken={TOKEN} x\r\n\r\n".encode())
    import time

    time.sleep(0.5)  # the worker writes its line after answering
    text = log_path.read_text()
    assert "Invalid HTTP request line" in text and TOKEN not in text
