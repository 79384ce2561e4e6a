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
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote

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
from .metrics import POLLER_UNAUTHORIZED as UNAUTHORIZED
from .metrics import POLLS

log = structlog.get_logger(__name__)

RECORDS_PER_PAGE = 100
MAX_PAGES = 10_000  # a guard against a server that never stops paging
MAX_SWEEP_MINUTES = 1440


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

    # -- database ----------------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.connect(self.settings, self.conninfo)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.api.close()

    # -- the loop ----------------------------------------------------------------------------------

    def run_once(self) -> Counter[str]:
        """Poll every message due now once, and sweep received SMS if that is due; returns outcomes."""
        outcomes: Counter[str] = Counter()
        if not self._schema_checked:  # the poller never changes the schema: it waits for `migrate`
            if reason := schema.behind(self.conn):
                raise db.Unavailable(reason)
            self._schema_checked = True
        for row in store.rows(self.conn, store.FINISH, {"give_up": self.settings.poll_give_up_seconds}):
            log.info("poll finished", message_id=row["message_id"], poll_state=row["poll_state"])
        if not self.unauthorized:
            self.sweep_received()
        run_started_at = store.rows(self.conn, store.NOW, {})[0]["now"]  # each message at most once a run
        while not self.stop.is_set() and not self.unauthorized:
            claimed = store.rows(self.conn, store.CLAIM, {
                "lease": self.settings.poll_lease_seconds, "after": self.settings.poll_after_seconds,
                "run_started_at": run_started_at})
            if not claimed:
                break
            outcomes[self.poll_message(claimed[0]["message_id"], claimed[0]["poll_attempts"])] += 1
        return outcomes

    def run_forever(self, idle_seconds: float = 5.0) -> None:
        """Poll until stopped. After a 401 it stops polling and waits for a human (and SIGTERM)."""
        while not self.stop.is_set():
            if self.unauthorized:
                self.stop.wait()  # no retries: they would fail the same way; wait for a restart
                break
            try:
                self.run_once()
            except (psycopg.OperationalError, db.Unavailable) as exc:
                self._database_problem(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                self._conn = None
            except Exception:  # a bug must not stop the poller; leases left behind expire
                log.exception("poll cycle failed")
                self._conn = None
            else:
                self._database_problem(None)
            self.stop.wait(idle_seconds)

    def _database_problem(self, problem: str | None) -> None:
        """Log when the database becomes unusable (once, not every cycle) and when it is back."""
        if problem is not None and self._db_problem is None:
            log.error("database not usable, poller waiting", reason=problem)
        elif problem is None and self._db_problem is not None:
            log.info("database usable again, poller resumed")
        self._db_problem = problem

    # -- one message -------------------------------------------------------------------------------

    def poll_message(self, message_id: str, attempts: int = 0) -> str:
        """Fetch a message's status pages (and replies) and merge them; returns the outcome."""
        started = time.perf_counter()
        totals = {"pages": 0, "changed": 0}
        outcome, error, counted = "polled", None, True
        try:
            has_recipients = self._pages(f"/get/status/{quote(message_id, safe='')}", totals, self._apply_status)
            if has_recipients:
                self._pages(f"/get/sms/reply/{quote(message_id, safe='')}", totals, self._apply_replies)
        except Unauthorized as exc:
            self._refused(exc)
            outcome, error, counted = "unauthorized", f"unauthorized: {exc}", False
        except Stopped:
            outcome, counted = "stopped", False
        except NotFound as exc:
            outcome, error = "not_found", f"not found: {exc}"
        except RetryLater as exc:
            outcome, error = "retry", str(exc)
        except PollFailure as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}" if isinstance(exc, Malformed) else str(exc)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:  # a value PostgreSQL refuses: malformed
            outcome, error = "error", f"Malformed: refused by the database: {exc.diag.message_primary or exc}"
        delay = self.backoff(attempts) if counted else 0.0
        [state] = store.rows(self.conn, store.FINISH_POLL, {
            "message_id": message_id, "counted": counted, "error": error, "delay": delay,
            "give_up": self.settings.poll_give_up_seconds})
        POLLS.labels(outcome).inc()
        log.info("poll", message_id=message_id, outcome=outcome, poll_state=state["poll_state"],
                 pages=totals["pages"], changed=totals["changed"], error=error,
                 ms=round((time.perf_counter() - started) * 1000, 1))
        return outcome

    def _refused(self, exc: Unauthorized) -> None:
        """BestSMS refused our token: stop polling (no retries would help) and say so loudly."""
        self.unauthorized = str(exc)
        UNAUTHORIZED.set(1)
        log.error("BestSMS refused BESTSMS_AUTH_TOKEN: polling stopped until the token is fixed "
                  "and the poller restarted", error=self.unauthorized)

    def backoff(self, attempts: int) -> float:
        """Seconds to the next poll: doubling from POLL_AFTER_SECONDS, capped, with jitter."""
        base = max(self.settings.poll_after_seconds, 1) * 2.0 ** min(attempts + 1, 30)
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

    def _apply_status(self, path: str, data: Any) -> Page:
        page = self.parser.status_page(data)
        message_id = page["message_id"] or path.rsplit("/", 1)[1]
        with self.conn.transaction():
            changed, total = store.apply_many(self.conn, "result", page["recipients"], "poll")
            self.conn.execute(store.UPDATE_POLLED_MESSAGE, {
                **{k: page[k] for k in ("job_status", "count", "complete", "success", "failed", "price",
                                        "created_at", "delayed_at", "job_number", "sub_account", "department")},
                "message_id": message_id, "lease": self.settings.poll_lease_seconds})
        return Page(changed, bool(total or page["count"]), page["page_count"])

    def _apply_replies(self, path: str, data: Any) -> Page:
        page = self.parser.status_page(data)
        changed, total = store.apply_many(self.conn, "reply", page["replies"], "poll")
        return Page(changed, bool(total), page["page_count"])

    def _apply_received(self, path: str, data: Any) -> Page:
        page = self.parser.received_page(data)
        changed, total = store.apply_many(self.conn, "reply", page["replies"], "poll")
        return Page(changed, bool(total), page["page_count"])

    # -- inbound SMS sweep -------------------------------------------------------------------------

    def sweep_received(self) -> str | None:
        """If due, fetch inbound SMS received since the last successful sweep (at most 24 h back)."""
        name = "received"
        self.conn.execute(store.ENSURE_SWEEP, {"name": name})
        claimed = store.rows(self.conn, store.CLAIM_SWEEP, {
            "name": name, "lease": self.settings.poll_lease_seconds, "every": self.settings.received_sweep_seconds})
        if not claimed:
            return None
        last, started_at = claimed[0]["last_success_at"], claimed[0]["started_at"]
        minutes = MAX_SWEEP_MINUTES if last is None else \
            max(1, min(MAX_SWEEP_MINUTES, math.ceil((started_at - last).total_seconds() / 60) + 1))
        totals = {"pages": 0, "changed": 0}
        covered_until, error, outcome = started_at, None, "swept"
        try:
            self._pages("/get/sms/received", totals, self._apply_received, {"timePeriod": minutes})
        except NotFound:
            pass  # nothing received in the period
        except Unauthorized as exc:
            self._refused(exc)
            covered_until, error, outcome = None, f"unauthorized: {exc}", "unauthorized"
        except Stopped:
            covered_until, outcome = None, "stopped"
        except PollFailure as exc:
            covered_until, error, outcome = None, str(exc), "error"
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            covered_until, error, outcome = None, f"refused by the database: {exc.diag.message_primary or exc}", "error"
        self.conn.execute(store.FINISH_SWEEP, {"name": name, "covered_until": covered_until, "error": error})
        log.info("sweep", sweep=name, minutes=minutes, outcome=outcome, error=error, **totals)
        return outcome
