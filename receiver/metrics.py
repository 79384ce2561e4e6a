"""Prometheus metrics of the receiver and the poller.

Under gunicorn the workers share their counts through PROMETHEUS_MULTIPROC_DIR (set up by
deploy/gunicorn.conf.py). prometheus_client picks its storage when first imported, so this module
is imported only where the process's environment is final: in a worker, after the fork.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WEBHOOKS = Counter("bestsms_webhooks", "Webhook requests answered, by kind, outcome and HTTP status",
                   ["kind", "outcome", "status"])
WEBHOOK_SECONDS = Histogram("bestsms_webhook_seconds", "Time to answer a webhook, commit included",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
WEBHOOK_BATCH = Histogram("bestsms_webhook_batch_size", "Webhooks recorded per commit (group commit)",
                          buckets=(1, 2, 4, 8, 16, 32, 64))
POLLS = Counter("bestsms_polls", "Message polls, by outcome and class (needy, confirmation)", ["outcome", "class"])
POLL_REQUESTS = Counter("bestsms_poll_requests",
                        "Requests to BestSMS, by endpoint (status, reply, received) and HTTP status (0: no answer)",
                        ["endpoint", "status"])
POLL_ERRORS = Counter("bestsms_poll_errors", "BestSMS answers that were errors, by endpoint and kind (retry: 429, "
                      "5xx or no answer; not_found; unauthorized; malformed; failed)", ["endpoint", "kind"])
POLLS_GIVEN_UP = Counter("bestsms_polls_given_up",
                         "Messages given up at POLL_GIVE_UP_SECONDS without a complete result")


def render(state: dict[str, Any] | None = None, multiprocess_dir: str | None = None) -> tuple[bytes, str]:
    """The exposition text: every worker's counts when running multi-process (`multiprocess_dir`,
    PROMETHEUS_MULTIPROC_DIR), else this process's; and the pollers' shared state (`state`, their
    row in the database) as gauges."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, multiprocess_dir)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if state is not None:
        extra = CollectorRegistry()
        extra.register(_PollerState(state))
        text += generate_latest(extra)
    return text, CONTENT_TYPE_LATEST


class _PollerState(Collector):
    """The pollers' row (store.HEALTH), read at each scrape: the same facts /readyz shows."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, now = self.state, datetime.now(UTC)
        yield GaugeMetricFamily("bestsms_poller_unauthorized", "1 while BestSMS refuses BESTSMS_AUTH_TOKEN",
                                value=1 if s.get("unauthorized_since") else 0)
        backlog = GaugeMetricFamily("bestsms_poll_backlog", "Due messages by class, as the pollers last counted",
                                    labels=["class"])
        for name in ("needy", "confirmation"):
            if s.get(f"backlog_{name}") is not None:
                backlog.add_metric([name], s[f"backlog_{name}"])
        yield backlog
        for name, help_, at in (
            ("bestsms_poll_oldest_needy_seconds", "Age of the oldest due needy message", "oldest_needy_at"),
            ("bestsms_poll_backlog_measured_seconds", "Time since the pollers last counted the backlog", "measured_at"),
            ("bestsms_poll_received_sweep_seconds", "Time since the last successful inbound SMS sweep",
             "last_received_sweep_at"),
        ):
            if s.get(at) is not None:
                yield GaugeMetricFamily(name, help_, value=(now - s[at]).total_seconds())
