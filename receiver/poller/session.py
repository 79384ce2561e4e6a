"""What the poller's parts share: its settings, BestSMS's client and parser, one database
connection (made again when it broke), the lease heartbeat, the stop event, whether BestSMS
refuses the token, and the two steps every part takes: following a paginated answer, and merging
a page's events as webhooks are merged."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import psycopg
import structlog

from .. import db, store
from ..bestsms.api import (
    BestSMSClient,
    Malformed,
    NotFound,
    PollFailure,
    PollParser,
    RetryLater,
    Stopped,
    Unauthorized,
)
from ..config import Settings
from ..errors import first_line
from ..metrics import POLL_CHANGES, POLL_ERRORS, POLL_REQUESTS
from .heartbeat import Heartbeat

log = structlog.get_logger("receiver.poller")

RECORDS_PER_PAGE = 100
MAX_PAGES = 10_000  # a guard against a server that never stops paging

# What ends a poll or a sweep as failed (and retried later): BestSMS's failure, a stop, a value the
# database refused.
FAILED: tuple[type[Exception], ...] = (PollFailure, Stopped, *db.VALUE_REFUSED)


class Page(NamedTuple):
    """What applying one page did: rows changed, whether it had any, how many pages there are."""

    changed: int
    had_rows: bool
    page_count: int


class Totals:
    """Pages fetched and rows changed by one poll or sweep, for its log line."""

    def __init__(self) -> None:
        self.pages = self.changed = 0


class Session:
    def __init__(self, settings: Settings, conninfo: str, *, stop: threading.Event | None = None,
                 client: BestSMSClient | None = None) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.stop = stop or threading.Event()
        settings.check_poller()
        self.api = client or BestSMSClient(
            settings.bestsms_api_url, settings.bestsms_auth_token or "", timeout=settings.poll_timeout_seconds,
            rate=settings.poll_rate_per_second, stop=self.stop,
            on_request=lambda endpoint, status: POLL_REQUESTS.labels(endpoint, status).inc(),
            on_error=lambda endpoint, kind: POLL_ERRORS.labels(endpoint, kind).inc())
        self.parser = PollParser(settings.tz, settings.default_region)
        self.heartbeat = Heartbeat(settings, conninfo)
        self.unauthorized: str | None = None  # BestSMS's refusal of the token, until it takes it again
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.connect(self.settings, self.conninfo, "poller")
        return self._conn

    def forget_connection(self) -> None:
        """After a failed cycle: the next use connects again."""
        self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.heartbeat.close()
        self.api.close()

    def pages(self, path: str, totals: Totals, apply: Callable[[str, Any], Page],
              params: Mapping[str, Any] | None = None) -> bool:
        """Follow every page of a paginated poll, `apply` making each page's changes in its own
        transaction; whether any page had rows."""
        page_no, page_count, seen_any = 1, 1, False
        while page_no <= min(page_count, MAX_PAGES):
            if page_no > 1 and self.stop.is_set():
                raise Stopped
            data = self.api.get(path, {**(params or {}), "recordsPerPage": RECORDS_PER_PAGE, "page": page_no})
            page = apply(path, data)
            totals.pages += 1
            totals.changed += page.changed
            seen_any = seen_any or page.had_rows
            page_count = page.page_count
            page_no += 1
        return seen_any

    def apply(self, kind: str, events: list[Mapping[str, Any]]) -> tuple[int, int]:
        """Merge a page's events as webhooks are merged; what changed is counted (what the
        webhooks had not brought: alerts compare it with the webhooks)."""
        changed, total = store.apply_many(self.conn, kind, events, "poll")
        POLL_CHANGES.labels(kind).inc(changed)
        return changed, total

    def failed(self, exc: Exception) -> tuple[str, str | None]:
        """A poll's or a sweep's failure as (outcome, error), worded one way for both; a refused
        token stops polling until it is taken again."""
        if isinstance(exc, Unauthorized):
            self.refused(exc)
            return "unauthorized", f"unauthorized: {exc}"
        if isinstance(exc, Stopped):
            return "stopped", None
        if isinstance(exc, NotFound):
            return "not_found", f"not found: {exc}"
        if isinstance(exc, RetryLater):
            return "retry", str(exc)
        if isinstance(exc, Malformed):
            return "error", f"Malformed: {exc}"
        if isinstance(exc, psycopg.Error):  # a value PostgreSQL refuses: the answer is malformed
            return "error", f"Malformed: refused by the database: {exc.diag.message_primary or first_line(exc)}"
        return "error", str(exc)

    def refused(self, exc: Unauthorized) -> None:
        """BestSMS refused our token: stop polling (retries would fail the same way) and say so loudly."""
        self.unauthorized = str(exc)
        log.error("BestSMS refused BESTSMS_AUTH_TOKEN: polling stopped; one request every "
                  f"{self.settings.poll_unauthorized_retry_seconds} s checks whether it is taken again",
                  error=self.unauthorized)
