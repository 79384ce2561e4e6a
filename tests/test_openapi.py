"""The receiver's own API against its own description (GET /openapi.json), by schemathesis: it
generates requests from the document, sends them to the app in-process (WSGI), and checks each
answer: never a 5xx, the status code and body the document gives, errors in JSON."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.support import TOKEN

_DAY = re.compile(r"^(20[0-9]{2})-([0-9]{2})-([0-9]{2})")


def _days_that_exist(values: Any) -> bool:
    """The document's time pattern cannot say which days a month has, nor where 2099-12-31 23:00-05:00
    falls (2100, out of range): generated times of days no calendar has, or of the range's first
    and last day, are not generated, nor a number a form would spell with an exponent. The document
    says what is taken; the generation adapts."""
    for value in (values or {}).values() if isinstance(values, dict) else ():
        if isinstance(value, float) and "e" in str(value):  # 5e-324 in a form or query: no price BestSMS writes
            return False
        if isinstance(value, str) and (day := _DAY.match(value)):
            try:
                when = date(int(day[1]), int(day[2]), int(day[3]))
            except ValueError:
                return False
            if when in (date(2000, 1, 1), date(2099, 12, 31)):
                return False
    return True


def filter_body(ctx: Any, body: Any) -> bool:
    return _days_that_exist(body)


def filter_query(ctx: Any, query: Any) -> bool:
    return _days_that_exist(query)


@pytest.fixture
def api(app: Any, db: Any) -> Any:
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    loaded.hooks.hook(filter_body)
    loaded.hooks.hook(filter_query)
    return loaded


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


def _bestsms_spellings() -> list[tuple[str, dict[str, Any]]]:
    """Every webhook BestSMS sends in the samples (and the vendor's own time spellings), as fields."""
    import json
    from pathlib import Path

    samples = Path(__file__).resolve().parent / "samples"
    found = []
    for path in sorted(samples.glob("*.json")):
        sample = json.loads(path.read_text())
        if path.name.startswith("bad-") or sample.get("kind") not in ("result", "reply"):
            continue
        found.append((path.name, sample["fields"]))
    result = next(fields for name, fields in found if name == "result-delivered.json")
    for when in ("2026-11-30T23:59:59.000Z", "2025-06-12 20:44:16+00:00", "2024-02-29 08:00:00", "2026-11-30T10:00Z",
                 "2026-12-31T23:59:59.123456+11:00", "2099-12-31 23:59:59"):  # vendor spec and SDKs
        found.append((f"SentTimeUTC_RFC3339={when}", {**result, "SentTimeUTC_RFC3339": when}))
    return found


@pytest.mark.parametrize(("name", "fields"), _bestsms_spellings(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_document_takes_every_webhook_bestsms_sends(client: Any, name: str, fields: dict[str, Any]) -> None:
    """Validated by openapi-schema-validator (OpenAPI 3.0's JSON Schema dialect): its time pattern
    allowed only days 01-28 and years ending 1-8, no fractions, so a generated client refused
    2026-11-30 and BestSMS's `.000Z`."""
    from openapi_schema_validator import OAS30Validator

    document = client.get("/openapi.json").get_json()
    kind = "ReplyWebhook" if fields.get("Type") in ("SMSReply", "SMSInbound") else "ResultWebhook"
    schema = {**document["components"]["schemas"][kind], "components": document["components"]}
    errors = [f"{list(e.path)}: {e.message}" for e in OAS30Validator(schema).iter_errors(fields)]
    assert errors == [], name
    assert client.post("/webhooks/bestsms", json={**fields, "APIKey": TOKEN}).status_code == 200, name
