"""One message's poll: its status pages (results, the sender's references, what BestSMS says of
the whole message), then its replies, each page merged in its own transaction; then when to poll
it again, or never."""

from __future__ import annotations

import random
import time
from contextlib import suppress
from typing import Any
from urllib.parse import quote, unquote

import structlog

from .. import store
from ..bestsms.api import Malformed, NotFound
from ..config import Settings
from ..metrics import POLLS
from .session import FAILED, Page, Session, Totals

log = structlog.get_logger("receiver.poller")


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds to the next poll: doubling from POLL_AFTER_SECONDS, capped, with jitter."""
    base = (settings.poll_after_seconds or 1.0) * 2.0 ** min(attempts + 1, 30)
    return min(base, settings.poll_max_interval_seconds) * random.uniform(0.75, 1.0)  # noqa: S311


class StatusPoll:
    def __init__(self, session: Session) -> None:
        self.session = session

    def poll(self, message_id: str, attempts: int = 0, *, needy: bool = True) -> str:
        """Fetch a message's status pages (and replies) and merge them; returns the outcome."""
        session, settings = self.session, self.session.settings
        started = time.perf_counter()
        totals = Totals()
        outcome, error = "polled", None
        replies_fetched: bool | None = None  # not asked for
        try:
            with session.heartbeat.holding(lambda conn, lease: store.renew_lease(conn, message_id, lease)):
                path = quote(message_id, safe="")
                if session.pages(f"/get/status/{path}", totals, self._apply_status):
                    replies_fetched = False  # until every page of them is in
                    with suppress(NotFound):  # no replies to list
                        session.pages(f"/get/sms/reply/{path}", totals, self._apply_replies)
                    replies_fetched = True
        except FAILED as exc:
            outcome, error = session.failed(exc)
        counted = outcome not in ("unauthorized", "stopped")  # BestSMS did not answer this message
        poll_state = store.finish_poll(session.conn, message_id, counted=counted, error=error,
                                       delay=backoff(settings, attempts) if counted else 0.0,
                                       give_up=settings.poll_give_up_seconds,
                                       replies_fetched=replies_fetched if counted else None)
        POLLS.labels(outcome, "needy" if needy else "confirmation").inc()
        log.info("poll", message_id=message_id, outcome=outcome, needy=needy, poll_state=poll_state,
                 pages=totals.pages, changed=totals.changed, error=error,
                 ms=round((time.perf_counter() - started) * 1000, 1))
        return outcome

    def _message_page(self, path: str, data: Any) -> tuple[str, dict[str, Any]]:
        """A status or reply page, checked to be about the message asked for: an answer about
        another one is malformed, applied to neither."""
        page = self.session.parser.status_page(data)
        asked = unquote(path.rsplit("/", 1)[1])
        if page["message_id"] not in (None, asked):
            raise Malformed(f"the answer is about MessageID {page['message_id'][:40]!r}, not the one asked for")
        return asked, page

    def _apply_status(self, path: str, data: Any) -> Page:
        message_id, page = self._message_page(path, data)
        listed = max(page.pop("total_records") or 0, len(page["recipients"]))
        if page["count"] is not None and (page["count"] == 0 or page["count"] < listed):
            # "none yet", or fewer than the answer itself lists (tnzapi-dotnet's fixture: Count 0
            # beside a recipient): not a count, never written over a registered one
            page["count"] = None
        conn = self.session.conn
        with conn.transaction():
            changed, total = self.session.apply("result", page["recipients"])
            store.apply_references(conn, page["references"])
            store.update_polled_message(conn, message_id, page, self.session.settings.poll_lease_seconds)
        return Page(changed, bool(total or page["count"]), page["page_count"])

    def _apply_replies(self, path: str, data: Any) -> Page:
        _, page = self._message_page(path, data)
        changed, total = self.session.apply("reply", page["replies"])
        return Page(changed, bool(total), page["page_count"])
