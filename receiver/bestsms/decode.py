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
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape as xml_escape

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from ..errors import Refused

# Fields that carry a credential, by lower-cased name (after decoding, so that `%41PIKey`,
# `"\u0041PIKey"` and `<APIKey >` are all APIKey): used to authenticate, never stored.
CREDENTIAL_FIELDS = frozenset({"apikey", "api_key", "api-key", "token"})
# Characters no field may hold: NUL, and lone surrogates (`"\ud800"` in JSON), which no table can store.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Payload:
    """A decoded callback: its fields (credentials removed), the credentials it carried, and the
    body as it may be stored (without them)."""

    fields: dict[str, Any]
    credentials: tuple[str, ...]
    stored_body: str | None


def is_credential(name: Any) -> bool:
    return isinstance(name, str) and name.strip().lower() in CREDENTIAL_FIELDS


def format_of(method: str, content_type: str | None, body: bytes) -> str:
    """Which of BestSMS's four callback formats a request is in, or Refused 415."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if method == "GET" or (not body and not mimetype):
        return "query"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return "json"
    if mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml"):
        return "xml"
    if mimetype == "application/x-www-form-urlencoded":
        return "form"
    raise Refused(
        415,
        f"unsupported content type {mimetype or '(none)'!r}: send JSON, XML, "
        "application/x-www-form-urlencoded, or GET with a query string",
    )


def decode(fmt: str, body: bytes, query_string: str) -> Payload:
    """Decode a request already classified by `format_of` into a flat field dictionary."""
    text: str | None = None  # the body; a query string is stored by `query()`
    if fmt == "query":
        data = _pairs(query_string)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "request body is not valid UTF-8") from None
        data = _json(text) if fmt == "json" else _xml(text) if fmt == "xml" else _pairs(text)
    secret_keys = [k for k in data if is_credential(k)]
    credentials = tuple(_credential_text(data.pop(k)) for k in secret_keys)
    fields = data
    stored = _encode(fmt, fields, text) if text is not None and secret_keys else text
    for name, value in fields.items():
        if isinstance(value, str) and _UNSTORABLE.search(value):
            raise Refused(400, f"field {name!r} contains a NUL or an unpaired surrogate character")
    return Payload(fields, credentials, stored)


def query(query_string: str) -> tuple[str, tuple[str, ...]]:
    """(the query string as it may be stored, the credentials in it): `token=` and APIKey never stored."""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    credentials = tuple(v for k, v in pairs if is_credential(k))
    if not credentials:
        return query_string, ()
    return urlencode([(k, v) for k, v in pairs if not is_credential(k)]), credentials


def _credential_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _pairs(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        data.setdefault(key, value)  # the first of repeated keys wins
    return data


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits; nesting too deep
        raise Refused(400, f"JSON refused: {type(exc).__name__}: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"JSON body must be an object of fields, got {type(data).__name__}")
    return data


def _xml(text: str) -> dict[str, Any]:
    try:
        root = defusedxml.ElementTree.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise Refused(400, f"XML refused: {exc.__class__.__name__} (DTDs and entities are not accepted)") from None
    except ParseError as exc:
        raise Refused(400, f"malformed XML: {exc}") from None
    data: dict[str, Any] = {}
    for child in root:
        if isinstance(child.tag, str):  # not a comment or processing instruction
            data.setdefault(child.tag.rpartition("}")[2], child.text or "")  # any namespace dropped
    return data


def _encode(fmt: str, kept: dict[str, Any], text: str) -> str:
    """The body re-encoded with only the fields `kept` (not its credentials): what reprocessing
    needs, and no secret."""
    if fmt == "json":
        return json.dumps(kept, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")
    if fmt == "xml":
        root = re.match(r"\s*(?:<\?.*?\?>\s*)?<([^\s/>]+)", text, re.DOTALL)
        tag = root.group(1) if root else "Webhook"
        children = "".join(f"<{k}>{xml_escape(str(v))}</{k}>" for k, v in kept.items())
        return f"<{tag}>{children}</{tag}>"
    return urlencode([(k, v) for k, v in parse_qsl(text, keep_blank_values=True) if not is_credential(k)])


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with each of `secrets` (the configured tokens), in any of the encodings a request
    could carry it in, replaced: the last guard, for what could not be decoded field by field."""
    for form in _encodings(secrets):
        if form in text:
            text = text.replace(form, REDACTED)
    return text


@lru_cache(maxsize=8)
def _encodings(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Every way a request could spell each secret, longest first (computed once per set of tokens)."""
    forms = {form for secret in secrets if secret
             for form in (secret, quote_plus(secret), quote(secret, safe=""), xml_escape(secret),
                          json.dumps(secret)[1:-1])}
    return tuple(sorted(forms, key=len, reverse=True))
