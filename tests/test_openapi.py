"""The receiver's own API against its own description (GET /openapi.json), by schemathesis: it
generates requests from the document, sends them to the app in-process (WSGI), and checks each
answer: never a 5xx, the status code and body the document gives, errors in JSON."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.support import TOKEN


@pytest.fixture
def api(app: Any, db: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_the_one_the_document_gives(case: Any) -> None:
    # Every check but negative_data_rejection: the endpoint takes more than the document promises,
    # on purpose (lower-case statuses, unknown fields, any year...: refusing what BestSMS might send
    # loses it), so a request outside the document may well be taken.
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[checks.negative_data_rejection])


def test_the_document_is_served_and_lists_every_endpoint(client: Any) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/webhooks/bestsms", "/messages", "/healthz", "/readyz", "/metrics",
                                      "/openapi.json"}
    assert set(document["paths"]["/webhooks/bestsms"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/xml", "application/x-www-form-urlencoded"}
