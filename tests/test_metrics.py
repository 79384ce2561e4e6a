"""receiver/metrics.py: one exposition for every gunicorn worker, and the pollers' row as gauges."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from receiver import metrics
from tests.support import ROOT


def _samples(text: bytes) -> dict[str, float]:
    return {name: float(value) for name, value in
            re.findall(r"^(\S+(?:\{[^}]*\})?) (\S+)$", text.decode(), re.MULTILINE)}


def test_the_workers_counts_are_summed_from_the_shared_directory(tmp_path):
    """Two worker processes count in PROMETHEUS_MULTIPROC_DIR; one render shows their sum."""
    count = ("from receiver import metrics; "
             "metrics.WEBHOOKS.labels('result', 'applied', '200').inc({n}); metrics.WEBHOOK_BATCH.observe(3)")
    for n in (2, 5):
        subprocess.run([sys.executable, "-c", count.format(n=n)], cwd=ROOT, check=True,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    text, content_type = metrics.render(None, str(tmp_path))
    found = _samples(text)
    assert found['bestsms_webhooks_total{kind="result",outcome="applied",status="200"}'] == 7
    assert found["bestsms_webhook_batch_size_count"] == 2 and found["bestsms_webhook_batch_size_sum"] == 6
    assert content_type.startswith("text/plain")
    assert not any(name.startswith("bestsms_poll") and "total" not in name for name in found)  # no state: no gauges
    assert found["bestsms_ready"] == 0  # no state: the database did not answer


def test_a_worker_that_imported_prometheus_client_before_the_directory_was_set_still_shares(tmp_path):
    """prometheus_client chooses its storage when first imported: a worker that imported it before
    PROMETHEUS_MULTIPROC_DIR was set would count in memory of its own, unseen by /metrics."""
    count = ("import os, prometheus_client; os.environ['PROMETHEUS_MULTIPROC_DIR'] = {dir!r}; "
             "from receiver import metrics; metrics.WEBHOOKS.labels('result', 'applied', '200').inc(4)")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.run([sys.executable, "-c", count.format(dir=str(tmp_path))], cwd=ROOT, check=True, env=env)
    found = _samples(metrics.render(None, str(tmp_path))[0])
    assert found['bestsms_webhooks_total{kind="result",outcome="applied",status="200"}'] == 4


def test_the_pollers_row_becomes_gauges():
    now = datetime.now(UTC)
    state = {"unauthorized_since": now, "backlog_needy": 4, "backlog_confirmation": 0,
             "oldest_needy_at": now - timedelta(minutes=30), "measured_at": now - timedelta(seconds=20),
             "last_received_sweep_at": None}
    found = _samples(metrics.render(state)[0])
    assert found["bestsms_poller_unauthorized"] == 1
    assert (found['bestsms_poll_backlog{class="needy"}'], found['bestsms_poll_backlog{class="confirmation"}']) == (4, 0)
    assert 1800 <= found["bestsms_poll_oldest_needy_seconds"] < 1800 + 600
    assert 20 <= found["bestsms_poll_backlog_measured_seconds"] < 20 + 600
    assert "bestsms_poll_received_sweep_seconds" not in found  # never swept: no age


def test_a_backlog_with_nothing_needy_due_is_age_zero():
    now = datetime.now(UTC)
    found = _samples(metrics.render({"unauthorized_since": None, "backlog_needy": 0, "backlog_confirmation": 7,
                                     "oldest_needy_at": None, "measured_at": now})[0])
    assert found["bestsms_poll_oldest_needy_seconds"] == 0
    assert found['bestsms_poll_backlog{class="needy"}'] == 0


def test_a_poller_that_never_ran_shows_no_backlog():
    found = _samples(metrics.render({"unauthorized_since": None}, received_sweep_seconds=300)[0])
    assert found["bestsms_poller_unauthorized"] == 0
    assert found["bestsms_ready"] == 1 and found["bestsms_poll_received_sweep_interval_seconds"] == 300
    assert not any(name.startswith("bestsms_poll_backlog") for name in found)
