"""The webhook endpoint through Flask's client and the real database: formats, samples, merge, auth."""

from __future__ import annotations

import base64
import copy
import json
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

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
    ("application/json", b"\xff\xfe{}", 400, "malformed JSON"),  # a UTF-16 byte order mark, then not UTF-16
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


def test_a_reply_longer_than_bestsms_documents_is_stored_whole(client, db, samples):
    """BestSMS documents 1,000 characters; a concatenated SMS is longer: stored as sent."""
    text = "Reply " + "é" * 5000
    fields = dict(samples["reply-unmatched"]["fields"], Message=text)
    response = post_flask(client, fields)
    assert response.status_code == 200, response.get_json()
    assert fetch(db, "SELECT message_text FROM replies") == [{"message_text": text}]


def test_body_over_one_mib_is_413_and_stores_nothing(client, db, samples):
    """Its token is in the body, not read: nobody's webhook, as far as the receiver can tell."""
    fields = result(samples, Padding="x" * (1024 * 1024))
    response = post_flask(client, fields)
    assert response.status_code == 413
    assert counts(db)["webhook_events"] == 0


@pytest.mark.parametrize("fmt", ["json", "query"])
def test_a_request_over_the_limit_with_its_token_outside_is_413_or_414_and_kept(client, db, samples, fmt):
    """Authenticated by a header: refused, and kept as a rejected event cut at the limit."""
    fields = {k: v for k, v in result(samples, Padding="x" * (1024 * 1024)).items() if k != "APIKey"}
    response = post_flask(client, fields, fmt, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == (414 if fmt == "query" else 413)
    assert response.headers["Connection"] == "close"
    [event] = fetch(db, "SELECT * FROM webhook_events")
    assert response.get_json() == {"error": event["error"], "event_id": event["id"]}
    assert event["outcome"] == "rejected" and "over 1048576 bytes" in event["error"]
    kept = event["query_string"] if fmt == "query" else event["body"]
    assert 1024 * 1024 - 100 < len(kept) <= 1024 * 1024 and fields["MessageID"] in kept
    assert counts(db)["recipients"] == 0


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


# -- an authentic webhook is never refused for its text --------------------------------------------

REPLY = {"APIKey": TOKEN, "Type": "SMSReply", "ReceivedID": "text-1", "MessageID": "text-m", "Status": "RECEIVED",
         "Destination": "+61410010001", "SendTimeUTC": "2025-06-12 20:44:30"}
XML_HEAD = "<Webhook>" + "".join(f"<{k}>{v}</{k}>" for k, v in REPLY.items())


def _json_reply(message: str) -> bytes:
    """A reply as JSON with its Message written as it stands (escapes included)."""
    return (json.dumps(REPLY)[:-1] + f', "Message": "{message}"}}').encode()


# label: (content type, body, the reply's text as stored). Authenticated as BestSMS does it: the
# APIKey field in the body, nothing else.
MANGLED: dict[str, tuple[str, bytes, str]] = {
    "half an emoji (a split message)": ("application/json", _json_reply("see you \\ud83d"), "see you \ufffd"),
    "a whole emoji as a surrogate pair": ("application/json", _json_reply("ok \\ud83d\\udc4d"), "ok \U0001f44d"),
    "a NUL in a form": ("application/x-www-form-urlencoded",
                        (urlencode(REPLY) + "&Message=ok%00thanks").encode(), "ok\ufffdthanks"),
    "a raw NUL in JSON": ("application/json", _json_reply("ok\x00thanks"), "ok\ufffdthanks"),
    "a latin-1 byte in UTF-8 JSON": ("application/json", _json_reply("caf") [:-2] + b"\xe9\"}", "caf\ufffd"),
    "JSON in latin-1, as its charset says": ("application/json; charset=iso-8859-1",
                                             _json_reply("café").decode().encode("latin-1"), "café"),
    "JSON in UTF-16": ("application/json", _json_reply("café 👍").decode().encode("utf-16"), "café 👍"),
    "XML reference to half an emoji": ("application/xml", f"{XML_HEAD}<Message>a &#xD83D;</Message></Webhook>"
                                       .encode(), "a \ufffd"),
    "XML reference to a NUL": ("application/xml", f"{XML_HEAD}<Message>a&#0;b</Message></Webhook>".encode(),
                               "a\ufffdb"),
    "XML emoji as two references": ("application/xml", f"{XML_HEAD}<Message>&#xD83D;&#xDC4D;</Message></Webhook>"
                                    .encode(), "\U0001f44d"),
    "XML with a raw control character": ("application/xml", f"{XML_HEAD}<Message>a\x01b</Message></Webhook>"
                                         .encode(), "a\ufffdb"),
    "XML declared UTF-16": ("application/xml", f'<?xml version="1.0" encoding="UTF-16"?>{XML_HEAD}'
                            "<Message>café 👍</Message></Webhook>".encode("utf-16"), "café 👍"),
    "XML declared ISO-8859-1": ("application/xml", f'<?xml version="1.0" encoding="ISO-8859-1"?>{XML_HEAD}'
                                "<Message>café</Message></Webhook>".encode("latin-1"), "café"),
}


@pytest.mark.parametrize("label", MANGLED)
def test_an_authentic_reply_is_stored_whatever_its_text(database_url, client, db, label):
    """BestSMS retries a refused reply for 24 hours, then drops it: what a handset mangled is
    stored (U+FFFD where no table can hold it), and the stored request replays to the same row."""
    content_type, body, text = MANGLED[label]
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "applied"
    [reply] = fetch(db, "SELECT received_id, message_text FROM replies")
    assert reply == {"received_id": "text-1", "message_text": text}
    [event] = fetch(db, "SELECT body FROM webhook_events")
    assert TOKEN not in event["body"]
    assert run_reprocess(database_url) == {"reprocessed": 1, "duplicate": 1}
    assert fetch(db, "SELECT received_id, message_text FROM replies") == [reply]


def run_reprocess(database_url: str) -> dict[str, int]:
    from tests.test_reprocess import run_cli

    return run_cli(database_url, "--since", "2000-01-01")


# label: (fields sent as JSON values, the field named in the 400)
NUMBERS: dict[str, tuple[dict[str, Any], str]] = {
    "MessageID 1e400": ({"MessageID": 1e400}, "MessageID"),
    "Destination as a float": ({"Destination": 61410010001.0}, "Destination"),
    "Price with an exponent": ({"Price": "__1.5e2__"}, "Price"),
    "Price too small for a float": ({"Price": "__1e-400__"}, "Price"),
    "DestSeq as a fraction": ({"DestSeq": 1.5}, "DestSeq"),  # a whole number is one (tnzapi-ts types it so)
}


@pytest.mark.parametrize("label", NUMBERS)
def test_a_number_where_bestsms_sends_text_is_400_and_kept(client, db, samples, label):
    changes, field = NUMBERS[label]
    body = json.dumps({**samples["result-delivered"]["fields"], **changes})
    body = body.replace('"__1e-400__"', "1e-400").replace('"__1.5e2__"', "1.5e2")  # literals json.dumps cannot write
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and field in response.get_json()["fields"], response.get_json()
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 1}


def test_a_destseq_as_a_json_number_is_the_recipient_in_its_8_character_form(client, db, samples):
    body = json.dumps({**samples["result-delivered"]["fields"], "DestSeq": 7})
    assert client.post("/webhooks/bestsms", data=body, headers={"Content-Type": "application/json"}).status_code == 200
    assert fetch(db, "SELECT dest_seq FROM recipients") == [{"dest_seq": "00000007"}]


def test_a_plain_json_number_price_is_still_a_price(client, db, samples):
    body = json.dumps({**samples["result-delivered"]["fields"], "Price": 0.1})
    assert client.post("/webhooks/bestsms", data=body, headers={"Content-Type": "application/json"}).status_code == 200
    [row] = fetch(db, "SELECT price FROM recipients")
    assert row["price"] == Decimal("0.1")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_change_nothing(client, db, samples, method):
    query = urlencode({**samples["result-delivered"]["fields"], "token": TOKEN})
    response = client.open(f"/webhooks/bestsms?{query}", method=method)
    assert response.status_code == (405 if method == "HEAD" else 200)
    assert response.headers["Allow"] == "GET, POST"
    assert counts(db) == {"messages": 0, "recipients": 0, "replies": 0, "webhook_events": 0}
    if method == "OPTIONS":
        assert response.get_json() == {"allow": ["GET", "POST"]}


def test_a_namespaced_xml_webhook_replays_exactly(database_url, client, db, samples):
    fields = {**samples["result-delivered"]["fields"]}
    children = "".join(f"<b:{k}>{v}</b:{k}>" for k, v in fields.items())
    body = f'<b:Webhook xmlns:b="urn:bestsms:webhook">{children}</b:Webhook>'
    response = client.post("/webhooks/bestsms", data=body, headers={"Content-Type": "application/xml"})
    assert response.status_code == 200 and response.get_json()["status"] == "applied"
    assert run_reprocess(database_url) == {"reprocessed": 1, "duplicate": 1}
