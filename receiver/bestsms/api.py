"""BestSMS's poll API: the client (rate limited, with timeouts), its errors, and its answers' schemas.

GET /get/status/{MessageID}?recordsPerPage=100&page=1 answers (one page):
  {"Result": "Success", "MessageID": "...", "Status": "Completed", "JobNum": "10AB20CE",
   "SubAccount": "", "Department": "", "Created": "2024-06-13T06:44:16", "CreatedUTC": "...",
   "Delayed": "...", "DelayedUTC": "...", "Timezone": "AUS Eastern", "Count": 1, "Complete": 1,
   "Success": 1, "Failed": 0, "Price": 0.1, "TotalRecords": 1, "RecordsPerPage": 100,
   "PageCount": 1, "Page": 1,
   "Recipients": [{"Type": "Text", "DestSeq": "00000001", "Destination": "+61410010001",
                   "Status": "Success", "Result": "delivered", "SentDate": "2024-06-13T06:44:30",
                   "SentDateUTC": "2024-06-12T20:44:30", "Price": 0.04, ...}]}
GET /get/sms/reply/{MessageID} is the same, each recipient with "SMSReplies": [{"ReceivedID",
  "ReceivedTimeLocal", "ReceivedTimeUTC", "ReceivedTimeUTC_RFC3339", "From", "MessageText"}].
GET /get/sms/received?timePeriod=N answers {"Result", "PageCount", "Page", "Messages": [{"ReceivedID",
  "MessageID", "JobNum", "SubAccount", "Department", "ReceivedTime...", "From", "ContactID",
  "MessageText", "Timezone"}]}.
Failures: {"Result": "Failed", "ErrorMessage": ["Message(s) NOT found"]} (HTTP 200 or 404), and in
the vendor's other SDKs "Error", "Unauthorized" and "RecordNotFound" (tnzapi-ts src/Common/Result.ts,
ErrorResponseDTO.ts; tnzapi-dotnet Helpers/ApiResponseParser.cs): {"Result": "Error",
"ErrorMessage": ["..."]}. They disagree on an HTTP 200 whose Result is not Success: the TypeScript
and .NET SDKs call it a success, Node.js (lib/Api/Reports/*.js) an error. Here it is a failed call:
taken for a success, an empty answer would advance the inbound sweep past what it never fetched,
while a real success taken for a failure costs one retry. An HTTP 200 with no Result at all is an
answer (tnzapi-ts: "real server behavior").
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from marshmallow import Schema, ValidationError, fields, post_load
from tzlocal.windows_tz import win_tz

from ..errors import settled
from .events import describe, reply_event, result_event
from .fields import (
    Base,
    DestSeq,
    Tagged,
    Zoned,
    count_field,
    pop_instant,
    price_field,
    text_field,
    time_field,
)

# -- errors -----------------------------------------------------------------------------------------

class PollFailure(Exception):
    """BestSMS answered a poll with `"Result": "Failed"` or something unusable."""


class NotFound(PollFailure):
    """`Message(s) NOT found`: not visible yet (just sent), or not BestSMS's."""


class Unauthorized(PollFailure):
    """The auth token was refused: nothing will work until a human fixes BESTSMS_AUTH_TOKEN."""


class Malformed(PollFailure):
    """The response is not what the API documents; nothing of it is stored."""


class RetryLater(PollFailure):
    """429, 5xx, a timeout or a broken connection: try this message again after its back-off."""


class Stopped(Exception):
    """The poller was asked to stop (SIGTERM) between two requests."""


def error_text(data: Any) -> str | None:
    """The `ErrorMessage` of an answer, joined into one line."""
    errors = data.get("ErrorMessage") if isinstance(data, dict) else None
    return "; ".join(map(str, errors)) if isinstance(errors, list) else (str(errors) if errors else None)


def said(data: Any, status: int = 200) -> str:
    """What a failed answer said, in one line: its HTTP status (when not 200), Result and ErrorMessage."""
    result = str(data.get("Result") or "") if isinstance(data, dict) else ""
    return (f"BestSMS answered {f'HTTP {status}, ' if status != 200 else ''}Result {result[:40]!r}: "
            f"{error_text(data) or 'no ErrorMessage'}")


def check_result(data: Any) -> dict[str, Any]:
    """The response object, or the PollFailure its `Result`/`ErrorMessage` describes: any Result
    but Success (case aside) is a failed call; an absent one is an answer."""
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    result = str(data.get("Result") or "").strip()
    if result.lower() in ("", "success"):
        return data
    text = said(data)
    if result.lower() == "recordnotfound" or "not found" in text.lower():
        raise NotFound(text)
    if result.lower() == "unauthorized" or "unauthori" in text.lower():
        raise Unauthorized(text)
    raise PollFailure(text)


# -- the client -------------------------------------------------------------------------------------

class RateLimiter:
    """At most `rate` request starts per second, in this process. Waits wake up early on stop."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.interval = 1.0 / rate
        self.stop = stop
        self.next_at = 0.0

    def wait(self) -> None:
        delay = self.next_at - time.monotonic()
        if (delay > 0 and self.stop.wait(delay)) or self.stop.is_set():
            raise Stopped
        self.next_at = time.monotonic() + self.interval

    def pause(self, seconds: float) -> None:
        self.next_at = max(self.next_at, time.monotonic() + seconds)


def _not_counted(endpoint: str, what: str) -> None:
    pass


class BestSMSClient:
    """GETs against BestSMS's API: rate limited, with timeouts, errors sorted into PollFailure kinds.

    `on_request(endpoint, status)` is told of every request's answer ("0": none), `on_error(endpoint,
    kind)` of every failure (the poller counts them in its metrics)."""

    def __init__(self, base_url: str, token: str, *, timeout: float, rate: float, stop: threading.Event,
                 transport: httpx.BaseTransport | None = None, on_request: Callable[[str, str], None] = _not_counted,
                 on_error: Callable[[str, str], None] = _not_counted) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),  # connect, read, write and pool
            transport=transport,
        )
        self.limiter = RateLimiter(rate, stop)
        self.on_request, self.on_error = on_request, on_error

    def get(self, path: str, params: dict[str, Any]) -> Any:
        """The JSON of a 200 answer to GET `path`, or the PollFailure the answer amounts to (counted)."""
        endpoint = _endpoint(path)
        try:
            return self._get(path, params, endpoint)
        except PollFailure as exc:
            self.on_error(endpoint, _ERROR_KINDS.get(type(exc), "failed"))
            raise

    def _get(self, path: str, params: dict[str, Any], endpoint: str) -> Any:
        self.limiter.wait()
        try:
            response = self.http.get(path, params=params)
        except httpx.TimeoutException as exc:
            self.on_request(endpoint, "0")
            raise RetryLater(f"timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            self.on_request(endpoint, "0")
            raise RetryLater(f"no answer: {type(exc).__name__}") from None
        status = response.status_code
        self.on_request(endpoint, str(status))
        if status == 401:
            raise Unauthorized("HTTP 401")
        if status == 403:  # a feature not enabled, a refused resource (tnzapi-dotnet: Failed): not the token
            raise PollFailure(f"HTTP 403: {_error_text_of(response) or 'forbidden'}: a failed call, retried later")
        if status == 429 or status >= 500:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after:  # BestSMS asks every request of this process to wait
                self.limiter.pause(min(retry_after, MAX_RETRY_AFTER_SECONDS))
            raise RetryLater(f"HTTP {status}")
        try:
            data = response.json()
        except ValueError:
            if status == 404:
                raise NotFound("HTTP 404") from None
            raise Malformed(f"HTTP {status}: body is not JSON") from None
        if status == 404:
            raise NotFound(said(data, status))
        if status != 200:
            raise PollFailure(said(data, status))
        return check_result(data)

    def close(self) -> None:
        self.http.close()


def _error_text_of(response: httpx.Response) -> str | None:
    try:
        return error_text(response.json())
    except ValueError:
        return None


MAX_RETRY_AFTER_SECONDS = 300
_ERROR_KINDS: dict[type[PollFailure], str] = {
    RetryLater: "retry", NotFound: "not_found", Unauthorized: "unauthorized", Malformed: "malformed"}


def _endpoint(path: str) -> str:
    """The metric label of a path: status, reply or received."""
    return "reply" if path.startswith("/get/sms/reply/") else "received" if path.startswith("/get/sms/received") \
        else "status"


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds: delay-seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


# -- answers ----------------------------------------------------------------------------------------

# Time fields by preference: UTC spellings first, local ones last.
_RECEIVED_TIMES = ["received_rfc3339", "received_utc", "date_utc", "received_local", "date"]
_SENT_TIMES = ["sent_rfc3339", "sent_date_utc", "sent_time_utc", "sent_date", "sent_time_local"]
# A recipient's references: the sender's own, kept as they are (store.apply_references).
REFERENCE_FIELDS = ("remote_id", "attention", "company", *(f"custom{n}" for n in range(1, 10)))
# What identifies a reply BestSMS lists without its id.
_REPLY_IDENTITY = ("message_id", "from_number", "received_at", "message_text")


def time_zone(name: str | None, default: ZoneInfo) -> ZoneInfo | None:
    """The zone a record's `Timezone` names: a Windows zone as TNZ writes it (`AUS Eastern`,
    `Central Pacific`: CLDR's windowsZones, as tzlocal ships it) or an IANA name; `default` (the
    account's) when it names none; None when it names one nobody knows."""
    if not name:
        return default
    iana = win_tz.get(f"{name} Standard Time") or win_tz.get(name) or name
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        return None


class PolledReply(Tagged):
    """A reply or inbound SMS, as the facts sheet spells it (ReceivedID, ReceivedTime*) or as
    the v2.04 SDK does (ID or no id at all, Date/DateUTC)."""

    aliases: ClassVar[dict[str, str]] = {**Tagged.aliases, "ID": "ReceivedID"}

    received_rfc3339 = time_field("ReceivedTimeUTC_RFC3339")
    received_utc = time_field("ReceivedTimeUTC")
    received_local = time_field("ReceivedTimeLocal", local=True)
    date_utc = time_field("DateUTC")
    date = time_field("Date", local=True)
    received_id = text_field("ReceivedID", "received_id")
    from_number = text_field("From", "from_number", required=True)
    message_text = text_field("MessageText", "message_text")
    price = price_field()
    # only in /get/sms/received (with the message's tags):
    message_id = text_field("MessageID", "message_id")
    contact_id = text_field("ContactID", "contact_id")
    timezone = text_field("Timezone", "timezone")


class PolledRecipient(Base):
    sent_rfc3339 = time_field("SentTimeUTC_RFC3339")
    sent_date_utc = time_field("SentDateUTC")
    sent_time_utc = time_field("SentTimeUTC")
    sent_date = time_field("SentDate", local=True)
    sent_time_local = time_field("SentTimeLocal", local=True)
    type = text_field("Type", "type")
    dest_seq = text_field("DestSeq", "dest_seq", required=True, kind=DestSeq)
    destination = text_field("Destination", "destination", required=True)
    contact_id = text_field("ContactID", "contact_id")
    status = text_field("Status", "status", required=True)
    result = text_field("Result", "result")
    price = price_field()
    replies = fields.List(fields.Nested(PolledReply), data_key="SMSReplies", load_default=list)
    # The sender's own references for this recipient.
    remote_id = text_field("RemoteID", "remote_id")
    attention = text_field("Attention", "attention")
    company = text_field("Company", "company")
    custom1, custom2, custom3, custom4, custom5, custom6, custom7, custom8, custom9 = (
        text_field(f"Custom{n}", f"custom{n}") for n in range(1, 10))


class _Page(Zoned):
    page = count_field("Page", 1)
    page_count = count_field("PageCount", 1)
    timezone = text_field("Timezone", "timezone")

    def reply(self, r: dict[str, Any], tz: ZoneInfo | None, zone_name: str | None, **context: Any) -> dict[str, Any]:
        """One reply's event; one listed without its id gets a key made of what identifies it, the
        same at every poll (the merge rule knows it for the reply its webhook brings)."""
        if r.get("timezone"):
            zone_name = r.pop("timezone")
            tz = time_zone(zone_name, self.tz)
        fields_ = {**r, **{k: v for k, v in context.items() if v is not None}}  # the message's own ids win
        fields_["received_at"] = pop_instant(fields_, _RECEIVED_TIMES, tz, zone_name)
        event = reply_event(fields_, self.region, from_key="From")
        if not event["received_id"]:
            identity = "|".join(str(event[k] or "") for k in _REPLY_IDENTITY).encode("utf-8", "surrogatepass")
            event["received_id"] = "poll:" + hashlib.sha256(identity).hexdigest()[:40]
        return event

    def page_zone(self, data: dict[str, Any]) -> tuple[ZoneInfo | None, str | None]:
        name = data.pop("timezone", None)
        return time_zone(name, self.tz), name


class StatusPage(_Page, Tagged):
    """One page of /get/status/{id} or /get/sms/reply/{id}: the message, its recipients, their
    replies (each linked to the recipient it is listed under)."""

    aliases: ClassVar[dict[str, str]] = {**Tagged.aliases, "JobStatus": "Status"}  # the v3 answers' spelling

    message_id = text_field("MessageID", "message_id")
    reference = text_field("Reference", "reference")
    job_status = text_field("Status", "status")
    created_rfc3339 = time_field("CreatedTimeUTC_RFC3339")
    created_utc = time_field("CreatedUTC")
    created_time_utc = time_field("CreatedTimeUTC")
    created_local = time_field("Created", local=True)
    created_time_local = time_field("CreatedTimeLocal", local=True)
    delayed_rfc3339 = time_field("DelayedTimeUTC_RFC3339")
    delayed_utc = time_field("DelayedUTC")
    delayed_time_utc = time_field("DelayedTimeUTC")
    delayed_local = time_field("Delayed", local=True)
    delayed_time_local = time_field("DelayedTimeLocal", local=True)
    count = count_field("Count")
    total_records = count_field("TotalRecords")  # the recipients listed, over every page
    complete = count_field("Complete")
    success = count_field("Success")
    failed = count_field("Failed")
    price = price_field()
    recipients = fields.List(fields.Nested(PolledRecipient), data_key="Recipients", load_default=list)

    @post_load
    def _to_events(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tz, zone_name = self.page_zone(data)
        data["page_count"] = max(data["page_count"], 1)
        data["created_at"] = pop_instant(data, ["created_rfc3339", "created_utc", "created_time_utc",
                                            "created_local", "created_time_local"], tz, zone_name)
        data["delayed_at"] = pop_instant(data, ["delayed_rfc3339", "delayed_utc", "delayed_time_utc",
                                            "delayed_local", "delayed_time_local"], tz, zone_name)
        shared = {k: data[k] for k in ("message_id", "sub_account", "department", "job_number")}
        recipients, replies, references = [], [], []
        for r in data.pop("recipients"):
            kept = {name: r.pop(name) for name in REFERENCE_FIELDS}
            if any(kept.values()) or r.get("contact_id"):
                references.append({"message_id": shared["message_id"], "dest_seq": r["dest_seq"],
                                   "contact_id": r.get("contact_id"), **kept})
            listed = {**shared, "dest_seq": r["dest_seq"]}  # each reply, linked to the recipient it is listed under
            replies += [self.reply(reply, tz, zone_name, **listed) for reply in r.pop("replies")]
            sent_at = pop_instant(r, _SENT_TIMES, tz, zone_name)
            recipients.append(result_event({**shared, **r, "sent_at": sent_at}, self.region))
        data["recipients"], data["replies"], data["references"] = recipients, replies, references
        return data


class ReceivedPage(_Page):
    """One page of /get/sms/received: inbound SMS, matched (MessageID) or not."""

    messages = fields.List(fields.Nested(PolledReply), data_key="Messages", load_default=list)

    @post_load
    def _to_events(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        tz, zone_name = self.page_zone(data)
        data["page_count"] = max(data["page_count"], 1)
        data["replies"] = [self.reply(m, tz, zone_name) for m in data.pop("messages")]
        return data


class PollParser:
    """Validates poll answers into the same events webhooks produce."""

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
            raise Malformed(describe(exc, "poll answer")) from settled(exc)
        return cast(dict[str, Any], page)
