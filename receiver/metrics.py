"""Prometheus metrics of the receiver and the poller.

Under gunicorn the workers share their counts through PROMETHEUS_MULTIPROC_DIR (set up by
deploy/gunicorn.conf.py). prometheus_client picks its storage when first imported, so this module
is imported only where the process's environment is final: in a worker, after the fork.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

WEBHOOKS = Counter("bestsms_webhooks", "Webhook requests answered, by kind, outcome and HTTP status",
                   ["kind", "outcome", "status"])
WEBHOOK_SECONDS = Histogram("bestsms_webhook_seconds", "Time to answer a webhook, commit included",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
POLLS = Counter("bestsms_polls", "Message polls, by outcome", ["outcome"])
POLL_REQUESTS = Counter("bestsms_poll_requests", "Requests to BestSMS, by HTTP status (0: no answer)", ["status"])
POLLER_UNAUTHORIZED = Gauge("bestsms_poller_unauthorized",
                            "1 while BestSMS refuses BESTSMS_AUTH_TOKEN (polling stopped)", multiprocess_mode="max")


def render() -> tuple[bytes, str]:
    """The exposition text: every worker's counts when running multi-process, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
