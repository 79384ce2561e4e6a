"""Generated input: the decoders and the webhook endpoint answer anything deliberately.

- decode(): a Payload or a Refused, never another exception; no credential in what is stored.
- the endpoint: a status from the documented list, always JSON, never a 500; an authenticated
  request that is not applied is kept as exactly one `rejected` event.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.bestsms.decode import decode
from tests.support import TOKEN, fetch

FIELDS = ["MessageID", "DestSeq", "Destination", "Type", "Status", "Result", "Price", "Detail", "SubAccount",
          "Department", "JobNumber", "JobNum", "ContactID", "ReceivedID", "Message", "SentTimeUTC_RFC3339",
          "SendTimeUTC", "SentTimeUTC", "SentTimeLocal", "APIKey", "apikey", "token", "Recipients"]
VALUES = st.one_of(
    st.text(max_size=30), st.sampled_from(["Success", "Failed", "Pending", "RECEIVED", "SMSReply", "SMSInbound",
                                           "Email", "0410010001", "+61410010001", "2025-06-12 20:44:30",
                                           "2025-06-12T20:44:30.000Z", "SMSParts:2", "0.10", TOKEN, ""]),
    st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
WEBHOOKS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), VALUES, max_size=12)
CONTENT_TYPES = st.sampled_from(["application/json", "application/xml", "text/xml",
                                 "application/x-www-form-urlencoded", "text/plain", "", "application/json; x=\x01",
                                 "multipart/form-data; boundary=x"])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DOCUMENTED = {200, 400, 401, 413, 415, 503}


def encode(fields: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(fields).encode()
    if fmt == "xml":
        safe = {k: v for k, v in fields.items() if k and k[0] in string.ascii_letters and k.isalnum()}
        return ("<Webhook>" + "".join(f"<{k}>{v}</{k}>" for k, v in safe.items()) + "</Webhook>").encode(
            "utf-8", "surrogatepass")
    return urlencode({k: str(v) for k, v in fields.items()}).encode("utf-8", "surrogatepass")


@FUZZ
@given(fmt=st.sampled_from(["json", "xml", "form", "query"]), body=st.binary(max_size=300) | WEBHOOKS.map(json.dumps)
       .map(str.encode), query=st.text(max_size=50))
def test_decode_answers_anything_with_a_payload(fmt, body, query):
    content_type = {"json": "application/json", "xml": "application/xml", "form": "application/x-www-form-urlencoded"}
    payload = decode("GET" if fmt == "query" else "POST", content_type.get(fmt), body, query)
    if payload.refused is not None:
        assert payload.refused.status in (400, 415) and not payload.fields
    if TOKEN in payload.credentials and TOKEN not in json.dumps(payload.fields, ensure_ascii=False):
        assert TOKEN not in (payload.stored_body or "")
    assert not any(k.strip().lower() in ("apikey", "token") for k in payload.fields if isinstance(k, str))


def events(db: Any) -> list[dict[str, Any]]:
    return fetch(db, "SELECT outcome FROM webhook_events")


@FUZZ
@given(fields=WEBHOOKS, fmt=st.sampled_from(["json", "xml", "form", "query"]), bearer=st.booleans())
def test_the_endpoint_answers_generated_webhooks_deliberately(client, db, fields, fmt, bearer):
    before = len(events(db))
    headers = {"Authorization": f"Bearer {TOKEN}"} if bearer else {}
    body = encode(fields, fmt)
    if fmt == "query":
        response = client.get("/webhooks/bestsms", query_string=body.decode("utf-8", "replace"), headers=headers)
    else:
        content_type = {"json": "application/json", "xml": "application/xml",
                        "form": "application/x-www-form-urlencoded"}
        response = client.post("/webhooks/bestsms", data=body, headers={**headers, "Content-Type": content_type[fmt]})
    check(response, db, before, authenticated=bearer)


@FUZZ
@given(body=st.binary(max_size=500), content_type=CONTENT_TYPES, method=st.sampled_from(["GET", "POST"]),
       authorization=st.sampled_from(["", f"Bearer {TOKEN}", "Basic \xc3\xa9", "Bearer", "Basic !!!", "Digest x"]),
       query=st.text(max_size=40))
def test_the_endpoint_answers_any_bytes_and_headers_deliberately(client, db, body, content_type, method,
                                                                 authorization, query):
    before = len(events(db))
    headers = {"Content-Type": content_type} if content_type else {}
    if authorization:
        headers["Authorization"] = authorization
    response = client.open("/webhooks/bestsms", method=method, data=body, headers=headers,
                           query_string=query.encode("utf-8", "surrogatepass").decode("latin-1"))
    check(response, db, before, authenticated=authorization == f"Bearer {TOKEN}")


def check(response: Any, db: Any, before: int, *, authenticated: bool) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.data[:300])
    assert response.is_json, response.data[:300]
    added = events(db)[before:]
    if response.status_code == 200:
        assert len(added) == 1 and added[0]["outcome"] != "rejected"
    elif response.status_code in (400, 415):
        assert authenticated or len(added) == 1
        assert [e["outcome"] for e in added] == ["rejected"]
    elif response.status_code == 401:
        assert not authenticated and added == []


@pytest.mark.parametrize("path", ["/messages"])
@FUZZ
@given(body=st.binary(max_size=200) | WEBHOOKS.map(json.dumps).map(str.encode))
def test_post_messages_answers_anything_deliberately(client, db, path, body):
    response = client.post(path, data=body, headers={"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in {200, 201, 400, 413, 503}, (response.status_code, response.data[:300])
    assert response.is_json


# Any text at all: every code point, lone surrogates (half an emoji) and NUL included.
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=1, max_size=120)


def _expected(text: str, fmt: str) -> str:
    """What a reply's text is stored as: a surrogate pair is its character, a lone surrogate or
    a NUL is U+FFFD, and so is, in XML, a character XML forbids (control characters, U+FFFE/F)."""
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").replace("\x00", "\ufffd")
    if fmt == "xml":
        joined = re.sub("[\x01-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "\ufffd", joined)
    return joined


@FUZZ
@given(text=ANY_TEXT, fmt=st.sampled_from(["json", "xml", "form"]))
def test_an_authentic_reply_is_stored_whatever_its_text(client, db, text, fmt):
    """Authenticated as BestSMS does it (APIKey in the body), a reply is never refused for its
    text: stored, with what no table can hold as U+FFFD."""
    db.execute("TRUNCATE replies, webhook_events, messages CASCADE")
    reply = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": "fuzz-reply", "Destination": "+61410010001"}
    if fmt == "json":
        body, content_type = json.dumps({**reply, "Message": text}).encode(), "application/json"
    elif fmt == "xml":  # every character as a reference: &#0; and &#xD83D; included
        refs = "".join(f"&#x{ord(c):X};" for c in text)
        body = ("<Webhook>" + "".join(f"<{k}>{v}</{k}>" for k, v in reply.items()) +
                f"<Message>{refs}</Message></Webhook>").encode()
        content_type = "application/xml"
    else:
        body = (urlencode(reply) + "&Message=" + quote_plus(text.encode("utf-8", "surrogatepass"))).encode()
        content_type = "application/x-www-form-urlencoded"
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, (response.status_code, response.get_json())
    [row] = fetch(db, "SELECT message_text FROM replies")
    if fmt != "form":  # a form's bytes that are not UTF-8 are U+FFFD, one or more each
        assert row["message_text"] == _expected(text, fmt)
    assert not set(row["message_text"]) & {"\x00"} and all(not 0xD800 <= ord(c) <= 0xDFFF for c in row["message_text"])
