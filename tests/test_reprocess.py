"""`python -m receiver reprocess`: stored events re-applied through today's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT, fetch, post_flask


def run_cli(database_url: str, *args: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "receiver", "reprocess", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**os.environ, "DATABASE_URL": database_url})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reprocess_recovers_what_an_older_version_rejected(database_url, client, db, samples):
    # What an older release stored when it could not parse a valid webhook (a bug since fixed):
    body = json.dumps({**samples["result-delivered"]["fields"], "APIKey": "[REDACTED]"})
    db.execute("""INSERT INTO webhook_events (method, format, content_type, body, outcome, error)
                  VALUES ('POST', 'json', 'application/json', %s, 'rejected', 'old parser bug')""", (body,))
    # ... and one today's code rejects too.
    response = post_flask(client, {**samples["result-delivered"]["fields"], "Status": "Delivered"})
    assert response.status_code == 400

    assert run_cli(database_url) == {"reprocessed": 2, "applied": 1, "rejected": 1}

    events = fetch(db, "SELECT outcome, error, reprocessed_at FROM webhook_events ORDER BY id")
    assert [e["outcome"] for e in events] == ["applied", "rejected"]
    assert events[0]["error"] is None and events[0]["reprocessed_at"] is not None
    assert "Status" in events[1]["error"]
    [row] = fetch(db, "SELECT message_id, status, price FROM recipients")
    assert (row["message_id"], row["status"], str(row["price"])) == (
        samples["result-delivered"]["fields"]["MessageID"], "Success", "0.10")

    # Nothing rejected is left that today's code can apply: a second run changes nothing.
    assert run_cli(database_url) == {"reprocessed": 1, "rejected": 1}


def test_reprocess_a_time_range_reapplies_every_event_in_it(database_url, client, db, samples):
    for fmt in ("json", "xml", "form", "query"):
        post_flask(client, samples["result-pending"]["fields"], fmt)
    before = fetch(db, "SELECT * FROM recipients")
    [since] = fetch(db, "SELECT min(received_at) AS t FROM webhook_events")
    assert run_cli(database_url, "--since", since["t"].isoformat()) == {"reprocessed": 4, "duplicate": 4}
    assert fetch(db, "SELECT * FROM recipients") == before


def test_an_event_rejected_again_keeps_its_message_id(database_url, client, db, samples):
    """The endpoint and `reprocess` parse through one path: a webhook rejected live and rejected
    again by reprocess keeps its MessageID (it used to lose it on the second rejection)."""
    fields = {**samples["result-delivered"]["fields"], "Price": "-1"}
    assert post_flask(client, fields).status_code == 400
    [live] = fetch(db, "SELECT kind, message_id, outcome, error FROM webhook_events")
    assert (live["message_id"], live["outcome"]) == (fields["MessageID"], "rejected") and "Price" in live["error"]

    assert run_cli(database_url, "--rejected") == {"reprocessed": 1, "rejected": 1}
    [again] = fetch(db, "SELECT kind, message_id, outcome, error, reprocessed_at FROM webhook_events")
    assert again.pop("reprocessed_at") is not None
    assert again == live


REFUSED = {
    "negative price": ({"Price": "-1"}, "json"),
    "unknown status": ({"Status": "Delivered"}, "xml"),
    "no MessageID": ({"MessageID": None}, "form"),
    "MessageID too long": ({"MessageID": "m" * 300}, "query"),
    "not a number": ({"Destination": "call me"}, "json"),
}


def test_reprocess_rejects_what_the_endpoint_rejects_with_the_same_row(database_url, client, db, samples):
    """Every refused webhook, in each format, reprocessed unchanged: the same kind, MessageID and error."""
    base = samples["result-delivered"]["fields"]
    for changes, fmt in REFUSED.values():
        fields = {k: v for k, v in {**base, **changes}.items() if v is not None}
        assert post_flask(client, fields, fmt).status_code == 400
    live = fetch(db, "SELECT id, kind, message_id, outcome, error FROM webhook_events ORDER BY id")
    assert [e["message_id"] for e in live] == [base["MessageID"]] * 2 + [None] * 2 + [base["MessageID"]]

    assert run_cli(database_url) == {"reprocessed": len(REFUSED), "rejected": len(REFUSED)}
    assert fetch(db, "SELECT id, kind, message_id, outcome, error FROM webhook_events ORDER BY id") == live


def test_a_value_the_database_refuses_is_rejected_again_and_the_run_goes_on(database_url, client, db):
    """The webhook keeps such an event as rejected with the database's reason; reprocess raised
    instead, so every later run stopped at the same row and the events after it were never applied.
    Here a DBA's index on replies.message_text refuses a reply over btree's key limit."""
    from tests.support import TOKEN

    db.execute("CREATE INDEX dba_text_idx ON replies (message_text)")
    long_text = "".join(chr(0x4E00 + i % 20000) for i in range(3600))  # 10,800 bytes: over btree's 2,704
    for n, text in enumerate(["first", long_text, "last"]):
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "ReceivedID": f"dba-{n}", "Destination": "+61410010001",
                  "Message": text}
        assert post_flask(client, fields).status_code == (400 if text is long_text else 200)
    db.execute("DELETE FROM replies")  # what the run is to bring back: both applied events
    since = "2000-01-01"
    assert run_cli(database_url, "--since", since) == {"reprocessed": 3, "applied": 2, "rejected": 1}
    events = fetch(db, "SELECT outcome, error FROM webhook_events ORDER BY id")
    assert [e["outcome"] for e in events] == ["applied", "rejected", "applied"]
    assert events[1]["error"].startswith("value refused by the database: index row")
    assert [r["received_id"] for r in fetch(db, "SELECT received_id FROM replies ORDER BY 1")] == ["dba-0", "dba-2"]
