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
    """A BestSMS time. UTC fields (`2025-06-12 20:44:30`, `2025-06-12T20:44:30.000Z`) load as aware
    datetimes in UTC; local fields (`local=True`) load naive, for the schema to place in the account's
    time zone (`_instant`)."""

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
            return parsed if self.local else parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


def _instant(times: list[datetime | None], tz: ZoneInfo) -> datetime | None:
    """The first time given, in UTC; a naive (local) time is taken to be in `tz`."""
    for t in times:
        if t is not None:
            return t.replace(tzinfo=tz).astimezone(UTC) if t.tzinfo is None else t
    return None


def _time(key: str, local: bool = False) -> Time:
    return Time(data_key=key, local=local, load_default=None)


def _str(key: str, max_len: int, **kwargs: Any) -> Text:
    return Text(data_key=key, load_default=None, validate=validate.Length(max=max_len), **kwargs)


# -- schemas ----------------------------------------------------------------------------------------

class _Base(Schema):
    """Unknown fields are accepted (the raw event keeps them); empty values read as absent (NULL)."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _empty_is_null(self, data: Any, **kwargs: Any) -> Any:
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


class _Zoned(_Base):
    """A top-level schema: knows the account's time zone and the default region for numbers."""

    def __init__(self, *, tz: ZoneInfo, region: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tz = tz
        self.region = region


class _Webhook(_Zoned):
    """Fields both webhook kinds share."""

    sub_account = _str("SubAccount", 255)
    department = _str("Department", 255)
    job_number = _str("JobNumber", 8)
    job_num = _str("JobNum", 8)  # older payloads
    contact_id = _str("ContactID", 64)
    detail = _str("Detail", 255)
    time_rfc3339 = _time("SentTimeUTC_RFC3339")
    time_send_utc = _time("SendTimeUTC")
    time_sent_utc = _time("SentTimeUTC")  # older payloads
    time_local = _time("SentTimeLocal", local=True)

    def _common(self, data: dict[str, Any]) -> dict[str, Any]:
        data["at"] = _pop_instant(data, ["time_rfc3339", "time_send_utc", "time_sent_utc", "time_local"], self.tz)
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


class TrackSchema(_Base):
    """`POST /messages`: a sending application registers a message for tracking, in BestSMS's words."""

    message_id = Text(data_key="MessageID", required=True, validate=validate.Length(min=1, max=40))
    sub_account = _str("SubAccount", 255)
    department = _str("Department", 255)
    job_number = _str("JobNumber", 8)
    recipient_count = fields.Integer(data_key="Recipients", load_default=None, validate=validate.Range(min=0),
                                     strict=True)


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


# -- polls ------------------------------------------------------------------------------------------
#
# GET /get/status/{MessageID}?recordsPerPage=100&page=1 answers (one page):
#   {"Result": "Success", "MessageID": "...", "Status": "Completed", "JobNum": "10AB20CE",
#    "SubAccount": "", "Department": "", "Created": "2024-06-13T06:44:16", "CreatedUTC": "...",
#    "Delayed": "...", "DelayedUTC": "...", "Timezone": "AUS Eastern", "Count": 1, "Complete": 1,
#    "Success": 1, "Failed": 0, "Price": 0.1, "TotalRecords": 1, "RecordsPerPage": 100,
#    "PageCount": 1, "Page": 1,
#    "Recipients": [{"Type": "Text", "DestSeq": "00000001", "Destination": "+61410010001",
#                    "Status": "Success", "Result": "delivered", "SentDate": "2024-06-13T06:44:30",
#                    "SentDateUTC": "2024-06-12T20:44:30", "Price": 0.04, ...}]}
# GET /get/sms/reply/{MessageID} is the same, each recipient with "SMSReplies": [{"ReceivedID",
#   "ReceivedTimeLocal", "ReceivedTimeUTC", "ReceivedTimeUTC_RFC3339", "From", "MessageText"}].
# GET /get/sms/received?timePeriod=N answers {"Result", "PageCount", "Page", "Messages": [{"ReceivedID",
#   "MessageID", "JobNum", "SubAccount", "Department", "ReceivedTime...", "From", "ContactID",
#   "MessageText", "Timezone"}]}.
# Failures: {"Result": "Failed", "ErrorMessage": ["Message(s) NOT found"]} (HTTP 200 or 404).

WINDOWS_TIME_ZONES = {
    "AUS Eastern": "Australia/Sydney", "E. Australia": "Australia/Brisbane",
    "Cen. Australia": "Australia/Adelaide", "AUS Central": "Australia/Darwin",
    "W. Australia": "Australia/Perth", "Tasmania": "Australia/Hobart", "New Zealand": "Pacific/Auckland",
}
# Polls call an SMS "Text"; webhooks call it "SMS". Rows use the webhook's word.
_POLL_TYPES = {"text": "SMS"}


class PollFailure(Exception):
    """BestSMS answered a poll with `"Result": "Failed"` or something unusable."""


class NotFound(PollFailure):
    """`Message(s) NOT found`: not visible yet (just sent), or not BestSMS's."""


class Unauthorized(PollFailure):
    """The auth token was refused: nothing will work until a human fixes BESTSMS_AUTH_TOKEN."""


class Malformed(PollFailure):
    """The response is not what the API documents; nothing of it is stored."""


def check_result(data: Any) -> dict[str, Any]:
    """The response object, or the PollFailure its `Result`/`ErrorMessage` describes."""
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    if str(data.get("Result", "")).strip().lower() == "failed":
        errors = data.get("ErrorMessage")
        text = "; ".join(map(str, errors)) if isinstance(errors, list) else str(errors or "Result: Failed")
        if "not found" in text.lower():
            raise NotFound(text)
        if "unauthori" in text.lower():
            raise Unauthorized(text)
        raise PollFailure(text)
    return data


def _pop_instant(data: dict[str, Any], names: list[str], tz: ZoneInfo) -> datetime | None:
    return _instant([data.pop(name) for name in names], tz)


# Time fields by preference: UTC spellings first, local ones last.
_RECEIVED_TIMES = ["received_rfc3339", "received_utc", "received_local"]
_SENT_TIMES = ["sent_rfc3339", "sent_date_utc", "sent_time_utc", "sent_date", "sent_time_local"]


class PolledReply(_Base):
    received_rfc3339 = _time("ReceivedTimeUTC_RFC3339")
    received_utc = _time("ReceivedTimeUTC")
    received_local = _time("ReceivedTimeLocal", local=True)
    received_id = Text(data_key="ReceivedID", required=True, validate=validate.Length(min=1, max=64))
    from_number = Text(data_key="From", required=True, validate=validate.Length(min=1, max=255))
    message_text = Text(data_key="MessageText", load_default=None, validate=validate.Length(max=1000))
    # only in /get/sms/received:
    message_id = _str("MessageID", 40)
    job_number = _str("JobNum", 8)
    sub_account = _str("SubAccount", 255)
    department = _str("Department", 255)
    contact_id = _str("ContactID", 64)
    timezone = _str("Timezone", 64)


class PolledRecipient(_Base):
    sent_rfc3339 = _time("SentTimeUTC_RFC3339")
    sent_date_utc = _time("SentDateUTC")
    sent_time_utc = _time("SentTimeUTC")
    sent_date = _time("SentDate", local=True)
    sent_time_local = _time("SentTimeLocal", local=True)
    type = _str("Type", 20)
    dest_seq = Text(data_key="DestSeq", required=True, validate=validate.Length(min=1, max=8))
    destination = Text(data_key="Destination", required=True, validate=validate.Length(min=1, max=255))
    status = Text(data_key="Status", required=True)
    result = _str("Result", 255)
    price = Price(data_key="Price", load_default=None)
    replies = fields.List(fields.Nested(PolledReply), data_key="SMSReplies", load_default=list)


class _Page(_Zoned):
    page = fields.Integer(data_key="Page", load_default=1)
    page_count = fields.Integer(data_key="PageCount", load_default=1, validate=validate.Range(min=0))
    timezone = _str("Timezone", 64)

    def zone(self, data: dict[str, Any], default: ZoneInfo | None = None) -> ZoneInfo:
        """The zone the record's `Timezone` (popped) names, else `default` (the account's)."""
        name = WINDOWS_TIME_ZONES.get(data.pop("timezone", None) or "")
        return ZoneInfo(name) if name else (default or self.tz)

    def reply_event(self, r: dict[str, Any], tz: ZoneInfo, **context: Any) -> dict[str, Any]:
        zone = self.zone(r, tz)
        event = {**r, **{k: v for k, v in context.items() if v is not None}}  # the message's own ids win
        event["received_at"] = _pop_instant(event, _RECEIVED_TIMES, zone)
        event["from_number"] = to_e164(event["from_number"], self.region)
        event["type"] = "SMSReply" if event.get("message_id") else "SMSInbound"
        event.setdefault("contact_id", None)
        event["detail"] = None
        return event


class StatusPage(_Page):
    """One page of /get/status/{id} or /get/sms/reply/{id}: the message, its recipients, their replies."""

    message_id = _str("MessageID", 40)
    job_status = _str("Status", 20)
    job_number = _str("JobNum", 8)
    sub_account = _str("SubAccount", 255)
    department = _str("Department", 255)
    created_rfc3339 = _time("CreatedTimeUTC_RFC3339")
    created_utc = _time("CreatedUTC")
    created_time_utc = _time("CreatedTimeUTC")
    created_local = _time("Created", local=True)
    created_time_local = _time("CreatedTimeLocal", local=True)
    delayed_rfc3339 = _time("DelayedTimeUTC_RFC3339")
    delayed_utc = _time("DelayedUTC")
    delayed_time_utc = _time("DelayedTimeUTC")
    delayed_local = _time("Delayed", local=True)
    delayed_time_local = _time("DelayedTimeLocal", local=True)
    count = fields.Integer(data_key="Count", load_default=None)
    complete = fields.Integer(data_key="Complete", load_default=None)
    success = fields.Integer(data_key="Success", load_default=None)
    failed = fields.Integer(data_key="Failed", load_default=None)
    price = Price(data_key="Price", load_default=None)
    recipients = fields.List(fields.Nested(PolledRecipient), data_key="Recipients", load_default=list)

    @post_load
    def _to_events(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tz = self.zone(data)
        data["page_count"] = max(data["page_count"], 1)
        data["created_at"] = _pop_instant(data, ["created_rfc3339", "created_utc", "created_time_utc",
                                                 "created_local", "created_time_local"], tz)
        data["delayed_at"] = _pop_instant(data, ["delayed_rfc3339", "delayed_utc", "delayed_time_utc",
                                                 "delayed_local", "delayed_time_local"], tz)
        shared = {k: data[k] for k in ("message_id", "sub_account", "department", "job_number")}
        recipients, replies = [], []
        for r in data.pop("recipients"):
            status = STATUS_MAP.get(r["status"].lower())
            if status is None:
                raise ValidationError(f"Unknown recipient status {r['status']!r}.", "Recipients")
            for reply in r.pop("replies"):
                replies.append(self.reply_event(reply, tz, **shared))
            type_ = r["type"]
            sent_at = _pop_instant(r, _SENT_TIMES, tz)
            recipients.append({
                **shared, **r, "status": status, "type": _POLL_TYPES.get((type_ or "").lower(), type_),
                "sent_at": sent_at, "destination": to_e164(r["destination"], self.region),
                "sms_parts": None, "contact_id": None, "detail": None,
            })
        data["recipients"], data["replies"] = recipients, replies
        return data


class ReceivedPage(_Page):
    """One page of /get/sms/received: inbound SMS, matched (MessageID) or not."""

    messages = fields.List(fields.Nested(PolledReply), data_key="Messages", load_default=list)

    @post_load
    def _to_events(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tz = self.zone(data)
        data["page_count"] = max(data["page_count"], 1)
        data["replies"] = [self.reply_event(m, tz) for m in data.pop("messages")]
        return data


class PollParser:
    """Validates poll responses into the same event dictionaries webhooks produce."""

    def __init__(self, tz: ZoneInfo, region: str) -> None:
        self.status = StatusPage(tz=tz, region=region)
        self.received = ReceivedPage(tz=tz, region=region)

    def status_page(self, data: Any) -> dict[str, Any]:
        return self._load(self.status, data)

    def received_page(self, data: Any) -> dict[str, Any]:
        return self._load(self.received, data)

    @staticmethod
    def _load(schema: Schema, data: Any) -> dict[str, Any]:
        try:
            page = schema.load(check_result(data))
        except ValidationError as exc:
            raise Malformed(describe(exc)) from None
        assert isinstance(page, dict)
        return page
