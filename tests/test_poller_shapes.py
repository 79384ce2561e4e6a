"""The poller against the shapes the vendor itself publishes: the v2.04 SDK's answer classes
(tnzgroup/tnzapi-python, tnzapi/api/v204/reports/dtos/) and the v3 OpenAPI description's
spellings, served by the fake BestSMS; and the rules that make a poll finish its work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support import counts, fetch, post_flask
from tests.test_poller import message, run_once, track

# A reply as the v2.04 SDK's SMSReplyRecipientReplyDTO has it: no ReceivedID, Date/DateUTC.
SDK_REPLY = {"Date": "2025-06-13 07:00:00", "DateUTC": "2025-06-12 21:00:00", "From": "+61400000000",
             "MessageText": "Yes please", "Timezone": "AUS Eastern"}


def replies(db):
    return fetch(db, "SELECT received_id, message_id, dest_seq, from_number, message_text, received_at, source "
                     "FROM replies ORDER BY received_id")


def test_a_reply_without_an_id_is_stored_once_and_once_only_with_its_webhook(db, client, fake, poll_settings,
                                                                              samples):
    fake.add_message("sdk-1", 1)["Recipients"][0]["SMSReplies"] = [SDK_REPLY]
    track(db, "sdk-1")
    assert run_once(poll_settings) == {"polled": 1}
    [row] = replies(db)
    assert row["received_id"].startswith("poll:") and row["dest_seq"] == "00000001"
    assert (row["message_text"], row["received_at"]) == ("Yes please", datetime(2025, 6, 12, 21, tzinfo=UTC))

    # Polled again: the same key, no second row.
    db.execute("UPDATE messages SET poll_state = 'active', replies_due = true, next_poll_at = NULL, "
               "last_polled_at = NULL")
    run_once(poll_settings)
    assert len(replies(db)) == 1

    # Its webhook arrives, with the id: the row takes the id, and there is still one row.
    webhook = dict(samples["reply-matched"]["fields"], ReceivedID="real-id-1", MessageID="sdk-1",
                   Destination="+61400000000", Message="Yes please", SentTimeUTC_RFC3339="2025-06-12T21:00:02.000Z")
    assert post_flask(client, webhook).get_json()["status"] in ("applied", "duplicate")
    assert [r["received_id"] for r in replies(db)] == ["real-id-1"]


def test_a_keyless_reply_polled_after_its_webhook_is_the_same_row(db, client, fake, poll_settings, samples):
    webhook = dict(samples["reply-matched"]["fields"], ReceivedID="real-id-2", MessageID="sdk-2",
                   Destination="+61400000000", Message="Yes please", SentTimeUTC_RFC3339="2025-06-12T21:00:00.000Z")
    assert post_flask(client, webhook).status_code == 200
    fake.add_message("sdk-2", 1)["Recipients"][0]["SMSReplies"] = [SDK_REPLY]
    track(db, "sdk-2")
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour'")
    assert run_once(poll_settings) == {"polled": 1}
    [row] = replies(db)
    assert (row["received_id"], row["source"], row["dest_seq"]) == ("real-id-2", "webhook", "00000001")


def test_inbound_messages_in_the_sdk_shape_are_stored(db, fake, poll_settings):
    """SMSMessageInDTO: ID, Account, Date/DateUTC; and one with no id at all."""
    fake.received = [
        {"ID": "in-1", "Account": "100001", "SubAccount": "", "Department": "", "Date": "2025-06-13 07:00:00",
         "DateUTC": "2025-06-12 21:00:00", "From": "+61499000111", "MessageText": "STOP", "Timezone": "AUS Eastern"},
        {"Date": "2025-06-13 07:05:00", "From": "0499 000 222", "MessageText": "hello", "Timezone": "New Zealand"},
    ]
    run_once(poll_settings, received_sweep_seconds=0)
    rows = replies(db)
    assert [(r["received_id"][:5], r["from_number"], r["message_text"]) for r in rows] == [
        ("in-1", "+61499000111", "STOP"), ("poll:", "+61499000222", "hello")]
    assert rows[1]["received_at"] == datetime(2025, 6, 12, 19, 5, tzinfo=UTC)  # New Zealand: UTC+12 in June
    run_once(poll_settings, received_sweep_seconds=0)
    assert len(replies(db)) == 2  # the next sweep finds the same two


def test_v3_spellings_and_a_replys_recipient_are_kept(db, fake, poll_settings):
    msg = fake.add_message("v3-1", 2)
    msg["Head"] = {"Status": None, "JobStatus": "Completed"}
    msg["Recipients"][0]["ContactID"] = "contact-7"
    # Listed under recipient 00000001, from another number (a shared phone, a forwarded message).
    msg["Recipients"][0]["SMSReplies"] = [{"ReceivedID": "v3-r", "From": "+61499999999", "MessageText": "ok",
                                           "ReceivedTimeUTC_RFC3339": "2025-06-12T21:00:00.000Z"}]
    track(db, "v3-1")
    run_once(poll_settings)
    assert message(db, "v3-1")["job_status"] == "Completed"
    contact = fetch(db, "SELECT dest_seq, contact_id FROM recipients ORDER BY dest_seq")
    assert [r["contact_id"] for r in contact] == ["contact-7", None]
    [reply] = replies(db)
    assert (reply["received_id"], reply["dest_seq"]) == ("v3-r", "00000001")


def test_a_windows_time_zone_beyond_the_facts_sheet_is_placed_and_an_unknown_one_is_an_error(db, fake,
                                                                                              poll_settings):
    for message_id, zone in (("tz-1", "Central Pacific"), ("tz-2", "Mars Standard")):
        msg = fake.add_message(message_id, 1)
        msg["Head"] = {"Timezone": zone}
        recipient = msg["Recipients"][0]
        del recipient["SentDateUTC"]  # local times only
        recipient["SentDate"] = "2025-06-13T06:44:30"
        track(db, message_id)
    assert run_once(poll_settings) == {"polled": 1, "error": 1}
    [sent] = fetch(db, "SELECT sent_at FROM recipients WHERE message_id = 'tz-1'")
    assert sent["sent_at"] == datetime(2025, 6, 12, 19, 44, 30, tzinfo=UTC)  # Guadalcanal: UTC+11
    failed = message(db, "tz-2")
    assert "Mars Standard" in failed["last_poll_error"] and failed["poll_state"] == "active"
    assert fetch(db, "SELECT count(*) AS n FROM recipients WHERE message_id = 'tz-2'") == [{"n": 0}]


def test_an_answer_about_another_message_is_applied_to_neither(db, fake, poll_settings):
    fake.add_message("asked", 1)["Head"] = {"MessageID": "someone-else"}
    track(db, "asked")
    assert run_once(poll_settings) == {"error": 1}
    assert "someone-else" in message(db, "asked")["last_poll_error"]
    assert counts(db)["recipients"] == 0 and counts(db)["messages"] == 1


def test_no_recipients_yet_never_lowers_a_registered_count_nor_completes(db, client, fake, poll_settings):
    assert client.post("/messages", json={"MessageID": "count-0", "Recipients": 3},
                       headers={"Authorization": "Bearer sample-token"}).status_code == 201
    fake.add_message("count-0", 0)["Head"] = {"Count": 0}
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour'")
    run_once(poll_settings)
    m = message(db, "count-0")
    assert (m["recipient_count"], m["poll_state"]) == (3, "active")


def test_a_failed_reply_fetch_keeps_the_message_due_until_its_replies_are_in(db, fake, poll_settings):
    fake.add_message("rp-1", 1, replies=1)
    track(db, "rp-1")
    fake.fail("rp-1", "pass", 500)  # the status page answers, the reply page does not
    assert run_once(poll_settings) == {"retry": 1}
    m = message(db, "rp-1")
    assert (m["poll_state"], m["replies_due"], counts(db)["replies"]) == ("active", True, 0)
    db.execute("UPDATE messages SET next_poll_at = now() - interval '1 second'")
    assert run_once(poll_settings) == {"polled": 1}
    m = message(db, "rp-1")
    assert (m["poll_state"], m["replies_due"], counts(db)["replies"]) == ("complete", False, 1)


def test_a_scheduled_message_is_not_polled_before_its_send_time_nor_given_up_before_it(db, client, fake,
                                                                                        poll_settings):
    send_at = datetime.now(UTC) + timedelta(hours=2)
    response = client.post("/messages", json={"MessageID": "later-1", "SendTime": send_at.isoformat()},
                           headers={"Authorization": "Bearer sample-token"})
    assert response.status_code == 201
    assert abs(message(db, "later-1")["delayed_at"] - send_at) < timedelta(seconds=1)
    fake.add_message("later-1", 1)
    db.execute("UPDATE messages SET first_seen_at = now() - interval '7 hours'")  # past POLL_GIVE_UP_SECONDS
    assert run_once(poll_settings) == {} and not fake.paths("/get/status/")
    assert message(db, "later-1")["poll_state"] == "active"

    db.execute("UPDATE messages SET delayed_at = now() - interval '1 minute'")  # it has been sent
    assert run_once(poll_settings) == {"polled": 1}
    assert message(db, "later-1")["poll_state"] == "complete"


def test_the_senders_references_are_kept_and_never_blanked(db, client, fake, poll_settings):
    """The vendor's example: Reference per message; RemoteID, Attention, Company, Custom1-9 and
    ContactID per recipient. A later poll without them leaves them."""
    msg = fake.add_message("refs-1", 2)
    msg["Head"] = {"Reference": "MyTest"}
    msg["Recipients"][0].update({"RemoteID": "+6495006000", "Attention": "John Doe", "Company": "Example Ltd",
                                 "Custom1": "Appointment 4:00pm Friday", "Custom9": "ward 7", "ContactID": "c-1"})
    track(db, "refs-1")
    assert run_once(poll_settings) == {"polled": 1}
    assert message(db, "refs-1")["reference"] == "MyTest"
    rows = fetch(db, "SELECT dest_seq, remote_id, attention, company, custom1, custom2, custom9, contact_id "
                     "FROM recipients ORDER BY dest_seq")
    assert rows == [
        {"dest_seq": "00000001", "remote_id": "+6495006000", "attention": "John Doe", "company": "Example Ltd",
         "custom1": "Appointment 4:00pm Friday", "custom2": None, "custom9": "ward 7", "contact_id": "c-1"},
        {"dest_seq": "00000002", "remote_id": None, "attention": None, "company": None, "custom1": None,
         "custom2": None, "custom9": None, "contact_id": None},
    ]
    # BestSMS's next answer leaves them out (empty strings, as its SDK sends them): nothing is blanked.
    msg["Head"] = {"Reference": ""}
    msg["Recipients"][0].update({"RemoteID": "", "Attention": "", "Company": "", "Custom1": "", "Custom9": "",
                                 "ContactID": ""})
    db.execute("UPDATE messages SET poll_state = 'active', next_poll_at = NULL, last_polled_at = NULL")
    run_once(poll_settings)
    assert message(db, "refs-1")["reference"] == "MyTest"
    assert fetch(db, "SELECT remote_id, custom1, contact_id FROM recipients WHERE dest_seq = '00000001'") == \
        [{"remote_id": "+6495006000", "custom1": "Appointment 4:00pm Friday", "contact_id": "c-1"}]
    # ... and the reminder for reference MyTest is found from the views.
    assert fetch(db, "SELECT message_id FROM message_status WHERE reference = 'MyTest'") == [{"message_id": "refs-1"}]
