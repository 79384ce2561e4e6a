"""Group commit (receiver/batch.py, store.record_webhooks): webhooks recorded together, each
answered with its own row, and what the database refuses isolated to the webhook it came from."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from receiver import batch, store
from receiver.config import Settings
from receiver.db import Database
from tests.support import fetch

SENT = datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC)


def result(message_id: str, seq: int, status: str = "Success", **extra: Any) -> store.Webhook:
    event = {"message_id": message_id, "dest_seq": f"{seq:08d}", "destination": f"+6141001000{seq}", "type": "SMS",
             "status": status, "result": "delivered" if status != "Pending" else "submitted", "sent_at": SENT,
             "price": Decimal("0.10"), "sms_parts": 1, "sub_account": "Clinic", "department": "Reminders",
             "job_number": "10AB20CE", "contact_id": None, "detail": "SMSParts:1", **extra}
    return store.Webhook(request(f"{message_id}/{seq}/{status}"), "result", event, message_id)


def request(body: str) -> store.Request:
    return store.Request(method="POST", format="json", content_type="application/json",
                         headers={"user-agent": "test"}, query_string=None, body=body)


def reply(received_id: str, message_id: str, from_number: str) -> store.Webhook:
    event = {"received_id": received_id, "message_id": message_id, "type": "SMSReply", "from_number": from_number,
             "message_text": "Yes", "received_at": SENT, "sub_account": None, "department": None,
             "job_number": None, "contact_id": None, "detail": None, "price": None}
    return store.Webhook(request(f"reply {received_id}"), "reply", event, message_id)


def event_bodies(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    return {r["id"]: (r["body"], r["outcome"]) for r in fetch(conn, "SELECT id, body, outcome FROM webhook_events")}


def test_a_batch_answers_each_webhook_with_its_own_row_in_the_order_given(db):
    webhooks = [
        result("m-2", 1, "Pending"),
        result("m-1", 2),
        reply("r-1", "m-1", "+61410010002"),
        store.Webhook(request("not json"), None, None, None, "malformed JSON"),
        result("m-1", 1),
        result("m-2", 1),  # the same recipient as the first, now final
        result("m-1", 2),  # the second again: a duplicate within the batch
    ]
    answers = store.record_webhooks(db, webhooks)

    assert [a["outcome"] for a in answers] == ["applied", "applied", "applied", "rejected", "applied", "applied",
                                               "duplicate"]
    assert answers[3]["error"] == "malformed JSON"
    stored = event_bodies(db)
    assert len(stored) == len(webhooks) == len({a["event_id"] for a in answers})
    for webhook, answer in zip(webhooks, answers, strict=True):
        assert stored[answer["event_id"]] == (webhook.request.body, answer["outcome"])
    assert fetch(db, "SELECT message_id, dest_seq, status FROM recipients ORDER BY 1, 2") == [
        {"message_id": "m-1", "dest_seq": "00000001", "status": "Success"},
        {"message_id": "m-1", "dest_seq": "00000002", "status": "Success"},
        {"message_id": "m-2", "dest_seq": "00000001", "status": "Success"},
    ]
    assert answers[5]["previous_status"] == "Pending" and answers[5]["won"] is True
    # The reply came before its recipient in the batch's order, and is linked to it all the same.
    assert fetch(db, "SELECT received_id, dest_seq FROM replies") == [{"received_id": "r-1", "dest_seq": "00000002"}]


def test_a_value_the_database_refuses_rejects_only_its_own_webhook(db):
    refused = result("m-3", 2, status="Delivered")  # past validation by a bug: the table's CHECK refuses it
    answers = batch.write(db, [result("m-3", 1), refused, result("m-3", 3)])

    assert [a["outcome"] for a in answers] == ["applied", "rejected", "applied"]
    assert answers[1]["error"].startswith("value refused by the database: new row for relation \"recipients\"")
    assert fetch(db, "SELECT dest_seq FROM recipients ORDER BY 1") == [{"dest_seq": "00000001"},
                                                                       {"dest_seq": "00000003"}]
    stored = event_bodies(db)
    assert stored[answers[1]["event_id"]] == ("m-3/2/Delivered", "rejected")
    assert len(stored) == 3


@pytest.fixture
def database(database_url: str) -> Any:
    database = Database(Settings(database_url=database_url, webhook_tokens=("x" * 12,), db_pool_size=2),
                        database_url)
    yield database
    database.close()


def test_webhooks_waiting_behind_a_slow_commit_are_written_together(db, database):
    """While one batch waits on a lock, the webhooks that arrive queue up; they are then written
    in one batch, and each is answered with its own row."""
    sizes: list[int] = []
    commit = batch.GroupCommit(database, writers=1, on_batch=sizes.append)
    commit.record(result("locked", 1, "Pending"))
    answers: dict[int, dict[str, Any]] = {}

    def send(n: int) -> None:
        answers[n] = commit.record(result(f"queued-{n}", 1) if n else result("locked", 1))

    with psycopg.connect(database.pool.conninfo) as holder:  # holds the recipient's row lock
        holder.execute("SELECT * FROM recipients WHERE message_id = 'locked' FOR UPDATE")
        first = threading.Thread(target=send, args=(0,))
        first.start()
        deadline = time.monotonic() + 30
        while len(sizes) < 2 and time.monotonic() < deadline:  # the blocked batch has started
            time.sleep(0.01)
        others = [threading.Thread(target=send, args=(n,)) for n in range(1, 11)]
        for thread in others:
            thread.start()
        while len(commit._queue) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not answers  # nothing answered before the commit
    for thread in [first, *others]:
        thread.join(30)

    assert sizes == [1, 1, 10]
    assert {n: a["outcome"] for n, a in answers.items()} == dict.fromkeys(range(11), "applied")
    stored = event_bodies(db)
    for n, answer in answers.items():
        assert stored[answer["event_id"]][0] == (f"queued-{n}/1/Success" if n else "locked/1/Success")


def test_a_batch_that_fails_fails_for_each_of_its_webhooks_and_applies_none(db, database_url):
    """A batch is one transaction: cancelled (here by statement_timeout, behind a lock), every
    webhook in it is answered Unavailable (a 503), and none of them is applied."""
    slow = Database(Settings(database_url=database_url, webhook_tokens=("x" * 12,), request_timeout_seconds=4),
                    database_url)  # statements cancelled after 2 s
    sizes: list[int] = []
    commit = batch.GroupCommit(slow, writers=1, on_batch=sizes.append)
    outcomes: dict[str, str] = {}

    def send(webhook: store.Webhook) -> None:
        try:
            outcomes[webhook.request.body or ""] = commit.record(webhook)["outcome"]
        except Exception as exc:
            outcomes[webhook.request.body or ""] = type(exc).__name__

    try:
        commit.record(result("locked", 1, "Pending"))
        with psycopg.connect(database_url) as holder:
            holder.execute("SELECT * FROM recipients WHERE message_id = 'locked' FOR UPDATE")
            first = threading.Thread(target=send, args=(result("locked", 1),))
            first.start()
            deadline = time.monotonic() + 30
            while len(sizes) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            queued = [result("locked", 1, "Failed"), *(result(f"new-{n}", 1) for n in range(5))]
            threads = [threading.Thread(target=send, args=(w,)) for w in queued]
            for thread in threads:
                thread.start()
            for thread in [first, *threads]:
                thread.join(30)
    finally:
        slow.close()

    assert sizes == [1, 1, 6]
    assert outcomes == dict.fromkeys(["locked/1/Success", "locked/1/Failed",
                                      *(f"new-{n}/1/Success" for n in range(5))], "Unavailable")
    assert fetch(db, "SELECT message_id, status FROM recipients") == [{"message_id": "locked", "status": "Pending"}]
    assert fetch(db, "SELECT count(*) AS n FROM webhook_events") == [{"n": 1}]


def test_with_two_writers_a_batch_held_by_a_lock_does_not_hold_up_the_next(db, database):
    sizes: list[int] = []
    commit = batch.GroupCommit(database, writers=2, on_batch=sizes.append)
    commit.record(result("locked", 1, "Pending"))
    held: list[str] = []
    with psycopg.connect(database.pool.conninfo) as holder:
        holder.execute("SELECT * FROM recipients WHERE message_id = 'locked' FOR UPDATE")
        blocked = threading.Thread(target=lambda: held.append(commit.record(result("locked", 1))["outcome"]))
        blocked.start()
        deadline = time.monotonic() + 30
        while len(sizes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert commit.record(result("free", 1))["outcome"] == "applied"  # while the lock is held
        assert not held
    blocked.join(30)
    assert held == ["applied"]


def test_a_batch_is_bounded_in_bytes_as_well_as_in_webhooks(db, database):
    """Webhooks queued behind a slow commit are taken in batches that stay within max_batch_bytes
    (one webhook at least, whatever its size)."""
    sizes: list[int] = []
    big = store.Request(method="POST", format="json", content_type="application/json", headers={},
                        query_string=None, body="x" * 5000)
    commit = batch.GroupCommit(database, writers=1, max_batch_bytes=13_000, on_batch=sizes.append)
    commit.record(result("locked", 1, "Pending"))
    answers: list[str] = []
    with psycopg.connect(database.pool.conninfo) as holder:
        holder.execute("SELECT * FROM recipients WHERE message_id = 'locked' FOR UPDATE")
        first = threading.Thread(target=lambda: answers.append(commit.record(result("locked", 1))["outcome"]))
        first.start()
        deadline = time.monotonic() + 30
        while len(sizes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        webhooks = [store.Webhook(big, "result", result(f"big-{n}", 1).event, f"big-{n}") for n in range(5)]
        others = [threading.Thread(target=lambda w=w: answers.append(commit.record(w)["outcome"])) for w in webhooks]
        for thread in others:
            thread.start()
        while len(commit._queue) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in [first, *others]:
        thread.join(30)

    assert sizes == [1, 1, 2, 2, 1]  # 6,000 characters a webhook, 13,000 a batch
    assert answers == ["applied"] * 6
    assert fetch(db, "SELECT count(*) AS n FROM recipients WHERE message_id LIKE 'big-%%'") == [{"n": 5}]
