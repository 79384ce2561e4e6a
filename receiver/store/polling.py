"""The poller's statements: messages tracked, the schedule and its leases, what a poll writes, the
pollers' shared state, and the sweeps of /get/sms/received."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection

from .base import one, rows
from .merge import events_json, recordset

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
    return bool(one(conn, TRACK, {"send_at": None, "job_number": None, "reference": None, **message})["created"])


# -- the poller -------------------------------------------------------------------------------------

# The predicates (due, quiet, needy, complete, given up, lease free) and recipient_tally() are SQL
# functions, each written once: migrations/replaceable/30_recipient_tally.sql to 36_poll_due.sql.
# FINISH and CLASSIFY read every active message: run without JIT, whose compile their cost
# estimate triggers and which never paid for itself (FINISH over 40,000 messages: 343 ms with it,
# 168 without; over 200,000: 871 and 753; CLASSIFY the same or a little faster without).

# Messages that need no more polls: complete, or tracked longer than the give-up time; with
# confirmations off (POLL_CONFIRMATIONS=never, `confirm` false), also those whose known recipients
# are all final (not needy), once quiet. `given_up_only`: only those past the give-up time (each
# then 'complete' or 'given_up'), counting the recipients of those alone: the cheap pass a long
# run makes between its full ones.
FINISH = """
UPDATE messages m SET poll_state = CASE WHEN f.complete OR (NOT %(confirm)s::boolean AND NOT f.needy)
                                        THEN 'complete' ELSE 'given_up' END,
                      next_poll_at = NULL, updated_at = now()
FROM (SELECT d.message_id, poll_complete(d.recipient_count, t.final, d.replies_due) AS complete,
             poll_needy(d.recipient_count, t.known, t.pending, t.final, d.replies_due) AS needy,
             poll_quiet(d, t.last_result_at, %(after)s) AS quiet
      FROM messages d CROSS JOIN LATERAL recipient_tally(d.message_id) t
      WHERE d.poll_state = 'active' AND lease_free(d.lease_until)
        AND (NOT %(given_up_only)s::boolean OR poll_given_up(d.first_seen_at, d.delayed_at, %(give_up)s))) f
WHERE m.message_id = f.message_id
  AND (f.complete OR poll_given_up(m.first_seen_at, m.delayed_at, %(give_up)s)
       OR (NOT %(confirm)s::boolean AND NOT f.needy AND f.quiet))
RETURNING m.message_id, m.poll_state"""


def finish_messages(conn: Connection[Any], *, confirmations: str, after: float, give_up: float,
                    given_up_only: bool = False) -> list[tuple[str, str]]:
    """Stop polling the messages that need no more polls (POLL_CONFIRMATIONS decides which), or
    (`given_up_only`) only those past the give-up time; (message_id, poll_state) of each."""
    found = rows(conn, FINISH, {"confirm": confirmations != "never", "after": after, "give_up": give_up,
                                "given_up_only": given_up_only}, jit=False)
    return [(row["message_id"], row["poll_state"]) for row in found]

# Classify the due messages (the class is kept in messages.poll_need, so that a claim reads an
# index instead of every due message's recipients), and count the backlog by class.
CLASSIFY = """
WITH due AS (
    SELECT d.message_id, d.poll_need, d.first_seen_at,
           CASE WHEN poll_needy(d.recipient_count, t.known, t.pending, t.final, d.replies_due)
                THEN 'needy' ELSE 'confirmation' END AS need
    FROM messages d CROSS JOIN LATERAL recipient_tally(d.message_id) t
    WHERE poll_due(d, t.last_result_at, %(after)s)),
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
    row = one(conn, CLASSIFY, {"after": after}, jit=False)
    return Backlog(row["needy"], row["confirmation"], row["oldest_needy_at"])


# Lease the next due message of a class, the nearest to its give-up time first, and never one
# past it (a long run has not finished it yet): the queue index (messages_poll_queue_give_up_idx)
# is in that order, so a claim starts at the first message still within its time. The poller
# asks for needy ones first, then those classified since the last pass that turn out needy,
# then (with the budget left over, if at all) confirmations; each message once a run
# (`run_started_at`). SKIP LOCKED and the lease together keep two pollers off one message; a
# dead poller's lease expires (a live one renews it: the heartbeat).
_CLAIM = """
UPDATE messages m SET lease_until = now() + make_interval(secs => %(lease)s)
FROM (
    SELECT d.message_id FROM messages d CROSS JOIN LATERAL recipient_tally(d.message_id) t
    WHERE {need} AND poll_due(d, t.last_result_at, %(after)s)
      AND NOT poll_given_up(d.first_seen_at, d.delayed_at, %(give_up)s)
      AND (d.last_polled_at IS NULL OR d.last_polled_at < %(run_started_at)s::timestamptz)
    ORDER BY greatest(d.first_seen_at, d.delayed_at), d.message_id
    LIMIT 1
    FOR UPDATE OF d SKIP LOCKED) c
WHERE m.message_id = c.message_id
RETURNING m.message_id, m.poll_attempts"""
CLAIM = {
    "needy": _CLAIM.format(need="d.poll_need = 'needy'"),
    "new": _CLAIM.format(need="d.poll_need IS NULL"
                              " AND poll_needy(d.recipient_count, t.known, t.pending, t.final, d.replies_due)"),
    "confirmation": _CLAIM.format(need="d.poll_need = 'confirmation'"),
}


@dataclass(frozen=True)
class Claim:
    """A message leased to this poller."""

    message_id: str
    attempts: int


def claim(conn: Connection[Any], need: str, *, lease: float, after: float, give_up: float,
          run_started_at: datetime) -> Claim | None:
    """Lease the next due message of class `need` (needy, new, confirmation), or None."""
    found = rows(conn, CLAIM[need], {"lease": lease, "after": after, "give_up": give_up,
                                     "run_started_at": run_started_at})
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
REFERENCE_COLUMNS = ("remote_id", "attention", "company", *(f"custom{n}" for n in range(1, 10)))
APPLY_REFERENCES = f"""
UPDATE recipients r SET {", ".join(f"{c} = coalesce(e.{c}, r.{c})" for c in REFERENCE_COLUMNS)},
                        contact_id = coalesce(r.contact_id, e.contact_id)
FROM {recordset({"message_id": "text", "dest_seq": "text", "contact_id": "text",
                  **dict.fromkeys(REFERENCE_COLUMNS, "text")})}
WHERE r.message_id = e.message_id AND r.dest_seq = e.dest_seq
  AND ({" OR ".join(f"e.{c} IS DISTINCT FROM r.{c} AND e.{c} IS NOT NULL" for c in REFERENCE_COLUMNS)}
       OR (r.contact_id IS NULL AND e.contact_id IS NOT NULL))"""


def apply_references(conn: Connection[Any], references: list[Mapping[str, Any]]) -> None:
    """Keep the references a status page gives (bestsms.api.StatusPage's `references`)."""
    if references:
        conn.execute(APPLY_REFERENCES, {"events": events_json([dict(r) for r in references])})

# After a poll: when to poll again (or never), the error if any, whether its replies are still to
# fetch (`replies_fetched`: NULL when they were not asked for), and the lease given back.
FINISH_POLL = """
UPDATE messages m SET
    last_polled_at = CASE WHEN %(counted)s::boolean THEN now() ELSE m.last_polled_at END,
    poll_attempts = m.poll_attempts + CASE WHEN %(counted)s::boolean THEN 1 ELSE 0 END,
    last_poll_error = %(error)s::text,
    next_poll_at = now() + make_interval(secs => %(delay)s),
    replies_due = coalesce(NOT %(replies_fetched)s::boolean, m.replies_due),
    poll_state = CASE WHEN poll_complete(m.recipient_count, (SELECT t.final FROM recipient_tally(m.message_id) t),
                                         coalesce(NOT %(replies_fetched)s::boolean, m.replies_due)) THEN 'complete'
                      WHEN poll_given_up(m.first_seen_at, m.delayed_at, %(give_up)s) THEN 'given_up'
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
    row = one(conn, FINISH_POLL, {"message_id": message_id, "counted": counted, "error": error, "delay": delay,
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
    moment: datetime = one(conn, NOW, {})["now"]
    return moment


# -- sweeps of /get/sms/received ----------------------------------------------------------------------

ENSURE_SWEEP = "INSERT INTO poll_sweeps (name) VALUES (%(name)s) ON CONFLICT DO NOTHING"

CLAIM_SWEEP = """
UPDATE poll_sweeps SET lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE name = %(name)s AND lease_free(lease_until)
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
