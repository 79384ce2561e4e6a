"""The command line's values: each argument's text read into what the command uses, or one
argparse error saying what was expected."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from .bestsms.fields import MESSAGE_ID


def when(text: str) -> datetime:
    """An ISO 8601 time (2026-11-01, 2026-11-01T09:30, 2026-11-01T09:30+10:00); UTC unless it says."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or time such as 2026-11-01 or 2026-11-01T09:30+10:00, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a month as YYYY-MM, got {text!r}") from None


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def age(text: str) -> float:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = text[:-1], text[-1:].lower()
    if text.startswith("-"):
        raise argparse.ArgumentTypeError(f"an age is not negative, got {text!r}")
    if unit not in units or not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected an age such as 90d, 12h or 30m, got {text!r}")
    return int(number) * units[unit]


def message_id(text: str) -> str:
    if not MESSAGE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a MessageID has 1 to 40 letters, digits and dashes: {text!r}")
    return text


def joined(argv: list[str], option: str) -> list[str]:
    """`option VALUE` as `option=VALUE` where VALUE starts with a dash (argparse takes it for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == option and arg.startswith("-"):
            out[-1] = f"{option}={arg}"
        else:
            out.append(arg)
    return out
