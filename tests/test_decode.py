"""The four callback encodings decoded to one field dictionary, and redaction (no database needed)."""

from __future__ import annotations

import pytest

from receiver.bestsms.decode import PayloadError, decode, format_of, redact


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
    with pytest.raises(PayloadError) as exc:
        decode("xml", body, "")
    assert exc.value.status == 400


@pytest.mark.parametrize("text", [
    '{"APIKey": "s3cr3t", "MessageID": "m"}', "<W><APIKey>s3cr3t</APIKey></W>", "APIKey=s3cr3t&MessageID=m",
    "MessageID=m&apikey=s3cr3t", "token=s3cr3t",
])
def test_redact_removes_the_api_key_in_every_format(text):
    assert "s3cr3t" not in redact(text)


def test_redact_removes_known_secrets_in_any_encoding():
    assert redact("x=a%2Bb%2Fc&y=a+b/c", ("a+b/c",)) == "x=[REDACTED]&y=[REDACTED]"
