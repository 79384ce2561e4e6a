"""Phone numbers to E.164, the one form every table stores."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

_NOT_DIALLED = re.compile(r"[\s\-().]")
# What BestSMS could have dialled: 3 to 15 digits (E.164's most), or 17 with the 00 prefix written out.
_DIALLABLE = re.compile(r"\+?[0-9]{3,17}")


def phone_number(raw: str, region: str) -> str:
    """`raw` as E.164 (see `to_e164`) when it is a number BestSMS could have dialled: ASCII digits,
    an optional leading +, and spaces, dashes, brackets or dots between them. Else ValueError."""
    if not _DIALLABLE.fullmatch(_NOT_DIALLED.sub("", raw.strip())):
        raise ValueError(f"not a phone number: {raw[:40]!r}")
    return to_e164(raw, region)


@lru_cache(maxsize=4096)
def to_e164(raw: str, region: str) -> str:
    """Return `raw` as E.164 (`+61410010001`), or tidied but unchanged when it is not a phone number;
    `region` (DEFAULT_REGION) places a number written without its country code.

    BestSMS accepts `+61410010001`, `0061410010001`, `61410010001`, `0410010001` and `410010001`
    for the same Australian mobile, with spaces, dashes and brackets. Anything that does not parse
    as a possible number (an alphanumeric sender id, a short code) is kept rather than rejected:
    refusing a delivery report over a number's form would lose the report.

    Cached (a recipient's number comes back for its Pending and its final report, and in every
    poll): parsing and checking a number costs tens of microseconds, a webhook's largest part.
    """
    cleaned = _NOT_DIALLED.sub("", raw.strip())
    if not cleaned:
        return cleaned
    if not cleaned.startswith("00"):  # one way to read it: possible (a length check) or valid, it is formatted
        try:
            number = phonenumbers.parse(cleaned, region)
        except phonenumbers.NumberParseException:
            return cleaned
        if phonenumbers.is_possible_number(number) or phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return cleaned
    # International prefix written out (0061...): as written, or as +61...; a valid reading wins.
    possible: phonenumbers.PhoneNumber | None = None
    for candidate in (cleaned, "+" + cleaned[2:]):
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if possible is None and phonenumbers.is_possible_number(number):
            possible = number
    if possible is not None:
        return phonenumbers.format_number(possible, phonenumbers.PhoneNumberFormat.E164)
    return cleaned
