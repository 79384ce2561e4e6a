"""A small fake BestSMS API for the poller tests, served by a real HTTP server (pytest-httpserver).

It holds messages with recipients and replies, pages them the way BestSMS does, records when each
request arrived, and can be told to fail a message's next requests in the ways BestSMS fails.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from werkzeug import Request, Response

TOKEN = "fake-bestsms-auth-token"
_STATUS = re.compile(r"^/get/status/(?P<id>[^/]+)$")
_REPLY = re.compile(r"^/get/sms/reply/(?P<id>[^/]+)$")


@dataclass
class FakeBestSMS:
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    # message id (or "received", or "<id>:page<N>") -> failure modes for its next requests:
    # 401, 404, 429, 500, "timeout", "garbage", "bad-shape", "nul", "not-found", or "pass" (answer as usual)
    failures: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, path, query)
    delay: float = 0.0
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Australia/Sydney"))  # the account's, for dateFrom/dateTo
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)  # the received windows asked for
    # Whether /get/sms/received answers only the window asked for (as BestSMS does); off, every
    # inbound SMS is in every window (most tests date theirs in 2025).
    windowed: bool = False
    timeout_sleep: float = 1.0
    # Called with each request's path before it is answered: what happens meanwhile elsewhere.
    on_request: Callable[[str], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- building state --------------------------------------------------------------------------

    def add_message(self, message_id: str, recipients: int, *, status: str = "Success", replies: int = 0,
                    sub_account: str = "Clinic-North", department: str = "Reminders") -> dict[str, Any]:
        self.messages[message_id] = {
            "SubAccount": sub_account, "Department": department, "JobNum": "10AB20CE",
            "Recipients": [
                {"Type": "Text", "DestSeq": f"{i + 1:08d}", "Destination": f"+614{(i % 100_000_000):08d}",
                 "Status": status, "Result": "delivered" if status == "Success" else "Submitted",
                 "SentDate": "2025-06-13T06:44:30", "SentDateUTC": "2025-06-12T20:44:30",
                 "Price": 0.1 if status == "Success" else "", "Custom1": "", "RemoteID": "",
                 "SMSReplies": [
                     {"ReceivedID": f"{message_id}-reply-{i + 1}", "From": f"+614{(i % 100_000_000):08d}",
                      "MessageText": f"Reply {i + 1} 👍", "ReceivedTimeUTC": "2025-06-12T21:00:00",
                      "ReceivedTimeLocal": "2025-06-13T07:00:00"}
                 ] if i < replies else []}
                for i in range(recipients)
            ],
        }
        return self.messages[message_id]

    def fail(self, key: str, *modes: Any) -> None:
        self.failures[key].extend(modes)

    def paths(self, prefix: str = "") -> list[str]:
        return [path for _, path, _ in self.requests if path.startswith(prefix)]

    # -- serving ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((time.monotonic(), request.path, request.query_string.decode()))
        if self.on_request is not None:
            self.on_request(request.path)
        if self.delay:
            time.sleep(self.delay)
        if request.headers.get("Authorization") != f"Basic {TOKEN}":
            return _json({"Result": "Failed", "ErrorMessage": ["Unauthorized"]}, 401)
        match = _STATUS.match(request.path) or _REPLY.match(request.path)
        key = match.group("id") if match else "received"
        page = int(request.args.get("page", 1))
        failure = self._next_failure(f"{key}:page{page}")
        failure = self._next_failure(key) if failure is None else failure
        if failure is not None and failure != "pass":
            return self._failure(failure)
        per_page = int(request.args.get("recordsPerPage", 100))
        if request.path == "/get/sms/received":
            return self._paged({"Result": "Success"}, "Messages", self._received_in(request.args), page, per_page)
        message = self.messages.get(key) if match else None
        if message is None:
            return _json({"Result": "Failed", "ErrorMessage": ["Message(s) NOT found"]}, 200)
        recipients = message["Recipients"]
        if _STATUS.match(request.path):
            recipients = [{k: v for k, v in r.items() if k != "SMSReplies"} for r in recipients]
        done = [r for r in message["Recipients"] if r["Status"] in ("Success", "Failed")]
        head = {
            "Result": "Success", "MessageID": key, "Status": "Completed" if len(done) == len(recipients) else "Pending",
            "JobNum": message["JobNum"], "Account": "100001", "SubAccount": message["SubAccount"],
            "Department": message["Department"], "Reference": "", "Created": "2025-06-13T06:44:16",
            "CreatedUTC": "2025-06-12T20:44:16", "Delayed": "2025-06-13T06:44:16",
            "DelayedUTC": "2025-06-12T20:44:16", "Timezone": "AUS Eastern", "Count": len(recipients),
            "Complete": len(done), "Success": sum(r["Status"] == "Success" for r in recipients),
            "Failed": sum(r["Status"] == "Failed" for r in recipients),
            "Price": round(sum(float(r["Price"] or 0) for r in recipients), 4),
        }
        head.update(message.get("Head", {}))  # a shape of the vendor's own: other spellings, other values
        head = {k: v for k, v in head.items() if v is not None}
        return self._paged(head, "Recipients", recipients, page, per_page)

    def _received_in(self, args: Any) -> list[dict[str, Any]]:
        """The inbound SMS of the window asked for, by their UTC time (one without a time is in
        every window): the last `timePeriod` minutes, or `dateFrom` to `dateTo` in the account's
        local time (`tz`), as BestSMS's reports take them."""
        now = datetime.now(UTC)
        if "dateFrom" in args:
            start = datetime.fromisoformat(args["dateFrom"]).replace(tzinfo=self.tz)
            end = datetime.fromisoformat(args["dateTo"]).replace(tzinfo=self.tz)
        else:
            start, end = now - timedelta(minutes=int(args.get("timePeriod", 1440))), now
        with self.lock:
            self.windows.append((start, end))

        def at(m: dict[str, Any]) -> datetime | None:
            text = m.get("ReceivedTimeUTC") or m.get("DateUTC")
            return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None

        if not self.windowed:
            return self.received
        return [m for m in self.received if at(m) is None or start <= at(m) <= end]  # type: ignore[operator]

    def _next_failure(self, key: str) -> Any:
        with self.lock:
            queue = self.failures.get(key)
            return queue.popleft() if queue else None

    def _failure(self, mode: Any) -> Response:
        if mode == "timeout":
            time.sleep(self.timeout_sleep)
            return _json({"Result": "Success"}, 200)
        if mode == "garbage":
            return Response("<html>Bad gateway</html>", 200, content_type="text/html")
        if mode == "nul":
            return _json({"Result": "Success", "PageCount": 1, "Recipients": [
                {"DestSeq": "00000001", "Destination": "+61400000000", "Status": "Success", "Result": "x\u0000"}]}, 200)
        if mode == "bad-shape":
            return _json({"Result": "Success", "Recipients": [{"DestSeq": "1", "Status": "Delivered??"}]}, 200)
        if mode == "result-error":  # tnzapi-ts ErrorResponseDTO, on HTTP 200 (its Result enum: Error)
            return _json({"Result": "Error", "ErrorMessage": ["An error occurred while processing."]}, 200)
        if mode == "result-unauthorized":  # the same, Result Unauthorized
            return _json({"Result": "Unauthorized", "ErrorMessage": ["Invalid Auth Token"]}, 200)
        if mode == "record-not-found":  # TNZ's OpenAPI 404RecordNotFound
            return _json({"Result": "RecordNotFound", "ErrorMessage": [
                "Unable to find or access record with id '0eee9801-098e-fc70-86b3-ae5a4s550992d'."]}, 404)
        if mode == 403:  # tnzapi-dotnet ApiResponseParserTests.ParseAsync_On403_ParsesFailed
            return _json({"Result": "Failed", "ErrorMessage": ["Address Book API access not enabled"]}, 403)
        if mode == "not-found":
            return _json({"Result": "Failed", "ErrorMessage": ["Message(s) NOT found"]}, 404)
        if mode == 401:
            return _json({"Result": "Failed", "ErrorMessage": ["Unauthorized"]}, 401)
        return _json({"Result": "Failed", "ErrorMessage": [f"HTTP {mode}"]}, int(mode))

    @staticmethod
    def _paged(head: dict[str, Any], key: str, items: list[Any], page: int, per_page: int) -> Response:
        start = (page - 1) * per_page
        body = {**head, "TotalRecords": len(items), "RecordsPerPage": per_page,
                "PageCount": max(1, math.ceil(len(items) / per_page)), "Page": page,
                key: items[start:start + per_page]}
        return _json(body, 200)


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status, content_type="application/json")
