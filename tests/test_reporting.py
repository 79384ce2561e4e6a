"""The reporting views, fed through the webhook endpoint: figures by the account's day and month
(Australia/Sydney here), a month to the cent, final_at kept by the merge rule, and a read-only role."""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support import TOKEN, fetch, post_flask


def result(message_id: str, seq: int, sent: str, status: str = "Success", price: str | None = "0.10",
           sub_account: str = "Clinic", **more: Any) -> dict[str, Any]:
    return {"APIKey": TOKEN, "MessageID": message_id, "DestSeq": f"{seq:08d}", "Destination": f"+6141001000{seq}",
            "Status": status, "Result": {"Success": "delivered", "Failed": "undeliverable"}.get(status, "submitted"),
            "SentTimeUTC_RFC3339": sent, "Price": price or "", "Detail": "SMSParts:1" if price else "",
            "SubAccount": sub_account, "Department": "Reminders", **more}


@pytest.fixture
def month(client, db):
    """March 2026 in Sydney (UTC+11): days start at 13:00 UTC the day before."""
    sends = [
        result("m-1", 1, "2026-03-04T13:30:00Z"),                        # 05 Mar 00:30 in Sydney
        result("m-1", 2, "2026-03-05T12:59:00Z", price="0.07"),          # 05 Mar 23:59
        result("m-1", 3, "2026-03-05T13:01:00Z", price="0.33"),          # 06 Mar 00:01
        result("m-2", 4, "2026-03-05T01:00:00Z", status="Failed", price="0.05"),
        result("m-2", 5, "2026-03-05T02:00:00Z", status="Pending", price=None),
        result("m-3", 1, "2026-03-31T13:30:00Z", price="0.20"),          # 01 Apr 00:30: April's
        result("m-4", 1, "2026-03-10T00:00:00Z", price="0.11", sub_account="Lab"),
    ]
    replies = [
        {"APIKey": TOKEN, "Type": "SMSReply", "Status": "RECEIVED", "ReceivedID": "r-1", "MessageID": "m-1",
         "Destination": "+61410010001", "Message": "Yes", "Price": "0.10", "SubAccount": "Clinic",
         "Department": "Reminders", "SentTimeUTC_RFC3339": "2026-03-05T02:00:00Z"},
        {"APIKey": TOKEN, "Type": "SMSInbound", "Status": "RECEIVED", "ReceivedID": "r-2",
         "Destination": "+61499000001", "Message": "STOP", "Price": "0.04", "SubAccount": "Clinic",
         "Department": "Reminders", "SentTimeUTC_RFC3339": "2026-03-20T02:00:00Z"},
    ]
    for fields in sends + replies:
        response = post_flask(client, fields)
        assert response.status_code == 200, response.get_json()
    return db


def test_delivery_daily_counts_by_the_accounts_day(month):
    rows = fetch(month, "SELECT * FROM delivery_daily WHERE sub_account = 'Clinic' ORDER BY day")
    by_day = {r["day"]: r for r in rows}
    assert set(by_day) == {date(2026, 3, 5), date(2026, 3, 6), date(2026, 4, 1)}
    fifth = by_day[date(2026, 3, 5)]  # 04 Mar 13:30 UTC is already the 5th in Sydney
    assert (fifth["messages"], fifth["recipients"], fifth["delivered"], fifth["failed"], fifth["pending"]) \
        == (2, 4, 2, 1, 1)
    assert fifth["delivery_rate"] == Decimal("0.6667") and fifth["sms_parts"] == 3
    assert fifth["price"] == Decimal("0.22")
    assert by_day[date(2026, 3, 6)]["recipients"] == 1  # 05 Mar 13:01 UTC is the 6th
    [pending_only] = fetch(month, "SELECT delivery_rate FROM delivery_daily WHERE day = '2026-03-05' "
                                  "AND sub_account = 'Clinic'")
    assert pending_only["delivery_rate"] is not None


def test_rebilling_monthly_adds_up_to_the_cent(month):
    rows = fetch(month, "SELECT * FROM rebilling_monthly ORDER BY month, sub_account")
    march = [r for r in rows if r["month"] == date(2026, 3, 1)]
    clinic = next(r for r in march if r["sub_account"] == "Clinic")
    assert (clinic["messages"], clinic["recipients"], clinic["sms_parts"], clinic["replies"]) == (2, 5, 4, 2)
    assert clinic["outbound_price"] == Decimal("0.55")  # 0.10 + 0.07 + 0.33 + 0.05
    assert clinic["inbound_price"] == Decimal("0.14")
    assert clinic["total_price"] == Decimal("0.69")
    lab = next(r for r in march if r["sub_account"] == "Lab")
    assert (lab["recipients"], lab["total_price"], lab["replies"]) == (1, Decimal("0.11"), 0)
    [april] = [r for r in rows if r["month"] == date(2026, 4, 1)]  # 31 Mar 13:30 UTC is April in Sydney
    assert (april["sub_account"], april["total_price"]) == ("Clinic", Decimal("0.20"))
    # Every cent of recipients and replies is billed once.
    [totals] = fetch(month, "SELECT (SELECT sum(price) FROM recipients) + (SELECT sum(price) FROM replies) AS t")
    assert sum(r["total_price"] for r in rows) == totals["t"] == Decimal("1.00")


def test_message_status_failures_and_the_inbox(month):
    status = {r["message_id"]: r for r in fetch(month, "SELECT * FROM message_status")}
    m1, m2 = status["m-1"], status["m-2"]
    assert (m1["recipients"], m1["delivered"], m1["replies"], m1["poll_state"]) == (3, 3, 1, "active")
    assert (m2["failed"], m2["pending"], m2["complete"]) == (1, 1, False)
    assert fetch(month, "SELECT message_id, dest_seq, destination, result FROM failures") == [
        {"message_id": "m-2", "dest_seq": "00000004", "destination": "+61410010004", "result": "undeliverable"}]
    inbox = fetch(month, "SELECT received_id, type, message_id, dest_seq FROM replies_inbox ORDER BY received_id")
    assert inbox == [{"received_id": "r-1", "type": "SMSReply", "message_id": "m-1", "dest_seq": "00000001"},
                     {"received_id": "r-2", "type": "SMSInbound", "message_id": None, "dest_seq": None}]


def test_final_at_is_the_first_final_report_and_feeds_latency(client, month):
    [first] = fetch(month, "SELECT final_at FROM recipients WHERE message_id = 'm-2' AND dest_seq = '00000004'")
    [pending] = fetch(month, "SELECT final_at FROM recipients WHERE message_id = 'm-2' AND dest_seq = '00000005'")
    assert first["final_at"] is not None and pending["final_at"] is None
    # A later final report for the same recipient wins the status, but final_at stays.
    assert post_flask(client, result("m-2", 4, "2026-03-05T03:00:00Z", status="Success")).status_code == 200
    [again] = fetch(month, "SELECT status, final_at FROM recipients WHERE message_id = 'm-2' "
                           "AND dest_seq = '00000004'")
    assert again == {"status": "Success", "final_at": first["final_at"]}
    [latency] = fetch(month, "SELECT * FROM delivery_latency_daily WHERE day = '2026-03-05' AND sub_account = 'Clinic'")
    assert latency["finals"] == 3 and 0 < latency["p50_seconds"] <= latency["p90_seconds"] <= latency["p99_seconds"]


@pytest.fixture
def dashboard_login(database_url: str) -> Any:
    """A login that has the reporting role, as an operator would make for a dashboard."""
    name = f"dash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE reporting")
    yield make_conninfo(database_url, user=name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {name}")


def test_the_reporting_role_reads_every_view_and_changes_nothing(month, dashboard_login):
    with psycopg.connect(dashboard_login, autocommit=True) as conn:
        for view in ("delivery_daily", "rebilling_monthly", "message_status", "failures", "replies_inbox",
                     "delivery_latency_daily", "recipients", "messages", "replies", "webhook_events"):
            conn.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
        for statement in ("DELETE FROM recipients", "UPDATE messages SET poll_state = 'complete'",
                          "INSERT INTO poll_sweeps (name) VALUES ('x')", "CREATE TABLE mine (x int)",
                          "SELECT ensure_message('x', NULL, NULL, NULL)"):  # functions run with its rights
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert fetch(month, "SELECT count(*) AS n FROM recipients") == [{"n": 7}]


def cli(database_url: str, *args: str) -> Any:
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    return subprocess.run([sys.executable, "-m", "receiver", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"})


def test_csv_exports_for_the_people_who_invoice(month, database_url, tmp_path):
    import csv
    import io

    done = cli(database_url, "report", "rebilling", "--month", "2026-03")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["sub_account"] for r in rows] == ["Clinic", "Lab"]
    assert list(rows[0]) == ["month", "sub_account", "department", "messages", "recipients", "sms_parts",
                             "outbound_price", "replies", "inbound_price", "total_price"]
    assert (rows[0]["month"], rows[0]["total_price"]) == ("2026-03-01", "0.6900")
    # Every price with the same four decimals, zero included (it used to be "0" beside "0.00").
    assert {r["inbound_price"] for r in rows} == {"0.1400", "0.0000"}

    out = tmp_path / "lab.csv"
    done = cli(database_url, "report", "rebilling", "--month", "2026-03", "--sub-account", "Lab", "--output", str(out))
    assert done.returncode == 0 and done.stdout == ""
    assert [r["total_price"] for r in csv.DictReader(out.open())] == ["0.1100"]

    done = cli(database_url, "report", "delivery", "--from", "2026-03-05", "--to", "2026-03-06")
    days = [(r["day"], r["sub_account"], r["recipients"]) for r in csv.DictReader(io.StringIO(done.stdout))]
    assert days == [("2026-03-05", "Clinic", "4"), ("2026-03-06", "Clinic", "1")]

    bad = cli(database_url, "report", "rebilling", "--month", "March")
    assert bad.returncode == 2 and "expected a month as YYYY-MM" in bad.stderr
    reversed_ = cli(database_url, "report", "delivery", "--from", "2026-03-06", "--to", "2026-03-05")
    assert reversed_.returncode == 2 and reversed_.stdout == ""
    assert reversed_.stderr.startswith("error: --from 2026-03-06 is after --to 2026-03-05")
    unknown = cli(database_url, "report", "rebilling", "--month", "2026-03", "--sub-account", "clinic")
    assert unknown.returncode == 0 and unknown.stdout.count("\n") == 1  # the header alone
    assert "no rows for sub account 'clinic'" in unknown.stderr and "known: Clinic, Lab" in unknown.stderr


def test_csv_exports_per_sub_account_and_of_opt_outs(month, database_url):
    import csv
    import io

    def rows(*args: str) -> list[dict[str, str]]:
        done = cli(database_url, "report", *args)
        assert done.returncode == 0, done.stderr
        return list(csv.DictReader(io.StringIO(done.stdout)))

    by_sub = rows("rebilling-by-sub-account", "--month", "2026-03")
    by_department = rows("rebilling", "--month", "2026-03")
    assert [(r["sub_account"], r["total_price"]) for r in by_sub] == [("Clinic", "0.6900"), ("Lab", "0.1100")]
    for sub in by_sub:  # the departments' lines, summed
        lines = [r for r in by_department if r["sub_account"] == sub["sub_account"]]
        for column in ("messages", "recipients", "replies"):
            assert int(sub[column]) == sum(int(r[column]) for r in lines)
    opted_out = rows("opt-outs")
    assert [(r["sub_account"], r["from_number"], r["keyword"]) for r in opted_out] == [
        ("Clinic", "+61499000001", "STOP")]
    assert rows("opt-outs", "--sub-account", "Clinic") == opted_out
    assert rows("opt-outs", "--sub-account", "Lab") == []


def test_prune_deletes_old_request_records_only(month, database_url):
    old = month.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC' - interval '100 days')").fetchone()[0]
    day = f"webhook_events_{old:%Y%m%d}"  # the day, as the web made it then
    month.execute(f"CREATE TABLE {day} PARTITION OF webhook_events FOR VALUES FROM ('{old:%Y-%m-%d}+00') "
                  f"TO ('{old + timedelta(days=1):%Y-%m-%d}+00')")
    month.execute("UPDATE webhook_events SET received_at = now() - interval '100 days' WHERE id % 2 = 0")
    before = fetch(month, "SELECT count(*) FILTER (WHERE received_at > now() - interval '90 days') AS young, "
                          "(SELECT count(*) FROM recipients) AS recipients FROM webhook_events")[0]
    done = cli(database_url, "prune", "--events-older-than", "90d")
    assert done.returncode == 0, done.stderr
    after = fetch(month, "SELECT count(*) AS events, (SELECT count(*) FROM recipients) AS recipients "
                         "FROM webhook_events")[0]
    assert after == {"events": before["young"], "recipients": before["recipients"]}
    said = json.loads(done.stdout)
    assert said.pop("received_before")[:10] == (date.today() - timedelta(days=90)).isoformat()
    assert said == {"dropped_days": [day], "deleted_events": 0, "days_made": 0}  # whole


def test_prune_refuses_an_age_under_a_day_unless_told_and_says_why(month, database_url):
    """`0d` was accepted and deleted every one of today's archived requests; `-5d` was argparse's
    "expected one argument"."""
    count = "SELECT count(*) AS n FROM webhook_events"
    before = fetch(month, count)[0]["n"]
    refused = cli(database_url, "prune", "--events-older-than", "0d")
    assert refused.returncode == 1 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1
    assert "under a day" in refused.stderr and "--under-a-day" in refused.stderr
    assert fetch(month, count)[0]["n"] == before > 0
    edge = cli(database_url, "prune", "--events-older-than", "86399s")  # a second under a day
    assert edge.returncode == 1 and "under a day" in edge.stderr
    day = cli(database_url, "prune", "--events-older-than", "24h")  # a day exactly: taken, today's stay
    assert day.returncode == 0 and fetch(month, count)[0]["n"] == before, day.stderr
    negative = cli(database_url, "prune", "--events-older-than", "-5d")
    assert negative.returncode == 2 and "an age is not negative, got '-5d'" in negative.stderr
    helped = cli(database_url, "prune", "--help")
    assert "whole days dropped" in " ".join(helped.stdout.split())
    told = cli(database_url, "prune", "--events-older-than", "0d", "--under-a-day")
    assert told.returncode == 0, told.stderr
    assert json.loads(told.stdout)["deleted_events"] == before and fetch(month, count)[0]["n"] == 0


# -- Grafana: the provisioned dashboards' SQL, run as the reporting role ----------------------------

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"


def expand(sql: str, start: str, end: str, sub_accounts: list[str] | None = None) -> str:
    """Grafana's PostgreSQL macros, expanded the way Grafana does for a time range [start, end], and
    the dashboard's $sub_account as Grafana interpolates it: the chosen values quoted and joined,
    or for All the dashboard's allValue as written (raw)."""
    dashboard = json.loads((GRAFANA / "dashboards" / "bestsms-receiver.json").read_text())
    [variable] = dashboard["templating"]["list"]
    chosen = ",".join("'" + v.replace("'", "''") + "'" for v in sub_accounts) if sub_accounts else variable["allValue"]
    sql = sql.replace("$sub_account", chosen)
    def seconds(interval: str) -> int:
        return int(interval[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[interval[-1]]

    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*'(\w+)'\)",
                 lambda m: f"floor(extract(epoch from {m[1]})/{seconds(m[2])})*{seconds(m[2])} AS \"time\"", sql)
    sql = re.sub(r"\$__timeGroup\((\w+),\s*'(\w+)'\)",
                 lambda m: f"floor(extract(epoch from {m[1]})/{seconds(m[2])})*{seconds(m[2])}", sql)
    sql = re.sub(r"\$__timeFilter\(([\w:]+)\)", lambda m: f"{m[1]} BETWEEN '{start}' AND '{end}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    assert "$__" not in sql, f"a macro this test does not know: {sql}"
    return sql


def panels() -> dict[str, str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "bestsms-receiver.json").read_text())
    return {p["title"]: p["targets"][0]["rawSql"] for p in dashboard["panels"]}


def test_grafana_provisioning_names_one_pinned_datasource():
    datasources = (GRAFANA / "provisioning" / "datasources" / "bestsms-receiver.yml").read_text()
    assert "uid: bestsms-receiver-pg" in datasources and "password: ${BESTSMS_DB_REPORTING_PASSWORD}" in datasources
    dashboard = json.loads((GRAFANA / "dashboards" / "bestsms-receiver.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]} | {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {"bestsms-receiver-pg"}
    assert len(dashboard["panels"]) >= 7


def test_every_dashboard_panel_runs_as_the_reporting_role_with_the_right_figures(month, client, dashboard_login):
    assert post_flask(client, {"APIKey": TOKEN, "MessageID": "bad", "Status": "Success"}).status_code == 400
    march, recent = ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"), ("now() - interval '1 hour'", "now()")
    figures: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dashboard_login, autocommit=True) as conn:
        for title, sql in panels().items():
            for start, end in (march, recent):
                figures[f"{title} {start[:4]}"] = conn.execute(expand(sql, start, end).replace(
                    "'now() - interval '1 hour''", "now() - interval '1 hour'").replace("'now()'", "now()")).fetchall()
    assert figures["Failures by result 2026"] == [("undeliverable", 1)]
    assert [row[1] for row in figures["Replies per hour 2026"]] == [1, 1]
    per_minute = {row[1]: row[2] for row in figures["Webhooks per minute by outcome now("]}
    assert per_minute == {"applied": 9, "rejected": 1}
    [rejected] = figures["Rejected webhooks now("]
    assert rejected[3] == "bad" and "Destination" in rejected[4]
    assert figures["Poller backlog and last error now("] == []  # no poller has run
    with psycopg.connect(dashboard_login, autocommit=True) as conn:
        def chosen(title: str, *subs: str) -> list[tuple[Any, ...]]:
            return conn.execute(expand(panels()[title], *march, sub_accounts=list(subs))).fetchall()

        assert chosen("Failures by result", "Clinic") == [("undeliverable", 1)]
        assert chosen("Failures by result", "Lab") == [] and chosen("Replies per hour", "Lab") == []
        assert chosen("Failures by result", "Lab", "Clinic") == [("undeliverable", 1)]
        latency = chosen("Delivery latency (send to final result), by send time", "Clinic")
    hours = [int(row[0]) for row in figures["Delivery latency (send to final result), by send time 2026"]]
    sent = {int(r["h"]) for r in fetch(month, "SELECT floor(extract(epoch FROM sent_at) / 3600) * 3600 AS h "
                                             "FROM recipients WHERE final_at IS NOT NULL AND sent_at < '2026-04-01'")}
    assert set(hours) == sent and latency  # by the hour each was sent


# -- what billing asks (issue 18): references, replies billed to their message, days, opt-outs ------

def test_a_reply_without_a_sub_account_is_billed_to_its_message(client, db):
    assert post_flask(client, result("bill-1", 1, "2026-03-05T01:00:00Z", sub_account="Clinic")).status_code == 200
    reply = {"APIKey": TOKEN, "Type": "SMSReply", "Status": "RECEIVED", "ReceivedID": "bill-r", "MessageID": "bill-1",
             "Destination": "+61410010001", "Message": "Yes", "Price": "0.10", "SubAccount": "", "Department": "",
             "SentTimeUTC_RFC3339": "2026-03-05T02:00:00Z"}
    assert post_flask(client, reply).status_code == 200
    [row] = fetch(db, "SELECT sub_account, department FROM replies")
    assert row == {"sub_account": "Clinic", "department": "Reminders"}
    [march] = fetch(db, "SELECT * FROM rebilling_monthly WHERE month = '2026-03-01'")
    assert (march["sub_account"], march["replies"], march["inbound_price"], march["total_price"]) == \
        ("Clinic", 1, Decimal("0.10"), Decimal("0.20"))


def test_failures_and_the_inbox_have_the_accounts_day(month):
    [failure] = fetch(month, "SELECT day, reference, remote_id FROM failures")
    assert failure == {"day": date(2026, 3, 5), "reference": None, "remote_id": None}
    days = {r["received_id"]: r["day"] for r in fetch(month, "SELECT received_id, day FROM replies_inbox")}
    assert days == {"r-1": date(2026, 3, 5), "r-2": date(2026, 3, 20)}


def test_delivery_by_sub_account_is_its_own_rate_not_an_average(client, db):
    # D0: 8 of 9 delivered; D1: 1 of 1. The sub account: 9 of 10 (0.9), not (0.8889 + 1) / 2.
    sends = [result("rate-1", 1, "2026-03-05T01:00:00Z", status="Failed", Department="D0"),
             result("rate-1", 2, "2026-03-05T01:00:00Z", Department="D1")]
    sends += [result("rate-2", n, "2026-03-05T01:00:00Z", Department="D0") for n in range(1, 9)]
    for fields in sends:
        assert post_flask(client, fields).status_code == 200
    [row] = fetch(db, "SELECT * FROM delivery_daily_by_sub_account")
    assert (row["day"], row["sub_account"], row["messages"], row["recipients"], row["delivered"], row["failed"]) == \
        (date(2026, 3, 5), "Clinic", 2, 10, 9, 1)
    assert row["delivery_rate"] == Decimal("0.9000")
    by_department = fetch(db, "SELECT delivery_rate FROM delivery_daily ORDER BY department")
    assert [r["delivery_rate"] for r in by_department] == [Decimal("0.8889"), Decimal("1.0000")]  # not 0.9


def test_opt_outs_the_latest_keyword_of_each_number_wins(client, db):
    def inbound(n: int, text: str, when: str) -> None:
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "Status": "RECEIVED", "ReceivedID": f"opt-{n}",
                  "Destination": f"+6149900000{n % 3}", "Message": text, "SubAccount": "Clinic",
                  "SentTimeUTC_RFC3339": when}
        assert post_flask(client, fields).status_code == 200

    inbound(0, "Stop!", "2026-03-01T00:00:00Z")           # +61499000000 opts out ...
    inbound(3, "start", "2026-03-02T00:00:00Z")           # ... and back in
    inbound(1, " Opt-out. ", "2026-03-01T00:00:00Z")      # +61499000001: out
    inbound(4, "Start again later?", "2026-03-03T00:00:00Z")  # not a keyword alone: stays out
    inbound(2, "UNSUBSCRIBE", "2026-03-01T00:00:00Z")     # +61499000002: out
    inbound(5, "Yes", "2026-03-04T00:00:00Z")
    rows = fetch(db, "SELECT from_number, opted_out, keyword, received_id FROM opt_outs ORDER BY from_number")
    assert rows == [
        {"from_number": "+61499000000", "opted_out": False, "keyword": "START", "received_id": "opt-3"},
        {"from_number": "+61499000001", "opted_out": True, "keyword": "OPTOUT", "received_id": "opt-1"},
        {"from_number": "+61499000002", "opted_out": True, "keyword": "UNSUBSCRIBE", "received_id": "opt-2"},
    ]
    db.execute("INSERT INTO opt_out_keywords (keyword, opts_out) VALUES ('YES', false)")  # a DBA extends the list
    assert fetch(db, "SELECT opted_out, keyword FROM opt_outs WHERE from_number = '+61499000002'") == \
        [{"opted_out": False, "keyword": "YES"}]


def test_message_status_and_failures_carry_the_senders_reference(client, db):
    response = client.post("/messages", json={"MessageID": "ref-1", "Reference": "Appointment 4pm Fri"},
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 201
    assert post_flask(client, result("ref-1", 1, "2026-03-05T01:00:00Z", status="Failed")).status_code == 200
    assert fetch(db, "SELECT reference FROM message_status") == [{"reference": "Appointment 4pm Fri"}]
    assert fetch(db, "SELECT reference FROM failures") == [{"reference": "Appointment 4pm Fri"}]


def test_a_reply_before_its_message_is_known_is_billed_once_the_message_is(client, db):
    reply = {"APIKey": TOKEN, "Type": "SMSReply", "Status": "RECEIVED", "ReceivedID": "early-r",
             "MessageID": "early-1", "Destination": "+61410010001", "Message": "Yes", "Price": "0.10",
             "SentTimeUTC_RFC3339": "2026-03-05T02:00:00Z"}
    assert post_flask(client, reply).status_code == 200
    assert fetch(db, "SELECT sub_account FROM replies") == [{"sub_account": None}]
    assert post_flask(client, result("early-1", 1, "2026-03-05T01:00:00Z", sub_account="Lab")).status_code == 200
    assert fetch(db, "SELECT sub_account, department FROM replies") == \
        [{"sub_account": "Lab", "department": "Reminders"}]
    [march] = fetch(db, "SELECT sub_account, replies FROM rebilling_monthly WHERE month = '2026-03-01'")
    assert march == {"sub_account": "Lab", "replies": 1}


def test_report_month_is_inlined_and_gives_every_days_month_in_any_session_zone(db):
    """report_month() goes through timestamp, so PostgreSQL inlines it (a SQL function it cannot
    inline runs for every recipient written); it names the first day of report_day()'s month for
    every day of 2000-2100, as the timestamptz body before migration 0008 did, whatever the
    session's TimeZone: the indexes built with the old body keep valid entries."""
    with db.cursor() as cur:
        plan = cur.execute("EXPLAIN (VERBOSE) SELECT report_month(now())").fetchall()
        assert "report_month" not in " ".join(r[0] for r in plan), plan  # inlined: its body, not a call
        cur.execute("SET enable_seqscan = off")  # the views' month still finds the indexes on it
        plan = cur.execute("EXPLAIN SELECT * FROM rebilling_monthly WHERE month = '2026-03-01'").fetchall()
        assert {"recipients_report_month_idx", "replies_report_month_idx"} <= set(re.findall(r"\w+_idx", str(plan)))
        cur.execute("RESET enable_seqscan")
        for zone in ("UTC", "Australia/Sydney", "America/Sao_Paulo", "Pacific/Kiritimati", "America/Havana"):
            cur.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
            (differ,) = cur.execute("""
                SELECT count(*) FROM generate_series(timestamptz '2000-01-01', '2100-12-31', interval '1 day') AS d,
                     LATERAL (VALUES (d), (d + interval '13 hours'), (d + interval '23 hours 59 minutes')) AS t(at)
                WHERE report_month(t.at) IS DISTINCT FROM date_trunc('month', report_day(t.at)::timestamptz)::date
                   OR report_month(t.at) <> date_trunc('month', report_day(t.at))::date""").fetchone()
            assert differ == 0, zone


# -- opt-outs from a ledger: the whole message decides ------------------------------------------------

# What a reply says, and whether its whole text is a keyword, as people write them (case, spacing,
# punctuation, emoji) beside sentences that merely start or end with one.
_OPT_OUT_TEXTS = {
    "STOP": "STOP", "stop": "STOP", " Stop! ": "STOP", "STOP 🛑": "STOP", "S.T.O.P.": "STOP", "stop\n": "STOP",
    "Unsubscribe.": "UNSUBSCRIBE", "Opt-out": "OPTOUT", "opt  out": "OPT OUT", "Stop all": "STOP ALL",
    "Cancel": "CANCEL", "cancel!!": "CANCEL", "START": "START", "Unstop": "UNSTOP", "quit": "QUIT",
    "Cancel my appointment please": None, "STOP please": None, "Please stop": None, "stopping by at 4": None,
    "End of the day works": None, "Yes, see you at 10 👍": None, "Start time?": None, "STOP2": None,
}


def _whole_message(text: str) -> str:
    """The documented rule, written again here: upper case, punctuation and symbols dropped,
    whitespace one space."""
    letters = "".join(c for c in text if c.isalnum() or c.isspace())
    return " ".join(letters.split()).upper()


def test_opt_outs_from_a_generated_ledger_follow_the_whole_message_rule(client, db):
    """300 numbers, 1 to 4 replies each from two sub accounts, in an order and wording drawn at
    random; Clinic-North has turned CANCEL off (its patients reply CANCEL to cancel a visit). Both
    views, and the CLI's export, match the rule applied to the ledger in Python."""
    import random

    keywords = {r["keyword"]: r["opts_out"] for r in fetch(db, "SELECT keyword, opts_out FROM opt_out_keywords")}
    db.execute("INSERT INTO opt_out_keywords (keyword, opts_out, sub_account) VALUES ('CANCEL', NULL, 'Clinic-North')")
    rng = random.Random(28)
    texts = list(_OPT_OUT_TEXTS)
    ledger = []
    for n in range(300):
        number = f"+614990{n:05d}"
        for k in range(rng.randint(1, 4)):
            ledger.append({"number": number, "sub": rng.choice(["Clinic-North", "Clinic-South"]),
                           "text": rng.choice(texts), "at": f"2026-03-{1 + k:02d}T0{rng.randint(0, 9)}:00:00Z",
                           "id": f"led-{n}-{k}"})
    rng.shuffle(ledger)  # arrival order is not time order
    for entry in ledger:
        fields = {"APIKey": TOKEN, "Type": "SMSInbound", "Status": "RECEIVED", "ReceivedID": entry["id"],
                  "Destination": entry["number"], "Message": entry["text"], "SubAccount": entry["sub"],
                  "SentTimeUTC_RFC3339": entry["at"]}
        assert post_flask(client, fields).status_code == 200

    def says(entry: dict[str, Any]) -> tuple[str, bool] | None:
        word = _whole_message(entry["text"])
        assert word == (_OPT_OUT_TEXTS[entry["text"]] or word)  # the rule as this test reads the table above
        if (word == "CANCEL" and entry["sub"] == "Clinic-North") or word not in keywords:
            return None
        return word, keywords[word]

    latest: dict[Any, tuple[str, dict[str, Any], tuple[str, bool]]] = {}
    latest_by_sub: dict[Any, tuple[str, dict[str, Any], tuple[str, bool]]] = {}
    for entry in ledger:
        if (said := says(entry)) is None:
            continue
        for table, key in ((latest, entry["number"]), (latest_by_sub, (entry["sub"], entry["number"]))):
            order = (entry["at"], entry["id"])
            if key not in table or order > table[key][0]:
                table[key] = (order, entry, said)
    want = sorted((num, said[1], said[0]) for num, (_, _, said) in latest.items())
    got = fetch(db, "SELECT from_number, opted_out, keyword FROM opt_outs ORDER BY 1")
    assert [(r["from_number"], r["opted_out"], r["keyword"]) for r in got] == want
    want_by_sub = sorted((sub, num, said[1], said[0]) for (sub, num), (_, _, said) in latest_by_sub.items())
    got = fetch(db, "SELECT sub_account, from_number, opted_out, keyword FROM opt_outs_by_sub_account ORDER BY 1, 2")
    assert [(r["sub_account"], r["from_number"], r["opted_out"], r["keyword"]) for r in got] == want_by_sub
    opted_out = sum(said[1] for _, _, said in latest.values())
    sentences = sum(1 for e in ledger if _OPT_OUT_TEXTS[e["text"]] is None and e["text"].split()[0].upper().strip(
        ",.!") in keywords)
    assert 50 < opted_out < 300 and sentences > 50  # the ledger tried both sides of the rule
    print(f"\nledger: {len(ledger)} replies, {sentences} sentences starting with a keyword; {opted_out} opted out")
