"""End to end through a real gunicorn process, the way BestSMS reaches the service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import FORMATS, TOKEN, assert_row_matches, counts, fetch, post_http, start_gunicorn, stop

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
    text = httpx.get(f"{base}/metrics").text
    # 12 requests over 2 workers: the scrape (answered by either) must count all of them, and it is
    # the multi-process aggregate (which has no per-process collectors such as python_gc_*)
    assert _webhook_count(text) - before == 12
    assert "python_gc_objects_collected_total" not in text
    assert re.search(r'^bestsms_webhook_seconds_count \d', text, re.MULTILINE)


def _webhook_count(text: str) -> float:
    import re

    return sum(float(m.group(1)) for m in re.finditer(
        r'^bestsms_webhooks_total\{kind="result",outcome="(?:applied|duplicate)",status="200"\} (\S+)$',
        text, re.MULTILINE))
