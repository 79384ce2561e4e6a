"""`POST /messages`: a sending application registers a message, so that the poller fetches what
its webhooks miss."""

from __future__ import annotations

import structlog
from flask import Blueprint, Response
from marshmallow import ValidationError, fields, validate

from . import store, web
from .bestsms.decode import decode
from .bestsms.events import describe
from .bestsms.fields import Tagged, text_field
from .errors import Refused

bp = Blueprint("messages", __name__)
log = structlog.get_logger(__name__)

MAX_RECIPIENTS = 1_000_000  # one message's recipients: far above BestSMS's largest broadcast


class TrackSchema(Tagged):
    """A message to track, in BestSMS's words:
    `{"MessageID": ..., "SubAccount": ..., "Department": ..., "Recipients": N}`."""

    message_id = text_field("MessageID", "message_id", required=True)
    recipient_count = fields.Integer(data_key="Recipients", load_default=None, strict=True,
                                     validate=validate.Range(min=0, max=MAX_RECIPIENTS))


_TRACK_SCHEMA = TrackSchema()
EXPECTED = 'expected a JSON object: {"MessageID": ..., "Recipients": N}'


@bp.route("/messages", methods=["POST"])
def track_message() -> Response:
    """Track a message for polling: 201 when new, 200 when it was already tracked."""
    app = web.services()
    body = web.read_body(app.settings.max_body_bytes)
    try:
        payload = decode("json", body, "")
    except Refused as exc:
        if not web.authenticated(()):
            return web.unauthorized()
        raise Refused(400, f"{exc.message}: {EXPECTED}") from None
    if not web.authenticated(payload.credentials):
        return web.unauthorized()
    try:
        message = _TRACK_SCHEMA.load(payload.fields)
    except ValidationError as exc:
        raise Refused(400, describe(exc, "message"), exc.messages) from None
    created = app.database.run(lambda conn: store.track(conn, message))
    log.info("message tracked", message_id=message["message_id"], created=created)
    return web.answer(201 if created else 200,
                      {"MessageID": message["message_id"], "tracked": True, "created": created})
