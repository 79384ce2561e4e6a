"""BestSMS webhook receiver: stores delivery results and replies in PostgreSQL."""

from __future__ import annotations

import structlog
from flask import Flask

from . import db, log, webhooks
from .config import ConfigError, Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: settings, logging, database, endpoints. Nothing here needs the database to be
    up, or changes it: the schema is `migrate`'s (see schema.py), and requests answer 503 until
    the database is there with a current schema."""
    settings = settings or Settings.from_env()
    log.configure(settings.log_level)
    logger = structlog.get_logger(__name__)
    if not settings.database_url:
        raise ConfigError(
            "DATABASE_URL is not set: set it, or start with `python -m receiver serve`, "
            "which starts an embedded PostgreSQL"
        )
    settings.validate()
    if not settings.webhook_tokens:
        if not settings.allow_unauthenticated:
            raise ConfigError("WEBHOOK_TOKEN is not set: set it to the token BestSMS sends (or, for a deployment "
                              "that is unauthenticated on purpose, ALLOW_UNAUTHENTICATED_WEBHOOKS=yes)")
        logger.warning("WEBHOOK_TOKEN is not set and ALLOW_UNAUTHENTICATED_WEBHOOKS is: webhooks are accepted "
                       "WITHOUT authentication (fine for a local trial, never in production)")

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]

    if settings.proxy_hops:  # behind nginx: the client's address and scheme from X-Forwarded-*
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops)  # type: ignore[method-assign]
    webhooks.init_app(app, settings, db.Database(settings, settings.database_url))
    return app
