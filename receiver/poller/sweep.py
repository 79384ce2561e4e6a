"""The inbound SMS sweep: /get/sms/received since the last sweep that succeeded, shared by every
poller through a lease on its row of poll_sweeps."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import structlog

from .. import store
from ..bestsms.api import NotFound
from ..metrics import SWEEP_UNRECOVERABLE
from .session import FAILED, Page, Session, Totals

log = structlog.get_logger("receiver.poller")

MAX_SWEEP_MINUTES = 1440  # timePeriod's most (the vendor's SDKs refuse more)
# How far back /get/sms/received answers by dateFrom/dateTo ("Maximum 7 days", TNZ's OpenAPI
# description), and the window a catch-up asks for at a time.
SWEEP_LOOKBACK = timedelta(days=7)
SWEEP_WINDOW = timedelta(days=1)
_LOCAL = "%Y-%m-%dT%H:%M:%S"  # dateFrom/dateTo, in the API user's local time (its example: 2025-08-01T00:00:00)
NAME = "received"


class ReceivedSweep:
    def __init__(self, session: Session) -> None:
        self.session = session

    def run(self) -> None:
        """If due, fetch inbound SMS received since the last successful sweep: the last 24 h by
        `timePeriod`; a longer gap (a poller that was down) in windows of a day by
        `dateFrom`/`dateTo`, oldest first, as far back as BestSMS answers (SWEEP_LOOKBACK). What
        is covered advances window by window, and only over what BestSMS answered."""
        session, settings = self.session, self.session.settings
        sweep = store.claim_sweep(session.conn, NAME, lease=settings.poll_lease_seconds,
                                  every=settings.received_sweep_seconds)
        if sweep is None:
            return
        last, started_at = sweep.last_success_at, sweep.started_at
        covered, outcome, error = None, "swept", None
        totals = Totals()
        windows = self.windows(last, started_at)
        with session.heartbeat.holding(lambda conn, lease: store.renew_sweep_lease(conn, NAME, lease)):
            for params, until in windows:
                try:
                    session.pages("/get/sms/received", totals, self._apply_received, params)
                except NotFound:
                    pass  # nothing received in the window
                except FAILED as exc:
                    outcome, error = session.failed(exc)
                    error = f"{error}; swept again from {(covered or last or started_at).isoformat()} at the next sweep"
                    break
                covered = until
                if len(windows) > 1:  # a long catch-up keeps what it has done
                    store.finish_sweep(session.conn, NAME, covered_until=covered, error=None, keep_lease=True)
        store.finish_sweep(session.conn, NAME, covered_until=covered, error=error)
        log.info("sweep", sweep=NAME, windows=len(windows), covered_until=covered, outcome=outcome, error=error,
                 pages=totals.pages, changed=totals.changed)

    def _apply_received(self, path: str, data: Any) -> Page:
        page = self.session.parser.received_page(data)
        changed, total = self.session.apply("reply", page["replies"])
        return Page(changed, bool(total), page["page_count"])

    def windows(self, last: datetime | None, now: datetime) -> list[tuple[dict[str, Any], datetime]]:
        """The requests that cover inbound SMS from `last` to `now`, oldest first, each with the
        time it covers up to. Before BestSMS's lookback, nothing can be fetched: said once, counted."""
        if last is None:  # the first sweep: a day back
            return [({"timePeriod": MAX_SWEEP_MINUTES}, now)]
        minutes = math.ceil((now - last).total_seconds() / 60) + 1  # and a minute of overlap
        if minutes <= MAX_SWEEP_MINUTES:
            return [({"timePeriod": max(1, minutes)}, now)]
        earliest = now - SWEEP_LOOKBACK
        if last < earliest:
            lost = (earliest - last).total_seconds()
            SWEEP_UNRECOVERABLE.inc(lost)
            log.error("inbound SMS received in this time cannot be swept: BestSMS answers for the last "
                      f"{SWEEP_LOOKBACK.days} days only; any whose webhook was missed are lost",
                      unswept_from=last.isoformat(), unswept_until=earliest.isoformat())
            last = earliest
        windows, start, local = [], last, self.session.settings.tz
        while start < now:
            end = min(start + SWEEP_WINDOW, now)
            # the account's local time (the API's), an hour early: a daylight-saving hour is not missed
            since = (start - timedelta(hours=1)).astimezone(local)
            windows.append(({"dateFrom": since.strftime(_LOCAL), "dateTo": end.astimezone(local).strftime(_LOCAL)},
                            end))
            start = end
        return windows
