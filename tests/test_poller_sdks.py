"""The poller against what the vendor's other SDKs say BestSMS answers, served by the fake BestSMS
over real HTTP. Test data is taken from the vendor's own files (MIT licence, TNZ Group Limited):

- tnzgroup/tnzapi-ts 689e440 (v3.0.3): src/Common/Result.ts (Result: Success, Failed, Error,
  Unauthorized), src/Common/dtos/ErrorResponseDTO.ts, src/Api/Reports/dtos/RecipientDTO.ts
  (`DestSeq?: number`), SMSReceivedApiRequestDTO.ts and SMSReceivedApi.ts (`dateFrom`/`dateTo`
  instead of `timePeriod`), tests/unit/reports/reportsApi.spec.ts; spec/tnz-rest-api-v3.00.yaml
  (404RecordNotFound; dateFrom/dateTo "Maximum 7 days").
- tnzgroup/tnzapi-dotnet 3dda43a (v3.0.0): Helpers/ApiResponseParser.cs (401 Unauthorized, 404
  RecordNotFound, any other failure Failed: 403 included), TNZAPI.NET.Tests/Helpers/
  ApiResponseParserTests.cs (ParseAsync_On403_ParsesFailed's body), TNZAPI.NET.Tests/Api/Messaging/
  SMS/SMSApiStatusTests.cs (a live-shape status answer: Count 0 beside a listed recipient, DestSeq
  "00F16FEE").
- tnzgroup/tnzapi-nodejs 460fc5a (v2.4.2): lib/Api/Reports/SMSReceivedApi.js (anything but Result
  SUCCESS is an error; dateFrom/dateTo), lib/Api/Reports/dtos/RecipientDTO.js.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest

from receiver.metrics import POLLER
from tests.support import TOKEN, counts, fetch, post_flask
from tests.test_poller import cli, message, poller, run_once, track

# tnzapi-dotnet SMSApiStatusTests.cs, the status answer as the test has it (a live response's shape).
DOTNET_STATUS = json.loads(
    '{"MessageID":"ID123456","JobStatus":"Completed","JobNum":"12907969","Account":"TNZ","SubAccount":"Web Server",'
    '"Department":"","Reference":"AdminV2 New DDI Request","CreatedTimeLocal":"2022-03-20 09:49:41",'
    '"CreatedTimeUTC":"2022-03-19 21:49:41","Timezone":"New Zealand","Count":0,"Complete":1,"Success":1,'
    '"Failed":0,"Price":0.1,"TotalRecords":1,"RecordsPerPage":100,"PageCount":1,"Page":1,"Recipients":[{'
    '"Type":"Text","DestSeq":"00F16FEE","Destination":"+64211234567","Status":"Success","Result":"Sent OK",'
    '"SentTimeLocal":"2021-06-21 12:59:07","SentTimeUTC":"2021-06-21 00:59:07","RemoteID":"","Price":0.1}]}')


def _serve(fake, message_id: str, answer: dict) -> None:
    """The fake answers `message_id`'s status with `answer` as it stands (head and recipients)."""
    head = {k: v for k, v in answer.items() if k != "Recipients"}
    fake.messages[message_id] = {"SubAccount": head.get("SubAccount", ""), "Department": head.get("Department", ""),
                                 "JobNum": head.get("JobNum", ""), "Head": head,
                                 "Recipients": [dict(r, SMSReplies=[]) for r in answer["Recipients"]]}


# -- Result: every value but Success is a failed call -----------------------------------------------

@pytest.mark.parametrize(("mode", "outcome"), [
    ("result-error", "error"),                # tnzapi-ts ErrorResponseDTO on HTTP 200
    ("record-not-found", "not_found"),        # TNZ's 404RecordNotFound
    (403, "error"),                           # tnzapi-dotnet: 403 is Failed, not Unauthorized
])
def test_a_status_poll_answered_with_a_failure_is_a_failed_call_with_back_off(db, fake, poll_settings, mode, outcome):
    fake.add_message("sdk-err", 2)
    fake.add_message("sdk-ok", 1)
    fake.fail("sdk-err", mode)
    track(db, "sdk-err", "sdk-ok")
    p = poller(poll_settings)
    try:
        assert p.run_once() == {outcome: 1, "polled": 1}  # the other message is polled: no stop
        assert p.unauthorized is None
    finally:
        p.close()
    m = message(db, "sdk-err")
    assert m["poll_state"] == "active" and m["poll_attempts"] == 1 and m["next_poll_at"] is not None
    assert m["last_poll_error"].startswith("not found: " if outcome == "not_found" else "")
    said = {"result-error": "Result 'Error'", "record-not-found": "HTTP 404, Result 'RecordNotFound'",
            403: "HTTP 403: Address Book API access not enabled"}[mode]
    assert said in m["last_poll_error"]
    assert fetch(db, "SELECT count(*) AS n FROM recipients WHERE message_id = 'sdk-err'") == [{"n": 0}]


def test_a_result_unauthorized_on_http_200_stops_polling_like_a_401(db, fake, poll_settings):
    fake.add_message("sdk-401", 1)
    fake.fail("received", "result-unauthorized")
    track(db, "sdk-401")
    p = poller(poll_settings)
    try:
        assert p.run_once() == {}
        assert "Result 'Unauthorized'" in (p.unauthorized or "")
    finally:
        p.close()


def test_a_sweep_answered_result_error_keeps_its_window_and_the_next_sweep_stores_it(db, fake, poll_settings):
    """The sweep advanced past the failed call: inbound SMS of that window were never swept."""
    fake.windowed = True
    received = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S")
    fake.received = [{"ReceivedID": "in-window-1", "From": "+61499000001", "MessageText": "STOP",
                      "ReceivedTimeUTC": received}]
    db.execute("INSERT INTO poll_sweeps (name, last_success_at) VALUES ('received', now() - interval '30 minutes')")
    fake.fail("received", "result-error")
    run_once(poll_settings, received_sweep_seconds=0)
    [sweep] = fetch(db, "SELECT last_success_at < now() - interval '29 minutes' AS kept, last_error FROM poll_sweeps")
    assert sweep["kept"] and "Result 'Error'" in sweep["last_error"] and "swept again from" in sweep["last_error"]
    assert counts(db)["replies"] == 0
    run_once(poll_settings, received_sweep_seconds=0)
    assert [r["received_id"] for r in fetch(db, "SELECT received_id FROM replies")] == ["in-window-1"]
    [sweep] = fetch(db, "SELECT last_success_at > now() - interval '1 minute' AS moved, last_error FROM poll_sweeps")
    assert sweep == {"moved": True, "last_error": None}


# -- after an outage: dateFrom/dateTo, oldest first, as far back as BestSMS answers ----------------

def _inbound(n: int, ago: timedelta) -> dict:
    return {"ReceivedID": f"gap-{n}", "From": f"+6149900{n:04d}", "MessageText": f"reply {n}",
            "ReceivedTimeUTC": (datetime.now(UTC) - ago).strftime("%Y-%m-%d %H:%M:%S")}


def test_after_a_three_day_outage_the_sweep_catches_up_in_windows_oldest_first(db, client, fake, poll_settings):
    fake.windowed = True
    fake.received = [_inbound(1, timedelta(days=2, hours=12)), _inbound(2, timedelta(days=1, hours=6)),
                     _inbound(3, timedelta(minutes=5))]
    db.execute("INSERT INTO poll_sweeps (name, last_success_at) VALUES ('received', now() - interval '3 days')")
    fake.fail("received", "pass", "result-error")  # the first window answered, the second not
    run_once(poll_settings, received_sweep_seconds=0)
    assert [r["received_id"] for r in fetch(db, "SELECT received_id FROM replies")] == ["gap-1"]
    [covered] = fetch(db, "SELECT now() - last_success_at AS behind FROM poll_sweeps")
    assert timedelta(days=1, hours=23) < covered["behind"] < timedelta(days=2, hours=1)  # one day done
    assert client.get("/readyz").get_json()["poller"]["last_received_sweep_at"]  # how far it is covered

    run_once(poll_settings, received_sweep_seconds=0)  # the rest, in the next sweep
    assert [r["received_id"] for r in fetch(db, "SELECT received_id FROM replies ORDER BY 1")] == [
        "gap-1", "gap-2", "gap-3"]
    queries = [parse_qs(q) for _, p, q in fake.requests if p == "/get/sms/received"]
    assert all("dateFrom" in q and "dateTo" in q and "timePeriod" not in q for q in queries)
    starts = [datetime.fromisoformat(q["dateFrom"][0]) for q in queries]
    assert starts[1] == starts[2] and starts[2:] == sorted(starts[2:])  # the failed window asked again, then on
    for start, end in fake.windows:
        assert timedelta(0) < end - start <= timedelta(days=1, hours=1)


def test_beyond_what_bestsms_keeps_the_loss_is_said_once_and_counted(database_url, db, fake, poll_settings):
    fake.windowed = True
    fake.received = [_inbound(8, timedelta(days=8)), _inbound(6, timedelta(days=6))]
    nine_days_back = "INSERT INTO poll_sweeps (name, last_success_at) VALUES ('received', now() - interval '9 days') " \
                     "ON CONFLICT (name) DO UPDATE SET last_success_at = EXCLUDED.last_success_at"

    def unrecoverable() -> float:
        return POLLER.get_sample_value("bestsms_poll_received_unrecoverable_seconds_total") or 0.0

    db.execute(nine_days_back)
    before = unrecoverable()
    run_once(poll_settings, received_sweep_seconds=0)
    assert [r["received_id"] for r in fetch(db, "SELECT received_id FROM replies")] == ["gap-6"]
    assert abs(unrecoverable() - before - 2 * 86400) < 120
    assert min(start for start, _ in fake.windows) > datetime.now(UTC) - timedelta(days=7, hours=2)

    db.execute(nine_days_back)  # the same again, as `poll --once` run by cron: its log says it once
    done = cli(database_url, fake, "poll", "--once", RECEIVED_SWEEP_SECONDS="0", POLL_AFTER_SECONDS="0")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if "cannot be swept" in line]
    assert len(lines) == 1 and lines[0]["level"] == "error"
    assert lines[0]["unswept_from"] < lines[0]["unswept_until"]


# -- DestSeq in any spelling is one recipient; a count never falls for an answer's 0 ---------------

def test_a_destseq_typed_as_a_number_is_the_webhooks_recipient(db, client, fake, poll_settings):
    assert post_flask(client, {"APIKey": TOKEN, "MessageID": "num-1", "DestSeq": "00000001",
                               "Destination": "+61410010001", "Status": "Pending"}).status_code == 200
    fake.add_message("num-1", 2)
    for n, recipient in enumerate(fake.messages["num-1"]["Recipients"], 1):
        recipient["DestSeq"] = n  # tnzapi-ts RecipientDTO: DestSeq?: number
    fake.messages["num-1"]["Recipients"][0]["Destination"] = "+61410010001"
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour'")
    assert run_once(poll_settings) == {"polled": 1}
    rows = fetch(db, "SELECT dest_seq, destination, status FROM recipients ORDER BY dest_seq")
    assert rows == [{"dest_seq": "00000001", "destination": "+61410010001", "status": "Success"},
                    {"dest_seq": "00000002", "destination": "+61400000001", "status": "Success"}]
    # and a webhook's short spelling is the same recipient too
    assert post_flask(client, {"APIKey": TOKEN, "MessageID": "num-1", "DestSeq": "2", "Destination": "+61400000001",
                               "Status": "Success"}).get_json()["status"] in ("duplicate", "stale")
    assert counts(db)["recipients"] == 2


def test_count_0_beside_a_listed_recipient_never_lowers_the_registered_count(db, client, fake, poll_settings):
    registered = client.post("/messages", json={"MessageID": "ID123456", "Recipients": 2},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert registered.status_code == 201
    _serve(fake, "ID123456", DOTNET_STATUS)
    db.execute("UPDATE messages SET first_seen_at = now() - interval '1 hour'")
    assert run_once(poll_settings) == {"polled": 1}
    m = message(db, "ID123456")
    assert (m["recipient_count"], m["complete_count"], m["poll_state"]) == (2, 1, "active")  # one still to come
    [row] = fetch(db, "SELECT dest_seq, status, result FROM recipients")
    assert row == {"dest_seq": "00F16FEE", "status": "Success", "result": "Sent OK"}
