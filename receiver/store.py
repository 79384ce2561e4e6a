"""All SQL the service runs, as named statements, and the functions that run them.

The merge rule itself is in schema.sql (apply_result, apply_reply), so that webhooks and polls
use one rule and each application is one atomic statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

APPLY = {
    "result": """apply_result(
        %(message_id)s::text, %(dest_seq)s::text, %(destination)s::text, %(type)s::text,
        %(status)s::text, %(result)s::text, %(sent_at)s::timestamptz, %(price)s::numeric,
        %(sms_parts)s::integer, %(sub_account)s::text, %(department)s::text,
        %(job_number)s::text, %(contact_id)s::text, %(detail)s::text, %(source)s::text)""",
    "reply": """apply_reply(
        %(received_id)s::text, %(message_id)s::text, %(type)s::text, %(from_number)s::text,
        %(message_text)s::text, %(received_at)s::timestamptz, %(sub_account)s::text,
        %(department)s::text, %(job_number)s::text, %(contact_id)s::text, %(detail)s::text,
        %(source)s::text)""",
}

_EVENT_COLUMNS = "method, format, content_type, headers, query_string, body, kind, message_id"
_EVENT_VALUES = """%(ev_method)s::text, %(ev_format)s::text, %(ev_content_type)s::text,
    %(ev_headers)s::jsonb, %(ev_query_string)s::text, %(ev_body)s::text, %(ev_kind)s::text,
    %(ev_message_id)s::text"""

# A webhook: its event row and its effect, in one statement and so one transaction.
RECORD_EVENT = {
    kind: f"""
WITH applied AS MATERIALIZED (SELECT * FROM {call}),
event AS (
    INSERT INTO webhook_events ({_EVENT_COLUMNS}, outcome)
    SELECT {_EVENT_VALUES}, applied.outcome FROM applied
    RETURNING id)
SELECT event.id AS event_id, applied.* FROM event, applied"""
    for kind, call in APPLY.items()
}

RECORD_REJECTED = f"""
INSERT INTO webhook_events ({_EVENT_COLUMNS}, outcome, error)
VALUES ({_EVENT_VALUES}, 'rejected', %(ev_error)s::text)
RETURNING id AS event_id"""

# Reprocessing: the stored event's effect through today's code, and its outcome brought up to date.
REAPPLY_EVENT = {
    kind: f"""
WITH applied AS MATERIALIZED (SELECT * FROM {call}),
event AS (
    UPDATE webhook_events SET kind = %(ev_kind)s::text, message_id = %(ev_message_id)s::text,
                              outcome = applied.outcome, error = NULL, reprocessed_at = now()
    FROM applied WHERE id = %(ev_id)s
    RETURNING id)
SELECT event.id AS event_id, applied.* FROM event, applied"""
    for kind, call in APPLY.items()
}

REREJECT_EVENT = """
UPDATE webhook_events SET kind = %(ev_kind)s::text, message_id = %(ev_message_id)s::text,
                          outcome = 'rejected', error = %(ev_error)s::text, reprocessed_at = now()
WHERE id = %(ev_id)s
RETURNING id AS event_id"""

SELECT_EVENTS_TO_REPROCESS = """
SELECT id, method, format, content_type, query_string, body FROM webhook_events
WHERE (%(rejected)s::boolean IS FALSE OR outcome = 'rejected')
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR received_at < %(until)s::timestamptz)
  AND id > %(after_id)s::bigint
ORDER BY id LIMIT %(limit)s::integer"""

PING = "SELECT 1"


@dataclass(frozen=True)
class Request:
    """What is kept of one webhook request (secrets already removed)."""

    method: str
    format: str | None
    content_type: str | None
    headers: Mapping[str, str]
    query_string: str | None
    body: str | None

    def params(self, kind: str | None, message_id: str | None) -> dict[str, Any]:
        return {
            "ev_method": self.method, "ev_format": self.format, "ev_content_type": self.content_type,
            "ev_headers": Jsonb(dict(self.headers)), "ev_query_string": self.query_string,
            "ev_body": self.body, "ev_kind": kind, "ev_message_id": message_id,
        }


def record_event(conn: Connection[Any], kind: str, event: Mapping[str, Any], req: Request) -> dict[str, Any]:
    """Apply a validated webhook event and store its request, atomically. Returns event_id, outcome..."""
    params = {**event, "source": "webhook", **req.params(kind, event.get("message_id"))}
    return _one(conn, RECORD_EVENT[kind], params)


def record_rejected(conn: Connection[Any], req: Request, error: str,
                    kind: str | None = None, message_id: str | None = None) -> int:
    """Store a request that could not be applied, with the reason, so it can be reprocessed."""
    params = {**req.params(kind, message_id), "ev_error": error}
    return int(_one(conn, RECORD_REJECTED, params)["event_id"])


def reapply_event(conn: Connection[Any], event_id: int, kind: str, event: Mapping[str, Any]) -> dict[str, Any]:
    params = {**event, "source": "webhook", "ev_id": event_id, "ev_kind": kind,
              "ev_message_id": event.get("message_id")}
    return _one(conn, REAPPLY_EVENT[kind], params)


def rereject_event(conn: Connection[Any], event_id: int, error: str,
                   kind: str | None = None, message_id: str | None = None) -> None:
    conn.execute(REREJECT_EVENT, {"ev_id": event_id, "ev_error": error, "ev_kind": kind,
                                  "ev_message_id": message_id})


def events_to_reprocess(conn: Connection[Any], *, rejected: bool, since: datetime | None,
                        until: datetime | None, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(SELECT_EVENTS_TO_REPROCESS, {"rejected": rejected, "since": since, "until": until,
                                                 "after_id": after_id, "limit": limit})
        return cur.fetchall()


def ping(conn: Connection[Any]) -> None:
    conn.execute(PING)


def _one(conn: Connection[Any], query: str, params: Mapping[str, Any]) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    assert row is not None, "statement returned no row"
    return row
