"""BestSMS's wire format: the four webhook encodings, field aliases, statuses and times.

Everything that knows how BestSMS spells things lives here; the rest of the service sees
`ResultEvent` and `ReplyEvent` dictionaries keyed by our column names.

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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape as xml_escape
from zoneinfo import ZoneInfo

import defusedxml.ElementTree
from defusedxml import DefusedXmlException
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate

from .numbers import to_e164

FORMATS = ("json", "xml", "form", "query")

# BestSMS's recipient statuses, by lower-cased spelling.
STATUS_MAP = {"success": "Success", "failed": "Failed", "pending": "Pending"}
FINAL_STATUSES = frozenset({"Success", "Failed"})
REPLY_TYPES = {"smsreply": "SMSReply", "smsinbound": "SMSInbound"}

# Query parameters that are ours, not BestSMS fields.
_OWN_PARAMS = frozenset({"token"})
# Fields whose text is kept exactly as sent (no trimming).
_VERBATIM = frozenset({"Message", "MessageText"})

_SMS_PARTS = re.compile(r"SMSParts\s*:\s*(\d+)", re.IGNORECASE)


class PayloadError(Exception):
    """A request body BestSMS's formats cannot explain; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Payload:
    format: str
    fields: dict[str, Any]


# -- decoding the four formats --------------------------------------------------------------------

def format_of(method: str, content_type: str | None, body: bytes) -> str:
    """Which of BestSMS's four callback formats a request is in, or PayloadError 415."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if method == "GET" or (not body and not mimetype):
        return "query"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return "json"
    if mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml"):
        return "xml"
    if mimetype == "application/x-www-form-urlencoded":
        return "form"
    raise PayloadError(
        415,
        f"unsupported content type {mimetype or '(none)'!r}: send JSON, XML, "
        "application/x-www-form-urlencoded, or GET with a query string",
    )


def decode(fmt: str, body: bytes, query_string: str) -> Payload:
    """Decode a request already classified by `format_of` into a flat field dictionary."""
    if fmt == "query":
        data: dict[str, Any] = _pairs(query_string)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(400, "request body is not valid UTF-8") from None
        if fmt == "json":
            data = _json(text)
        elif fmt == "xml":
            data = _xml(text)
        else:
            data = _pairs(text)
    for name in _OWN_PARAMS:
        data.pop(name, None)
    for name, value in data.items():
        if isinstance(value, str) and "\x00" in value:
            raise PayloadError(400, f"field {name!r} contains a NUL character")
    return Payload(fmt, data)


def _pairs(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        data.setdefault(key, value)  # the first of repeated keys wins
    return data


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise PayloadError(400, f"JSON body must be an object of fields, got {type(data).__name__}")
    return data


def _xml(text: str) -> dict[str, Any]:
    try:
        root = defusedxml.ElementTree.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise PayloadError(400, f"XML refused: {exc.__class__.__name__} (DTDs and entities are not accepted)") from None
    except ParseError as exc:
        raise PayloadError(400, f"malformed XML: {exc}") from None
    data: dict[str, Any] = {}
    for child in root:
        data.setdefault(child.tag, child.text or "")
    return data


# -- redaction --------------------------------------------------------------------------------------

_APIKEY_PATTERNS = (
    re.compile(r'("APIKey"\s*:\s*")((?:[^"\\]|\\.)*)(")', re.IGNORECASE),
    re.compile(r"(<APIKey>)(.*?)(</APIKey>)", re.IGNORECASE | re.DOTALL),
    re.compile(r"((?:^|[&?])(?:APIKey|token)=)([^&]*)()", re.IGNORECASE),
)
REDACTED = "[REDACTED]"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with the APIKey field's value, and any of `secrets` in any encoding, replaced."""
    for pattern in _APIKEY_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    for secret in secrets:
        for form in {secret, quote_plus(secret), quote(secret, safe=""), xml_escape(secret), json.dumps(secret)[1:-1]}:
            if form:
                text = text.replace(form, REDACTED)
    return text


# -- fields -----------------------------------------------------------------------------------------

class Text(fields.String):
    """A string field that accepts numbers too (XML and forms have no types; JSON senders vary)."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class Price(fields.Field[Decimal]):
    """A price: a JSON string (`"0.10"`), a JSON number (`0.1`) or empty (NULL)."""

    default_error_messages = {"invalid": "Not a valid price."}  # noqa: RUF012 - marshmallow's API

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("invalid")
        try:
            price = Decimal(str(value).strip())  # str(0.1) == "0.1": no binary float noise
        except InvalidOperation:
            raise self.make_error("invalid") from None
        if not price.is_finite():
            raise self.make_error("invalid")
        return price


class Time(fields.Field[datetime]):
    """A BestSMS time, as an aware datetime in UTC.

    UTC fields come as `2025-06-12 20:44:30`, `2025-06-12T20:44:30` or `2025-06-12T20:44:30.000Z`;
    local fields are in the account's time zone (`BESTSMS_TIMEZONE`), given to the schema.
    """

    default_error_messages = {  # noqa: RUF012 - marshmallow's API
        "invalid": "Not a valid time: expected YYYY-MM-DD hh:mm:ss or RFC 3339."
    }

    def __init__(self, *, local: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local = local

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise self.make_error("invalid") from None
        if parsed.tzinfo is None:
            tz = self.root.tz if self.local and isinstance(self.root, _Webhook) else UTC
            parsed = parsed.replace(tzinfo=tz)
        return parsed.astimezone(UTC)


def _str(key: str, max_len: int, **kwargs: Any) -> Text:
    return Text(data_key=key, load_default=None, validate=validate.Length(max=max_len), **kwargs)


# -- schemas ----------------------------------------------------------------------------------------

class _Webhook(Schema):
    """Fields both webhook kinds share. Unknown fields are accepted (the raw event keeps them)."""

    class Meta:
        unknown = EXCLUDE

    def __init__(self, *, tz: ZoneInfo, region: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tz = tz
        self.region = region

    sub_account = _str("SubAccount", 255)
    department = _str("Department", 255)
    job_number = _str("JobNumber", 8)
    job_num = _str("JobNum", 8)  # older payloads
    contact_id = _str("ContactID", 64)
    detail = _str("Detail", 255)
    time_rfc3339 = Time(data_key="SentTimeUTC_RFC3339", load_default=None)
    time_send_utc = Time(data_key="SendTimeUTC", load_default=None)
    time_sent_utc = Time(data_key="SentTimeUTC", load_default=None)  # older payloads
    time_local = Time(data_key="SentTimeLocal", local=True, load_default=None)

    @pre_load
    def _empty_is_null(self, data: Any, **kwargs: Any) -> Any:
        """Trim values and drop empty ones, so that an empty field reads as absent (NULL)."""
        if not isinstance(data, Mapping):
            return data
        cleaned = {}
        for key, value in data.items():
            if isinstance(value, str):
                if key not in _VERBATIM:
                    value = value.strip()
                if value == "":
                    continue
            elif value is None:
                continue
            cleaned[key] = value
        return cleaned

    def _common(self, data: dict[str, Any]) -> dict[str, Any]:
        times = [data.pop(k) for k in ("time_rfc3339", "time_send_utc", "time_sent_utc", "time_local")]
        data["at"] = next((t for t in times if t is not None), None)
        job_num = data.pop("job_num")
        data["job_number"] = data["job_number"] or job_num
        return data


class ResultSchema(_Webhook):
    """A Send Result webhook: one recipient's delivery result."""

    message_id = Text(data_key="MessageID", required=True, validate=validate.Length(min=1, max=40))
    dest_seq = _str("DestSeq", 8)
    destination = Text(data_key="Destination", required=True, validate=validate.Length(min=1, max=255))
    type = _str("Type", 20)
    status = Text(data_key="Status", required=True)
    result = _str("Result", 255)
    price = Price(data_key="Price", load_default=None)

    @post_load
    def _to_event(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data = self._common(data)
        status = STATUS_MAP.get(data["status"].lower())
        if status is None:
            raise ValidationError(
                f"Unknown status {data['status']!r}: expected Success, Failed or Pending.", "Status"
            )
        data["status"] = status
        data["sent_at"] = data.pop("at")
        data["sms_parts"] = sms_parts(data["detail"])
        if (data["type"] or "SMS").lower() != "email":
            data["destination"] = to_e164(data["destination"], self.region)
        return data


class ReplySchema(_Webhook):
    """An Inbound SMS webhook: a reply to one of our messages (SMSReply) or not (SMSInbound)."""

    received_id = Text(data_key="ReceivedID", required=True, validate=validate.Length(min=1, max=64))
    message_id = _str("MessageID", 40)
    type = _str("Type", 20)
    from_number = Text(data_key="Destination", required=True, validate=validate.Length(min=1, max=255))
    message_text = Text(data_key="Message", load_default=None, validate=validate.Length(max=1000))

    @post_load
    def _to_event(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data = self._common(data)
        data["received_at"] = data.pop("at")
        kind = REPLY_TYPES.get((data["type"] or "").lower())
        data["type"] = kind or ("SMSReply" if data["message_id"] else "SMSInbound")
        data["from_number"] = to_e164(data["from_number"], self.region)
        return data


def sms_parts(detail: str | None) -> int | None:
    """The SMS part count in a Detail field such as `SMSParts:2`."""
    match = _SMS_PARTS.search(detail or "")
    return int(match.group(1)) if match else None


def kind_of(data: Mapping[str, Any]) -> str:
    """`reply` for an Inbound SMS webhook (Type SMSReply/SMSInbound or Status RECEIVED), else `result`."""
    type_ = str(data.get("Type") or "").strip().lower()
    status = str(data.get("Status") or "").strip().upper()
    return "reply" if type_ in REPLY_TYPES or status == "RECEIVED" else "result"


def describe(exc: ValidationError) -> str:
    """One line naming each bad field, for the 400 answer and the stored event."""
    messages = exc.messages
    if isinstance(messages, dict):
        parts = [f"{name}: {' '.join(map(str, m)) if isinstance(m, list) else m}" for name, m in messages.items()]
        return "invalid webhook: " + "; ".join(parts)
    return f"invalid webhook: {messages}"


class Parser:
    """Turns decoded webhook fields into a validated event; schemas are built once, at start."""

    def __init__(self, tz: ZoneInfo, region: str) -> None:
        self.schemas: dict[str, Schema] = {
            "result": ResultSchema(tz=tz, region=region),
            "reply": ReplySchema(tz=tz, region=region),
        }

    def parse(self, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Return (kind, event) or raise marshmallow.ValidationError naming the bad fields."""
        kind = kind_of(data)
        event = self.schemas[kind].load(data)
        assert isinstance(event, dict)
        return kind, event
