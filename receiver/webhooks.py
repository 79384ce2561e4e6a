"""The HTTP endpoints: BestSMS's webhooks (authenticate, decode, validate, store, answer 2xx only
after the commit), message registration for the poller, and health."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import ValidationError, fields, validate
from werkzeug.exceptions import HTTPException

from . import schema, store
from .batch import GroupCommit
from .bestsms.decode import Payload, PayloadError, decode, format_of, query, redact
from .bestsms.events import FINAL_STATUSES, Parser, describe
from .bestsms.fields import LIMITS, Tagged, text_field
from .config import Settings
from .db import Database, Unavailable

bp = Blueprint("webhooks", __name__)
log = structlog.get_logger(__name__)

MAX_RECIPIENTS = 1_000_000  # one message's recipients: far above BestSMS's largest broadcast


class TrackSchema(Tagged):
    """`POST /messages`: a sending application registers a message for tracking, in BestSMS's words."""

    message_id = text_field("MessageID", "message_id", required=True)
    recipient_count = fields.Integer(data_key="Recipients", load_default=None, strict=True,
                                     validate=validate.Range(min=0, max=MAX_RECIPIENTS))


_TRACK_SCHEMA = TrackSchema()
RETRY_AFTER_SECONDS = 30
READY_TIMEOUT_SECONDS = 2.0

# Headers never stored: they carry credentials or session state.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"})


class Tokens:
    """The accepted webhook tokens; compares in constant time against every one of them."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = tuple(t.encode() for t in tokens)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def match(self, candidates: Iterable[str | None]) -> bool:
        ok = False
        for candidate in candidates:
            if candidate is None:
                continue
            given = candidate.encode("utf-8", "surrogatepass")  # a lone surrogate is just a wrong token
            for token in self.tokens:
                ok |= hmac.compare_digest(given, token)
        return ok


def _authorization_credentials() -> list[str | None]:
    """The token in `Authorization: Bearer <token>` or `Basic <token>` (raw, or the password of
    base64 user:token, or base64 token alone)."""
    scheme, _, raw = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        return []
    found: list[str | None] = [raw.strip()]
    try:
        auth = request.authorization
    except ValueError:  # werkzeug's base64 decoding of a non-ASCII header
        auth = None
    if auth is not None and auth.type == "basic":
        found.append(auth.password or auth.username)
    return found


def _authenticated(tokens: Tokens, query_credentials: tuple[str, ...], payload: Payload | None) -> bool:
    """A token matches: in the Authorization header, the query string (`?token=`) or the body's
    APIKey. Always true when no token is configured (ALLOW_UNAUTHENTICATED_WEBHOOKS)."""
    return not tokens or tokens.match([*_authorization_credentials(), *query_credentials,
                                       *(payload.credentials if payload else ())])


def _json(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _json_error(status: int, error: str, **extra: Any) -> Response:
    return _json(status, {"error": error, **extra})


class BodyError(Exception):
    """The request body cannot be read: too large (413), or broken on the wire (400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _read_body(limit: int) -> bytes:
    """The whole body, or BodyError: over `limit` bytes, whatever the transfer encoding, is 413."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, f"request body over {limit} bytes")
    try:
        body = request.stream.read(limit + 1)
    except Exception as exc:  # a broken chunked encoding, a client gone: gunicorn's and werkzeug's errors
        raise BodyError(400, f"request body could not be read: {type(exc).__name__}") from None
    if len(body) > limit:
        raise BodyError(413, f"request body over {limit} bytes")
    return body


def _stored_headers(headers: Iterable[tuple[str, str]], secrets: tuple[str, ...]) -> dict[str, str]:
    return {k.lower(): _storable(redact(v, secrets)) for k, v in headers if k.lower() not in _SECRET_HEADERS}


def _storable(text: str) -> str:
    """Text PostgreSQL can store: NUL escaped (the rest is already valid UTF-8)."""
    return text.replace("\x00", "\\x00")


@bp.route("/webhooks/bestsms", methods=["GET", "POST"])
def bestsms_webhook() -> Response:
    started = time.perf_counter()
    settings: Settings = current_app.config["SETTINGS"]
    tokens: Tokens = current_app.extensions["webhook_tokens"]
    parser: Parser = current_app.extensions["parser"]
    commit: GroupCommit = current_app.extensions["group_commit"]

    try:
        body = _read_body(settings.max_body_bytes)
    except BodyError as exc:
        response = _answer(started, exc.status, {"error": exc.message}, outcome="unread")
        response.headers["Connection"] = "close"  # what is left of the body is not read
        return response
    raw_query = request.query_string.decode("latin-1")
    stored_query, query_credentials = query(raw_query)

    # Credentials outside the body first; the body is decoded either way (its APIKey is the usual
    # credential), by decoders that answer anything with a PayloadError, never an exception.
    fmt: str | None = None
    payload: Payload | None = None
    problem: PayloadError | None = None
    try:
        fmt = format_of(request.method, request.content_type, body)
        payload = decode(fmt, body, raw_query)
    except PayloadError as exc:
        problem = exc
    if not _authenticated(tokens, query_credentials, payload):
        log.warning("webhook unauthorized", remote_addr=request.remote_addr, format=fmt)
        return _answer(started, 401, {"error": "missing or wrong webhook token"}, outcome="unauthorized",
                       format=fmt)

    secrets = settings.webhook_tokens
    if payload is not None:
        stored_body = payload.stored_body
    else:  # not decodable field by field: kept as sent, invalid UTF-8 escaped, configured tokens removed
        stored_body = redact(body.decode("utf-8", errors="backslashreplace"), secrets)
    req = store.Request(
        method=request.method,
        format=fmt,
        content_type=_storable(request.content_type) if request.content_type else None,
        headers=_stored_headers(request.headers, secrets),
        query_string=_storable(redact(stored_query, secrets)) or None,
        body=_storable(redact(stored_body, secrets)) if stored_body else None,
    )

    # Validated here, in the request's thread: the writers only write.
    kind: str | None = None
    event: dict[str, Any] | None = None
    message_id: str | None = None
    status, error = (problem.status, problem.message) if problem else (200, None)
    fields: Any = None
    if payload is not None and problem is None:
        try:
            kind, event = parser.parse(payload.fields)
            message_id = event.get("message_id")
        except ValidationError as exc:
            mid = payload.fields.get("MessageID")
            message_id = mid if isinstance(mid, str) and len(mid) <= LIMITS["message_id"] else None
            status, error, fields = 400, describe(exc), exc.messages

    try:  # with the webhooks that arrived meanwhile, in one commit: answered only after it
        row = commit.record(store.Webhook(req, kind, event, message_id, error))
    except Unavailable as exc:
        return _unavailable(started, exc, kind=kind, format=fmt, message_id=message_id)

    if row["outcome"] == "rejected":
        if error is None:  # valid, but a value the database refused: kept, and said why
            status, error = 400, row["error"]
        answer: dict[str, Any] = {"error": error, **({"fields": fields} if fields else {}),
                                  "event_id": row["event_id"]}
    else:
        answer = {"status": row["outcome"], "event_id": row["event_id"]}
        if kind == "result" and event is not None:
            _log_conflict(event, row)
    return _answer(started, status, answer, event_id=row["event_id"], outcome=row["outcome"], format=fmt,
                   kind=kind, message_id=message_id)


def _answer(started: float, status: int, body: dict[str, Any], **fields: Any) -> Response:
    """The webhook's answer: counted (every status), timed and logged in one line."""
    metrics = current_app.extensions["metrics"]
    metrics.WEBHOOKS.labels(fields.get("kind") or "", fields["outcome"], str(status)).inc()
    metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    log.info("webhook", status=status, ms=_ms(started), **fields)
    return _json(status, body)


def _unavailable(started: float, exc: Unavailable, **fields: Any) -> Response:
    """503 with Retry-After: the database is away, too slow, or its schema is behind (logged once by Database)."""
    return _retry_later(_answer(started, 503, {"error": "database unavailable, retry later", "reason": exc.reason},
                                outcome="unavailable", **fields))


def _retry_later(response: Response) -> Response:
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _log_conflict(event: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """Two different final results for one recipient: the later one is kept, and a human may want to know."""
    previous = (row.get("previous_status"), row.get("previous_result"))
    incoming = (event["status"], event["result"])
    if previous[0] in FINAL_STATUSES and incoming[0] in FINAL_STATUSES and previous != incoming:
        log.warning("conflicting final results", message_id=event["message_id"], dest_seq=event["dest_seq"],
                    destination=event["destination"], previous=list(previous), incoming=list(incoming),
                    kept="incoming" if row["won"] else "previous")


@bp.route("/messages", methods=["POST"])
def track_message() -> Response:
    """Track a message for polling: `{"MessageID": ..., "SubAccount": ..., "Department": ..., "Recipients": N}`."""
    settings: Settings = current_app.config["SETTINGS"]
    tokens: Tokens = current_app.extensions["webhook_tokens"]
    database: Database = current_app.extensions["database"]
    try:
        body = _read_body(settings.max_body_bytes)
    except BodyError as exc:
        return _json_error(exc.status, exc.message)
    payload: Payload | None = None
    problem: PayloadError | None = None
    try:
        payload = decode("json", body, "")
    except PayloadError as exc:
        problem = exc
    if not _authenticated(tokens, query(request.query_string.decode("latin-1"))[1], payload):
        return _json_error(401, "missing or wrong webhook token")
    if payload is None:
        assert problem is not None
        return _json_error(400, f"{problem.message}: expected a JSON object: {{\"MessageID\": ..., \"Recipients\": N}}")
    try:
        message = _TRACK_SCHEMA.load(payload.fields)
    except ValidationError as exc:
        return _json_error(400, describe(exc, "message"), fields=exc.messages)
    try:
        created = database.run(lambda conn: store.track(conn, message))
    except Unavailable as exc:
        return _retry_later(_json_error(503, "database unavailable, retry later", reason=exc.reason))
    log.info("message tracked", message_id=message["message_id"], created=created)
    return _json(201 if created else 200, {"MessageID": message["message_id"], "tracked": True, "created": created})


@bp.route("/healthz")
def healthz() -> Response:
    """200 while the process serves requests (liveness): it does not ask the database."""
    return _json(200, {"status": "ok"})


@bp.route("/readyz")
def readyz() -> Response:
    """200 when the database answers and its schema is current (readiness), else 503 and why.

    Also shows the pollers' state, from the row they write (the same facts /metrics shows)."""
    database: Database = current_app.extensions["database"]
    try:
        state = database.run(store.health, timeout=READY_TIMEOUT_SECONDS)
    except Unavailable as exc:
        return _json(503, {"status": "unavailable", "reason": exc.reason})
    # Ready either way; a refused BestSMS token is the poller's, shown for monitors.
    return _json(200, {"status": "ready", "schema": schema.head(), "poller": _poller(state)})


def _poller(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "unauthorized": state["unauthorized_since"] is not None,
        "unauthorized_since": state["unauthorized_since"], "unauthorized_error": state["unauthorized_error"],
        "backlog": {"needy": state["backlog_needy"], "confirmation": state["backlog_confirmation"],
                    "oldest_needy_at": state["oldest_needy_at"], "measured_at": state["measured_at"]},
        "last_received_sweep_at": state["last_received_sweep_at"],
    }


@bp.route("/metrics")
def metrics() -> Response:
    """Prometheus metrics of every worker, and the pollers' state from the database (when it answers)."""
    database: Database = current_app.extensions["database"]
    try:
        state: dict[str, Any] | None = database.run(store.health, timeout=READY_TIMEOUT_SECONDS)
    except Unavailable:
        state = None
    body, content_type = current_app.extensions["metrics"].render(state)
    return Response(body, content_type=content_type)


def init_app(app: Flask, settings: Settings, database: Database) -> None:
    from . import metrics  # after the fork: see receiver/metrics.py

    app.extensions["metrics"] = metrics
    app.extensions["webhook_tokens"] = Tokens(settings.webhook_tokens)
    app.extensions["parser"] = Parser(settings.tz, settings.default_region)
    app.extensions["database"] = database
    app.extensions["group_commit"] = GroupCommit(database, writers=settings.webhook_writers,
                                                 on_batch=metrics.WEBHOOK_BATCH.observe)
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)


def _http_error(exc: HTTPException) -> Response:
    """Every HTTP error (404, 405, ...) answered in JSON, like everything else."""
    response = _json_error(exc.code or 500, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _server_error(exc: Exception) -> Response:
    """A bug: logged with its stack, counted, and answered in JSON (nothing was committed for it)."""
    log.exception("request failed", path=request.path, method=request.method)
    if request.path == "/webhooks/bestsms":
        current_app.extensions["metrics"].WEBHOOKS.labels("", "error", "500").inc()
    return _json_error(500, "internal error (logged); retry later")
