"""The two events the service stores, built one way whether BestSMS sent them as a webhook or
answered them to a poll; and the webhook schemas.

A Send Result webhook, as BestSMS sends it in JSON (one per recipient):

    {"Version": "v2.04", "Sender": "webhooks@example.com.au", "APIKey": "...", "Type": "SMS",
     "Destination": "+61410010001", "ContactID": "", "ReceivedID": "",
     "MessageID": "7d0c6a1e-2f5b-4c1a-9d7e-000000000001", "SubAccount": "Clinic-North",
     "Department": "Reminders", "JobNumber": "10AB20CE", "SentTimeLocal": "2025-06-13 06:44:30",
     "SendTimeUTC": "2025-06-12 20:44:30", "SentTimeUTC_RFC3339": "2025-06-12T20:44:30.000Z",
     "Status": "Success", "Result": "delivered", "Message": "", "Price": "0.10",
     "Detail": "SMSParts:1", "URL": ""}

An Inbound SMS webhook has the same fields, with Type `SMSReply` (matched to the MessageID) or
`SMSInbound`, Status `RECEIVED`, the replier in Destination and the text in Message.

Schemas (these, and the poll answers' in api.py) load BestSMS's fields under our names;
`result_event()` and `reply_event()` then apply what every source shares: status spellings,
types, Type=Email, E.164 numbers, and every key of the event present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

from marshmallow import Schema, ValidationError, post_load

from ..errors import Refused, settled
from ..numbers import phone_number
from .decode import JsonNumber, Payload, decode
from .fields import LIMITS, DestSeq, Tagged, Text, Zoned, pop_instant, price_field, text_field, time_field

# BestSMS's recipient statuses, by lower-cased spelling.
STATUS_MAP = {"success": "Success", "failed": "Failed", "pending": "Pending"}
FINAL_STATUSES = frozenset({"Success", "Failed"})
REPLY_TYPES = {"smsreply": "SMSReply", "smsinbound": "SMSInbound"}
# Polls call an SMS "Text"; webhooks call it "SMS". Rows use the webhook's word.
TYPES = {"text": "SMS"}

# Each event's keys: apply_result's and apply_reply's parameters (store.ARGS, named), less `source`.
RESULT_FIELDS = ("message_id", "dest_seq", "destination", "type", "status", "result", "sent_at", "price",
                 "sms_parts", "sub_account", "department", "job_number", "contact_id", "detail")
REPLY_FIELDS = ("received_id", "message_id", "type", "from_number", "message_text", "received_at",
                "sub_account", "department", "job_number", "contact_id", "detail", "price", "dest_seq")

_SMS_PARTS = re.compile(r"SMSParts\s*:\s*([0-9]+)", re.IGNORECASE)
MAX_SMS_PARTS = 255  # a concatenated SMS has at most 255 parts (its header counts them in one byte)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def result_event(data: Mapping[str, Any], region: str) -> dict[str, Any]:
    """One recipient's delivery report, from a webhook's or a poll's fields (by our names)."""
    event: dict[str, Any] = {name: data.get(name) for name in RESULT_FIELDS}
    status = STATUS_MAP.get(str(event["status"] or "").lower())
    if status is None:
        raise ValidationError(f"Unknown status {event['status']!r}: expected Success, Failed or Pending.", "Status")
    event["status"] = status
    type_ = event["type"]
    event["type"] = TYPES.get((type_ or "").lower(), type_)
    destination = str(event["destination"]).strip()
    if (event["type"] or "SMS").lower() == "email":  # an email recipient's address is kept as sent
        if not _EMAIL.fullmatch(destination):
            raise ValidationError("Not an email address (the recipient's Type is Email).", "Destination")
        event["destination"] = destination
    else:
        event["destination"] = _phone(destination, region, "Destination")
    return event


def reply_event(data: Mapping[str, Any], region: str, from_key: str = "Destination") -> dict[str, Any]:
    """One inbound SMS: a reply to one of our messages (SMSReply) or not (SMSInbound). `from_key`
    is BestSMS's name for the sender's number, for the error when it is not one."""
    event: dict[str, Any] = {name: data.get(name) for name in REPLY_FIELDS}
    kind = REPLY_TYPES.get((event["type"] or "").lower())
    event["type"] = kind or ("SMSReply" if event["message_id"] else "SMSInbound")
    event["from_number"] = _phone(str(event["from_number"]), region, from_key)
    return event


def _phone(raw: str, region: str, key: str) -> str:
    try:
        return phone_number(raw, region)
    except ValueError:
        raise ValidationError("Not a phone number: expected 3 to 15 digits, with an optional +.", key) from None


def sms_parts(detail: str | None) -> tuple[int | None, str | None]:
    """The SMS part count in a Detail field such as `SMSParts:2`, and a note when it is there but
    not believable (the count is left empty; the report itself is kept)."""
    match = _SMS_PARTS.search(detail or "")
    if not match:
        return None, None
    digits = match.group(1)
    if len(digits) > 4 or not 1 <= int(digits) <= MAX_SMS_PARTS:
        return None, f"Detail {match.group(0)[:40]!r}: not a believable SMS part count; sms_parts left empty"
    return int(digits), None


def kind_of(data: Mapping[str, Any]) -> str:
    """`reply` for an Inbound SMS webhook (Type SMSReply/SMSInbound or Status RECEIVED), else `result`."""
    type_ = str(data.get("Type") or "").strip().lower()
    status = str(data.get("Status") or "").strip().upper()
    return "reply" if type_ in REPLY_TYPES or status == "RECEIVED" else "result"


def describe(exc: ValidationError, what: str = "webhook") -> str:
    """One line naming each bad field, for the 400 answer and the stored event."""
    messages = exc.messages
    if isinstance(messages, dict):
        parts = [f"{name}: {' '.join(map(str, m)) if isinstance(m, list) else m}" for name, m in messages.items()]
        return f"invalid {what}: " + "; ".join(parts)
    return f"invalid {what}: {messages}"


# -- webhooks ---------------------------------------------------------------------------------------

class _Webhook(Zoned, Tagged):
    """Fields both webhook kinds share."""

    contact_id = text_field("ContactID", "contact_id")
    detail = text_field("Detail", "detail")
    time_rfc3339 = time_field("SentTimeUTC_RFC3339")
    time_send_utc = time_field("SendTimeUTC")
    time_sent_utc = time_field("SentTimeUTC")  # older payloads
    time_local = time_field("SentTimeLocal", local=True)

    def _common(self, data: dict[str, Any]) -> dict[str, Any]:
        data["at"] = pop_instant(data, ["time_rfc3339", "time_send_utc", "time_sent_utc", "time_local"], self.tz)
        return data


class ResultSchema(_Webhook):
    """A Send Result webhook: one recipient's delivery result."""

    message_id = text_field("MessageID", "message_id", required=True)
    dest_seq = text_field("DestSeq", "dest_seq", kind=DestSeq)
    destination = text_field("Destination", "destination", required=True)
    type = text_field("Type", "type")
    status = Text(data_key="Status", required=True)
    result = text_field("Result", "result")
    price = price_field()

    @post_load
    def _to_event(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data = self._common(data)
        parts, note = sms_parts(data["detail"])
        event = result_event({**data, "sent_at": data["at"], "sms_parts": parts}, self.region)
        if note:  # kept with the webhook's event row; the report itself is applied
            event["note"] = note
        return event


class ReplySchema(_Webhook):
    """An Inbound SMS webhook: a reply to one of our messages (SMSReply) or not (SMSInbound)."""

    received_id = text_field("ReceivedID", "received_id", required=True)
    message_id = text_field("MessageID", "message_id")
    type = text_field("Type", "type")
    from_number = text_field("Destination", "from_number", required=True)
    message_text = text_field("Message", "message_text")
    price = price_field()

    @post_load
    def _to_event(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data = self._common(data)
        return reply_event({**data, "received_at": data["at"]}, self.region)


@dataclass(frozen=True)
class Parsed:
    """A webhook request as BestSMS's formats read it (`payload`: its fields, credentials and the
    body as it may be stored), and either the event it carries (`kind`, `event`) or why it is
    refused (`refused`). `message_id` is known even for most refused ones."""

    payload: Payload
    kind: str | None = None
    event: dict[str, Any] | None = None
    message_id: str | None = None
    refused: Refused | None = None

    @property
    def format(self) -> str | None:
        return self.payload.format

    @property
    def credentials(self) -> tuple[str, ...]:
        return self.payload.credentials


class Parser:
    """Turns webhook requests into validated events; schemas are built once, at start."""

    def __init__(self, tz: ZoneInfo, region: str) -> None:
        self.schemas: dict[str, Schema] = {
            "result": ResultSchema(tz=tz, region=region),
            "reply": ReplySchema(tz=tz, region=region),
        }

    def webhook(self, method: str, content_type: str | None, body: bytes | str, query_string: str) -> Parsed:
        """The one path from a request to an event: the live endpoint's (`body` as received) and
        `reprocess`'s (`body` as stored). Never raises for what the request holds: a refusal is
        in the result."""
        payload = decode(method, content_type, body, query_string)
        if payload.refused is not None:
            return Parsed(payload, message_id=_message_id(payload), refused=payload.refused)
        try:
            kind, event = self.parse(payload.fields)
        except Refused as exc:
            return Parsed(payload, message_id=_message_id(payload), refused=settled(exc))
        return Parsed(payload, kind, event, event["message_id"])

    def parse(self, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(kind, event) from decoded fields, or Refused (400) naming the bad fields."""
        kind = kind_of(data)
        try:
            event = self.schemas[kind].load(data)
        except ValidationError as exc:
            raise Refused(400, describe(exc), exc.messages) from settled(exc)  # marshmallow's frame holds it
        return kind, cast(dict[str, Any], event)


def _message_id(payload: Payload) -> str | None:
    """The MessageID of a refused webhook, when it has a usable one: kept on its event row."""
    mid = payload.fields.get("MessageID")
    usable = isinstance(mid, str) and not isinstance(mid, JsonNumber) and 0 < len(mid) <= (LIMITS["message_id"] or 0)
    return mid if usable else None
