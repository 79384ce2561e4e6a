"""BestSMS webhook receiver: stores delivery results and replies in PostgreSQL."""

from __future__ import annotations

import structlog
from flask import Flask

from . import health, log, messages, openapi, web, webhooks
from .config import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: settings, logging, services, endpoints. Nothing here needs the database to
    be up, or changes it: the schema is `migrate`'s (see migrator.py), and requests answer 503 until
    the database is there with a current schema."""
    settings = settings or Settings.from_env()
    log.configure(settings.log_level)
    settings.check_web()
    if not settings.webhook_tokens:
        structlog.get_logger(__name__).warning(
            "webhooks are accepted WITHOUT authentication: WEBHOOK_TOKEN is not set and "
            "ALLOW_UNAUTHENTICATED_WEBHOOKS is (fine for a local trial, never in production)")

    app = Flask(__name__, static_folder=None)  # no files to serve
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.proxy_hops:  # behind nginx: the client's address and scheme from X-Forwarded-*
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)  # type: ignore[method-assign]

    web.init_app(app, settings)  # the services, request ids, errors answered in JSON
    app.register_blueprint(webhooks.bp)  # /webhooks/bestsms
    app.register_blueprint(messages.bp)  # /messages
    app.register_blueprint(health.bp)  # /healthz, /readyz, /metrics
    app.register_blueprint(openapi.bp)  # /openapi.json
    return app
