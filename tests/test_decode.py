"""The four callback encodings decoded to one field dictionary, and redaction (no database needed)."""

from __future__ import annotations

import pytest

from receiver.bestsms.decode import decode, format_of, query, redact
from receiver.errors import Refused


@pytest.mark.parametrize(("method", "content_type", "body", "fmt"), [
    ("GET", None, b"", "query"), ("POST", "application/json; charset=utf-8", b"{}", "json"),
    ("POST", "text/xml", b"<a/>", "xml"), ("POST", "application/x-www-form-urlencoded", b"a=1", "form"),
    ("POST", None, b"", "query"),
])
def test_format_of(method, content_type, body, fmt):
    assert format_of(method, content_type, body) == fmt


def test_form_and_query_take_first_of_repeated_fields_and_drop_token():
    payload = decode("query", b"", "MessageID=a&MessageID=b&token=secret")
    assert payload.fields == {"MessageID": "a"}


def test_xml_any_root_element_name():
    payload = decode("xml", b"<Anything><MessageID>m</MessageID><Price/></Anything>", "")
    assert payload.fields == {"MessageID": "m", "Price": ""}


def test_xml_external_entity_refused():
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><W><M>&e;</M></W>'
    with pytest.raises(Refused) as exc:
        decode("xml", body, "")
    assert exc.value.status == 400


@pytest.mark.parametrize(("fmt", "body"), [
    ("json", '{"APIKey": "s3cr3t-token", "MessageID": "m"}'),
    ("json", '{"\\u0041PIKey": "\\u0073\\u0033cr3t-token", "MessageID": "m"}'),
    ("xml", "<W><APIKey>s3cr3t-token</APIKey><MessageID>m</MessageID></W>"),
    ("xml", "<W><APIKey >&#115;3cr3t-token</APIKey ><MessageID>m</MessageID></W>"),
    ("form", "APIKey=s3cr3t-token&MessageID=m"),
    ("form", "%41PIKey=s3cr3t-token&MessageID=m"),
    ("form", "MessageID=m&apikey=%73%33cr3t-token"),
    ("form", "%74oken=s3cr3t-token&MessageID=m"),
])
def test_credentials_are_taken_out_by_field_whatever_their_spelling(fmt, body):
    payload = decode(fmt, body.encode(), "")
    assert payload.credentials == ("s3cr3t-token",)
    assert payload.fields == {"MessageID": "m"}
    assert "s3cr3t" not in (payload.stored_body or "")
    # ... and what is stored decodes to the same fields: reprocessing needs nothing more.
    assert decode(fmt, (payload.stored_body or "").encode(), "").fields == {"MessageID": "m"}


def test_a_body_without_credentials_is_stored_exactly_as_sent():
    body = '{"MessageID": "fz-mangle-0001",   "Destination": "0"}'
    assert decode("json", body.encode(), "").stored_body == body


@pytest.mark.parametrize(("raw", "stored", "credentials"), [
    ("token=abc&x=1", "x=1", ("abc",)), ("%41PIKey=abc", "", ("abc",)), ("x=%20&y", "x=%20&y", ()),
])
def test_query_strings_lose_their_credentials(raw, stored, credentials):
    assert query(raw) == (stored, credentials)


def test_redact_removes_known_secrets_in_any_encoding():
    assert redact("x=a%2Bb%2Fc&y=a+b/c", ("a+b/c",)) == "x=[REDACTED]&y=[REDACTED]"
