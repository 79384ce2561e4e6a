"""The poller: fetches, politely, the results and replies that webhooks missed.

Every poll goes through the same validation (bestsms.api.PollParser, which builds the same events
as webhooks) and the same merge
(store.apply_many -> apply_result/apply_reply in schema.sql) as webhooks.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import psycopg
import structlog

from . import db, schema, store
from .bestsms.api import (
    BestSMSClient,
    Malformed,
    NotFound,
    PollFailure,
    PollParser,
    RetryLater,
    Stopped,
    Unauthorized,
)
from .config import Settings
from .errors import Unavailable, first_line
from .metrics import POLL_CHANGES, POLLS, POLLS_GIVEN_UP, SWEEP_UNRECOVERABLE

log = structlog.get_logger(__name__)

RECORDS_PER_PAGE = 100
MAX_PAGES = 10_000  # a guard against a server that never stops paging
MAX_SWEEP_MINUTES = 1440  # timePeriod's most (the vendor's SDKs refuse more)
# How far back /get/sms/received answers by dateFrom/dateTo ("Maximum 7 days", TNZ's OpenAPI
# description), and the window a catch-up asks for at a time.
SWEEP_LOOKBACK = timedelta(days=7)
SWEEP_WINDOW = timedelta(days=1)
_LOCAL = "%Y-%m-%dT%H:%M:%S"  # dateFrom/dateTo, in the API user's local time (its example: 2025-08-01T00:00:00)
PARTITIONS_EVERY_SECONDS = 600.0  # how often the poller makes sure webhook_events has its days ahead


# What ends a poll or a sweep as failed (and retried later): BestSMS's failure, a stop, a value the
# database refused.
_FAILED: tuple[type[Exception], ...] = (PollFailure, Stopped, *db.VALUE_REFUSED)


class Heartbeat:
    """Renews the lease of what the poller is working on, every third of POLL_LEASE_SECONDS, on a
    connection of its own: a live poller is never overtaken however slow BestSMS is, and a killed
    one's lease runs out within POLL_LEASE_SECONDS."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None

    @contextmanager
    def holding(self, renew: Callable[[psycopg.Connection[Any], float], None]) -> Iterator[None]:
        """While the block runs, `renew(conn, lease)` (a store function) every third of the lease."""
        done = threading.Event()
        thread = threading.Thread(target=self._beat, args=(done, renew), daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _beat(self, done: threading.Event, renew: Callable[[psycopg.Connection[Any], float], None]) -> None:
        while not done.wait(self.settings.poll_lease_seconds / 3):
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = db.connect(self.settings, self.conninfo, "poller")
                renew(self._conn, self.settings.poll_lease_seconds)
            except psycopg.Error as exc:  # the poll itself will meet the same trouble and say so
                log.warning("lease not renewed", error=first_line(exc))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Page(NamedTuple):
    changed: int
    had_rows: bool
    page_count: int


class Poller:
    """Polls due messages, one at a time, each leased in PostgreSQL so that many pollers can share work."""

    def __init__(self, settings: Settings, conninfo: str, *, stop: threading.Event | None = None,
                 client: BestSMSClient | None = None) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.stop = stop or threading.Event()
        self.api = client or BestSMSClient(settings, self.stop)
        self.parser = PollParser(settings.tz, settings.default_region)
        self.unauthorized: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._schema_checked = False
        self._db_problem: str | None = None  # what was last logged about the database
        self._partitions_due = 0.0
        self.heartbeat = Heartbeat(settings, conninfo)

    # -- database ----------------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.connect(self.settings, self.conninfo, "poller")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.heartbeat.close()
        self.api.close()

    # -- the loop ----------------------------------------------------------------------------------

    def run_once(self) -> Counter[str]:
        """Poll every message due now once (needy ones first), and sweep received SMS if that is
        due; record the pollers' state; returns the outcomes."""
        outcomes: Counter[str] = Counter()
        if not self._schema_checked:  # the poller never changes the schema: it waits for `migrate`
            if reason := schema.behind(self.conn):
                raise Unavailable(reason)
            self._schema_checked = True
        self._keep_event_partitions()
        if self.unauthorized and not self._probe():
            self.write_state()
            return outcomes
        settings = self.settings
        for message_id, poll_state in store.finish_messages(self.conn, confirmations=settings.poll_confirmations,
                                                            after=settings.poll_after_seconds,
                                                            give_up=settings.poll_give_up_seconds):
            if poll_state == "given_up":
                POLLS_GIVEN_UP.inc()
            log.info("poll finished", message_id=message_id, poll_state=poll_state)
        self.sweep_received()
        run_started_at = store.now(self.conn)  # each message once a run
        backlog = self.classify()
        classified_at = time.monotonic()
        while not self.stop.is_set() and not self.unauthorized:
            if time.monotonic() - classified_at > settings.poll_classify_seconds:  # a long run's queue stays fresh
                backlog = self.classify()
                self.write_state(backlog)
                classified_at = time.monotonic()
            claimed = self._claim(run_started_at)
            if claimed is None:
                break
            claim, needy = claimed
            outcomes[self.poll_message(claim.message_id, claim.attempts, needy=needy)] += 1
        self.write_state(self.classify() if outcomes else backlog)
        return outcomes

    def _keep_event_partitions(self) -> None:
        """webhook_events' days ahead (ensure_webhook_event_partitions(), made by `migrate`), every
        PARTITIONS_EVERY_SECONDS: what runs regularly makes them. A failure is logged; polling goes on."""
        if time.monotonic() < self._partitions_due:
            return
        try:
            made = store.ensure_event_partitions(self.conn)
        except psycopg.Error as exc:
            log.warning("webhook_events days ahead not made", error=first_line(exc))
            return
        self._partitions_due = time.monotonic() + PARTITIONS_EVERY_SECONDS
        if made:
            log.info("webhook_events days made", days=made)

    def _claim(self, run_started_at: datetime) -> tuple[store.Claim, bool] | None:
        """The next message to poll and whether it is needy: needy ones, then new ones that are
        needy, then (POLL_CONFIRMATIONS=leftover) confirmations."""
        confirm = self.settings.poll_confirmations == "leftover"
        for need in ("needy", "new", "confirmation") if confirm else ("needy", "new"):
            claim = store.claim(self.conn, need, lease=self.settings.poll_lease_seconds,
                                after=self.settings.poll_after_seconds, run_started_at=run_started_at)
            if claim is not None:
                return claim, need != "confirmation"
        return None

    def classify(self) -> store.Backlog:
        """Class every due message (kept for the claims to read an index), and count the backlog."""
        return store.classify(self.conn, after=self.settings.poll_after_seconds)

    def write_state(self, backlog: store.Backlog | None = None) -> None:
        """The pollers' one state row: BestSMS's refusal (or none: it clears), and the backlog."""
        store.write_poller_state(self.conn, self.unauthorized, self.classify() if backlog is None else backlog)

    def _probe(self) -> bool:
        """After a 401: one cheap request to see whether BestSMS takes the token again."""
        try:
            self.api.get("/get/sms/received", {"timePeriod": 1, "recordsPerPage": 1, "page": 1})
        except Unauthorized as exc:
            self.unauthorized = str(exc)
            return False
        except Stopped:
            return False  # asked to stop: nothing learnt about the token
        except PollFailure:
            pass  # any answer but a 401 says the token is taken
        log.info("BestSMS takes BESTSMS_AUTH_TOKEN again: polling resumed")
        self.unauthorized = None
        return True

    def run_forever(self) -> None:
        """Poll until stopped. After a 401 it polls nothing and asks again every
        POLL_UNAUTHORIZED_RETRY_SECONDS (one request), until BestSMS takes the token."""
        while not self.stop.is_set():
            try:
                self.run_once()
            except Unavailable as exc:
                self._database_problem(exc.reason)
                self._conn = None
            except psycopg.Error as exc:  # the database's state (read-only, a privilege ...), or a bug
                reason = db.database_state(exc)
                if reason is None:
                    log.exception("poll cycle failed")
                else:
                    self._database_problem(reason)
                self._conn = None
            except Exception:  # a bug must not stop the poller; leases left behind expire
                log.exception("poll cycle failed")
                self._conn = None
            else:
                self._database_problem(None)
            self.stop.wait(self.settings.poll_unauthorized_retry_seconds if self.unauthorized
                           else self.settings.poll_idle_seconds)

    def _database_problem(self, problem: str | None) -> None:
        """Log when the database becomes unusable (once, not every cycle) and when it is back."""
        if problem is not None and self._db_problem is None:
            log.error("database not usable, poller waiting", reason=problem)
        elif problem is None and self._db_problem is not None:
            log.info("database usable again, poller resumed")
        self._db_problem = problem

    # -- one message -------------------------------------------------------------------------------

    def poll_message(self, message_id: str, attempts: int = 0, *, needy: bool = True) -> str:
        """Fetch a message's status pages (and replies) and merge them; returns the outcome."""
        started = time.perf_counter()
        totals = {"pages": 0, "changed": 0}
        outcome, error = "polled", None
        replies_fetched: bool | None = None  # not asked for
        try:
            with self.heartbeat.holding(lambda conn, lease: store.renew_lease(conn, message_id, lease)):
                has_recipients = self._pages(f"/get/status/{quote(message_id, safe='')}", totals, self._apply_status)
                if has_recipients:
                    replies_fetched = False  # until every page of them is in
                    with suppress(NotFound):  # no replies to list
                        self._pages(f"/get/sms/reply/{quote(message_id, safe='')}", totals, self._apply_replies)
                    replies_fetched = True
        except _FAILED as exc:
            outcome, error = self._failed(exc)
        counted = outcome not in ("unauthorized", "stopped")  # BestSMS did not answer this message
        poll_state = store.finish_poll(self.conn, message_id, counted=counted, error=error,
                                       delay=self.backoff(attempts) if counted else 0.0,
                                       give_up=self.settings.poll_give_up_seconds,
                                       replies_fetched=replies_fetched if counted else None)
        POLLS.labels(outcome, "needy" if needy else "confirmation").inc()
        log.info("poll", message_id=message_id, outcome=outcome, needy=needy, poll_state=poll_state,
                 pages=totals["pages"], changed=totals["changed"], error=error,
                 ms=round((time.perf_counter() - started) * 1000, 1))
        return outcome

    def _failed(self, exc: Exception) -> tuple[str, str | None]:
        """A poll's or a sweep's failure as (outcome, error), worded one way for both."""
        if isinstance(exc, Unauthorized):
            self._refused(exc)
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

    def _refused(self, exc: Unauthorized) -> None:
        """BestSMS refused our token: stop polling (retries would fail the same way) and say so loudly."""
        self.unauthorized = str(exc)
        log.error("BestSMS refused BESTSMS_AUTH_TOKEN: polling stopped; one request every "
                  f"{self.settings.poll_unauthorized_retry_seconds} s checks whether it is taken again",
                  error=self.unauthorized)

    def backoff(self, attempts: int) -> float:
        """Seconds to the next poll: doubling from POLL_AFTER_SECONDS, capped, with jitter."""
        base = (self.settings.poll_after_seconds or 1.0) * 2.0 ** min(attempts + 1, 30)
        return min(base, self.settings.poll_max_interval_seconds) * random.uniform(0.75, 1.0)  # noqa: S311

    def _pages(self, path: str, totals: dict[str, int], apply: Callable[[str, Any], Page],
               params: dict[str, Any] | None = None) -> bool:
        """Follow every page of a paginated poll, applying each page in its own transaction.

        Returns whether any page had rows."""
        page_no, page_count, seen_any = 1, 1, False
        while page_no <= min(page_count, MAX_PAGES):
            if page_no > 1 and self.stop.is_set():
                raise Stopped
            data = self.api.get(path, {**(params or {}), "recordsPerPage": RECORDS_PER_PAGE, "page": page_no})
            page = apply(path, data)
            totals["pages"] += 1
            totals["changed"] += page.changed
            seen_any = seen_any or page.had_rows
            page_count = page.page_count
            page_no += 1
        return seen_any

    def _message_page(self, path: str, data: Any) -> tuple[str, dict[str, Any]]:
        """A status or reply page, checked to be about the message asked for: an answer about
        another one is malformed, applied to neither."""
        page = self.parser.status_page(data)
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
        with self.conn.transaction():
            changed, total = self._apply("result", page["recipients"])
            store.apply_references(self.conn, page["references"])
            store.update_polled_message(self.conn, message_id, page, self.settings.poll_lease_seconds)
        return Page(changed, bool(total or page["count"]), page["page_count"])

    def _apply_replies(self, path: str, data: Any) -> Page:
        _, page = self._message_page(path, data)
        changed, total = self._apply("reply", page["replies"])
        return Page(changed, bool(total), page["page_count"])

    def _apply_received(self, path: str, data: Any) -> Page:
        page = self.parser.received_page(data)
        changed, total = self._apply("reply", page["replies"])
        return Page(changed, bool(total), page["page_count"])

    def _apply(self, kind: str, events: list[Mapping[str, Any]]) -> tuple[int, int]:
        """Merge a page's events as webhooks are merged; what changed is counted (what the
        webhooks had not brought: alerts compare it with the webhooks)."""
        changed, total = store.apply_many(self.conn, kind, events, "poll")
        POLL_CHANGES.labels(kind).inc(changed)
        return changed, total

    # -- inbound SMS sweep -------------------------------------------------------------------------

    def sweep_received(self) -> None:
        """If due, fetch inbound SMS received since the last successful sweep: the last 24 h by
        `timePeriod`; a longer gap (a poller that was down) in windows of a day by
        `dateFrom`/`dateTo`, oldest first, as far back as BestSMS answers (SWEEP_LOOKBACK). What
        is covered advances window by window, and only over what BestSMS answered."""
        name = "received"
        sweep = store.claim_sweep(self.conn, name, lease=self.settings.poll_lease_seconds,
                                  every=self.settings.received_sweep_seconds)
        if sweep is None:
            return
        last, started_at = sweep.last_success_at, sweep.started_at
        covered, outcome, error = None, "swept", None
        totals = {"pages": 0, "changed": 0}
        windows = self._sweep_windows(last, started_at)
        with self.heartbeat.holding(lambda conn, lease: store.renew_sweep_lease(conn, name, lease)):
            for params, until in windows:
                try:
                    self._pages("/get/sms/received", totals, self._apply_received, params)
                except NotFound:
                    pass  # nothing received in the window
                except _FAILED as exc:
                    outcome, error = self._failed(exc)
                    error = f"{error}; swept again from {(covered or last or started_at).isoformat()} at the next sweep"
                    break
                covered = until
                if len(windows) > 1:  # a long catch-up keeps what it has done
                    store.finish_sweep(self.conn, name, covered_until=covered, error=None, keep_lease=True)
        store.finish_sweep(self.conn, name, covered_until=covered, error=error)
        log.info("sweep", sweep=name, windows=len(windows), covered_until=covered, outcome=outcome, error=error,
                 **totals)

    def _sweep_windows(self, last: datetime | None, now: datetime) -> list[tuple[dict[str, Any], datetime]]:
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
        windows, start, local = [], last, self.settings.tz
        while start < now:
            end = min(start + SWEEP_WINDOW, now)
            # the account's local time (the API's), an hour early: a daylight-saving hour is not missed
            since = (start - timedelta(hours=1)).astimezone(local)
            windows.append(({"dateFrom": since.strftime(_LOCAL), "dateTo": end.astimezone(local).strftime(_LOCAL)},
                            end))
            start = end
        return windows
