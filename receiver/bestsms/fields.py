"""marshmallow fields for BestSMS's values, and the base every BestSMS schema loads with.

Field limits are written once, here, by our column names (`LIMITS`); `text_field()` builds a field
that enforces them under BestSMS's spelling of the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

# The longest value of each text field, by our name (BestSMS's documented sizes).
LIMITS = {
    "message_id": 40, "dest_seq": 8, "destination": 255, "type": 20, "status": 20, "result": 255,
    "sub_account": 255, "department": 255, "job_number": 8, "contact_id": 64, "detail": 255,
    "received_id": 64, "from_number": 255, "message_text": 1000, "timezone": 64,
}
# Fields whose text is kept exactly as sent (no trimming).
_VERBATIM = frozenset({"Message", "MessageText"})


class Text(fields.String):
    """A string field that accepts numbers too (XML and forms have no types; JSON senders vary)."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


def text_field(data_key: str, name: str, *, required: bool = False) -> Text:
    """BestSMS's field `data_key`, loaded as our `name` within its limit; absent is None unless required."""
    length = validate.Length(min=1 if required else 0, max=LIMITS[name])
    if required:
        return Text(data_key=data_key, required=True, validate=length)
    return Text(data_key=data_key, load_default=None, validate=length)


class Price(fields.Field[Decimal]):
    """A price: a JSON string (`"0.10"`), a JSON number (`0.1`) or empty (NULL)."""

    default_error_messages = {"invalid": "Not a valid price."}  # noqa: RUF012 - marshmallow's API

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("invalid")
        try:
            price = Decimal(str(value).strip())  # str(0.1) == "0.1": no binary float noise
        except InvalidOperation:
            raise self.make_error("invalid") from None
        if not price.is_finite():
            raise self.make_error("invalid")
        return price


def price_field(data_key: str = "Price") -> Price:
    return Price(data_key=data_key, load_default=None)


class Time(fields.Field[datetime]):
    """A BestSMS time. UTC fields (`2025-06-12 20:44:30`, `2025-06-12T20:44:30.000Z`) load as aware
    datetimes in UTC; local fields (`local=True`) load naive, to be placed in a time zone by `instant`."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's API
        "invalid": "Not a valid time: expected YYYY-MM-DD hh:mm:ss or RFC 3339."
    }

    def __init__(self, *, local: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local = local

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise self.make_error("invalid") from None
        if parsed.tzinfo is None:
            return parsed if self.local else parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


def time_field(data_key: str, *, local: bool = False) -> Time:
    return Time(data_key=data_key, local=local, load_default=None)


def pop_instant(data: dict[str, Any], names: list[str], tz: ZoneInfo) -> datetime | None:
    """The first of the time fields `names` that is set (all popped), in UTC; a naive (local)
    time is taken to be in `tz`."""
    times: list[datetime | None] = [data.pop(name) for name in names]
    for t in times:
        if t is not None:
            return t.replace(tzinfo=tz).astimezone(UTC) if t.tzinfo is None else t
    return None


class Base(Schema):
    """Unknown fields are accepted (the raw event keeps them); empty values read as absent (NULL)."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _empty_is_null(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        cleaned = {}
        for key, value in data.items():
            if isinstance(value, str):
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

    sub_account = text_field("SubAccount", "sub_account")
    department = text_field("Department", "department")
    job_number = text_field("JobNumber", "job_number")

    @pre_load
    def _job_num(self, data: Any, **kwargs: Any) -> Any:
        """Polls and older webhooks spell JobNumber `JobNum`."""
        if isinstance(data, Mapping) and data.get("JobNum") and not data.get("JobNumber"):
            data = {**data, "JobNumber": data["JobNum"]}
        return data
