"""create_app: the wiring diagram (settings, services, blueprints), and what it refuses to start with."""

from __future__ import annotations

import pytest

from receiver import create_app
from receiver.config import ConfigError, Settings
from receiver.web import services


def test_the_app_serves_exactly_its_endpoints(app):
    rules = {(rule.rule, rule.endpoint, frozenset(rule.methods or ()) - {"HEAD", "OPTIONS"})
             for rule in app.url_map.iter_rules()}
    assert rules == {
        ("/webhooks/bestsms", "webhooks.bestsms_webhook", frozenset({"GET", "POST"})),
        ("/messages", "messages.track_message", frozenset({"POST"})),
        ("/healthz", "health.healthz", frozenset({"GET"})),
        ("/readyz", "health.readyz", frozenset({"GET"})),
        ("/metrics", "health.metrics", frozenset({"GET"})),
        ("/openapi.json", "openapi.openapi_json", frozenset({"GET"})),
    }


def test_the_services_are_made_once_from_the_settings(app, settings):
    made = services(app)
    assert made.settings is settings and made.database is made.group_commit.database
    assert made.group_commit.writers == settings.webhook_writers and made.tokens.match([settings.webhook_tokens[1]])


def test_without_a_database_url_it_says_how_to_get_one():
    with pytest.raises(ConfigError, match=r"DATABASE_URL is not set.*python -m receiver serve"):
        create_app(Settings(webhook_tokens=("a-long-enough-token",)))


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nothing-here", 404), ("DELETE", "/webhooks/bestsms", 405), ("GET", "/messages", 405),
    ("POST", "/healthz", 405),
])
def test_every_http_error_is_answered_in_json(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status and response.is_json and response.get_json()["error"]
    if status == 405:
        assert response.headers["Allow"]
