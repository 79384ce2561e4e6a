"""The webhook endpoint through Flask's client and the real database: formats, samples, merge, auth."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from receiver.web import services
from tests.support import FORMATS, TOKEN, assert_row_matches, counts, fetch, post_flask, snapshot

RESULT_SAMPLES = ["result-delivered", "result-failed-number-price", "result-local-format-number",
                  "result-pending", "result-with-destseq"]


def result(samples: dict[str, Any], name: str = "result-delivered", **changes: Any) -> dict[str, Any]:
    fields = copy.deepcopy(samples[name]["fields"])
    fields.update(changes)
    return fields


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", RESULT_SAMPLES)
def test_result_sample_stores_expected_row(client, db, samples, name, fmt):
    response = post_flask(client, samples[name]["fields"], fmt)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "applied"
    rows = fetch(db, "SELECT * FROM recipients")
    assert len(rows) == 1
    assert_row_matches(rows[0], samples[name]["expect"]["recipients"], f"{name}/{fmt}: ")
    event = fetch(db, "SELECT * FROM webhook_events")[0]
    assert (event["format"], event["kind"], event["outcome"]) == (fmt, "result", "applied")


@pytest.mark.parametrize("fmt", FORMATS)
def test_reply_samples_store_expected_rows_linked_to_recipient(client, db, samples, fmt):
    assert post_flask(client, samples["result-delivered"]["fields"], fmt).status_code == 200
    for name in ("reply-matched", "reply-unmatched"):
        response = post_flask(client, samples[name]["fields"], fmt)
        assert response.status_code == 200, response.get_json()
        expected = samples[name]["expect"]["replies"]
        [row] = fetch(db, "SELECT * FROM replies WHERE received_id = %s", expected["received_id"])
        assert_row_matches(row, expected, f"{name}/{fmt}: ")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["bad-messageid-too-long", "bad-missing-messageid"])
def test_bad_samples_are_rejected_and_kept(client, db, samples, name, fmt):
    response = post_flask(client, samples[name]["fields"], fmt)
    assert response.status_code == samples[name]["expect"]["status"] == 400
    body = response.get_json()
    assert "MessageID" in body["fields"] and "MessageID" in body["error"]
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}
    [event] = fetch(db, "SELECT outcome, error FROM webhook_events")
    assert event["outcome"] == "rejected" and "MessageID" in event["error"]


def test_same_fields_in_every_format_give_one_row(client, db, samples):
    outcomes = [post_flask(client, samples["result-delivered"]["fields"], fmt).get_json()["status"]
                for fmt in FORMATS]
    assert outcomes == ["applied", "duplicate", "duplicate", "duplicate"]
    assert counts(db)["recipients"] == 1


def test_exact_duplicate_changes_nothing(client, db, samples):
    post_flask(client, samples["result-delivered"]["fields"])
    before = fetch(db, "SELECT * FROM recipients")
    response = post_flask(client, samples["result-delivered"]["fields"], "xml")
    assert response.get_json()["status"] == "duplicate"
    assert fetch(db, "SELECT * FROM recipients") == before  # updated_at included


def test_pending_never_overwrites_final(client, db, samples):
    post_flask(client, result(samples))
    late_pending = result(samples, Status="Pending", Result="Submitted",
                          SentTimeUTC_RFC3339="2025-06-12T21:00:00Z")
    assert post_flask(client, late_pending).get_json()["status"] == "stale"
    [row] = fetch(db, "SELECT status, result FROM recipients")
    assert (row["status"], row["result"]) == ("Success", "delivered")


def test_final_after_pending_is_applied(client, db, samples):
    post_flask(client, result(samples, "result-pending", MessageID="m-1"))
    final = result(samples, "result-pending", MessageID="m-1", Status="Success", Result="delivered", Price="0.10")
    assert post_flask(client, final).get_json()["status"] == "applied"
    [row] = fetch(db, "SELECT status, result, price FROM recipients")
    assert (row["status"], row["result"], str(row["price"])) == ("Success", "delivered", "0.10")


def test_later_final_wins_between_two_finals_whatever_the_order(client, db, samples):
    early_fail = result(samples, Status="Failed", Result="Expired", SentTimeUTC_RFC3339="2025-06-12T20:00:00Z")
    late_success = result(samples, SentTimeUTC_RFC3339="2025-06-12T22:00:00Z")
    assert post_flask(client, late_success).get_json()["status"] == "applied"
    assert post_flask(client, early_fail).get_json()["status"] == "stale"
    [row] = fetch(db, "SELECT status, sent_at FROM recipients")
    assert row["status"] == "Success" and row["sent_at"].hour == 22


def test_result_for_unknown_message_creates_message(client, db, samples):
    post_flask(client, samples["result-delivered"]["fields"])
    [message] = fetch(db, "SELECT * FROM messages")
    assert message["message_id"] == samples["result-delivered"]["fields"]["MessageID"]
    assert (message["sub_account"], message["department"], message["job_number"]) == \
        ("Clinic-North", "Reminders", "10AB20CE")


def test_destseq_less_result_then_destseq_result_is_one_row(client, db, samples):
    post_flask(client, result(samples, Status="Pending", Result="Submitted"))
    post_flask(client, result(samples, DestSeq="00000003", Destination="0410 010 001"))
    rows = fetch(db, "SELECT dest_seq, destination, status FROM recipients")
    assert rows == [{"dest_seq": "00000003", "destination": "+61410010001", "status": "Success"}]
    # and a later DestSeq-less webhook for the same number still lands on that row
    post_flask(client, result(samples, Status="Pending", Result="Submitted"))
    assert counts(db)["recipients"] == 1


def test_reply_before_result_is_linked_once_the_recipient_is_known(client, db, samples):
    post_flask(client, samples["reply-matched"]["fields"])
    post_flask(client, result(samples, DestSeq="00000001"))
    [reply] = fetch(db, "SELECT message_id, dest_seq FROM replies")
    assert reply == {"message_id": samples["reply-matched"]["fields"]["MessageID"], "dest_seq": "00000001"}


def test_reply_text_is_stored_exactly(client, db, samples):
    text = "  Ça va? 👍🏽 \"quoted\" 'single' <b>&amp; -- ; DROP TABLE replies; "
    text += "x" * (1000 - len(text))
    fields = dict(samples["reply-unmatched"]["fields"], Message=text)
    for fmt in FORMATS:
        assert post_flask(client, fields, fmt).status_code == 200
    [row] = fetch(db, "SELECT message_text FROM replies")
    assert row["message_text"] == text and len(text) == 1000


def test_sql_metacharacters_are_stored_literally(client, db, samples):
    nasty = "Robert'); DROP TABLE recipients;--"
    response = post_flask(client, result(samples, SubAccount=nasty, MessageID="x'; --"))
    assert response.status_code == 200
    [row] = fetch(db, "SELECT message_id, sub_account FROM recipients")
    assert row == {"message_id": "x'; --", "sub_account": nasty}


def test_unknown_fields_are_accepted_and_kept_in_the_event(client, db, samples):
    response = post_flask(client, result(samples, SomethingNew="42"), "xml")
    assert response.status_code == 200
    [event] = fetch(db, "SELECT body FROM webhook_events")
    assert "<SomethingNew>42</SomethingNew>" in event["body"]


def test_older_field_names_are_understood(client, db, samples):
    fields = result(samples, MessageID="old-1")
    for key in ("SentTimeUTC_RFC3339", "SendTimeUTC", "JobNumber"):
        fields.pop(key)
    fields.update(SentTimeUTC="2025-06-12 20:44:30", JobNum="99ZZ99ZZ")
    assert post_flask(client, fields, "form").status_code == 200
    [row] = fetch(db, "SELECT sent_at, job_number FROM recipients")
    assert row["job_number"] == "99ZZ99ZZ" and row["sent_at"].isoformat() == "2025-06-12T20:44:30+00:00"


def test_local_time_only_is_converted_from_account_time_zone(client, db, samples):
    fields = result(samples, MessageID="local-1")
    for key in ("SentTimeUTC_RFC3339", "SendTimeUTC"):
        fields.pop(key)
    post_flask(client, fields)
    [row] = fetch(db, "SELECT sent_at FROM recipients")
    assert row["sent_at"].isoformat() == "2025-06-12T20:44:30+00:00"  # 06:44:30 AEST is 20:44:30 UTC


# -- authentication ------------------------------------------------------------------------------

def _without_key(samples: dict[str, Any]) -> dict[str, Any]:
    fields = result(samples)
    fields.pop("APIKey")
    return fields


@pytest.mark.parametrize("how", ["bearer", "basic-raw", "basic-userpass", "query", "second-token"])
def test_token_accepted_from_header_query_or_rotation(client, db, samples, how):
    fields, headers, extra = _without_key(samples), {}, ""
    if how == "bearer":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif how == "basic-raw":
        headers["Authorization"] = f"Basic {TOKEN}"
    elif how == "basic-userpass":
        headers["Authorization"] = "Basic " + base64.b64encode(f"bestsms:{TOKEN}".encode()).decode()
    elif how == "query":
        extra = f"token={TOKEN}"
    else:
        fields["APIKey"] = "next-token-2027"
    response = client.post("/webhooks/bestsms", query_string=extra, json=fields, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert counts(db)["recipients"] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_or_missing_token_is_401_and_stores_nothing(client, db, samples, fmt):
    for fields in (result(samples, APIKey="wrong-token"), _without_key(samples)):
        response = post_flask(client, fields, fmt, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
        assert response.get_json() == {"error": "missing or wrong webhook token"}
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 0}


def test_secrets_are_not_stored(client, db, samples):
    for fmt in FORMATS:
        post_flask(client, result(samples), fmt, headers={"Authorization": f"Bearer {TOKEN}", "Cookie": "s=1"})
    events = fetch(db, "SELECT headers::text AS h, body, query_string FROM webhook_events")
    assert len(events) == 4
    for event in events:
        stored = f"{event['h']} {event['body']} {event['query_string']}"
        assert TOKEN not in stored and "authorization" not in event["h"].lower() and "cookie" not in event["h"]
        assert "APIKey" not in stored  # the credential field is gone, not just its value
        assert "Destination" in stored  # ... and the rest is kept


def test_no_token_configured_accepts_everything(database_url, db, samples):
    from receiver import Settings, create_app

    app = create_app(Settings(database_url=database_url, webhook_tokens=(), allow_unauthenticated=True,
                                 db_pool_size=1))
    try:
        response = post_flask(app.test_client(), _without_key(samples))
        assert response.status_code == 200
    finally:
        services(app).database.close()


# -- bad input: a clear error, nothing changed, the request kept when authenticated ---------------

BAD_BODIES = [
    ("application/json", b'{"MessageID": "m1", "Status": ', 400, "malformed JSON"),
    ("application/json", b'["not", "an", "object"]', 400, "JSON body must be an object"),
    ("application/xml", b"<Webhook><MessageID>m1</MessageID>", 400, "malformed XML"),
    ("application/json", b'{"MessageID": "m\\u0000", "Status": "Success"}', 400, "NUL"),
    ("application/json", b"\xff\xfe{}", 400, "UTF-8"),
    ("text/plain", b"MessageID=m1", 415, "unsupported content type"),
    ("application/octet-stream", b"\x00\x01", 415, "unsupported content type"),
]


@pytest.mark.parametrize(("content_type", "body", "status", "message"), BAD_BODIES)
def test_undecodable_body_is_rejected_and_kept(client, db, content_type, body, status, message):
    response = client.post("/webhooks/bestsms", data=body, headers={
        "Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}
    [event] = fetch(db, "SELECT outcome, error FROM webhook_events")
    assert event["outcome"] == "rejected" and message in event["error"]


@pytest.mark.parametrize(("change", "field"), [
    ({"Status": "Delivered"}, "Status"),
    ({"Price": "ten cents"}, "Price"),
    ({"SentTimeUTC_RFC3339": "yesterday"}, "SentTimeUTC_RFC3339"),
    ({"Destination": ""}, "Destination"),
    ({"DestSeq": "000000001"}, "DestSeq"),
    ({"JobNumber": "123456789"}, "JobNumber"),
])
def test_invalid_field_is_400_naming_it(client, db, samples, change, field):
    response = post_flask(client, result(samples, **change))
    assert response.status_code == 400
    assert field in response.get_json()["fields"]
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}


def test_invalid_webhook_leaves_existing_rows_untouched(client, db, samples):
    post_flask(client, samples["result-delivered"]["fields"])
    before = snapshot(db)
    response = post_flask(client, result(samples, Status="Failed", Price="NaN"))
    assert response.status_code == 400
    after = snapshot(db)
    assert after["recipients"] == before["recipients"] and after["messages"] == before["messages"]
    assert len(after["webhook_events"]) == len(before["webhook_events"]) + 1


def test_reply_over_1000_characters_is_rejected(client, db, samples):
    fields = dict(samples["reply-unmatched"]["fields"], Message="x" * 1001)
    response = post_flask(client, fields)
    assert response.status_code == 400 and "Message" in response.get_json()["fields"]
    assert counts(db)["replies"] == 0


def test_body_over_one_mib_is_413_and_stores_nothing(client, db, samples):
    fields = result(samples, Padding="x" * (1024 * 1024))
    response = post_flask(client, fields)
    assert response.status_code == 413
    assert counts(db)["webhook_events"] == 0


def test_xml_entity_bomb_is_refused_quickly(client, db):
    import time

    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + b"".join(f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">'.encode()
                       for i in range(1, 10))
            + b"]><Webhook><MessageID>&lol9;</MessageID></Webhook>")
    started = time.perf_counter()
    response = client.post("/webhooks/bestsms", data=bomb,
                           headers={"Content-Type": "application/xml", "Authorization": f"Bearer {TOKEN}"})
    assert time.perf_counter() - started < 1
    assert response.status_code == 400 and "XML refused" in response.get_json()["error"]
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}


def test_database_down_is_503_never_2xx(samples):
    from receiver import Settings, create_app
    from tests.support import free_port

    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                        webhook_tokens=(TOKEN,), db_pool_size=1, request_timeout_seconds=1)
    app = create_app(settings)  # the database being away does not stop the app from starting
    try:
        response = post_flask(app.test_client(), samples["result-delivered"]["fields"])
        assert response.status_code == 503
        assert response.get_json()["error"] == "database unavailable, retry later"
        assert response.headers["Retry-After"] == "30"
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["status"] == "unavailable"
        assert app.test_client().get("/healthz").status_code == 200  # alive all the same
    finally:
        services(app).database.close()
