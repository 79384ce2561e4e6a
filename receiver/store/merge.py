"""The merge functions (migrations/replaceable/24_apply_result.sql, 25_apply_reply.sql) as the code
calls them: with named arguments, one event, or many in one statement (a poll page)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection

from .base import one

# -- the merge functions ----------------------------------------------------------------------------


# The parameters of the merge functions in schema.sql (each named p_<name> there), with their SQL
# types. Calls name every argument (`apply_result(p_message_id => ...)`), so order cannot matter
# and a name the function lacks is an error, not a value in the wrong column. The events that
# fill them are built in bestsms/events.py (RESULT_FIELDS, REPLY_FIELDS: these less `source`).
ARGS = {
    "result": (("message_id", "text"), ("dest_seq", "text"), ("destination", "text"), ("type", "text"),
               ("status", "text"), ("result", "text"), ("sent_at", "timestamptz"), ("price", "numeric"),
               ("sms_parts", "integer"), ("sub_account", "text"), ("department", "text"),
               ("job_number", "text"), ("contact_id", "text"), ("detail", "text"), ("source", "text"),
               ("reported_at", "timestamptz")),  # when the report was received (NULL: now)
    "reply": (("received_id", "text"), ("message_id", "text"), ("type", "text"), ("from_number", "text"),
              ("message_text", "text"), ("received_at", "timestamptz"), ("sub_account", "text"),
              ("department", "text"), ("job_number", "text"), ("contact_id", "text"), ("detail", "text"),
              ("source", "text"), ("price", "numeric"), ("dest_seq", "text")),
}


def call(kind: str, value: str) -> str:
    """`apply_<kind>(p_a => <value of a>, ...)`, `value` formatted with each argument's name and type."""
    args = ", ".join(f"p_{name} => {value.format(name=name, type=type_)}" for name, type_ in ARGS[kind])
    return f"apply_{kind}({args})"


# One event: apply_result(p_message_id => %(message_id)s::text, ...).
APPLY = {kind: call(kind, "%({name})s::{type}") for kind in ARGS}


def recordset(columns: Mapping[str, str]) -> str:
    """Rows from one JSON array parameter, `%(events)s` (each object one row, in order), typed by
    `columns`: how a batch of events reaches SQL, whatever its length, as one text parameter."""
    return f"json_to_recordset(%(events)s::json) AS e({', '.join(f'{n} {t}' for n, t in columns.items())})"


def events_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, default=json_value, ensure_ascii=False)


def call_arguments(kind: str, event: Mapping[str, Any], source: str) -> dict[str, Any]:
    """An event's values for its merge function (`ARGS[kind]`), as one row of a `recordset`."""
    return {**{name: event.get(name) for name, _ in ARGS[kind]}, "source": source}



# Many events (a poll page) in one statement: each row through the same function, in order.
APPLY_MANY = {
    kind: f"""
SELECT count(*) FILTER (WHERE a.outcome = 'applied') AS changed, count(*) AS total
FROM {recordset(dict(args))}
CROSS JOIN LATERAL {call(kind, "e.{name}")} AS a"""
    for kind, args in ARGS.items()
}



def apply_many(conn: Connection[Any], kind: str, events: list[Mapping[str, Any]], source: str) -> tuple[int, int]:
    """Apply a batch of events (one poll page) in one statement; returns (rows changed, rows seen)."""
    items = [call_arguments(kind, e, source) for e in events]
    row = one(conn, APPLY_MANY[kind], {"events": events_json(items)})
    return int(row["changed"]), int(row["total"])


def json_value(value: Any) -> str:
    """Event values JSON has no type for, as PostgreSQL reads them (times in ISO 8601, exact decimals)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not a value an event holds: {type(value).__name__}")
