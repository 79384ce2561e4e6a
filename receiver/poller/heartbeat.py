"""The lease heartbeat: a live poller keeps the lease of what it works on, however slow BestSMS is."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog

from .. import db
from ..config import Settings
from ..errors import first_line

log = structlog.get_logger("receiver.poller")


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
