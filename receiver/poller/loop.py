"""The poller's loop: each run checks the schema and the archive's days ahead, finishes the
messages that need no more polls, sweeps inbound SMS when due, then claims due messages one at a
time (needy first) and polls each, giving up what passes its give-up time and classifying again
every POLL_CLASSIFY_SECONDS of a long run; after a 401 it only asks, now and then, whether the
token is taken again."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime

import psycopg
import structlog

from .. import db, migrator, store
from ..bestsms.api import BestSMSClient, PollFailure, Stopped, Unauthorized
from ..config import Settings
from ..errors import Unavailable, first_line
from ..metrics import POLLS_GIVEN_UP
from .session import Session
from .status import StatusPoll
from .sweep import ReceivedSweep

log = structlog.get_logger("receiver.poller")

PARTITIONS_EVERY_SECONDS = 600.0  # how often the poller makes sure webhook_events has its days ahead


class Poller:
    """Polls due messages, one at a time, each leased in PostgreSQL so that many pollers can share work."""

    def __init__(self, settings: Settings, conninfo: str, *, stop: threading.Event | None = None,
                 client: BestSMSClient | None = None) -> None:
        self.session = Session(settings, conninfo, stop=stop, client=client)
        self.settings, self.stop = settings, self.session.stop
        self.status = StatusPoll(self.session)
        self.sweep = ReceivedSweep(self.session)
        self._schema_checked = False
        self._db_problem: str | None = None  # what was last logged about the database
        self._partitions_due = 0.0

    @property
    def unauthorized(self) -> str | None:
        """BestSMS's refusal of BESTSMS_AUTH_TOKEN (None: it takes it)."""
        return self.session.unauthorized

    def close(self) -> None:
        self.session.close()

    def run_once(self) -> Counter[str]:
        """Poll every message due now once (needy ones first), and sweep received SMS if that is
        due; record the pollers' state; returns the outcomes."""
        outcomes: Counter[str] = Counter()
        settings = self.settings
        if not self._schema_checked:  # the poller never changes the schema: it waits for `migrate`
            if reason := migrator.behind(self.session.conn):
                raise Unavailable(reason)
            self._schema_checked = True
        self._keep_event_partitions()
        if self.unauthorized and not self._probe():
            self._write_state()
            return outcomes
        self._finish()
        self.sweep.run()
        run_started_at = store.now(self.session.conn)  # each message once a run
        backlog = self._classify()
        classified_at = time.monotonic()
        while not self.stop.is_set() and not self.unauthorized:
            if time.monotonic() - classified_at > settings.poll_classify_seconds:  # a long run's queue stays fresh
                self._finish(given_up_only=True)  # given up on time, not at the run's end
                backlog = self._classify()
                self._write_state(backlog)
                classified_at = time.monotonic()
            claimed = self._claim(run_started_at)
            if claimed is None:
                break
            claim, needy = claimed
            outcomes[self.status.poll(claim.message_id, claim.attempts, needy=needy)] += 1
        self._write_state(self._classify() if outcomes else backlog)
        return outcomes

    def _finish(self, *, given_up_only: bool = False) -> None:
        """Stop polling the messages that need no more polls: complete, or past the give-up time
        (`given_up_only`: those alone, a pass that reads only their recipients)."""
        settings = self.settings
        finished = store.finish_messages(self.session.conn, confirmations=settings.poll_confirmations,
                                         after=settings.poll_after_seconds, give_up=settings.poll_give_up_seconds,
                                         given_up_only=given_up_only)
        for message_id, poll_state in finished:
            if poll_state == "given_up":
                POLLS_GIVEN_UP.inc()
            log.info("poll finished", message_id=message_id, poll_state=poll_state)

    def _keep_event_partitions(self) -> None:
        """webhook_events' days ahead (ensure_webhook_event_partitions(), made by `migrate`), every
        PARTITIONS_EVERY_SECONDS: what runs regularly makes them. A failure is logged; polling goes on."""
        if time.monotonic() < self._partitions_due:
            return
        try:
            made = store.ensure_event_partitions(self.session.conn)
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
            claim = store.claim(self.session.conn, need, lease=self.settings.poll_lease_seconds,
                                after=self.settings.poll_after_seconds, give_up=self.settings.poll_give_up_seconds,
                                run_started_at=run_started_at)
            if claim is not None:
                return claim, need != "confirmation"
        return None

    def _classify(self) -> store.Backlog:
        """Class every due message (kept for the claims to read an index), and count the backlog."""
        return store.classify(self.session.conn, after=self.settings.poll_after_seconds)

    def _write_state(self, backlog: store.Backlog | None = None) -> None:
        """The pollers' one state row: BestSMS's refusal (or none: it clears), and the backlog."""
        store.write_poller_state(self.session.conn, self.unauthorized,
                                 self._classify() if backlog is None else backlog)

    def _probe(self) -> bool:
        """After a 401: one cheap request to see whether BestSMS takes the token again."""
        try:
            self.session.api.get("/get/sms/received", {"timePeriod": 1, "recordsPerPage": 1, "page": 1})
        except Unauthorized as exc:
            self.session.unauthorized = str(exc)
            return False
        except Stopped:
            return False  # asked to stop: nothing learnt about the token
        except PollFailure:
            pass  # any answer but a 401 says the token is taken
        log.info("BestSMS takes BESTSMS_AUTH_TOKEN again: polling resumed")
        self.session.unauthorized = None
        return True

    def run_forever(self) -> None:
        """Poll until stopped. After a 401 it polls nothing and asks again every
        POLL_UNAUTHORIZED_RETRY_SECONDS (one request), until BestSMS takes the token."""
        while not self.stop.is_set():
            try:
                self.run_once()
            except Unavailable as exc:
                self._database_problem(exc.reason)
                self.session.forget_connection()
            except psycopg.Error as exc:  # the database's state (read-only, a privilege ...), or a bug
                reason = db.database_state(exc)
                if reason is None:
                    log.exception("poll cycle failed")
                else:
                    self._database_problem(reason)
                self.session.forget_connection()
            except Exception:  # a bug must not stop the poller; leases left behind expire
                log.exception("poll cycle failed")
                self.session.forget_connection()
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
