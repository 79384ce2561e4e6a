"""The four encodings BestSMS sends a callback in, decoded to one flat field dictionary; and the
credentials that never reach a table.

The same Send Result webhook as JSON, XML, form POST and GET query (WebhookCallbackFormat):

    {"MessageID": "7d0c...", "Destination": "+61410010001", "Status": "Success", ...}
    <Webhook><MessageID>7d0c...</MessageID><Destination>+61410010001</Destination>...</Webhook>
    MessageID=7d0c...&Destination=%2B61410010001&Status=Success&...     (body, or query string)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape as xml_escape

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

# Query parameters that are ours, not BestSMS fields.
_OWN_PARAMS = frozenset({"token"})


class PayloadError(Exception):
    """A request body BestSMS's formats cannot explain; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Payload:
    format: str
    fields: dict[str, Any]


def format_of(method: str, content_type: str | None, body: bytes) -> str:
    """Which of BestSMS's four callback formats a request is in, or PayloadError 415."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if method == "GET" or (not body and not mimetype):
        return "query"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return "json"
    if mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml"):
        return "xml"
    if mimetype == "application/x-www-form-urlencoded":
        return "form"
    raise PayloadError(
        415,
        f"unsupported content type {mimetype or '(none)'!r}: send JSON, XML, "
        "application/x-www-form-urlencoded, or GET with a query string",
    )


def decode(fmt: str, body: bytes, query_string: str) -> Payload:
    """Decode a request already classified by `format_of` into a flat field dictionary."""
    if fmt == "query":
        data: dict[str, Any] = _pairs(query_string)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(400, "request body is not valid UTF-8") from None
        if fmt == "json":
            data = _json(text)
        elif fmt == "xml":
            data = _xml(text)
        else:
            data = _pairs(text)
    for name in _OWN_PARAMS:
        data.pop(name, None)
    for name, value in data.items():
        if isinstance(value, str) and "\x00" in value:
            raise PayloadError(400, f"field {name!r} contains a NUL character")
    return Payload(fmt, data)


def _pairs(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        data.setdefault(key, value)  # the first of repeated keys wins
    return data


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise PayloadError(400, f"JSON body must be an object of fields, got {type(data).__name__}")
    return data


def _xml(text: str) -> dict[str, Any]:
    try:
        root = defusedxml.ElementTree.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise PayloadError(400, f"XML refused: {exc.__class__.__name__} (DTDs and entities are not accepted)") from None
    except ParseError as exc:
        raise PayloadError(400, f"malformed XML: {exc}") from None
    data: dict[str, Any] = {}
    for child in root:
        data.setdefault(child.tag, child.text or "")
    return data


# -- what is never stored ---------------------------------------------------------------------------

_APIKEY_PATTERNS = (
    re.compile(r'("APIKey"\s*:\s*")((?:[^"\\]|\\.)*)(")', re.IGNORECASE),
    re.compile(r"(<APIKey>)(.*?)(</APIKey>)", re.IGNORECASE | re.DOTALL),
    re.compile(r"((?:^|[&?])(?:APIKey|token)=)([^&]*)()", re.IGNORECASE),
)
REDACTED = "[REDACTED]"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with the APIKey field's value, and any of `secrets` in any encoding, replaced."""
    for pattern in _APIKEY_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    for secret in secrets:
        for form in {secret, quote_plus(secret), quote(secret, safe=""), xml_escape(secret), json.dumps(secret)[1:-1]}:
            if form:
                text = text.replace(form, REDACTED)
    return text
