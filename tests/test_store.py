"""The store against the real database: the merge functions called by name, poll pages in one
statement, rejected requests kept; and one event, whichever way it came, gives one row."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from receiver import store
from receiver.bestsms.api import REFERENCE_FIELDS, PollParser
from receiver.bestsms.events import REPLY_FIELDS, RESULT_FIELDS, result_event
from receiver.store.polling import REFERENCE_COLUMNS
from tests.support import TOKEN, fetch, post_flask


def test_the_calls_name_exactly_the_merge_functions_parameters(db: psycopg.Connection[Any]):
    for kind, fields in (("result", RESULT_FIELDS), ("reply", REPLY_FIELDS)):
        [row] = fetch(db, """
            SELECT p.proargnames[1:p.pronargs] AS names, p.proargtypes::regtype[]::text[] AS types
            FROM pg_proc p WHERE p.proname = %s""", f"apply_{kind}")
        declared = [(name.removeprefix("p_"), type_) for name, type_ in zip(row["names"], row["types"], strict=True)]
        ours = [(name, {"timestamptz": "timestamp with time zone"}.get(t, t)) for name, t in store.ARGS[kind]]
        assert declared == ours
        receipt = ["reported_at"] if kind == "result" else []  # the merge's, not the event's
        assert sorted(name for name, _ in store.ARGS[kind]) == sorted([*fields, "source", *receipt])


def test_the_references_a_poll_reads_are_the_columns_it_writes(db: psycopg.Connection[Any]):
    """One list, checked three ways: the poll parser's, the store's statement's, the table's."""
    assert REFERENCE_FIELDS == REFERENCE_COLUMNS
    columns = {r["column_name"] for r in fetch(db, "SELECT column_name FROM information_schema.columns "
                                                   "WHERE table_name = 'recipients'")}
    assert set(REFERENCE_COLUMNS) <= columns


def test_a_poll_page_is_applied_in_one_statement_and_again_changes_nothing(db):
    events = [result_event({"message_id": "page-1", "dest_seq": str(i), "destination": f"041001000{i}",
                            "status": "Success", "result": "delivered"}, "AU")
              for i in range(1, 4)]
    assert store.apply_many(db, "result", events, "poll") == (3, 3)
    assert store.apply_many(db, "result", events, "poll") == (0, 3)
    rows = fetch(db, "SELECT dest_seq, destination, status, source FROM recipients ORDER BY dest_seq")
    assert rows == [{"dest_seq": str(i), "destination": f"+6141001000{i}", "status": "Success", "source": "poll"}
                    for i in range(1, 4)]


def test_a_rejected_request_is_kept_with_its_reason(db):
    request = store.Request(method="POST", format="json", content_type="application/json",
                            headers={"user-agent": "x"}, query_string=None, body='{"MessageID": 7}')
    webhook = store.Webhook(request, "result", None, None, "invalid webhook: MessageID: Not a valid string.")
    [answer] = store.record_webhooks(db, [webhook])
    [row] = fetch(db, "SELECT id, outcome, error, body, headers FROM webhook_events")
    assert row == {"id": answer["event_id"], "outcome": "rejected",
                   "error": "invalid webhook: MessageID: Not a valid string.",
                   "body": '{"MessageID": 7}', "headers": {"user-agent": "x"}}
    assert answer["outcome"] == "rejected" and answer["error"] == row["error"]


def test_the_same_recipient_by_webhook_and_by_poll_gives_the_same_row(client, db):
    """One event builder: a webhook and a poll of the same report store identical recipient rows."""
    webhook = {"APIKey": TOKEN, "MessageID": "same-by-webhook", "DestSeq": "00000001", "Destination": "0410 010 001",
               "Type": "SMS", "Status": "success", "Result": "delivered", "Price": "0.10", "SubAccount": "Clinic",
               "JobNumber": "10AB20CE", "SentTimeLocal": "2025-06-13 06:44:30"}
    assert post_flask(client, webhook).status_code == 200
    page = PollParser(ZoneInfo("Australia/Sydney"), "AU").status_page({
        "Result": "Success", "MessageID": "same-by-poll", "SubAccount": "Clinic", "JobNum": "10AB20CE",
        "Recipients": [{"Type": "Text", "DestSeq": "00000001", "Destination": "0410 010 001", "Status": "Success",
                        "Result": "delivered", "Price": "0.10", "SentDate": "2025-06-13T06:44:30"}]})
    store.apply_many(db, "result", page["recipients"], "poll")
    by_webhook, by_poll = fetch(db, "SELECT * FROM recipients ORDER BY message_id DESC")
    differ = {"id", "message_id", "source", "first_seen_at", "updated_at", "final_at", "reported_at"}
    assert {k: v for k, v in by_webhook.items() if k not in differ} == \
           {k: v for k, v in by_poll.items() if k not in differ}
    assert (by_webhook["destination"], by_webhook["type"], str(by_webhook["price"])) == ("+61410010001", "SMS", "0.10")


def test_a_statement_run_without_jit_sees_it_off_and_leaves_the_session_as_it_was(db):
    """The poller's scans over every active message run with JIT off (store.polling: FINISH and
    CLASSIFY), for their statement (or the caller's transaction) only: SET LOCAL, so nothing else
    on the connection, or on a transaction pooler's server connection, is changed."""
    from receiver.store.base import rows

    assert db.execute("SHOW jit").fetchone()[0] == "on"
    assert rows(db, "SELECT current_setting('jit') AS jit", {}, jit=False) == [{"jit": "off"}]
    assert rows(db, "SELECT current_setting('jit') AS jit", {}) == [{"jit": "on"}]
    with db.transaction():  # inside the caller's transaction (Database.run through a transaction pooler)
        assert rows(db, "SELECT current_setting('jit') AS jit", {}, jit=False) == [{"jit": "off"}]
    assert db.execute("SHOW jit").fetchone()[0] == "on"
