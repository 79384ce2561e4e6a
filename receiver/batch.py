"""Group commit: the webhooks a worker receives at the same time are recorded in one statement and
one commit, and each request is answered after that commit.

A request thread hands its webhook to `GroupCommit.record()`. When fewer than `writers` batches
are in flight in its process (WEBHOOK_WRITERS, 1 by default) it writes one itself: every webhook
waiting (up to `max_batch`), recorded together (store.record_webhooks), one round trip and one
commit for the lot instead of one each. Under light load a batch is one webhook, written at once;
under heavy load batches grow by themselves, and the cost per webhook falls. Every answer still
means committed: a batch is one transaction, so when it fails, it fails for every webhook in it,
and each of them is answered 503 with nothing applied.

A value the database refuses fails the whole statement: the batch is then written again one
webhook at a time, so that only the refused webhook is rejected. A deadlock between two batches
(their webhooks are sorted by message and recipient, so they take row locks in one order, but a
recipient merged with its provisional twin can still cross) is resolved the same way. A batch
waiting on a row lock holds up the webhooks queued behind it (up to their
REQUEST_TIMEOUT_SECONDS); WEBHOOK_WRITERS=2 lets a second batch pass it, at some cost in batch size.

The archive's days (webhook_events' daily partitions) never depend on another process: a batch
that finds its day missing makes it (ensure_webhook_event_partitions(), a statement of its own)
and is written again; and at most hourly a batch, once written, keeps the days ahead (14) on its
connection, so that a deployment without the poller has them too (ArchiveDays).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import errors, pq

from . import store
from .db import VALUE_REFUSED, Database, refused_value
from .errors import Unavailable, first_line, settled

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_BATCH = 64
# A batch is one statement parameter holding every webhook's stored request: bounded in bytes too
# (a batch takes one webhook whatever its size; MAX_BODY_BYTES bounds that).
MAX_BATCH_BYTES = 4 * 1024 * 1024
STUCK_SECONDS = 1.0  # a commit this old is not an ordinary one (they take milliseconds)
PARTITIONS_EVERY_SECONDS = 3600.0
LOW_EVERY_SECONDS = 10.0


class _Pending:
    """One webhook on its way to a commit: queued, then taken into a batch, then done."""

    __slots__ = ("deadline", "done", "error", "row", "taken", "webhook")

    def __init__(self, webhook: store.Webhook, deadline: float) -> None:
        self.webhook = webhook
        self.deadline = deadline
        self.taken = False
        self.done = False
        self.row: dict[str, Any] | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Records the webhooks of this process's request threads in batches, on those threads.

    No thread of its own: a request thread that finds fewer than `writers` batches in flight
    writes one itself (every webhook queued, its own included, up to `max_batch`); the others
    wait, and are woken when a batch ends, to find their webhook done or to write the next batch.
    Alone, a webhook is written at once by its own thread, as if there were no batching."""

    def __init__(self, database: Database, writers: int = 1, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES, on_batch: Callable[[int], object] | None = None,
                 threads: int | None = None) -> None:
        self.database = database
        self.writers = writers
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.on_batch = on_batch  # called with each batch's size (a metric)
        # With this many webhooks waiting while a commit is stuck, the next one is answered 503 at
        # once: the worker's last thread (GUNICORN_THREADS) stays free for probes and other requests.
        self.shed_at = max(threads - 1, 1) if threads else None
        self._queue: deque[_Pending] = deque()
        self._changed = threading.Condition()
        self._writing = 0
        self._inside: set[_Pending] = set()  # webhooks in record(): each holds a request thread
        self._writes_started: list[float] = []
        self.archive_days = ArchiveDays(database)

    def record(self, webhook: store.Webhook) -> dict[str, Any]:
        """Record one webhook with whatever else is waiting; its row (store.record_webhooks) once
        committed, or Unavailable (nothing of it applied) when the database cannot take it within
        REQUEST_TIMEOUT_SECONDS, or at once when every thread but one already waits on a commit
        that has taken over STUCK_SECONDS."""
        pending = _Pending(webhook, time.monotonic() + self.database.timeout)
        with self._changed:
            if self._stuck():
                raise Unavailable(self._shed_reason())
            self._inside.add(pending)
            self._queue.append(pending)
        try:
            return self._wait_or_write(pending)
        finally:
            with self._changed:
                self._inside.discard(pending)

    def _stuck(self) -> bool:
        """Whether all of the worker's threads but one hold webhooks waiting on a commit that has
        taken over STUCK_SECONDS (the lock held): then the next ones are answered 503 at once."""
        return (self.shed_at is not None and len(self._inside) >= self.shed_at and bool(self._writes_started)
                and time.monotonic() - min(self._writes_started) > STUCK_SECONDS)

    def _shed_reason(self) -> str:
        return (f"a commit has taken over {STUCK_SECONDS:g} s with {len(self._inside)} webhooks waiting on it: "
                "answered at once, so that a thread stays free for probes and other requests")

    def _wait_or_write(self, pending: _Pending) -> dict[str, Any]:
        while True:
            with self._changed:
                while not pending.done and not (self._writing < self.writers and self._queue):
                    if not pending.taken and time.monotonic() >= pending.deadline:
                        self._queue.remove(pending)
                        self._expire(pending)
                        break
                    if not pending.taken and self._stuck():  # queued behind a stuck commit: its thread freed
                        self._queue.remove(pending)
                        self._inside.discard(pending)
                        self._expire(pending, Unavailable(self._shed_reason()))
                        break
                    # awake at least every STUCK_SECONDS / 4 while queued: a commit may get stuck meanwhile
                    self._changed.wait(min(max(pending.deadline - time.monotonic(), 0.05), STUCK_SECONDS / 4))
                if pending.done:
                    break
                batch = self._take()
                if not batch:
                    continue
                self._writing += 1
                started = time.monotonic()
                self._writes_started.append(started)
            try:
                self._write(batch)
            finally:
                with self._changed:
                    self._writing -= 1
                    self._writes_started.remove(started)
                    for queued in batch:
                        if queued.row is None and queued.error is None:  # the write itself was cut short
                            queued.error = Unavailable("the webhook's batch was not written")
                        queued.done = True
                    self._changed.notify_all()
        if pending.row is None:
            raise pending.error or Unavailable("the webhook's batch was not written")
        return pending.row

    def _take(self) -> list[_Pending]:
        """The next batch, from the queue (the lock held), less the webhooks that waited out their time."""
        batch: list[_Pending] = []
        now, size = time.monotonic(), 0
        while self._queue and len(batch) < self.max_batch:
            size += self._queue[0].webhook.size()
            if batch and size > self.max_batch_bytes:
                break
            queued = self._queue.popleft()
            queued.taken = True
            if queued.deadline > now:
                batch.append(queued)
            else:
                self._expire(queued)
        return batch

    def _expire(self, pending: _Pending, error: Unavailable | None = None) -> None:
        """A webhook that waited out its time in the queue, or was shed (the lock held): never
        written, a true 503."""
        pending.taken = pending.done = True
        pending.error = error or Unavailable("no database connection within the request's time")
        self._changed.notify_all()

    def _write(self, batch: list[_Pending]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        now = time.monotonic()
        keep_days = self.archive_days.due()

        def work(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            rows = write(conn, [p.webhook for p in batch])
            if keep_days:
                self.archive_days.make(conn)
            return rows

        try:
            rows = self.database.run(work, timeout=max(min(p.deadline for p in batch) - now, 0.05))
        except Exception as exc:  # Unavailable (a 503), or a bug (a 500): the same for each
            if not isinstance(exc, Unavailable):
                log.exception("group commit: a batch failed", webhooks=len(batch))
            for pending in batch:
                pending.error = settled(exc)  # its frames hold the batch: a cycle
            return
        for pending, row in zip(batch, rows, strict=True):
            pending.row = row


class ArchiveDays:
    """Keeps the archive's days ahead (webhook_events' partitions) from the web process: hourly,
    on a batch's connection once it is written (no connection of its own: a worker holds no more
    server connections than its webhooks use), and every LOW_EVERY_SECONDS while /readyz finds
    few days ahead, in a thread of its own. A failure is logged when it starts, not at every try."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._last = -float("inf")
        self._failing = False
        self._lock = threading.Lock()

    def due(self, every: float = PARTITIONS_EVERY_SECONDS) -> bool:
        """Whether it is time to make them (and if so, the time is taken: one caller does)."""
        with self._lock:
            if time.monotonic() - self._last < every:
                return False
            self._last = time.monotonic()
            return True

    def keep(self, every: float) -> None:
        """Make them now in a thread of its own, if not done in the last `every` seconds."""
        if self.due(every):
            threading.Thread(target=lambda: self._run(), name="archive-days", daemon=True).start()

    def _run(self) -> None:
        try:
            self.database.run(self.make)
        except Exception as exc:  # the database's state: the next webhook of a missing day makes it anyway
            self._failed(exc)

    def make(self, conn: psycopg.Connection[Any]) -> None:
        """The days ahead made on `conn`; a failure is logged, never raised (a webhook's batch may be
        waiting on this connection's transaction)."""
        try:
            made = _attempt(conn, lambda: store.ensure_event_partitions(conn))
        except psycopg.Error as exc:
            self._failed(exc)
            return
        self._failing = False
        if made:
            log.info("webhook_events: days ahead made", made=made)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("webhook_events: days ahead not made", error=first_line(exc))
        self._failing = True


# What makes a batch be written again one webhook at a time: a value refused, or a deadlock.
_ALONE: tuple[type[psycopg.Error], ...] = (*VALUE_REFUSED, errors.TransactionRollback)


def write(conn: psycopg.Connection[Any], webhooks: Sequence[store.Webhook]) -> list[dict[str, Any]]:
    """store.record_webhooks, with what the database refuses isolated: after a refused value or a
    deadlock, each webhook is written on its own, and one whose value is refused is recorded as
    rejected (with the database's reason) rather than lost."""
    try:
        return _recorded(conn, webhooks)
    except _ALONE as exc:
        if len(webhooks) > 1:
            return [row for webhook in webhooks for row in write(conn, [webhook])]
        if isinstance(exc, errors.TransactionRollback):  # a deadlock alone: the other side has gone
            return _recorded(conn, webhooks)
        return _recorded(conn, [webhooks[0].rejected(refused_value(exc))])


def _recorded(conn: psycopg.Connection[Any], webhooks: Sequence[store.Webhook]) -> list[dict[str, Any]]:
    """store.record_webhooks; when today's day of the archive is missing (never the input's fault),
    it is made, in a statement of its own, and the webhooks written again."""
    try:
        return _attempt(conn, lambda: store.record_webhooks(conn, webhooks))
    except errors.CheckViolation as exc:
        if not store.missing_event_partition(exc):
            raise
    made = _attempt(conn, lambda: store.ensure_event_partitions(conn))
    log.warning("webhook_events had no partition for today: made by this webhook", made=made)
    return _attempt(conn, lambda: store.record_webhooks(conn, webhooks))


def _attempt(conn: psycopg.Connection[Any], step: Callable[[], T]) -> T:
    """`step()`; inside a transaction (through a transaction-mode pooler, Database runs the work
    in one) within a savepoint, so that a statement the database refuses leaves the transaction
    usable for the next attempt."""
    if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
        return step()
    with conn.transaction():
        return step()
