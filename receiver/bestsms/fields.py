"""marshmallow fields for BestSMS's values, and the base every BestSMS schema loads with.

Field limits are written once, here, by our column names (`LIMITS`); `text_field()` builds a field
that enforces them under BestSMS's spelling of the name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate

from .decode import JsonNumber

# The longest value of each text field, by our name (BestSMS's documented sizes); None: no limit of
# its own. A reply's text is stored whole, whatever its length: BestSMS documents 1,000 characters,
# but a concatenated SMS is longer, and the request's size (MAX_BODY_BYTES) bounds it already.
LIMITS: dict[str, int | None] = {
    "message_id": 40, "dest_seq": 8, "destination": 255, "type": 20, "status": 20, "result": 255,
    "sub_account": 255, "department": 255, "job_number": 8, "contact_id": 64, "detail": 255,
    "received_id": 64, "from_number": 255, "message_text": None, "timezone": 64,
    # the sender's own references
    "reference": 255, "remote_id": 255, "attention": 255, "company": 255,
    **{f"custom{n}": 1000 for n in range(1, 10)},
}
# A MessageID a sender chooses: letters, digits and dashes, at most 40 (BestSMS's own are UUIDs).
MESSAGE_ID = re.compile(r"[A-Za-z0-9-]{1,40}\Z")
# Fields whose text is kept exactly as sent (no trimming).
_VERBATIM = frozenset({"Message", "MessageText"})


class Text(fields.String):
    """A text field. A webhook's JSON number is refused (BestSMS sends text: `"MessageID": 1e400`
    is not a MessageID, `61410010001.0` not a number it dialled); a poll answer's number (parsed
    by httpx, typed by the vendor's description) is taken as its decimal text."""

    default_error_messages = {"number": "Not text: BestSMS sends this field as a JSON string."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, JsonNumber):
            raise self.make_error("number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


def text_field(data_key: str, name: str, *, required: bool = False, kind: type[Text] | None = None) -> Text:
    """BestSMS's field `data_key`, loaded as our `name` within its limit (by `kind`, a Text by
    default); absent is None unless required."""
    kind = kind or Text
    length = validate.Length(min=1 if required else 0, max=LIMITS[name])  # max None: any length
    if required:
        return kind(data_key=data_key, required=True, validate=length)
    return kind(data_key=data_key, load_default=None, validate=length)


class DestSeq(Text):
    """A recipient's DestSeq in the 8-character form BestSMS's webhooks write (`00000001`, and
    `00F16FEE` in tnzapi-dotnet's fixtures): shorter spellings are zero-padded, so that the number
    1 (tnzapi-ts types it `number`), "1" and "00000001" are one recipient. A JSON number is taken
    here, whole and not negative, since an SDK may send one."""

    default_error_messages = {"number": "Not a DestSeq: expected a whole number or up to 8 characters."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, JsonNumber):
            if not _DIGITS.fullmatch(value):
                raise self.make_error("number")
            value = str(value)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise self.make_error("number")
        text = super()._deserialize(value, attr, data, **kwargs)
        return text.zfill(DEST_SEQ_LENGTH) if text else text


DEST_SEQ_LENGTH = 8


# Sane ranges for values BestSMS sends: anything outside is refused, not stored as data.
MAX_PRICE = Decimal(1000)  # one SMS, one message's total: dollars, far below this
MAX_COUNT = 2**31 - 1  # PostgreSQL's integer
EARLIEST, LATEST = datetime(2000, 1, 1), datetime(2100, 1, 1)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_DIGITS = re.compile(r"[0-9]+")
# A date and time: 2025-06-12 20:44:30, 2025-06-12T20:44:30.000Z, 2025-06-12T20:44:30+10:00, ...
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
                   r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?", re.IGNORECASE)


class Price(fields.Field[Decimal]):
    """A price: a JSON string (`"0.10"`), a JSON number (`0.1`) or empty (NULL); ASCII digits, at
    least 0 and under MAX_PRICE."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's API
        "invalid": "Not a valid price: expected a decimal number such as 0.10.",
        "range": f"Not a valid price: expected at least 0 and under {MAX_PRICE}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("invalid")
        text = str(value).strip()  # str(0.1) == "0.1": no binary float noise
        if not _DECIMAL.fullmatch(text):  # no exponents, no NaN, no digits but ASCII ones
            raise self.make_error("invalid")
        price = Decimal(text)
        if not 0 <= price < MAX_PRICE:
            raise self.make_error("range")
        return price


def price_field(data_key: str = "Price") -> Price:
    return Price(data_key=data_key, load_default=None)


class Count(fields.Field[int]):
    """A count: a JSON integer or a string of ASCII digits, 0 to MAX_COUNT."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's API
        "invalid": f"Not a valid count: expected a whole number from 0 to {MAX_COUNT}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        if isinstance(value, str) and _DIGITS.fullmatch(value.strip()) and len(value.strip()) <= 10:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise self.make_error("invalid")
        return value


def count_field(data_key: str, default: int | None = None) -> Count:
    return Count(data_key=data_key, load_default=default)


class Time(fields.Field[datetime]):
    """A BestSMS time. UTC fields (`2025-06-12 20:44:30`, `2025-06-12T20:44:30.000Z`) load as aware
    datetimes in UTC; local fields (`local=True`) load naive, to be placed in a time zone by
    `pop_instant`. Times before 2000 or from 2100 on are refused."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's API
        "invalid": "Not a valid time: expected YYYY-MM-DD hh:mm:ss or RFC 3339.",
        "range": f"Not a valid time: expected one from {EARLIEST.year} to {LATEST.year - 1}.",
    }

    def __init__(self, *, local: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local = local

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> datetime:
        if not isinstance(value, str) or not TIME.fullmatch(value.strip()):
            raise self.make_error("invalid")
        try:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None
        if not EARLIEST <= parsed.replace(tzinfo=None) < LATEST:
            raise self.make_error("range")
        if parsed.tzinfo is None and not self.local:
            return parsed.replace(tzinfo=UTC)
        return parsed


def time_field(data_key: str, *, local: bool = False) -> Time:
    return Time(data_key=data_key, local=local, load_default=None)


def pop_instant(data: dict[str, Any], names: list[str], tz: ZoneInfo | None,
                zone_name: str | None = None) -> datetime | None:
    """The first of the time fields `names` that is set (all popped), in UTC; a naive (local)
    time is taken to be in `tz`. With no zone (`tz` None: the record's `Timezone`, `zone_name`, is
    one nobody knows), a local time is an error, never a guess."""
    times: list[datetime | None] = [data.pop(name) for name in names]
    for t in times:
        if t is None:
            continue
        if t.tzinfo is not None:
            return t
        if tz is None:
            raise ValidationError(f"Unknown time zone {zone_name!r}: its local times cannot be placed.", "Timezone")
        return t.replace(tzinfo=tz).astimezone(UTC)
    return None


class Base(Schema):
    """Unknown fields are accepted (the raw event keeps them); empty values read as absent (NULL);
    a field's other spellings (`aliases`: other name -> the one loaded) stand in for it when it
    is absent."""

    aliases: ClassVar[dict[str, str]] = {}

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _prepared(self, data: Any, **kwargs: Any) -> Any:
        """One hook (each costs a call on every load): other spellings, then empty values dropped."""
        if not isinstance(data, Mapping):
            return data
        return self._empty_is_null(self._other_spellings(data))

    def _other_spellings(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        found = {name: data[other] for other, name in self.aliases.items() if data.get(other) and not data.get(name)}
        return {**data, **found} if found else data

    @staticmethod
    def _empty_is_null(data: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = {}
        for key, value in data.items():
            if isinstance(value, str) and not isinstance(value, JsonNumber):  # a number stays one
                if key not in _VERBATIM:
                    value = value.strip()
                if value == "":
                    continue
            elif value is None:
                continue
            cleaned[key] = value
        return cleaned


class Zoned(Base):
    """A top-level schema: knows the account's time zone and the default region for numbers."""

    def __init__(self, *, tz: ZoneInfo, region: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tz = tz
        self.region = region


class Tagged(Base):
    """What a sending application tags a message with, for re-billing and tracing."""

    aliases: ClassVar[dict[str, str]] = {"JobNum": "JobNumber"}  # polls' and older webhooks' spelling

    sub_account = text_field("SubAccount", "sub_account")
    department = text_field("Department", "department")
    job_number = text_field("JobNumber", "job_number")
