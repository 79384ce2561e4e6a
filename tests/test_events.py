"""Webhook fields to events: aliases, prices, times, statuses, kinds (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from receiver.bestsms.events import Parser, kind_of
from receiver.errors import Refused

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
    with pytest.raises(Refused) as exc:
        PARSER.parse({**BASE, "Price": price})
    assert "Price" in exc.value.fields


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
    with pytest.raises(Refused) as exc:
        PARSER.parse({**BASE, "Status": "Delivered"})
    assert "Status" in exc.value.fields
