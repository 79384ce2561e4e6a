"""Recording webhooks (each request's event row and its effect, a batch in one statement) and
reprocessing the stored ones through today's code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import Connection

from .base import one, rows
from .merge import APPLY, ARGS, call, call_arguments, events_json, recordset

# -- webhooks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """What is kept of one webhook request (secrets already removed)."""

    method: str
    format: str | None
    content_type: str | None
    headers: Mapping[str, str]
    query_string: str | None
    body: str | None


@dataclass(frozen=True)
class Webhook:
    """One webhook as it is recorded: its request and, when it was valid, the event it carries
    (`kind`, `event`); else (`event` None) why it was rejected (`error`). A valid event's `note`
    (a field refused without refusing the event) is kept as the row's `error`."""

    request: Request
    kind: str | None
    event: Mapping[str, Any] | None
    message_id: str | None
    error: str | None = None

    def rejected(self, error: str) -> Webhook:
        return replace(self, event=None, error=error)

    def size(self) -> int:
        """About how many characters its row takes (the stored body and query string dominate)."""
        r = self.request
        return 1000 + len(r.body or "") + len(r.query_string or "") + sum(map(len, r.headers.values()))

    def _row(self, i: int) -> dict[str, Any]:
        r, event, kind = self.request, self.event, self.kind
        if event is not None and kind is not None:
            arguments, error = call_arguments(kind, event, "webhook"), event.get("note")
        else:
            arguments, error = {}, self.error
        return {
            "i": i, "kind": kind, "valid": bool(arguments), **arguments,
            "ev_method": r.method, "ev_format": r.format, "ev_content_type": r.content_type,
            "ev_headers": r.headers, "ev_query_string": r.query_string, "ev_body": r.body,
            "ev_message_id": self.message_id, "ev_error": error,
        }

    def _lock_order(self) -> tuple[str, str]:
        event = self.event or {}
        return self.message_id or "", event.get("dest_seq") or event.get("received_id") or ""


# Webhooks, recorded together (group commit: see receiver/batch.py): each one's event row, and
# its effect through the merge function of its kind when it was valid, in one statement and so
# one transaction. The webhooks arrive as one JSON array (`recordset`) in the order they are
# applied (sorted, so that concurrent batches take row locks in one order); the event rows are
# inserted in that order, so their ids, ranked, map back to `i`.
_WEBHOOK_COLUMNS = {
    "i": "integer", "kind": "text", "valid": "boolean",
    **{name: type_ for args in ARGS.values() for name, type_ in args},
    "ev_method": "text", "ev_format": "text", "ev_content_type": "text", "ev_headers": "jsonb",
    "ev_query_string": "text", "ev_body": "text", "ev_message_id": "text", "ev_error": "text",
}
RECORD_WEBHOOKS = f"""
WITH e AS MATERIALIZED (SELECT * FROM {recordset(_WEBHOOK_COLUMNS)}),
applied AS MATERIALIZED (
    SELECT e.i, a.* FROM e CROSS JOIN LATERAL (
        SELECT r.outcome, r.won, r.previous_status, r.previous_result FROM {call("result", "e.{name}")} AS r
        WHERE e.valid AND e.kind = 'result'
        UNION ALL
        SELECT r.outcome, NULL::boolean, NULL::text, NULL::text FROM {call("reply", "e.{name}")} AS r
        WHERE e.valid AND e.kind = 'reply') AS a),
event AS (
    INSERT INTO webhook_events (method, format, content_type, headers, query_string, body, kind,
                                message_id, outcome, error)
    SELECT e.ev_method, e.ev_format, e.ev_content_type, e.ev_headers, e.ev_query_string, e.ev_body,
           e.kind, e.ev_message_id, coalesce(applied.outcome, 'rejected'), e.ev_error
    FROM e LEFT JOIN applied USING (i) ORDER BY e.i
    RETURNING id, outcome, error)
SELECT ranked.id AS event_id, ranked.outcome, ranked.error, applied.won, applied.previous_status,
       applied.previous_result
FROM (SELECT *, row_number() OVER (ORDER BY id) AS i FROM event) AS ranked LEFT JOIN applied USING (i)
ORDER BY ranked.i"""


def record_webhooks(conn: Connection[Any], webhooks: Sequence[Webhook]) -> list[dict[str, Any]]:
    """Record webhooks in one statement (one transaction): each one's event row, and the effect of
    each valid one. Returns, in the order given, each one's event_id, outcome, error, and for a
    result whether it won and the recipient's previous status and result."""
    order = sorted(range(len(webhooks)), key=lambda n: webhooks[n]._lock_order())
    items = [webhooks[n]._row(i) for i, n in enumerate(order, 1)]
    stored = rows(conn, RECORD_WEBHOOKS, {"events": events_json(items)})
    if len(stored) != len(webhooks):
        raise RuntimeError(f"{len(webhooks)} webhooks recorded as {len(stored)} rows")
    answers: list[dict[str, Any]] = [{}] * len(webhooks)
    for n, row in zip(order, stored, strict=True):
        answers[n] = row
    return answers



# -- reprocessing -----------------------------------------------------------------------------------

SELECT_EVENTS_TO_REPROCESS = """
SELECT id, received_at, method, format, content_type, query_string, body FROM webhook_events
WHERE (%(rejected)s::boolean IS FALSE OR outcome = 'rejected')
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR received_at < %(until)s::timestamptz)
  AND id > %(after_id)s::bigint
ORDER BY id LIMIT %(limit)s::integer"""


def events_to_reprocess(conn: Connection[Any], *, rejected: bool, since: datetime | None,
                        until: datetime | None, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
    """The next stored webhook requests to parse again, oldest first, after `after_id`."""
    return rows(conn, SELECT_EVENTS_TO_REPROCESS, {"rejected": rejected, "since": since, "until": until,
                                                   "after_id": after_id, "limit": limit})

# Reprocessing: the stored event's effect through today's code, and its outcome brought up to date.
REAPPLY_EVENT = {
    kind: f"""
WITH applied AS MATERIALIZED (SELECT * FROM {call}),
event AS (
    UPDATE webhook_events SET kind = %(ev_kind)s::text, message_id = %(ev_message_id)s::text,
                              outcome = applied.outcome, error = %(ev_error)s::text, reprocessed_at = now()
    FROM applied WHERE id = %(ev_id)s
    RETURNING id)
SELECT event.id AS event_id, applied.* FROM event, applied"""
    for kind, call in APPLY.items()
}


def reapply_event(conn: Connection[Any], event_id: int, kind: str, event: Mapping[str, Any],
                  received_at: datetime) -> dict[str, Any]:
    """A stored event's effect through today's merge rule, as received when it was (`received_at`);
    its row brought up to date."""
    params = {**event, "source": "webhook", "reported_at": received_at, "ev_id": event_id, "ev_kind": kind,
              "ev_message_id": event.get("message_id"), "ev_error": event.get("note")}
    return one(conn, REAPPLY_EVENT[kind], params)

REREJECT_EVENT = """
UPDATE webhook_events SET kind = %(ev_kind)s::text, message_id = %(ev_message_id)s::text,
                          outcome = 'rejected', error = %(ev_error)s::text, reprocessed_at = now()
WHERE id = %(ev_id)s
RETURNING id AS event_id"""


def rereject_event(conn: Connection[Any], event_id: int, error: str, message_id: str | None) -> None:
    """A stored event today's code refuses too: its row says why, and keeps its MessageID."""
    conn.execute(REREJECT_EVENT, {"ev_id": event_id, "ev_error": error, "ev_kind": None,
                                  "ev_message_id": message_id})
