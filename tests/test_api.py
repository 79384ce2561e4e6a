"""BestSMS's poll API: its answers parsed into the same events as webhooks, its errors, its rate
limiter (no database; the client against a real server is in test_poller.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from receiver.bestsms.api import (
    Malformed,
    NotFound,
    PollFailure,
    PollParser,
    RateLimiter,
    Stopped,
    Unauthorized,
    check_result,
    error_text,
)
from receiver.bestsms.events import REPLY_FIELDS, RESULT_FIELDS

PARSER = PollParser(ZoneInfo("Australia/Sydney"), "AU")

STATUS = {
    "Result": "Success", "MessageID": "m-1", "Status": "Completed", "JobNum": "10AB20CE",
    "SubAccount": "Clinic-North", "Department": "", "Created": "2025-06-13T06:44:16",
    "CreatedUTC": "2025-06-12T20:44:16", "Timezone": "W. Australia", "Count": 2, "Complete": 2,
    "Success": 1, "Failed": 1, "Price": 0.2, "TotalRecords": 2, "RecordsPerPage": 100, "PageCount": 1, "Page": 1,
    "Recipients": [
        {"Type": "Text", "DestSeq": "00000001", "Destination": "0410 010 001", "Status": "Success",
         "Result": "delivered", "SentDate": "2025-06-13T04:44:30", "Price": 0.1,
         "SMSReplies": [{"ReceivedID": "r-1", "From": "0410 010 001", "MessageText": " Yes ",
                         "ReceivedTimeUTC": "2025-06-12T21:00:00"}]},
        {"Type": "Email", "DestSeq": "00000002", "Destination": "alice.smith@example.com", "Status": "FAILED",
         "Result": "bounced", "SentDateUTC": "2025-06-12T20:44:31", "Price": ""},
    ],
}


def test_a_status_page_gives_complete_result_and_reply_events():
    page = PARSER.status_page(STATUS)
    first, second = page["recipients"]
    assert set(first) == set(RESULT_FIELDS)  # every key of the event, none set by hand
    assert first == {
        "message_id": "m-1", "dest_seq": "00000001", "destination": "+61410010001", "type": "SMS",
        "status": "Success", "result": "delivered",
        "sent_at": datetime(2025, 6, 12, 20, 44, 30, tzinfo=UTC),  # 04:44:30 in Perth (UTC+8)
        "price": Decimal("0.1"), "sms_parts": None, "sub_account": "Clinic-North", "department": None,
        "job_number": "10AB20CE", "contact_id": None, "detail": None,
    }
    # An email recipient keeps its address, dots and all (polls used to strip them as phone numbers).
    assert (second["type"], second["destination"], second["status"]) == ("Email", "alice.smith@example.com", "Failed")
    assert second["price"] is None
    [reply] = page["replies"]
    assert set(reply) == set(REPLY_FIELDS)
    assert reply == {
        "received_id": "r-1", "message_id": "m-1", "type": "SMSReply", "from_number": "+61410010001",
        "message_text": " Yes ", "received_at": datetime(2025, 6, 12, 21, 0, tzinfo=UTC),
        "sub_account": "Clinic-North", "department": None, "job_number": "10AB20CE", "contact_id": None,
        "detail": None, "price": None, "dest_seq": "00000001",  # the recipient it is listed under
    }
    assert page["created_at"] == datetime(2025, 6, 12, 20, 44, 16, tzinfo=UTC)
    assert (page["job_status"], page["count"], page["price"], page["page_count"]) == ("Completed", 2, Decimal("0.2"), 1)


def test_a_received_page_gives_inbound_and_matched_replies_in_their_own_time_zone():
    page = PARSER.received_page({"Result": "Success", "PageCount": 0, "Messages": [
        {"ReceivedID": "in-1", "From": "+61499000001", "MessageText": "STOP",
         "ReceivedTimeLocal": "2025-06-13T07:00:00", "Timezone": "New Zealand"},
        {"ReceivedID": "in-2", "From": "+61499000002", "MessageID": "m-9", "ContactID": "c-7",
         "ReceivedTimeUTC_RFC3339": "2025-06-12T21:00:00.000Z"},
    ]})
    inbound, matched = page["replies"]
    assert (inbound["type"], inbound["message_id"]) == ("SMSInbound", None)
    assert inbound["received_at"] == datetime(2025, 6, 12, 19, 0, tzinfo=UTC)  # NZST, UTC+12
    assert (matched["type"], matched["message_id"], matched["contact_id"]) == ("SMSReply", "m-9", "c-7")
    assert page["page_count"] == 1


@pytest.mark.parametrize(("answer", "error"), [
    ({"Result": "Failed", "ErrorMessage": ["Message(s) NOT found"]}, NotFound),
    ({"Result": "Failed", "ErrorMessage": "Unauthorized token"}, Unauthorized),
    ({"Result": "Failed", "ErrorMessage": ["Invalid page", "Try again"]}, PollFailure),
    (["not", "an", "object"], Malformed),
])
def test_failed_answers_are_sorted_into_errors(answer, error):
    with pytest.raises(error) as exc:
        check_result(answer)
    assert type(exc.value) is error


def test_error_text_joins_the_messages():
    assert error_text({"ErrorMessage": ["a", "b"]}) == "a; b"
    assert error_text({"ErrorMessage": "c"}) == "c"
    assert error_text({}) is None and error_text("x") is None


@pytest.mark.parametrize("recipient", [
    {"DestSeq": "1", "Destination": "+61410010001", "Status": "Delivered"},  # unknown status
    {"Destination": "+61410010001", "Status": "Success"},  # no DestSeq
    {"DestSeq": "1", "Destination": "+61410010001", "Status": "Success", "Price": "ten"},
    {"DestSeq": "1", "Destination": "+61410010001", "Status": "Success", "SentDateUTC": "yesterday"},
])
def test_a_page_with_an_invalid_recipient_is_malformed_as_a_whole(recipient):
    with pytest.raises(Malformed) as exc:
        PARSER.status_page({**STATUS, "Recipients": [STATUS["Recipients"][0], recipient]})
    assert str(exc.value).startswith("invalid poll answer: ")


def test_the_rate_limiter_spaces_request_starts():
    limiter = RateLimiter(50, threading.Event())
    started = time.monotonic()
    for _ in range(11):
        limiter.wait()
    assert time.monotonic() - started >= 10 / 50 * 0.99  # a lower bound: load only slows it


def test_the_rate_limiter_wakes_up_on_stop():
    stop = threading.Event()
    limiter = RateLimiter(0.01, stop)  # one request per 100 s
    limiter.wait()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        limiter.wait()
    assert time.monotonic() - started < 50
