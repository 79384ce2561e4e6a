"""The statement watchdog: a bound on each statement from the client side, for when the server
cannot enforce one (a stopped backend, a network that drops packets without a reset)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg


class _Watch:
    """One statement watched: libpq's cancel at `cancel_at`, its socket shut down at `abandon_at`."""

    def __init__(self, conn: psycopg.Connection[Any], cancel_at: float, abandon_at: float) -> None:
        self.conn, self.cancel_at, self.abandon_at = conn, min(cancel_at, abandon_at), abandon_at
        self.cancelled = self.abandoned = self.finished = False
        self.lock = threading.Lock()

    def next_at(self) -> float:
        if self.abandoned:
            return float("inf")  # done: its thread has the error, and stops watching
        return self.abandon_at if self.cancelled else self.cancel_at

    def act(self) -> None:
        with self.lock:
            if self.finished:
                return
            if not self.cancelled:  # in a thread of its own: reaching a server that is away takes time
                self.cancelled = True
                threading.Thread(target=self._cancel, args=(self.conn,), daemon=True).start()
                return
            self.abandoned = True
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)  # the waiting thread's read fails at once

    @staticmethod
    def _cancel(conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(Exception):
            conn.cancel_safe(timeout=1.0)


class Watchdog:
    """Bounds statements from the client, for when the server cannot: a stopped backend or a
    network that drops packets without a reset never enforce statement_timeout. A statement past
    its share of the request's time gets libpq's cancel; one still unanswered at the request's
    deadline has its connection's socket shut down, so its thread gets an error at once (the
    connection is broken, and the pool drops it). One thread, asleep unless a deadline is due."""

    def __init__(self) -> None:
        self._watched: set[_Watch] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = float("inf")  # when the thread wakes next: a later watch need not wake it

    @contextlib.contextmanager
    def watching(self, conn: psycopg.Connection[Any], *, cancel_at: float, abandon_at: float) -> Iterator[_Watch]:
        watch = _Watch(conn, cancel_at, abandon_at)
        with self._cond:
            self._watched.add(watch)
            if self._thread is None or not self._thread.is_alive():  # none yet, or a fork left it behind
                self._thread = threading.Thread(target=self._run, name="statement-watchdog", daemon=True)
                self._thread.start()
            if watch.next_at() < self._wakes_at:
                self._cond.notify()
        try:
            yield watch
        finally:
            with watch.lock:
                watch.finished = True
            with self._cond:
                self._watched.discard(watch)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [w for w in self._watched if w.next_at() <= now]
                if not due:
                    self._wakes_at = min((w.next_at() for w in self._watched), default=float("inf"))
                    self._cond.wait(None if self._wakes_at == float("inf") else self._wakes_at - now)
                    self._wakes_at = 0.0  # awake: every new watch notifies until it sleeps again
                    continue
            for watch in due:
                watch.act()
