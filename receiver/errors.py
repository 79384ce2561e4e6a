"""The few exceptions that say what the caller should do: refuse the input, retry later, or stop.

Each is raised where the condition is found and answered in one place: `Refused` and `Unavailable`
by the HTTP app (web.py) as a 4xx or a 503, `Fatal` by the command line and the WSGI entry point
as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)


class Refused(Exception):
    """The input cannot be taken as it is: answer `status` (400, 413, 415) with `message`; nothing
    of it is applied. `fields` names the bad fields, when there are any."""

    def __init__(self, status: int, message: str, fields: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


class Unavailable(Exception):
    """Retry later: the database cannot serve this now (away, too slow, or its schema is behind).
    Nothing of the work was applied."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Fatal(Exception):
    """Stop: the process cannot do its work until a person changes something (a setting, a
    token, the schema). Its message says what."""


class ConfigError(Fatal):
    """A setting has a value the service cannot run with."""


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its type when it has none): for logs and answers."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def settled(exc: E) -> E:
    """`exc` kept as a value (in a result, or handed to another thread) rather than in flight:
    without its traceback and the exception it replaced. Those hold the frames that made it and,
    through them, often the very object that keeps it: a cycle that only a full garbage collection
    frees, with the request's body in it (a flood of refused 1-MB bodies kept 70-90 MB in a worker)."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc
