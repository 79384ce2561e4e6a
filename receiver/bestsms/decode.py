"""The four encodings BestSMS sends a callback in, decoded to one flat field dictionary; and the
credentials that never reach a table.

The same Send Result webhook as JSON, XML, form POST and GET query (WebhookCallbackFormat):

    {"MessageID": "7d0c...", "Destination": "+61410010001", "Status": "Success", ...}
    <Webhook><MessageID>7d0c...</MessageID><Destination>+61410010001</Destination>...</Webhook>
    MessageID=7d0c...&Destination=%2B61410010001&Status=Success&...     (body, or query string)

Handsets and carriers mangle text: half an emoji where a long message was split, a NUL, a byte
that is not UTF-8, XML in UTF-16 or ISO-8859-1. None of that loses a webhook: the body is read in
the encoding it declares (or shows), what no table can hold becomes U+FFFD, and the credential
is found whatever the rest of the body holds (`Payload.credentials`, even when the body is
refused), so that an authentic webhook is stored, never answered 401 for its text.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlencode
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape as xml_escape

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from ..config import MIN_TOKEN_LENGTH
from ..errors import Refused, settled

# Fields that carry a credential, by lower-cased name (after decoding, so that `%41PIKey`,
# `"\u0041PIKey"` and `<APIKey >` are all APIKey): used to authenticate, never stored.
CREDENTIAL_FIELDS = frozenset({"apikey", "api_key", "api-key", "token"})
# What no table can hold: NUL, and lone surrogates (`"\ud83d"` in JSON: half an emoji).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
REDACTED = "[REDACTED]"
# A BestSMS webhook has about 25 fields; a body with more is none of theirs. It is refused before
# it is parsed (its credentials still looked for, as in any body that cannot be read), so that no
# body, authenticated or not, makes the parser build a structure of its size: 90,000 form fields
# in a 1-MB body took a worker from 70 MB to over 1 GB, and the memory stayed with the worker.
MAX_FIELDS = 200


class JsonNumber(str):
    """A JSON number, kept as written (`1e400`, `0.10`, `61410010001.0`): BestSMS sends its fields
    as text, so the fields judge a number by its literal (a text field refuses it; a price takes
    a plain decimal), and nothing is lost to float rounding."""


@dataclass(frozen=True)
class Payload:
    """A callback as its format reads it: its fields (credentials removed, text storable), the
    credentials it carried, the body as it may be stored (without them), and, when it cannot be
    read field by field, why (`refused`: its credentials were still looked for)."""

    format: str | None
    fields: dict[str, Any]
    credentials: tuple[str, ...]
    stored_body: str | None
    refused: Refused | None = None


def is_credential(name: Any) -> bool:
    return isinstance(name, str) and name.strip().lower() in CREDENTIAL_FIELDS


def format_of(method: str, content_type: str | None, body: bytes | str) -> str:
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


def decode(method: str, content_type: str | None, body: bytes | str, query_string: str) -> Payload:
    """A request as a Payload; never raises. `body` is bytes as received, or text as stored
    (reprocessing: already decoded, so its declared encoding is not applied again)."""
    fmt: str | None = None
    text: str | None = None
    try:
        fmt = format_of(method, content_type, body)
        if fmt == "query":
            data = _pairs(query_string)
        else:
            text = body if isinstance(body, str) else _text(fmt, body, _charset(content_type))
            if fmt == "xml":
                text = _xml_chars(text)
            data = _json(text) if fmt == "json" else _xml(text) if fmt == "xml" else _pairs(text)
    except Refused as exc:
        kept = body if isinstance(body, str) else _text(fmt, body, _charset(content_type), "backslashreplace")
        credentials = _scan_credentials(kept)
        # Not stored either: each one that could be a token (as long as one may be), in any spelling.
        kept = redact(kept, tuple(c for c in credentials if len(c) >= MIN_TOKEN_LENGTH))
        return Payload(fmt, {}, credentials, kept or None, settled(exc))
    credentials = tuple(_credential_text(data.pop(k)) for k in [k for k in data if is_credential(k)])
    unstorable = text is not None and _UNSTORABLE.search(text) is not None
    # A field can hold what no table can when the text does, or an escape could spell it (`\u0000`,
    # `%00`); a query string is always looked at.
    if text is None or unstorable or "\\u" in text or "%" in text:
        data = {_storable(k): _storable(v) for k, v in data.items()}
    if text is not None and (credentials or unstorable):
        text = _encode(fmt, data, text)  # without credentials, and storable: replays to the same fields
    return Payload(fmt, data, credentials, text)


def query(query_string: str) -> tuple[str, tuple[str, ...]]:
    """(the query string as it may be stored, the credentials in it): `token=` and APIKey never stored.
    One of more than MAX_FIELDS fields is not parsed: its credentials are scanned for, and the
    configured tokens are redacted from it where it is stored, like any text."""
    if _over_cap_pairs(query_string):
        return query_string, _scan_credentials(query_string)
    pairs = parse_qsl(query_string, keep_blank_values=True)
    credentials = tuple(v for k, v in pairs if is_credential(k))
    if not credentials:
        return query_string, ()
    return urlencode([(k, v) for k, v in pairs if not is_credential(k)]), credentials


def _storable(value: Any) -> Any:
    """Text any table can hold: NUL and lone surrogates replaced by U+FFFD; other values as they are."""
    if isinstance(value, str) and not isinstance(value, JsonNumber):
        return _UNSTORABLE.sub(REPLACEMENT, value)
    return value


def _credential_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- bytes to text ----------------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_XML_DECLARED = re.compile(rb"\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]{1,40})[\"']")


def _charset(content_type: str | None) -> str | None:
    found = re.search(r";\s*charset\s*=\s*\"?([A-Za-z0-9._-]{1,40})", content_type or "", re.IGNORECASE)
    return found.group(1) if found else None


def _codec(name: str | None) -> str | None:
    """The text encoding `name` names, or None when Python knows no such text encoding."""
    try:
        info = codecs.lookup(name or "")
    except LookupError:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _text(fmt: str | None, body: bytes, charset: str | None, errors: str = "replace") -> str:
    """The body as text: in the charset the Content-Type names, else the one the body shows (a
    byte order mark, JSON's UTF-16/32 pattern, an XML declaration), else UTF-8; bytes that are
    not text in it become U+FFFD (or, `errors="backslashreplace"`, `\\xNN`)."""
    encoding = _codec(charset) or next((name for bom, name in _BOMS if body.startswith(bom)), None)
    if encoding is None and fmt == "json":
        encoding = json.detect_encoding(body)
    if encoding is None and fmt == "xml":
        if body.startswith(b"<\x00"):
            encoding = "utf-16-le"
        elif body.startswith(b"\x00<"):
            encoding = "utf-16-be"
        elif declared := _XML_DECLARED.match(body):
            encoding = _codec(declared.group(1).decode("ascii"))
    return body.decode(encoding or "utf-8", errors).removeprefix("\ufeff")


# -- the four formats -------------------------------------------------------------------------------

def _too_many(what: str) -> Refused:
    return Refused(400, f"more than {MAX_FIELDS} fields{what}: a BestSMS webhook has about 25")


def _over_cap_pairs(text: str) -> bool:
    return text.count("&") >= MAX_FIELDS  # an upper bound: empty parts are no fields


def _pairs(text: str) -> dict[str, Any]:
    if _over_cap_pairs(text):
        raise _too_many(" ('&'-separated)")
    data: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        data.setdefault(key, value)  # the first of repeated keys wins
    return data


# strict=False: a raw control character in a string is text, not an error.
_JSON = json.JSONDecoder(strict=False, parse_int=JsonNumber, parse_float=JsonNumber, parse_constant=JsonNumber)


# A JSON string, to count the separators outside strings.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json(text: str) -> dict[str, Any]:
    # Members and array elements at any depth, by their separators (`:` and `,` outside strings),
    # counted only when the whole text has that many.
    if text.count(":") + text.count(",") > 2 * MAX_FIELDS:
        outside = _JSON_STRING.sub("", text)
        if outside.count(":") + outside.count(",") > 2 * MAX_FIELDS:
            raise _too_many(" (members and elements, at any depth)")
    try:
        data = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise Refused(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # nesting too deep
        raise Refused(400, f"JSON refused: {type(exc).__name__}: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise Refused(400, f"JSON body must be an object of fields, got {type(data).__name__}")
    return data


_XML_CHAR_REF = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")
_XML_SURROGATE_PAIR = re.compile(r"&#[xX](d[89ab][0-9a-f]{2});&#[xX](d[c-f][0-9a-f]{2});", re.IGNORECASE)
# Characters XML 1.0 does not allow (raw): control characters but tab and line ends, surrogates, U+FFFE/F.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_char(match: re.Match[str]) -> str:
    code = int(match.group(1), 16) if match.group(1) else int(match.group(2))
    allowed = (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
               or 0x10000 <= code <= 0x10FFFF)
    return match.group(0) if allowed else "&#xFFFD;"


def _xml_chars(text: str) -> str:
    """XML whose characters XML forbids (`&#0;`, `&#xD83D;`, a raw control character) are U+FFFD,
    and an emoji written as two surrogate references is the one character it means."""
    text = _XML_SURROGATE_PAIR.sub(
        lambda m: f"&#x{(0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + int(m.group(2), 16) - 0xDC00):X};", text)
    return _XML_INVALID.sub(REPLACEMENT, _XML_CHAR_REF.sub(_xml_char, text))


class _Fields:
    """An XML parser's target that keeps the text of the root's children, the first of each name
    (any namespace dropped), and builds no tree: what expat reads is counted, never kept."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.elements = 0
        self.depth = 0
        self.text: list[str] | None = None  # a child's text, until its first element
        self.name = ""  # that child's name

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.elements += 1
        if self.elements > MAX_FIELDS + 1:  # the root, and a field each
            raise _too_many(" (XML elements)")
        self.depth += 1
        if self.text is not None:
            self.close_text()
        self.text = [] if self.depth == 2 else None
        self.name = tag.rpartition("}")[2]

    def data(self, text: str) -> None:
        if self.text is not None:
            self.text.append(text)

    def end(self, tag: str) -> None:
        if self.text is not None:
            self.close_text()
        self.depth -= 1

    def close_text(self) -> None:
        assert self.text is not None
        self.fields.setdefault(self.name, "".join(self.text))
        self.text = None

    def close(self) -> dict[str, str]:
        return self.fields


def _xml(text: str) -> dict[str, Any]:
    parser = defusedxml.ElementTree.DefusedXMLParser(target=_Fields(), forbid_dtd=True)
    try:
        parser.feed(text)
        return cast(dict[str, Any], parser.close())
    except DefusedXmlException as exc:
        raise Refused(400, f"XML refused: {exc.__class__.__name__} (DTDs and entities are not accepted)") from None
    except ParseError as exc:
        raise Refused(400, f"malformed XML: {exc}") from None


def _encode(fmt: str | None, kept: dict[str, Any], text: str) -> str:
    """The body re-encoded with only the fields `kept` (no credential, every character storable):
    reprocessing it gives the same fields."""
    if fmt == "json" and not any(isinstance(v, JsonNumber) for v in kept.values()):
        return json.dumps(kept, ensure_ascii=False)
    if fmt == "json":  # a number is written as it was sent
        members = (f"{json.dumps(k, ensure_ascii=False)}: "
                   f"{v if isinstance(v, JsonNumber) else json.dumps(v, ensure_ascii=False)}" for k, v in kept.items())
        return "{" + ", ".join(members) + "}"
    if fmt == "xml":
        root = re.match(r"\s*(?:<\?.*?\?>\s*)?<([^\s/>]+)", text, re.DOTALL)
        tag = root.group(1).rpartition(":")[2] if root else "Webhook"  # namespaces were dropped
        children = "".join(f"<{k}>{xml_escape(str(v))}</{k}>" for k, v in kept.items())
        return f"<{tag}>{children}</{tag}>"
    return urlencode([(k, _storable(v)) for k, v in parse_qsl(text, keep_blank_values=True) if not is_credential(k)])


# -- credentials in what cannot be read field by field ------------------------------------------------

_NAMES = "|".join(re.escape(name) for name in sorted(CREDENTIAL_FIELDS))
_SCANS = (
    (re.compile(rf'"\s*(?:{_NAMES})\s*"\s*:\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE), lambda v: json.loads(f'"{v}"')),
    (re.compile(rf"(?:^|[&?])(?:{_NAMES})=([^&]*)", re.IGNORECASE), unquote_plus),
    (re.compile(rf"<\s*(?:{_NAMES})\s*>([^<]*)<", re.IGNORECASE), html.unescape),
)


def _scan_credentials(text: str) -> tuple[str, ...]:
    """Credential fields in a body its format cannot read (malformed, another content type): an
    authentic webhook is stored as rejected, not refused as unauthenticated, for its other bytes."""
    found = []
    for pattern, unescape in _SCANS:
        for value in pattern.findall(text):
            try:
                found.append(unescape(value))
            except ValueError:
                continue
    return tuple(found)


# -- secrets in what is stored ----------------------------------------------------------------------

def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with each of `secrets` (the configured tokens), in any of the encodings a request
    could carry it in, replaced; when one is still there in a spelling that cannot be cut out
    (every character escaped, UTF-16), the whole text is withheld: its length and digest only."""
    for form in spellings(secrets):
        if form in text:
            text = text.replace(form, REDACTED)
    hidden = secrets and _HIDING.search(text)
    if hidden and any(secret in view for view in _views(text) for secret in secrets if secret):
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return f"[withheld: {len(text)} characters, sha256 {digest}: a configured token in a spelling not removable]"
    return text


def redact_cut(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`redact` for a text cut short at a limit: its last characters, where the beginning of a
    token could stand unrecognised, dropped too."""
    tail = max(map(len, spellings(secrets)), default=0)
    return redact(text[:max(len(text) - tail, 0)], secrets)


@lru_cache(maxsize=8)
def spellings(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Every way a request (or a log line quoting one) could spell each secret, longest first:
    as itself, percent-encoded (the reserved characters, or every one), XML- and JSON-escaped.
    Computed once per set of tokens; the stored requests and the log filter both use it."""
    forms = set()
    for secret in filter(None, secrets):
        every = "".join(f"%{b:02X}" for b in secret.encode())
        forms |= {secret, quote_plus(secret), quote(secret, safe=""), every, every.lower(), xml_escape(secret),
                  json.dumps(secret)[1:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
# What a token could hide behind in a text: an escape (`%`, `\u`, `&#`) or UTF-16's NULs.
_HIDING = re.compile(r"%|\\u|&#|\x00|\\x00")


def _views(text: str) -> tuple[str, ...]:
    """`text` with each escape a request could hide a token behind undone: percent, `\\u`, `&#`,
    and the NULs of UTF-16 read as UTF-8."""
    unescaped = html.unescape(_JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), unquote_plus(text)))
    return text, unescaped, unescaped.replace("\x00", "").replace("\\x00", "")
