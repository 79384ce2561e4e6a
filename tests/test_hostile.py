"""The URL is public: every request gets a deliberate answer in JSON (never a 500 from input), what
was authenticated but cannot be applied is kept as `rejected`, and no credential is stored.

Each case a fuzzing session found is here as a regression test; test_fuzz.py generates more.
"""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from receiver.bestsms.events import Parser
from receiver.cli import reprocess_one
from tests.support import TOKEN, counts, fetch

BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
RESULT = {"MessageID": "hostile-1", "Destination": "+61410010001", "Status": "Success", "Result": "delivered"}


def post(client: Any, body: bytes | str, headers: dict[str, str] | None = None, path: str = "/webhooks/bestsms",
         query: str = "") -> Any:
    return client.post(path, data=body, query_string=query, headers={**JSON, **(headers or {})})


def events(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return fetch(db, "SELECT outcome, error, body, query_string, headers::text AS headers "
                     "FROM webhook_events ORDER BY id")


# -- no valid token: a deliberate 401 (or 400/413), never a 500, nothing stored ----------------------

@pytest.mark.parametrize(("body", "headers"), [
    ('{"MessageID": ' + "1" * 4301 + "}", {}),  # int() refuses over 4,300 digits
    ("[" * 100_000, {}),  # recursion
    (json.dumps(RESULT), {"Authorization": "Basic \xc3\xa9"}),  # not base64, not ASCII
    ('{"APIKey": "\\ud800", "MessageID": "m"}', {}),  # a lone surrogate as the key
    (json.dumps({**RESULT, "APIKey": 12345678901234}), {}),
    (json.dumps({**RESULT, "APIKey": ["sample-token"]}), {}),
])
@pytest.mark.parametrize("path", ["/webhooks/bestsms", "/messages"])
def test_no_valid_token_is_401_in_json_and_stores_nothing(client, db, body, headers, path):
    response = post(client, body, headers, path)
    assert response.status_code == 401, response.data[:200]
    assert response.is_json and response.get_json()["error"] == "missing or wrong webhook token"
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 0}


# -- a valid token: a 400 with the reason, and the request kept as rejected (replayable) -------------

@pytest.mark.parametrize(("body", "error"), [
    ('{"MessageID": ' + "1" * 4301 + "}", "MessageID"),  # a JSON number: BestSMS sends text
    ("[" * 100_000, "JSON refused"),
    (json.dumps({**RESULT, "SendTimeUTC": "9999-12-31 23:59:59-01:00"}), "SendTimeUTC"),
    (json.dumps({**RESULT, "SentTimeUTC_RFC3339": "0001-01-01T00:00:00+00:01"}), "SentTimeUTC_RFC3339"),
    (json.dumps({**RESULT, "SentTimeLocal": "0001-01-01 00:00:00"}), "SentTimeLocal"),
    (json.dumps({**RESULT, "SendTimeUTC": "2025-W24-4 20:44:30"}), "SendTimeUTC"),  # an ISO week date
    (json.dumps({**RESULT, "Price": "-1"}), "Price"),
    (json.dumps({**RESULT, "Price": "1E+131071"}), "Price"),
    (json.dumps({**RESULT, "Price": "\u0663"}), "Price"),  # Arabic-Indic three
    (json.dumps({**RESULT, "Price": "\uff11\uff12"}), "Price"),  # full-width 12
    (json.dumps({**RESULT, "Price": 1e308}), "Price"),
    (json.dumps({**RESULT, "Destination": "-"}), "Destination"),
    (json.dumps({**RESULT, "Destination": "abc"}), "Destination"),
    (json.dumps({**RESULT, "Destination": "\U0001f600"}), "Destination"),
    (json.dumps({**RESULT, "Destination": "1" * 100}), "Destination"),
    (json.dumps({**RESULT, "Type": "Email", "Destination": "+61410010001"}), "Destination"),
])
def test_authenticated_but_unusable_is_400_and_kept_as_rejected(client, db, body, error):
    response = post(client, body, BEARER)
    assert response.status_code == 400, response.data[:300]
    assert error in response.get_json()["error"] or error in response.get_json().get("fields", {})
    [event] = events(db)
    assert event["outcome"] == "rejected" and event["body"]
    assert counts(db)["recipients"] == 0


def test_a_body_no_format_can_read_is_kept_with_its_bytes_escaped(client, db):
    response = post(client, b'{"MessageID": "\xff\xfe", "x": "\x00"', BEARER)  # not valid UTF-8, nor JSON
    assert response.status_code == 400 and "malformed JSON" in response.get_json()["error"]
    [event] = events(db)
    assert event["outcome"] == "rejected" and "\\xff\\xfe" in event["body"] and "\\x00" in event["body"]


def test_recipients_over_a_million_is_400_not_500(client, db):
    response = client.post("/messages", json={"MessageID": "big", "Recipients": 2147483648}, headers=BEARER)
    assert response.status_code == 400 and "Recipients" in response.get_json()["fields"]
    assert counts(db)["messages"] == 0


def test_an_unbelievable_sms_part_count_keeps_the_status(client, db):
    response = post(client, json.dumps({**RESULT, "Detail": "SMSParts:2147483648"}), BEARER)
    assert response.status_code == 200 and response.get_json()["status"] == "applied"
    [row] = fetch(db, "SELECT status, sms_parts, detail FROM recipients")
    assert row == {"status": "Success", "sms_parts": None, "detail": "SMSParts:2147483648"}
    [event] = events(db)
    assert event["outcome"] == "applied" and "not a believable SMS part count" in event["error"]


# -- no credential stored, whatever its spelling or encoding; nothing else damaged -------------------

@pytest.mark.parametrize(("content_type", "body", "query"), [
    ("application/x-www-form-urlencoded", "%41PIKey=sample-token&MessageID=enc-1&Destination=0410010001&Status=Success",
     ""),
    ("application/x-www-form-urlencoded", "MessageID=enc-1&Destination=0410010001&Status=Success",
     "%74oken=sample-token"),
    (None, "", "%74oken=sample-token&MessageID=enc-1&Destination=0410010001&Status=Success"),
    ("application/json", '{"\\u0041PIKey": "\\u0073ample-token", "MessageID": "enc-1", "Destination": "0410010001", '
                         '"Status": "Success"}', ""),
    ("application/xml", "<Webhook><APIKey >&#115;ample-token</APIKey ><MessageID>enc-1</MessageID>"
                        "<Destination>0410010001</Destination><Status>Success</Status></Webhook>", ""),
])
def test_a_token_in_any_encoding_is_never_stored(client, db, content_type, body, query):
    headers = {"Content-Type": content_type} if content_type else {}
    method = "GET" if not body else "POST"
    response = client.open("/webhooks/bestsms", method=method, data=body, query_string=query, headers=headers)
    assert response.status_code == 200, response.get_json()
    [event] = events(db)
    stored = json.dumps(event)
    assert "sample-token" not in stored and "ample-token" not in stored and "%73" not in stored, stored
    assert "enc-1" in stored  # the rest is kept


def test_credentials_are_removed_by_field_not_by_substring(client, db):
    """A Bearer token, and an APIKey of "0": the MessageID `fz-mangle-0001` is stored intact, and
    reprocessing the stored event gives the same outcome."""
    body = json.dumps({**RESULT, "MessageID": "fz-mangle-0001", "APIKey": "0"})
    assert post(client, body, BEARER).status_code == 200
    [event] = fetch(db, "SELECT * FROM webhook_events")
    assert "fz-mangle-0001" in event["body"] and '"0"' not in event["body"]
    assert reprocess_one(db, Parser(ZoneInfo("Australia/Sydney"), "AU"), event) != "rejected"


# -- every answer counted -----------------------------------------------------------------------------

def test_every_answer_is_counted_by_status(client, db):
    from prometheus_client import REGISTRY

    def count(status: str) -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "bestsms_webhooks"
                   for s in m.samples if s.name.endswith("_total") and s.labels["status"] == status)

    before = {s: count(s) for s in ("401", "413", "415", "400")}
    post(client, json.dumps(RESULT))
    post(client, b"x" * (1024 * 1024 + 1), BEARER)
    post(client, "a", {**BEARER, "Content-Type": "text/plain"})
    post(client, "{", BEARER)
    assert {s: count(s) - before[s] for s in before} == {"401": 1, "413": 1, "415": 1, "400": 1}


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nowhere").get_json()["error"]
    response = client.delete("/webhooks/bestsms")
    assert response.status_code == 405 and response.is_json and "GET" in response.headers["Allow"]


def _every_char(text: str, form: str) -> str:
    """`text` with every character escaped: `\\u0073...` (json) or `%73...` (percent)."""
    return "".join(f"\\u{ord(c):04x}" if form == "json" else f"%{ord(c):02X}" for c in text)


# label: (content type, body); each sent with the token in the Authorization header too.
UNREADABLE_WITH_TOKEN: dict[str, tuple[str, bytes]] = {
    "UTF-16 JSON": ("application/json", json.dumps({**RESULT, "APIKey": TOKEN}).encode("utf-16-le")),
    "one invalid byte, the key escaped": (
        "application/json",
        b'{"MessageID": "bad\xff", "APIKey": "' + _every_char(TOKEN, "json").encode() + b'", "Status": '),
    "text/plain, the key percent-encoded": ("text/plain", f"APIKey={_every_char(TOKEN, 'pct')}&MessageID=m".encode()),
    "text/plain, the key in UTF-16": ("text/plain", f"APIKey={TOKEN}&MessageID=m".encode("utf-16-le")),
    "octet-stream, the key plain": ("application/octet-stream", f"x\x00APIKey={TOKEN}".encode()),
}


@pytest.mark.parametrize("label", UNREADABLE_WITH_TOKEN)
def test_no_token_is_stored_whatever_the_bodys_encoding(client, db, label):
    content_type, body = UNREADABLE_WITH_TOKEN[label]
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": content_type, **BEARER})
    assert response.status_code in (200, 400, 415), response.get_json()
    [event] = fetch(db, "SELECT body, query_string, headers::text AS headers FROM webhook_events")
    stored = " ".join(text or "" for text in event.values()).lower()
    spellings = (TOKEN, _every_char(TOKEN, "json"), _every_char(TOKEN, "pct"), "\\x00".join(TOKEN),
                 "\x00".join(TOKEN), "\\u0000".join(TOKEN))
    assert not any(form.lower() in stored for form in spellings), stored


# label: (content type, body, status): BestSMS's credential in a body no format can read field by field.
CREDENTIAL_IN_AN_UNREADABLE_BODY: dict[str, tuple[str, bytes, int]] = {
    "malformed JSON": ("application/json", f'{{"APIKey": "{TOKEN}", "MessageID": "m1", "Status": '.encode(), 400),
    "malformed XML": ("application/xml", f"<W><APIKey>{TOKEN}</APIKey><MessageID>m1</W>".encode(), 400),
    "a form sent as text/plain": ("text/plain", f"APIKey={TOKEN}&MessageID=m1".encode(), 415),
}


@pytest.mark.parametrize("label", CREDENTIAL_IN_AN_UNREADABLE_BODY)
def test_a_credential_is_read_even_from_a_body_that_is_refused(client, db, label):
    """Only a body from which no credential can be read is a 401: this one is kept as rejected
    (to be reprocessed after a fix), its token not stored."""
    content_type, body, status = CREDENTIAL_IN_AN_UNREADABLE_BODY[label]
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.get_json()
    [event] = fetch(db, "SELECT outcome, body FROM webhook_events")
    assert event["outcome"] == "rejected" and "m1" in event["body"] and TOKEN not in event["body"]
