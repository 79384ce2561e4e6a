"""The merge rule (apply_result in schema.sql) against the real database: order never matters."""

from __future__ import annotations

import itertools
import os
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import store
from tests.support import fetch

T0 = datetime(2025, 6, 12, 20, 44, 30, tzinfo=UTC)
DESTINATIONS = ("+61410010001", "+61410010002")
# Columns a reader sees; id, message_id and bookkeeping times legitimately differ between runs.
COMPARED = ("dest_seq, destination, type, status, result, sent_at, price, sms_parts, sub_account, "
            "department, job_number, contact_id, detail, source, reported_at")
DAYS_AHEAD = 3 * 24 * 60  # minutes: a sender's clock days ahead of the report's receipt


def event(message_id: str, recipient: int = 0, *, with_seq: bool = False, status: str = "Success",
          result: str | None = "delivered", minutes: int = 0, price: Decimal | None = None,
          sub_account: str | None = "Clinic", source: str = "webhook", parts: bool = True,
          received: int | None = None) -> dict[str, Any]:
    """A report sent `minutes` after T0 and received `received` minutes after T0 (by default when sent)."""
    return {
        "message_id": message_id, "dest_seq": f"0000000{recipient + 1}" if with_seq else None,
        "destination": DESTINATIONS[recipient], "type": "SMS", "status": status, "result": result,
        "sent_at": T0 + timedelta(minutes=minutes), "price": price, "sms_parts": 1 if parts else None,
        "sub_account": sub_account, "department": sub_account and "Reminders", "job_number": "10AB20CE",
        "contact_id": None, "detail": "SMSParts:1" if parts else None, "source": source,
        "reported_at": T0 + timedelta(minutes=minutes if received is None else received),
    }


def apply(conn: psycopg.Connection[Any], ev: dict[str, Any]) -> str:
    """One event through the merge function, called as the store calls it (named arguments)."""
    return str(store.rows(conn, f"SELECT * FROM {store.APPLY['result']}", ev)[0]["outcome"])


def final_rows(conn: psycopg.Connection[Any], message_id: str) -> list[dict[str, Any]]:
    return fetch(conn, f"SELECT {COMPARED} FROM recipients WHERE message_id = %s ORDER BY destination", message_id)


events_strategy = st.lists(
    st.fixed_dictionaries({
        "recipient": st.integers(0, 1),
        "with_seq": st.booleans(),
        "status": st.sampled_from(["Success", "Failed", "Pending"]),
        "result": st.sampled_from(["delivered", "Expired", "Submitted", None]),
        "minutes": st.sampled_from([0, 1, 2, DAYS_AHEAD, DAYS_AHEAD + 1]),  # few times: ties are common
        "received": st.integers(0, 2),
        # A recipient has one price, reported as 0.1 or 0.10, or not at all (Pending, some polls).
        "price": st.sampled_from([None, Decimal("0.1"), Decimal("0.10")]),
        "parts": st.booleans(),
        "sub_account": st.sampled_from([None, "Clinic"]),
        "source": st.sampled_from(["webhook", "poll"]),
    }),
    min_size=1, max_size=7,
)
_counter = itertools.count()


@settings(max_examples=int(os.environ.get("MERGE_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, data=st.data())
def test_same_events_in_any_order_and_multiplicity_give_the_same_rows(db, events, data):
    n = next(_counter)
    order = data.draw(st.permutations(range(len(events))), label="order")
    repeats = data.draw(st.lists(st.integers(1, 2), min_size=len(events), max_size=len(events)), label="repeats")
    a, b = f"prop-{n}-a", f"prop-{n}-b"
    for spec in events:
        apply(db, event(a, **spec))
    for i in order:
        for _ in range(repeats[i]):
            apply(db, event(b, **events[i]))
    rows_a, rows_b = final_rows(db, a), final_rows(db, b)
    assert rows_a == rows_b, (events, order, rows_a, rows_b)
    # never two rows for one recipient
    assert len(rows_a) == len({ev["recipient"] for ev in events})
    # a final status is never replaced by Pending
    for row in rows_a:
        statuses = {ev["status"] for ev in events if DESTINATIONS[ev["recipient"]] == row["destination"]}
        if statuses & {"Success", "Failed"}:
            assert row["status"] in ("Success", "Failed")




def test_every_permutation_of_a_typical_history(db):
    """Pending, then delivered, then a late contradicting Failed, each twice, plus a poll: 4! orders."""
    history = [
        {"status": "Pending", "result": "Submitted", "minutes": 0},
        {"status": "Success", "result": "delivered", "minutes": 1, "price": Decimal("0.10")},
        {"status": "Failed", "result": "Expired", "minutes": 2, "with_seq": True},
        {"status": "Success", "result": "delivered", "minutes": 1, "price": Decimal("0.1"), "source": "poll",
         "with_seq": True},
    ]
    results = set()
    for n, order in enumerate(itertools.permutations(history)):
        mid = f"perm-{n}"
        for spec in order + order:
            apply(db, event(mid, **spec))
        [row] = final_rows(db, mid)
        results.add(tuple(row.values()))
        assert (row["status"], row["result"], row["dest_seq"]) == ("Failed", "Expired", "00000001")
    assert len(results) == 1


def test_outcomes_report_what_happened(db):
    assert apply(db, event("o", status="Pending", result="Submitted")) == "applied"
    assert apply(db, event("o")) == "applied"
    assert apply(db, event("o")) == "duplicate"
    assert apply(db, event("o", with_seq=True, source="poll", parts=False)) == "applied"  # adopts DestSeq
    assert apply(db, event("o", with_seq=True, source="poll", parts=False)) == "duplicate"  # nothing new
    assert apply(db, event("o", status="Pending", result="Submitted", minutes=5)) == "stale"
    assert apply(db, event("o", status="Failed", result="Expired", minutes=3)) == "applied"
    [row] = final_rows(db, "o")
    assert (row["status"], row["sms_parts"], row["detail"], row["source"]) == ("Failed", 1, "SMSParts:1", "webhook")


@pytest.mark.parametrize("with_seq", [False, True])
def test_concurrent_first_results_for_one_recipient_make_one_row(database_url, db, with_seq):
    """Many connections racing to create the same recipient: one row, every event merged."""
    threads, barrier = 8, threading.Barrier(8)
    outcomes: list[str] = []

    def worker(i: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            outcomes.append(apply(conn, event("race", with_seq=with_seq and i % 2 == 0, minutes=i % 3)))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    rows = final_rows(db, "race")
    assert len(rows) == 1 and len(outcomes) == threads
    assert rows[0]["sent_at"] == T0 + timedelta(minutes=2)  # the latest of the racing events won
    assert rows[0]["dest_seq"] == ("00000001" if with_seq else None)


def test_a_report_that_changes_nothing_takes_no_row_lock(database_url, db):
    """Each poll confirms final recipients again: those duplicates (and older reports) are answered
    from a plain read, even while another transaction holds the row; a report that changes the row
    still waits for its lock."""
    assert apply(db, event("lk", with_seq=True, minutes=2)) == "applied"
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM recipients WHERE message_id = 'lk' FOR UPDATE")
        db.execute("SET lock_timeout = '300ms'")
        try:
            assert apply(db, event("lk", with_seq=True, minutes=2)) == "duplicate"
            assert apply(db, event("lk", with_seq=True, minutes=2, source="poll", parts=False)) == "duplicate"
            assert apply(db, event("lk", with_seq=True, status="Pending", result="Submitted")) == "stale"
            with pytest.raises(psycopg.errors.LockNotAvailable):
                apply(db, event("lk", with_seq=True, status="Failed", result="Expired", minutes=3))
        finally:
            db.execute("RESET lock_timeout")
        holder.rollback()
    assert apply(db, event("lk", with_seq=True, status="Failed", result="Expired", minutes=3)) == "applied"
    [row] = final_rows(db, "lk")
    assert (row["status"], row["result"]) == ("Failed", "Expired")


def test_the_merges_sql_functions_are_inlined_where_they_are_called(db):
    """credible_time() and recipient_order_key() are plain SQL the planner inlines into the merge
    (declared IMMUTABLE over a STABLE body, each call ran an executor of its own: 4 times the CPU)."""
    db.execute("SET plan_cache_mode = force_generic_plan")
    db.execute("PREPARE keyed (text, timestamptz, timestamptz, text, text) AS "
               "SELECT recipient_order_key($1, $2, $3, $4, $5), credible_time($2, $3)")
    plan = "\n".join(row[0] for row in db.execute(
        "EXPLAIN VERBOSE EXECUTE keyed ('Success', now(), now(), 'delivered', 'webhook')").fetchall())
    assert "recipient_order_key" not in plan and "credible_time" not in plan, plan
    assert "md5" in plan  # the key's body, in place of the call
