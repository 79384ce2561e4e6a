"""BestSMS's wire format: decoding, aliases, prices, times, redaction (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from marshmallow import ValidationError

from receiver.bestsms import Parser, PayloadError, decode, format_of, kind_of, redact

PARSER = Parser(ZoneInfo("Australia/Sydney"), "AU")
BASE = {"MessageID": "m-1", "Destination": "+61410010001", "Status": "Success"}


@pytest.mark.parametrize(("price", "expected"), [
    ("0.10", Decimal("0.10")), (0.1, Decimal("0.1")), (0, Decimal("0")), ("", None), (" ", None),
])
def test_price_as_string_number_or_empty(price, expected):
    _, event = PARSER.parse({**BASE, "Price": price})
    assert event["price"] == expected


@pytest.mark.parametrize("price", ["ten", "NaN", "Infinity", True, [1]])
def test_bad_price_is_a_validation_error(price):
    with pytest.raises(ValidationError) as exc:
        PARSER.parse({**BASE, "Price": price})
    assert "Price" in exc.value.messages


@pytest.mark.parametrize(("field", "value"), [
    ("SentTimeUTC_RFC3339", "2025-06-12T20:44:16.000Z"),
    ("SendTimeUTC", "2025-06-12 20:44:16"),
    ("SentTimeUTC", "2025-06-12 20:44:16"),
    ("SentTimeLocal", "2025-06-13 06:44:16"),  # AEST, UTC+10
])
def test_each_time_alias_gives_the_same_instant(field, value):
    _, event = PARSER.parse({**BASE, field: value})
    assert event["sent_at"] == datetime(2025, 6, 12, 20, 44, 16, tzinfo=UTC)


def test_utc_field_is_preferred_over_local():
    _, event = PARSER.parse({**BASE, "SentTimeLocal": "2030-01-01 00:00:00", "SendTimeUTC": "2025-06-12 20:44:16"})
    assert event["sent_at"].year == 2025


def test_empty_strings_become_null_and_job_num_alias():
    _, event = PARSER.parse({**BASE, "SubAccount": "", "Department": "  ", "JobNum": "10AB20CE", "ContactID": ""})
    assert (event["sub_account"], event["department"], event["contact_id"]) == (None, None, None)
    assert event["job_number"] == "10AB20CE"


@pytest.mark.parametrize(("fields", "kind"), [
    ({"Type": "SMSReply"}, "reply"), ({"Type": "SMSInbound"}, "reply"), ({"Status": "RECEIVED"}, "reply"),
    ({"Type": "SMS", "Status": "Success"}, "result"), ({}, "result"),
])
def test_kind_is_told_by_type_or_status(fields, kind):
    assert kind_of(fields) == kind


def test_status_is_case_insensitive_and_unknown_status_refused():
    assert PARSER.parse({**BASE, "Status": "FAILED"})[1]["status"] == "Failed"
    with pytest.raises(ValidationError) as exc:
        PARSER.parse({**BASE, "Status": "Delivered"})
    assert "Status" in exc.value.messages


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
