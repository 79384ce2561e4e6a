"""What every endpoint shares: the services (a typed accessor), authentication, reading a body,
JSON answers, a request id on every log line, and the one place errors become answers."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .batch import GroupCommit
from .bestsms.decode import query
from .bestsms.events import Parser
from .config import Settings
from .db import Database
from .errors import Refused, Unavailable

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 30
# A request id given by the proxy in front (nginx's $request_id), when there is one: else our own.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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


@dataclass(frozen=True)
class Services:
    """What the endpoints work with, made once per process by `init_app`."""

    settings: Settings
    database: Database
    tokens: Tokens
    parser: Parser
    group_commit: GroupCommit


def services(app: Flask | None = None) -> Services:
    """The services of `app`, by default the current app's (flaskr's `get_db()`, typed)."""
    found: Services = (app or current_app).extensions["receiver"]
    return found


def init_app(app: Flask, settings: Settings) -> None:
    """Make the services, bind a request id to every log line, answer every error in JSON."""
    database = Database(settings, settings.database_url or "")
    app.extensions["receiver"] = Services(
        settings=settings,
        database=database,
        tokens=Tokens(settings.webhook_tokens),
        parser=Parser(settings.tz, settings.default_region),
        group_commit=GroupCommit(database, writers=settings.webhook_writers, on_batch=metrics.WEBHOOK_BATCH.observe,
                                 threads=settings.gunicorn_threads),
    )
    app.before_request(_before)
    app.after_request(_send_request_id)
    app.teardown_request(_forget_request_id)
    app.register_error_handler(Refused, refused)
    app.register_error_handler(Unavailable, unavailable)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)


# -- a request id on every log line ---------------------------------------------------------------

def _before() -> Response | None:
    """Before every request (one hook: each costs a little on every request)."""
    _bind_request_id()
    return _options_and_head()


def _bind_request_id() -> None:
    """A request id on every log line of the request (structlog's contextvars, cleared of the
    thread's previous request): the proxy's `X-Request-ID` when one is trusted (PROXY_HOPS), else
    a new one."""
    given = request.headers.get("X-Request-ID", "") if services().settings.proxy_hops else ""
    g.request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=g.request_id)


def _options_and_head() -> Response | None:
    """OPTIONS answered in JSON, for every endpoint; HEAD never runs the webhook's view (its GET
    applies a webhook: a HEAD must change nothing)."""
    if request.method not in ("OPTIONS", "HEAD") or request.url_rule is None:
        return None  # the view, or routing's own 404 or 405
    rule = request.url_rule
    allowed = sorted((rule.methods or set()) - {"OPTIONS", "HEAD"})
    if request.method == "OPTIONS":
        response: Response = answer(200, {"allow": allowed})
    elif request.blueprint == "webhooks":
        response = error(405, f"HEAD changes nothing here: BestSMS's webhooks are {' or '.join(allowed)}")
    else:
        return None
    response.headers["Allow"] = ", ".join(allowed)
    return response


def _send_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _forget_request_id(_: BaseException | None) -> None:
    """The request is over: what its thread logs next (gunicorn's "Invalid request" about another
    connection) does not carry its id."""
    structlog.contextvars.clear_contextvars()


# -- reading a request -----------------------------------------------------------------------------

def read_body(limit: int) -> bytes:
    """The whole body, or Refused: over `limit` bytes, whatever the transfer encoding, is 413."""
    body, whole = read_head(limit)
    if not whole:
        raise Refused(413, body_over(limit))
    return body


def read_head(limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether that is the whole of it (what is left of a
    longer one is not read: answer with `Connection: close`); Refused(400) when it cannot be read."""
    try:
        body = request.stream.read(limit + 1)
    except Exception as exc:  # a broken chunked encoding, a client gone: gunicorn's and werkzeug's errors
        raise Refused(400, f"request body could not be read: {type(exc).__name__}") from None
    return body[:limit], len(body) <= limit


def body_over(limit: int) -> str:
    return f"request body over {limit} bytes"


def raw_query() -> str:
    return request.query_string.decode("latin-1")


def authenticated(body_credentials: tuple[str, ...]) -> bool:
    """A token matches: in the Authorization header, the query string (`?token=`) or the body's
    APIKey (`body_credentials`). Always true when no token is configured (ALLOW_UNAUTHENTICATED_WEBHOOKS)."""
    tokens = services().tokens
    return not tokens or tokens.match([*_authorization_credentials(), *query(raw_query())[1], *body_credentials])


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


# -- answers ---------------------------------------------------------------------------------------

def answer(status: int, body: dict[str, Any]) -> Response:
    """A JSON answer."""
    response = jsonify(body)
    response.status_code = status
    return response


def error(status: int, message: str, **extra: Any) -> Response:
    return answer(status, {"error": message, **extra})


def unauthorized() -> Response:
    return error(401, "missing or wrong webhook token")


def unavailable(exc: Unavailable) -> Response:
    """503 with Retry-After: the database is away, too slow, or its schema is behind (logged once by Database)."""
    response = error(503, "database unavailable, retry later", reason=exc.reason)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def refused(exc: Refused, *, unread: bool = False, **extra: Any) -> Response:
    """A refusal's answer: its status, why, the fields at fault, and `extra` (the kept event's id).
    Over a size limit, or `unread` (a body not read to its end), the connection is closed: what is
    left of the request is not read."""
    response = error(exc.status, exc.message, **({"fields": exc.fields} if exc.fields else {}), **extra)
    if unread or exc.status in (413, 414):
        response.headers["Connection"] = "close"
    return response


def _http_error(exc: HTTPException) -> Response:
    """Every HTTP error (404, 405, ...) answered in JSON, like everything else."""
    response = error(exc.code or 500, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _server_error(exc: Exception) -> Response:
    """A bug: logged with its stack, counted, and answered in JSON (nothing was committed for it)."""
    log.exception("request failed", path=request.path, method=request.method)
    if request.blueprint == "webhooks":
        metrics.WEBHOOKS.labels("", "error", "500").inc()
    return error(500, "internal error (logged); retry later")
