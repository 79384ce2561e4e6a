"""Prometheus metrics of the receiver and the poller.

Under gunicorn the workers share their counts through PROMETHEUS_MULTIPROC_DIR (set up by
gunicorn.conf.py). prometheus_client picks its storage when it is first imported; this module
picks it again when it is imported, so that an earlier import of prometheus_client (before the
variable was set) cannot leave a worker counting in memory of its own, unseen by /metrics.
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
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_values.ValueClass = _values.get_value_class()  # type: ignore[no-untyped-call]  # the storage, as now set

WEBHOOKS = Counter("bestsms_webhooks", "Webhook requests answered, by kind, outcome and HTTP status",
                   ["kind", "outcome", "status"])
SERVER_REFUSED = Counter("bestsms_server_refused", "Requests gunicorn refused before the app saw them "
                         "(a malformed request, a header over its limit), by HTTP status", ["status"])
WEBHOOK_SECONDS = Histogram("bestsms_webhook_seconds", "Time to answer a webhook, commit included",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
WEBHOOK_BATCH = Histogram("bestsms_webhook_batch_size", "Webhooks recorded per commit (group commit)",
                          buckets=(1, 2, 4, 8, 16, 32, 64))
# The poller's own, served on its POLL_METRICS_PORT: a registry of their own, so that the poller
# never serves the web's counters (stuck at 0 in a process that answers no webhook).
POLLER = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=POLLER)
PlatformCollector(registry=POLLER)
POLLS = Counter("bestsms_polls", "Message polls, by outcome and class (needy, confirmation)", ["outcome", "class"],
                registry=POLLER)
POLL_REQUESTS = Counter("bestsms_poll_requests",
                        "Requests to BestSMS, by endpoint (status, reply, received) and HTTP status (0: no answer)",
                        ["endpoint", "status"], registry=POLLER)
POLL_ERRORS = Counter("bestsms_poll_errors", "BestSMS answers that were errors, by endpoint and kind (retry: 429, "
                      "5xx or no answer; not_found; unauthorized; malformed; failed)", ["endpoint", "kind"],
                      registry=POLLER)
POLLS_GIVEN_UP = Counter("bestsms_polls_given_up",
                         "Messages given up at POLL_GIVE_UP_SECONDS without a complete result", registry=POLLER)
POLL_CHANGES = Counter("bestsms_poll_changes", "Results and replies that polls and sweeps changed or added: "
                       "what BestSMS had that no webhook had brought, by kind (result, reply)", ["kind"],
                       registry=POLLER)
SWEEP_UNRECOVERABLE = Counter("bestsms_poll_received_unrecoverable_seconds",
                              "Seconds of inbound SMS history the sweep could not cover: further back than BestSMS "
                              "answers (7 days) when a sweep resumed", registry=POLLER)
for _kind in ("result", "reply"):  # shown from the start at 0, so that alerts see the first increase
    POLL_CHANGES.labels(_kind)


def render(state: dict[str, Any] | None = None, multiprocess_dir: str | None = None, *,
           received_sweep_seconds: float | None = None) -> tuple[bytes, str]:
    """The exposition text: every worker's counts when running multi-process (`multiprocess_dir`,
    PROMETHEUS_MULTIPROC_DIR), else this process's; whether the database answered (`state` is the
    pollers' row it gave, None when it did not: /readyz's answer) and that row as gauges; and the
    inbound sweep's interval (RECEIVED_SWEEP_SECONDS, 0: off), which alerts compare its age with."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, multiprocess_dir)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_Readiness(state is not None, received_sweep_seconds))
    if state is not None:
        extra.register(_PollerState(state))
    return text + generate_latest(extra), CONTENT_TYPE_LATEST


class _Readiness(Collector):
    def __init__(self, ready: bool, received_sweep_seconds: float | None) -> None:
        self.ready, self.received_sweep_seconds = ready, received_sweep_seconds

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("bestsms_ready", "1 when the database answers with a current schema "
                                "(what /readyz says), else 0", value=1 if self.ready else 0)
        if self.received_sweep_seconds is not None:
            yield GaugeMetricFamily("bestsms_poll_received_sweep_interval_seconds",
                                    "RECEIVED_SWEEP_SECONDS: how often the inbound SMS sweep runs (0: never)",
                                    value=self.received_sweep_seconds)


_OLDEST_NEEDY = "Time since the oldest due needy message was first seen (0: none is due)"


class _PollerState(Collector):
    """The pollers' row (store.HEALTH), read at each scrape: the same facts /readyz shows."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, now = self.state, datetime.now(UTC)
        if s.get("archive_days_ahead") is not None:
            yield GaugeMetricFamily("bestsms_archive_days_ahead", "Days after today (UTC) that webhook_events has "
                                    "partitions for (-1: not even today's; a webhook then makes its own)",
                                    value=s["archive_days_ahead"])
        yield GaugeMetricFamily("bestsms_poller_unauthorized", "1 while BestSMS refuses BESTSMS_AUTH_TOKEN",
                                value=1 if s.get("unauthorized_since") else 0)
        backlog = GaugeMetricFamily("bestsms_poll_backlog", "Due messages by class, as the pollers last counted",
                                    labels=["class"])
        for name in ("needy", "confirmation"):
            if s.get(f"backlog_{name}") is not None:
                backlog.add_metric([name], s[f"backlog_{name}"])
        yield backlog
        if s.get("measured_at") is not None and s.get("oldest_needy_at") is None:  # counted, none due: 0
            yield GaugeMetricFamily("bestsms_poll_oldest_needy_seconds", _OLDEST_NEEDY, value=0)
        for name, help_, at in (
            ("bestsms_poll_oldest_needy_seconds", _OLDEST_NEEDY, "oldest_needy_at"),
            ("bestsms_poll_backlog_measured_seconds", "Time since the pollers last counted the backlog", "measured_at"),
            ("bestsms_poll_received_sweep_seconds", "Time since the last successful inbound SMS sweep",
             "last_received_sweep_at"),
        ):
            if s.get(at) is not None:
                yield GaugeMetricFamily(name, help_, value=(now - s[at]).total_seconds())
