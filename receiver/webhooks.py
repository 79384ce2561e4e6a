"""The BestSMS webhook: authenticate, read, parse, record, answer (2xx only after the commit).

One URL takes both kinds (Send Result and Inbound SMS) in all four formats. Parsing is the same
path `reprocess` takes (bestsms.events.Parser.webhook); recording is group commit (batch.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from flask import Blueprint, Response, request

from . import metrics, store, web
from .bestsms.decode import query, redact, redact_cut
from .bestsms.events import FINAL_STATUSES, Parsed
from .errors import Refused, Unavailable

bp = Blueprint("webhooks", __name__)
log = structlog.get_logger(__name__)

# Headers never stored: they carry credentials or session state.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"})


@bp.route("/webhooks/bestsms", methods=["GET", "POST"])
def bestsms_webhook() -> Response:
    started = time.perf_counter()
    app = web.services()
    limit = app.settings.max_body_bytes
    # Over the limits (the body's, and the same for a GET's query string): refused, and kept as a
    # rejected event (its first `limit` bytes) when a header or the query string authenticates it.
    if len(request.query_string) > limit:
        return _over_limit(started, 414, f"query string over {limit} bytes", b"")
    try:
        if request.content_length is not None and request.content_length > limit and not web.authenticated(()):
            raise Refused(413, web.body_over(limit))  # not even read: nobody's webhook
        body, whole = web.read_head(limit)
    except Refused as exc:
        return _counted(started, web.refused(exc, unread=True), outcome="unread")
    if not whole:
        return _over_limit(started, 413, web.body_over(limit), body)

    # Credentials outside the body, or its APIKey (the usual one): the body is parsed either way,
    # by a parser that answers anything with a refusal, never an exception.
    parsed = app.parser.webhook(request.method, request.content_type, body, web.raw_query())
    if not web.authenticated(parsed.credentials):
        log.warning("webhook unauthorized", remote_addr=request.remote_addr, format=parsed.format)
        return _counted(started, web.unauthorized(), outcome="unauthorized", format=parsed.format)
    if parsed.message_id:
        structlog.contextvars.bind_contextvars(message_id=parsed.message_id)

    try:  # with the webhooks that arrived meanwhile, in one commit: answered only after it
        row = app.group_commit.record(_recorded(parsed, app.settings.webhook_tokens))
    except Unavailable as exc:
        return _counted(started, web.unavailable(exc), outcome="unavailable", kind=parsed.kind, format=parsed.format)
    return _answer(started, parsed, row)


def _over_limit(started: float, status: int, message: str, head: bytes) -> Response:
    """A request over a limit: 413 or 414 (and the connection closed: what is left is not read);
    kept as a rejected event, cut at the limit, when a header or the query string authenticates it."""
    app = web.services()
    if not web.authenticated(()):
        return _counted(started, web.refused(Refused(status, message), unread=True), outcome="unread")
    stored = _stored_request(None, head.decode("utf-8", "replace"), app.settings.webhook_tokens,
                             cut_at=app.settings.max_body_bytes)
    kept = f"{message}: kept as received up to the limit, not applied"
    try:
        row = app.group_commit.record(store.Webhook(stored, None, None, None, kept))
    except Unavailable as exc:
        response = _counted(started, web.unavailable(exc), outcome="unavailable")
        response.headers["Connection"] = "close"
        return response
    return _counted(started, web.refused(Refused(status, kept), unread=True, event_id=row["event_id"]),
                    event_id=row["event_id"], outcome="rejected")


def _recorded(parsed: Parsed, secrets: tuple[str, ...]) -> store.Webhook:
    """What is kept of the request (no credential, no secret header), and its event or refusal."""
    stored = _stored_request(parsed.format, parsed.payload.stored_body, secrets)
    return store.Webhook(stored, parsed.kind, parsed.event, parsed.message_id,
                         parsed.refused.message if parsed.refused else None)


def _stored_request(fmt: str | None, body: str | None, secrets: tuple[str, ...], *,
                    cut_at: int | None = None) -> store.Request:
    """The request as it is kept: no credential, no secret header; a body and query string cut at
    `cut_at` (over a limit) lose their last characters too, where a token could begin unrecognised."""
    clean = redact if cut_at is None else redact_cut
    query_string = query(web.raw_query())[0][:cut_at]
    return store.Request(
        method=request.method,
        format=fmt,
        content_type=_nul_escaped(request.content_type) if request.content_type else None,
        headers=_stored_headers(request.headers, secrets),
        query_string=_nul_escaped(clean(query_string, secrets)) or None,
        body=_nul_escaped(clean(body, secrets)) or None if body else None,
    )


def _stored_headers(headers: Iterable[tuple[str, str]], secrets: tuple[str, ...]) -> dict[str, str]:
    return {k.lower(): _nul_escaped(redact(v, secrets)) for k, v in headers if k.lower() not in _SECRET_HEADERS}


def _nul_escaped(text: str) -> str:
    """Request text PostgreSQL can store, kept as sent: NUL escaped (the rest is already valid UTF-8)."""
    return text.replace("\x00", "\\x00")


def _answer(started: float, parsed: Parsed, row: Mapping[str, Any]) -> Response:
    """200 with the outcome once committed; 400 with why for a webhook kept as rejected."""
    if row["outcome"] != "rejected":
        if parsed.kind == "result" and parsed.event is not None:
            _log_conflict(parsed.event, row)
        return _counted(started, web.answer(200, {"status": row["outcome"], "event_id": row["event_id"]}),
                        event_id=row["event_id"], outcome=row["outcome"], format=parsed.format, kind=parsed.kind)
    # Refused by the parser, or valid but holding a value the database refused: kept, and said why.
    refused = parsed.refused or Refused(400, row["error"])
    return _counted(started, web.refused(refused, event_id=row["event_id"]), event_id=row["event_id"],
                    outcome="rejected", format=parsed.format, kind=parsed.kind)


def _counted(started: float, response: Response, **fields: Any) -> Response:
    """The webhook's answer: counted (every status), timed and logged in one line."""
    status = response.status_code
    metrics.WEBHOOKS.labels(fields.get("kind") or "", fields["outcome"], str(status)).inc()
    metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    log.info("webhook", status=status, ms=round((time.perf_counter() - started) * 1000, 2), **fields)
    return response


def _log_conflict(event: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """Two different final results for one recipient: the later one is kept, and a human may want to know."""
    previous = (row.get("previous_status"), row.get("previous_result"))
    incoming = (event["status"], event["result"])
    if previous[0] in FINAL_STATUSES and incoming[0] in FINAL_STATUSES and previous != incoming:
        log.warning("conflicting final results", dest_seq=event["dest_seq"], destination=event["destination"],
                    previous=list(previous), incoming=list(incoming), kept="incoming" if row["won"] else "previous")
