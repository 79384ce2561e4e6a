"""/healthz, /readyz and /metrics through Flask's client and the real database."""

from __future__ import annotations

import re

from receiver import migrator
from tests.support import TOKEN, post_flask


def test_healthz_is_ok_without_asking_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_is_ready_at_the_schema_this_code_needs_with_no_poller_state_yet(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert 13 <= body.pop("archive_days_ahead") <= 14  # made 14 ahead by migrate (13: made before midnight UTC)
    assert body == {
        "status": "ready", "schema": migrator.head(),
        "poller": {"unauthorized": False, "unauthorized_since": None, "unauthorized_error": None,
                   "backlog": {"needy": None, "confirmation": None, "oldest_needy_at": None, "measured_at": None},
                   "last_received_sweep_at": None},
    }


def test_readyz_and_metrics_show_the_pollers_row(client, db):
    db.execute("""INSERT INTO poller_state (id, unauthorized_since, unauthorized_error, backlog_needy,
                                            backlog_confirmation, oldest_needy_at, measured_at)
                  VALUES (true, now(), 'HTTP 401', 7, 2, now() - interval '1 hour', now())""")
    poller = client.get("/readyz").get_json()["poller"]
    assert (poller["unauthorized"], poller["unauthorized_error"]) == (True, "HTTP 401")
    assert (poller["backlog"]["needy"], poller["backlog"]["confirmation"]) == (7, 2)

    text = client.get("/metrics").get_data(as_text=True)
    gauges = dict(re.findall(r"^(bestsms_poll\w*(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE))
    assert gauges["bestsms_poller_unauthorized"] == "1.0"
    assert (gauges['bestsms_poll_backlog{class="needy"}'], gauges['bestsms_poll_backlog{class="confirmation"}']) \
        == ("7.0", "2.0")
    assert 3600 <= float(gauges["bestsms_poll_oldest_needy_seconds"]) < 3600 + 600  # an hour, as measured
    assert "bestsms_poll_received_sweep_seconds" not in gauges  # no sweep yet: no age to show


def test_metrics_count_each_answer_by_kind_outcome_and_status(client, samples):
    def count(text: str, labels: str) -> float:
        found = re.search(rf"^bestsms_webhooks_total\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    applied = 'kind="result",outcome="applied",status="200"'
    unauthorized = 'kind="",outcome="unauthorized",status="401"'
    before = client.get("/metrics").get_data(as_text=True)
    assert post_flask(client, samples["result-delivered"]["fields"]).status_code == 200
    fields = {k: v for k, v in samples["result-delivered"]["fields"].items() if k != "APIKey"}
    assert post_flask(client, fields).status_code == 401
    after = client.get("/metrics")
    assert after.content_type.startswith("text/plain")
    text = after.get_data(as_text=True)
    assert count(text, applied) - count(before, applied) == 1
    assert count(text, unauthorized) - count(before, unauthorized) == 1
    assert TOKEN not in text
