"""`POST /messages`: a sending application registers a message, so that the poller fetches what
its webhooks miss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from flask import Blueprint, Response
from marshmallow import ValidationError, validate

from . import store, web
from .bestsms.decode import JsonNumber, decode
from .bestsms.events import describe
from .bestsms.fields import MESSAGE_ID, Count, Tagged, Text, pop_instant, text_field, time_field
from .errors import Refused, settled

bp = Blueprint("messages", __name__)
log = structlog.get_logger(__name__)

MAX_RECIPIENTS = 1_000_000  # one message's recipients: far above BestSMS's largest broadcast
NOT_A_MESSAGE_ID = "Not a MessageID: 1 to 40 letters, digits and dashes."


class JsonCount(Count):
    """A count written as a JSON number (`"Recipients": 3`, not `"3"`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if not isinstance(value, JsonNumber):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class TrackSchema(Tagged):
    """A message to track, in BestSMS's words:
    `{"MessageID": ..., "SubAccount": ..., "Department": ..., "Recipients": N, "SendTime": ...,
    "Reference": ...}`."""

    message_id = Text(data_key="MessageID", required=True,
                      validate=validate.Regexp(MESSAGE_ID, error=NOT_A_MESSAGE_ID))
    recipient_count = JsonCount(data_key="Recipients", load_default=None, validate=validate.Range(max=MAX_RECIPIENTS))
    reference = text_field("Reference", "reference")  # the sender's own
    # A scheduled message's send time, as BestSMS's SendTime: local to the account unless it says.
    send_time = time_field("SendTime", local=True)


_TRACK_SCHEMA = TrackSchema()
EXPECTED = 'expected a JSON object: {"MessageID": ..., "Recipients": N}'


@bp.route("/messages", methods=["POST"])
def track_message() -> Response:
    """Track a message for polling: 201 when new, 200 when it was already tracked."""
    app = web.services()
    payload = decode("POST", "application/json", web.read_body(app.settings.max_body_bytes), "")
    if not web.authenticated(payload.credentials):
        return web.unauthorized()
    if payload.refused is not None:
        raise Refused(400, f"{payload.refused.message}: {EXPECTED}")
    try:
        message = _TRACK_SCHEMA.load(payload.fields)
    except ValidationError as exc:
        raise Refused(400, describe(exc, "message"), exc.messages) from settled(exc)
    message["send_at"] = pop_instant(message, ["send_time"], app.settings.tz)
    created = app.database.run(lambda conn: store.track(conn, message))
    log.info("message tracked", message_id=message["message_id"], created=created)
    return web.answer(201 if created else 200,
                      {"MessageID": message["message_id"], "tracked": True, "created": created})
