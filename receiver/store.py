"""Every SQL statement the service runs, each beside the typed function that runs it; nothing
else in the code writes SQL (the schema itself is in migrations/ and schema.sql).

The merge rule itself is in schema.sql (apply_result, apply_reply), so that webhooks and polls
use one rule and each application is one atomic statement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import IO, Any

import psycopg
from psycopg import Connection, sql
from psycopg.rows import dict_row


def rows(conn: Connection[Any], query: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every row `query` returns, as dictionaries."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _one(conn: Connection[Any], query: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The one row `query` returns (a statement that returns none here is a bug)."""
    found = rows(conn, query, params)
    if len(found) != 1:
        raise RuntimeError(f"expected one row, got {len(found)}: {query.split()[:4]}")
    return found[0]


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


def _call(kind: str, value: str) -> str:
    """`apply_<kind>(p_a => <value of a>, ...)`, `value` formatted with each argument's name and type."""
    args = ", ".join(f"p_{name} => {value.format(name=name, type=type_)}" for name, type_ in ARGS[kind])
    return f"apply_{kind}({args})"


# One event: apply_result(p_message_id => %(message_id)s::text, ...).
APPLY = {kind: _call(kind, "%({name})s::{type}") for kind in ARGS}


def _recordset(columns: Mapping[str, str]) -> str:
    """Rows from one JSON array parameter, `%(events)s` (each object one row, in order), typed by
    `columns`: how a batch of events reaches SQL, whatever its length, as one text parameter."""
    return f"json_to_recordset(%(events)s::json) AS e({', '.join(f'{n} {t}' for n, t in columns.items())})"


def _events_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, default=_json_value, ensure_ascii=False)


def _arguments(kind: str, event: Mapping[str, Any], source: str) -> dict[str, Any]:
    """An event's values for its merge function (`ARGS[kind]`), as one row of a `_recordset`."""
    return {**{name: event.get(name) for name, _ in ARGS[kind]}, "source": source}



# Many events (a poll page) in one statement: each row through the same function, in order.
APPLY_MANY = {
    kind: f"""
SELECT count(*) FILTER (WHERE a.outcome = 'applied') AS changed, count(*) AS total
FROM {_recordset(dict(args))}
CROSS JOIN LATERAL {_call(kind, "e.{name}")} AS a"""
    for kind, args in ARGS.items()
}

# Webhooks, recorded together (group commit: see receiver/batch.py): each one's event row, and
# its effect through the merge function of its kind when it was valid, in one statement and so
# one transaction. The webhooks arrive as one JSON array (`_recordset`) in the order they are


def apply_many(conn: Connection[Any], kind: str, events: list[Mapping[str, Any]], source: str) -> tuple[int, int]:
    """Apply a batch of events (one poll page) in one statement; returns (rows changed, rows seen)."""
    items = [_arguments(kind, e, source) for e in events]
    row = _one(conn, APPLY_MANY[kind], {"events": _events_json(items)})
    return int(row["changed"]), int(row["total"])


def _json_value(value: Any) -> str:
    """Event values JSON has no type for, as PostgreSQL reads them (times in ISO 8601, exact decimals)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not a value an event holds: {type(value).__name__}")


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
            arguments, error = _arguments(kind, event, "webhook"), event.get("note")
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


# applied (sorted, so that concurrent batches take row locks in one order); the event rows are
# inserted in that order, so their ids, ranked, map back to `i`.
_WEBHOOK_COLUMNS = {
    "i": "integer", "kind": "text", "valid": "boolean",
    **{name: type_ for args in ARGS.values() for name, type_ in args},
    "ev_method": "text", "ev_format": "text", "ev_content_type": "text", "ev_headers": "jsonb",
    "ev_query_string": "text", "ev_body": "text", "ev_message_id": "text", "ev_error": "text",
}
RECORD_WEBHOOKS = f"""
WITH e AS MATERIALIZED (SELECT * FROM {_recordset(_WEBHOOK_COLUMNS)}),
applied AS MATERIALIZED (
    SELECT e.i, a.* FROM e CROSS JOIN LATERAL (
        SELECT r.outcome, r.won, r.previous_status, r.previous_result FROM {_call("result", "e.{name}")} AS r
        WHERE e.valid AND e.kind = 'result'
        UNION ALL
        SELECT r.outcome, NULL::boolean, NULL::text, NULL::text FROM {_call("reply", "e.{name}")} AS r
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
    stored = rows(conn, RECORD_WEBHOOKS, {"events": _events_json(items)})
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
    return _one(conn, REAPPLY_EVENT[kind], params)

REREJECT_EVENT = """
UPDATE webhook_events SET kind = %(ev_kind)s::text, message_id = %(ev_message_id)s::text,
                          outcome = 'rejected', error = %(ev_error)s::text, reprocessed_at = now()
WHERE id = %(ev_id)s
RETURNING id AS event_id"""


def rereject_event(conn: Connection[Any], event_id: int, error: str, message_id: str | None) -> None:
    """A stored event today's code refuses too: its row says why, and keeps its MessageID."""
    conn.execute(REREJECT_EVENT, {"ev_id": event_id, "ev_error": error, "ev_kind": None,
                                  "ev_message_id": message_id})


# -- messages tracked for polling -------------------------------------------------------------------

TRACK = """
INSERT INTO messages (message_id, sub_account, department, job_number, recipient_count, delayed_at, reference)
VALUES (%(message_id)s::text, %(sub_account)s::text, %(department)s::text, %(job_number)s::text,
        %(recipient_count)s::integer, %(send_at)s::timestamptz, %(reference)s::text)
ON CONFLICT (message_id) DO UPDATE SET
    reference = coalesce(EXCLUDED.reference, messages.reference),
    sub_account = coalesce(EXCLUDED.sub_account, messages.sub_account),
    department = coalesce(EXCLUDED.department, messages.department),
    job_number = coalesce(EXCLUDED.job_number, messages.job_number),
    recipient_count = coalesce(EXCLUDED.recipient_count, messages.recipient_count),
    delayed_at = coalesce(EXCLUDED.delayed_at, messages.delayed_at),
    updated_at = now()
RETURNING (xmax = 0) AS created"""


def track(conn: Connection[Any], message: Mapping[str, Any]) -> bool:
    """Track a message for polling (`send_at`: when a scheduled one is sent; `reference`: the
    sender's own); True when it was not known before."""
    return bool(_one(conn, TRACK, {"send_at": None, "job_number": None, "reference": None, **message})["created"])


# -- the poller -------------------------------------------------------------------------------------

# Every recipient final (as many as BestSMS's or the registered count)...
_ALL_FINAL = """(m.recipient_count IS NOT NULL AND m.recipient_count <= (
    SELECT count(*) FROM recipients r
    WHERE r.message_id = m.message_id AND r.status IN ('Success', 'Failed')))"""
# ... and no reply fetch left to do: complete, never polled again.
_COMPLETE = f"({_ALL_FINAL} AND NOT m.replies_due)"

# What is known of a due message's recipients (a LATERAL subquery on messages `d`): whether it is
# needy (likely missing a result: no recipient at all, a Pending one, or fewer final ones than
# BestSMS's or the registered count; or its replies still to fetch) or only wants a confirmation
# (every known recipient final), and when a webhook last changed one of them.
_KNOWN = """LATERAL (
    SELECT count(*) = 0 OR count(*) FILTER (WHERE r.status = 'Pending') > 0
               OR coalesce(d.recipient_count, 0) > count(*) FILTER (WHERE r.status IN ('Success', 'Failed'))
               OR d.replies_due AS needy,
           max(r.updated_at) AS last_result_at
    FROM recipients r WHERE r.message_id = d.message_id) k"""

# Due: active, not leased, its back-off over, sent (a scheduled message is not polled before its
# send time), and quiet for POLL_AFTER_SECONDS.
_SENT = "coalesce(d.delayed_at, '-infinity') <= now()"
_DUE = f"""d.poll_state = 'active'
      AND (d.lease_until IS NULL OR d.lease_until < now())
      AND coalesce(d.next_poll_at, '-infinity') <= now() AND {_SENT}
      AND greatest(d.first_seen_at, d.last_polled_at, k.last_result_at) <= now() - make_interval(secs => %(after)s)"""

# Messages that need no more polls: complete, or tracked longer than the give-up time; with
# confirmations off (POLL_CONFIRMATIONS=never), also those whose known recipients are all final,
# once quiet. Only that setting needs each message's recipients looked at.
_LEASE_FREE = "(m.lease_until IS NULL OR m.lease_until < now())"
# Given up POLL_GIVE_UP_SECONDS after it was tracked, or after its send time when that is later.
_GIVEN_UP = "greatest(m.first_seen_at, m.delayed_at) < now() - make_interval(secs => %(give_up)s)"
FINISH = {
    "leftover": f"""
UPDATE messages m SET poll_state = CASE WHEN {_COMPLETE} THEN 'complete' ELSE 'given_up' END,
                      next_poll_at = NULL, updated_at = now()
WHERE m.poll_state = 'active' AND {_LEASE_FREE} AND ({_COMPLETE} OR {_GIVEN_UP})
RETURNING m.message_id, m.poll_state""",
    "never": f"""
UPDATE messages m SET poll_state = CASE WHEN {_COMPLETE} OR NOT f.needy THEN 'complete' ELSE 'given_up' END,
                      next_poll_at = NULL, updated_at = now()
FROM (SELECT d.message_id, k.needy, k.last_result_at FROM messages d CROSS JOIN {_KNOWN}
      WHERE d.poll_state = 'active') f
WHERE m.message_id = f.message_id AND {_LEASE_FREE}
  AND ({_COMPLETE} OR {_GIVEN_UP}
       OR (NOT f.needy AND greatest(m.first_seen_at, m.last_polled_at, f.last_result_at)
                           <= now() - make_interval(secs => %(after)s)))
RETURNING m.message_id, m.poll_state""",
}

# Classify the due messages (the class is kept in messages.poll_need, so that a claim reads an


def finish_messages(conn: Connection[Any], *, confirmations: str, after: float,
                    give_up: float) -> list[tuple[str, str]]:
    """Stop polling the messages that need no more polls (POLL_CONFIRMATIONS decides which);
    (message_id, poll_state) of each."""
    found = rows(conn, FINISH[confirmations], {"after": after, "give_up": give_up})
    return [(row["message_id"], row["poll_state"]) for row in found]

# Classify the due messages (the class is kept in messages.poll_need, so that a claim reads an
# index instead of every due message's recipients), and count the backlog by class.
CLASSIFY = f"""
WITH due AS (
    SELECT d.message_id, d.poll_need, d.first_seen_at,
           CASE WHEN k.needy THEN 'needy' ELSE 'confirmation' END AS need
    FROM messages d CROSS JOIN {_KNOWN}
    WHERE {_DUE}),
changed AS (
    UPDATE messages m SET poll_need = due.need FROM due
    WHERE m.message_id = due.message_id AND m.poll_need IS DISTINCT FROM due.need
    RETURNING 1)
SELECT count(*) FILTER (WHERE need = 'needy') AS needy,
       count(*) FILTER (WHERE need = 'confirmation') AS confirmation,
       min(first_seen_at) FILTER (WHERE need = 'needy') AS oldest_needy_at,
       (SELECT count(*) FROM changed) AS changed
FROM due"""


@dataclass(frozen=True)
class Backlog:
    """The due messages by class, as the pollers last counted them."""

    needy: int = 0
    confirmation: int = 0
    oldest_needy_at: datetime | None = None


def classify(conn: Connection[Any], *, after: float) -> Backlog:
    """Class every due message (kept for the claims to read an index), and count the backlog."""
    row = _one(conn, CLASSIFY, {"after": after})
    return Backlog(row["needy"], row["confirmation"], row["oldest_needy_at"])


# Lease the next due message of a class, oldest first (the nearest to the give-up time), from
# the queue index. The poller asks for needy ones first, then those classified since the last
# pass that turn out needy, then (with the budget left over, if at all) confirmations. SKIP
# LOCKED and the lease together keep two pollers off one message; a dead poller's lease expires
# (a live one renews it: the heartbeat).
_CLAIM = f"""
UPDATE messages m SET lease_until = now() + make_interval(secs => %(lease)s)
FROM (
    SELECT d.message_id FROM messages d
    WHERE d.poll_state = 'active' AND {{need}}
      AND (d.lease_until IS NULL OR d.lease_until < now())
      AND coalesce(d.next_poll_at, '-infinity') <= now() AND {_SENT}
      AND (d.last_polled_at IS NULL OR d.last_polled_at < %(run_started_at)s::timestamptz)
      AND greatest(d.first_seen_at, d.last_polled_at,
                   (SELECT max(r.updated_at) FROM recipients r WHERE r.message_id = d.message_id))
          <= now() - make_interval(secs => %(after)s)
    ORDER BY d.first_seen_at, d.message_id
    LIMIT 1
    FOR UPDATE OF d SKIP LOCKED) c
WHERE m.message_id = c.message_id
RETURNING m.message_id, m.poll_attempts"""
CLAIM = {
    "needy": _CLAIM.format(need="d.poll_need = 'needy'"),
    "new": _CLAIM.format(need=f"d.poll_need IS NULL AND (SELECT k.needy FROM {_KNOWN})"),
    "confirmation": _CLAIM.format(need="d.poll_need = 'confirmation'"),
}



@dataclass(frozen=True)
class Claim:
    """A message leased to this poller."""

    message_id: str
    attempts: int


def claim(conn: Connection[Any], need: str, *, lease: float, after: float, run_started_at: datetime) -> Claim | None:
    """Lease the next due message of class `need` (needy, new, confirmation), or None."""
    found = rows(conn, CLAIM[need], {"lease": lease, "after": after, "run_started_at": run_started_at})
    return Claim(found[0]["message_id"], found[0]["poll_attempts"]) if found else None

# The heartbeat: a live poller keeps its lease while it works, however slow BestSMS is.
RENEW_LEASE = """
UPDATE messages SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE message_id = %(message_id)s::text AND lease_until IS NOT NULL"""


def renew_lease(conn: Connection[Any], message_id: str, lease: float) -> None:
    conn.execute(RENEW_LEASE, {"message_id": message_id, "lease": lease})

# What a status page says of the whole message; also renews the lease while pages are fetched.
UPDATE_POLLED_MESSAGE = """
UPDATE messages SET
    job_status = coalesce(%(job_status)s::text, job_status),
    recipient_count = coalesce(%(count)s::integer, recipient_count),
    complete_count = coalesce(%(complete)s::integer, complete_count),
    success_count = coalesce(%(success)s::integer, success_count),
    failed_count = coalesce(%(failed)s::integer, failed_count),
    price = coalesce(%(price)s::numeric, price),
    created_at = coalesce(%(created_at)s::timestamptz, created_at),
    delayed_at = coalesce(%(delayed_at)s::timestamptz, delayed_at),
    job_number = coalesce(job_number, %(job_number)s::text),
    sub_account = coalesce(sub_account, %(sub_account)s::text),
    department = coalesce(department, %(department)s::text),
    reference = coalesce(%(reference)s::text, reference),
    lease_until = now() + make_interval(secs => %(lease)s),
    updated_at = now()
WHERE message_id = %(message_id)s::text"""

_MESSAGE_COLUMNS = ("job_status", "count", "complete", "success", "failed", "price", "created_at", "delayed_at",
                    "job_number", "sub_account", "department", "reference")


def update_polled_message(conn: Connection[Any], message_id: str, page: Mapping[str, Any], lease: float) -> None:
    """What a status page (bestsms.api.StatusPage) says of the whole message."""
    conn.execute(UPDATE_POLLED_MESSAGE, {**{k: page[k] for k in _MESSAGE_COLUMNS},
                                         "message_id": message_id, "lease": lease})


# The sender's own references for each recipient of a poll page (after its results are merged):
# a value a poll leaves out never blanks one; ContactID fills in, like the merge rule's.
_REFERENCE_COLUMNS = ("remote_id", "attention", "company", *(f"custom{n}" for n in range(1, 10)))
APPLY_REFERENCES = f"""
UPDATE recipients r SET {", ".join(f"{c} = coalesce(e.{c}, r.{c})" for c in _REFERENCE_COLUMNS)},
                        contact_id = coalesce(r.contact_id, e.contact_id)
FROM {_recordset({"message_id": "text", "dest_seq": "text", "contact_id": "text",
                  **dict.fromkeys(_REFERENCE_COLUMNS, "text")})}
WHERE r.message_id = e.message_id AND r.dest_seq = e.dest_seq
  AND ({" OR ".join(f"e.{c} IS DISTINCT FROM r.{c} AND e.{c} IS NOT NULL" for c in _REFERENCE_COLUMNS)}
       OR (r.contact_id IS NULL AND e.contact_id IS NOT NULL))"""


def apply_references(conn: Connection[Any], references: list[Mapping[str, Any]]) -> None:
    """Keep the references a status page gives (bestsms.api.StatusPage's `references`)."""
    if references:
        conn.execute(APPLY_REFERENCES, {"events": _events_json([dict(r) for r in references])})

# After a poll: when to poll again (or never), the error if any, whether its replies are still to
# fetch (`replies_fetched`: NULL when they were not asked for), and the lease given back.
_REPLIES_DUE = "coalesce(NOT %(replies_fetched)s::boolean, m.replies_due)"
FINISH_POLL = f"""
UPDATE messages m SET
    last_polled_at = CASE WHEN %(counted)s::boolean THEN now() ELSE m.last_polled_at END,
    poll_attempts = m.poll_attempts + CASE WHEN %(counted)s::boolean THEN 1 ELSE 0 END,
    last_poll_error = %(error)s::text,
    next_poll_at = now() + make_interval(secs => %(delay)s),
    replies_due = {_REPLIES_DUE},
    poll_state = CASE WHEN {_ALL_FINAL} AND NOT {_REPLIES_DUE} THEN 'complete'
                      WHEN {_GIVEN_UP} THEN 'given_up'
                      ELSE m.poll_state END,
    lease_until = NULL,
    updated_at = now()
WHERE m.message_id = %(message_id)s::text
RETURNING m.poll_state"""


def finish_poll(conn: Connection[Any], message_id: str, *, counted: bool, error: str | None, delay: float,
                give_up: float, replies_fetched: bool | None = None) -> str:
    """A poll done (`counted`: an attempt BestSMS answered): the next one in `delay` seconds, or
    none; the lease given back; `replies_fetched` False keeps the message due for its replies.
    Returns the message's poll_state."""
    row = _one(conn, FINISH_POLL, {"message_id": message_id, "counted": counted, "error": error, "delay": delay,
                                   "give_up": give_up, "replies_fetched": replies_fetched})
    return str(row["poll_state"])

# The pollers' state row: written after every run, so it clears when the condition clears.
WRITE_POLLER_STATE = """
INSERT INTO poller_state AS s (id, unauthorized_since, unauthorized_error, backlog_needy, backlog_confirmation,
                               oldest_needy_at, measured_at, updated_at)
VALUES (true, CASE WHEN %(unauthorized)s::text IS NOT NULL THEN now() END, %(unauthorized)s::text,
        %(needy)s::integer, %(confirmation)s::integer, %(oldest_needy_at)s::timestamptz, now(), now())
ON CONFLICT (id) DO UPDATE SET
    unauthorized_since = CASE WHEN EXCLUDED.unauthorized_error IS NULL THEN NULL
                              ELSE coalesce(s.unauthorized_since, now()) END,
    unauthorized_error = EXCLUDED.unauthorized_error,
    backlog_needy = EXCLUDED.backlog_needy, backlog_confirmation = EXCLUDED.backlog_confirmation,
    oldest_needy_at = EXCLUDED.oldest_needy_at, measured_at = now(), updated_at = now()"""


def write_poller_state(conn: Connection[Any], unauthorized: str | None, backlog: Backlog) -> None:
    """The pollers' one state row: BestSMS's refusal of the token (or none: it clears), and the backlog."""
    conn.execute(WRITE_POLLER_STATE, {"unauthorized": unauthorized, "needy": backlog.needy,
                                      "confirmation": backlog.confirmation,
                                      "oldest_needy_at": backlog.oldest_needy_at})


NOW = "SELECT now() AS now"


def now(conn: Connection[Any]) -> datetime:
    """The database's clock (leases and poll times are all by it)."""
    moment: datetime = _one(conn, NOW, {})["now"]
    return moment


# -- sweeps of /get/sms/received ----------------------------------------------------------------------

ENSURE_SWEEP = "INSERT INTO poll_sweeps (name) VALUES (%(name)s) ON CONFLICT DO NOTHING"

CLAIM_SWEEP = """
UPDATE poll_sweeps SET lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE name = %(name)s AND (lease_until IS NULL OR lease_until < now())
  AND (last_success_at IS NULL OR last_success_at <= now() - make_interval(secs => %(every)s))
RETURNING last_success_at, now() AS started_at"""


@dataclass(frozen=True)
class Sweep:
    """A sweep leased to this poller: the end of the last one that succeeded, and its own start."""

    last_success_at: datetime | None
    started_at: datetime


def claim_sweep(conn: Connection[Any], name: str, *, lease: float, every: float) -> Sweep | None:
    """Lease the sweep `name` when it is due (its last success `every` seconds ago), else None."""
    conn.execute(ENSURE_SWEEP, {"name": name})
    found = rows(conn, CLAIM_SWEEP, {"name": name, "lease": lease, "every": every})
    return Sweep(found[0]["last_success_at"], found[0]["started_at"]) if found else None

RENEW_SWEEP_LEASE = """
UPDATE poll_sweeps SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE name = %(name)s AND lease_until IS NOT NULL"""



def renew_sweep_lease(conn: Connection[Any], name: str, lease: float) -> None:
    conn.execute(RENEW_SWEEP_LEASE, {"name": name, "lease": lease})

FINISH_SWEEP = """
UPDATE poll_sweeps SET last_success_at = coalesce(%(covered_until)s::timestamptz, last_success_at),
                       last_error = %(error)s::text,
                       lease_until = CASE WHEN %(keep_lease)s::boolean THEN lease_until END, updated_at = now()
WHERE name = %(name)s"""



def finish_sweep(conn: Connection[Any], name: str, *, covered_until: datetime | None, error: str | None,
                 keep_lease: bool = False) -> None:
    """A sweep done: covered up to `covered_until` (None: nothing more, and `error` says why); the
    lease given back, or kept (`keep_lease`: a part done, the sweep goes on)."""
    conn.execute(FINISH_SWEEP, {"name": name, "covered_until": covered_until, "error": error,
                                "keep_lease": keep_lease})


# -- health -----------------------------------------------------------------------------------------

# Health: what the pollers last recorded (they run in other processes), from their one state row.
# The privileges recording a webhook needs (has_table_privilege() is true when any one of a list
# is held: each is asked alone).
_WRITES = ", ".join(f"('{table}', '{privilege}')" for table, privileges in (
    ("webhook_events", "INSERT"), ("messages", "SELECT INSERT UPDATE"), ("recipients", "SELECT INSERT UPDATE"),
    ("replies", "SELECT INSERT UPDATE")) for privilege in privileges.split())
HEALTH = f"""
SELECT s.unauthorized_since, s.unauthorized_error, s.backlog_needy, s.backlog_confirmation,
       s.oldest_needy_at, s.measured_at,
       (SELECT last_success_at FROM poll_sweeps WHERE name = 'received') AS last_received_sweep_at,
       webhook_event_days_ahead() AS archive_days_ahead,
       current_setting('transaction_read_only')::boolean AS read_only,
       ARRAY(SELECT privilege || ' ON ' || tablename FROM (VALUES {_WRITES}) AS w (tablename, privilege)
             WHERE NOT has_table_privilege(tablename, privilege)) AS missing_privileges
FROM (SELECT true AS id) one LEFT JOIN poller_state s USING (id)"""


def health(conn: Connection[Any]) -> dict[str, Any]:
    """The pollers' state as they last wrote it (all None before their first run), whether this
    session can record webhooks (`read_only`, the `missing_privileges` it needs), and how many
    days after today the archive has partitions for (`archive_days_ahead`; -1: not even today's)."""
    return _one(conn, HEALTH, {})


# -- reporting and housekeeping ---------------------------------------------------------------------

# Prices in CSV with four decimals in every row (BestSMS prices go below a cent: 0.045).
_PRICE = "round({0}, 4) AS {0}"
REPORTS = {
    "rebilling": f"""
SELECT month, sub_account, department, messages, recipients, sms_parts, {_PRICE.format("outbound_price")},
       replies, {_PRICE.format("inbound_price")}, {_PRICE.format("total_price")}
FROM rebilling_monthly
WHERE month = %(month)s::date AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
ORDER BY sub_account NULLS FIRST, department NULLS FIRST""",
    "delivery": f"""
SELECT day, sub_account, department, messages, recipients, delivered, failed, pending, delivery_rate, sms_parts,
       {_PRICE.format("price")}
FROM delivery_daily
WHERE day BETWEEN %(from)s::date AND %(to)s::date
  AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
ORDER BY day, sub_account NULLS FIRST, department NULLS FIRST""",
    "rebilling-by-sub-account": """
SELECT month, sub_account, sum(messages) AS messages, sum(recipients) AS recipients, sum(sms_parts) AS sms_parts,
       round(sum(outbound_price), 4) AS outbound_price, sum(replies) AS replies,
       round(sum(inbound_price), 4) AS inbound_price, round(sum(total_price), 4) AS total_price
FROM rebilling_monthly
WHERE month = %(month)s::date AND (%(sub_account)s::text IS NULL OR sub_account = %(sub_account)s::text)
GROUP BY month, sub_account
ORDER BY sub_account NULLS FIRST""",
    # The numbers opted out now: of the sub account given (its own keywords and replies), else of
    # any (each number's latest keyword, whatever the sub account).
    "opt-outs": """
SELECT sub_account, from_number, keyword, changed_at, received_id, message_id
FROM opt_outs_by_sub_account
WHERE opted_out AND %(sub_account)s::text IS NOT NULL AND sub_account = %(sub_account)s::text
UNION ALL
SELECT sub_account, from_number, keyword, changed_at, received_id, message_id
FROM opt_outs
WHERE opted_out AND %(sub_account)s::text IS NULL
ORDER BY from_number""",
}

# Old request records, a batch at a time (each its own short transaction); results and replies stay.
PRUNE_EVENTS = """
DELETE FROM webhook_events WHERE id IN (
    SELECT id FROM webhook_events WHERE received_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY id LIMIT %(batch)s)"""



def report_csv(conn: Connection[Any], report: str, params: Mapping[str, Any], out: IO[bytes]) -> int:
    """A report's rows (`REPORTS[report]`) as CSV, a header row first, streamed by COPY into `out`;
    returns how many rows."""
    with conn.cursor() as cur:
        with cur.copy(f"COPY ({REPORTS[report]}) TO STDOUT WITH (FORMAT csv, HEADER)", params) as copy:
            for chunk in copy:
                out.write(chunk)
        return max(cur.rowcount, 0)


SUB_ACCOUNTS = "SELECT DISTINCT sub_account FROM messages WHERE sub_account IS NOT NULL ORDER BY 1"


def sub_accounts(conn: Connection[Any]) -> list[str]:
    """The sub accounts messages were sent from."""
    return [row["sub_account"] for row in rows(conn, SUB_ACCOUNTS, {})]


ENSURE_EVENT_PARTITIONS = "SELECT ensure_webhook_event_partitions(%(days)s) AS made"


def missing_event_partition(exc: psycopg.Error) -> bool:
    """Whether `exc` is webhook_events' day missing (SQLSTATE 23514, "no partition ... found for
    row"): for ensure_event_partitions() to make, never the input's fault."""
    return exc.sqlstate == "23514" and "no partition" in (exc.diag.message_primary or "")


def ensure_event_partitions(conn: Connection[Any], days: int = 14) -> int:
    """webhook_events' daily partitions made up to `days` days ahead; how many were missing."""
    made: int = _one(conn, ENSURE_EVENT_PARTITIONS, {"days": days})["made"]
    return made


# Whole days past the retention (the partition's upper bound before the cutoff), a detach an
# interrupted prune left pending, and a day it detached but did not drop.
OLD_EVENT_PARTITIONS = r"""
SELECT c.relname AS name, i.inhdetachpending AS pending, i.inhrelid IS NOT NULL AS attached
FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'webhook_events'::regclass
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace AND c.relkind = 'r'
  AND c.relname ~ '^webhook_events_(before_)?[0-9]{8}$'
  AND (i.inhrelid IS NULL AND NOT c.relispartition
       OR substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
          <= now() - make_interval(secs => %(older_than)s))
ORDER BY 1"""


def drop_old_event_partitions(conn: Connection[Any], older_than_seconds: float) -> list[str]:
    """Drop webhook_events' days older than the age given, whole: each detached concurrently (no
    lock that stops writes), then dropped. Needs autocommit. Returns their names."""
    dropped = []
    for row in rows(conn, OLD_EVENT_PARTITIONS, {"older_than": older_than_seconds}):
        name = sql.Identifier(row["name"])
        if row["attached"]:
            how = sql.SQL("FINALIZE" if row["pending"] else "CONCURRENTLY")
            conn.execute(sql.SQL("ALTER TABLE webhook_events DETACH PARTITION {} {}").format(name, how))
        conn.execute(sql.SQL("DROP TABLE {}").format(name))
        dropped.append(row["name"])
    return dropped


def prune_events(conn: Connection[Any], older_than_seconds: float, batch: int = 5000) -> int:
    """Delete webhook_events rows older than the age given, a batch (a transaction) at a time: what
    is left of them once whole days are dropped (drop_old_event_partitions), in the day the
    cutoff falls in."""
    deleted = 0
    while True:
        count = conn.execute(PRUNE_EVENTS, {"older_than": older_than_seconds, "batch": batch}).rowcount
        deleted += count
        if count < batch:
            return deleted


# -- connections and the schema's version -------------------------------------------------------------

def ping(conn: Connection[Any]) -> None:
    """One round trip (a server connection was given)."""
    conn.execute("SELECT 1")


def set_statement_timeout(conn: Connection[Any], ms: int, *, local: bool = False) -> None:
    """The server cancels (and so rolls back) a statement of this session (`local`: of this
    transaction) that runs or waits longer."""
    conn.execute("SELECT set_config('statement_timeout', %s, %s)", (f"{int(ms)}ms", local))


def set_session_bounds_for_migrate(conn: Connection[Any]) -> None:
    """`migrate`'s session: no statement or idle-in-transaction bound, whatever the role's defaults."""
    conn.execute("SET statement_timeout = 0")
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    if not conn.autocommit:
        conn.commit()  # a SET outside autocommit opened a transaction: its values stay for the session


# What the `reporting` role may not yet read in this schema (a role a DBA made after the first
# migrate, tables added since): granted by every migrate, and named.
UNGRANTED_TO_REPORTING = """
SELECT c.relname AS name FROM pg_class c
WHERE c.relnamespace = quote_ident(current_schema())::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
  AND NOT c.relispartition AND c.relname <> 'alembic_version'
  AND NOT has_table_privilege('reporting', c.oid, 'SELECT')
ORDER BY 1"""


def grant_reporting(conn: Connection[Any]) -> list[str]:
    """Grant the `reporting` role (when it exists) reading of this schema's tables and views, now
    and for tables made later; returns those it could not read before."""
    if not rows(conn, "SELECT FROM pg_roles WHERE rolname = 'reporting'", {}):
        return []
    schema_ = sql.Identifier(rows(conn, "SELECT current_schema() AS name", {})[0]["name"])
    missing = [r["name"] for r in rows(conn, UNGRANTED_TO_REPORTING, {})]
    if not missing and rows(conn, "SELECT FROM pg_namespace WHERE oid = quote_ident(current_schema())::regnamespace "
                                  "AND has_schema_privilege('reporting', oid, 'USAGE')", {}):
        return []
    with conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO reporting").format(schema_))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO reporting").format(schema_))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO reporting")
                     .format(schema_))
    return missing


def set_lock_timeout(conn: Connection[Any], ms: int) -> None:
    """A statement of this session waits at most `ms` for a lock (then LockNotAvailable)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(ms)}ms",))


def try_advisory_lock(conn: Connection[Any], key: int) -> bool:
    """This session takes the advisory lock `key` if it is free (held until the session ends)."""
    return conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)


def create_database(conn: Connection[Any], name: str) -> bool:
    """Create the database `name` unless it exists; True when it was created."""
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        return False
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


# The schema a migration creates in (None: the search_path names none that exists), and whether
# the database is new to this service there: no revision, none of its tables.
NEW_SCHEMA = """
SELECT current_schema() AS schema, NOT EXISTS (
    SELECT FROM pg_class WHERE relnamespace = quote_ident(current_schema())::regnamespace
      AND relname IN ('alembic_version', 'messages', 'recipients', 'replies', 'webhook_events')) AS new"""


def new_schema(conn: Connection[Any]) -> tuple[str | None, bool]:
    """(the current schema, whether this service has nothing in it yet)."""
    row = _one(conn, NEW_SCHEMA, {})
    return row["schema"], bool(row["new"])


def schema_version(conn: Connection[Any]) -> str | None:
    """The database's schema revision (alembic's), None when no migration has run."""
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
    return str(row[0]) if row else None


def applied_replaceables(conn: Connection[Any]) -> set[str]:
    """The migrations/replaceable/ files `migrate` has applied here (by name; empty before 0012)."""
    if not _one(conn, "SELECT to_regclass('schema_replaceables') IS NOT NULL AS present", {})["present"]:
        return set()
    return {r["name"] for r in rows(conn, "SELECT name FROM schema_replaceables", {})}
