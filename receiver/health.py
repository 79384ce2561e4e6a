"""Health and metrics: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response

from . import migrator, web
from .batch import LOW_EVERY_SECONDS
from .errors import Unavailable
from .metrics import render as render_metrics

bp = Blueprint("health", __name__)

READY_TIMEOUT_SECONDS = 0.9  # /readyz answers within a second, whatever the database does
ARCHIVE_DAYS_LOW = 7  # fewer days ahead than this: the web makes them (the poller and prune keep 14)


@bp.route("/healthz")
def healthz() -> Response:
    """200 while the process serves requests (liveness): it does not ask the database."""
    return web.answer(200, {"status": "ok"})


@bp.route("/readyz")
def readyz() -> Response:
    """200 when the database answers, its schema is current and it takes webhooks (not read-only,
    no privilege missing): readiness; else 503 and why.

    Also shows the pollers' state, from the row they write (the same facts /metrics shows)."""
    try:
        state = web.services().database.ready(READY_TIMEOUT_SECONDS)
    except Unavailable as exc:
        return web.answer(503, {"status": "unavailable", "reason": exc.reason})
    if state["archive_days_ahead"] < ARCHIVE_DAYS_LOW:  # a web-only deployment, quiet for days
        web.services().group_commit.archive_days.keep(every=LOW_EVERY_SECONDS)
    # Ready either way; a refused BestSMS token is the poller's, shown for monitors.
    return web.answer(200, {"status": "ready", "schema": migrator.head(), "poller": _poller(state),
                            "archive_days_ahead": state["archive_days_ahead"]})


def _poller(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "unauthorized": state["unauthorized_since"] is not None,
        "unauthorized_since": state["unauthorized_since"], "unauthorized_error": state["unauthorized_error"],
        "backlog": {"needy": state["backlog_needy"], "confirmation": state["backlog_confirmation"],
                    "oldest_needy_at": state["oldest_needy_at"], "measured_at": state["measured_at"]},
        "last_received_sweep_at": state["last_received_sweep_at"],
    }


@bp.route("/metrics")
def metrics() -> Response:
    """Prometheus metrics of every worker, and the pollers' state from the database (when it answers)."""
    app = web.services()
    try:
        state: dict[str, Any] | None = app.database.ready(READY_TIMEOUT_SECONDS)
    except Unavailable:
        state = None
    body, content_type = render_metrics(state, app.settings.metrics_dir,
                                          received_sweep_seconds=app.settings.received_sweep_seconds)
    return Response(body, content_type=content_type)
