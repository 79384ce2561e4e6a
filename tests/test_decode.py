"""The four callback encodings decoded to one field dictionary, and redaction (no database needed)."""

from __future__ import annotations

import pytest

from receiver.bestsms.decode import MAX_FIELDS, Payload, decode, format_of, query, redact

CONTENT_TYPES = {"json": "application/json", "xml": "application/xml", "form": "application/x-www-form-urlencoded"}


def decoded(fmt: str, body: bytes | str, query_string: str = "") -> Payload:
    """A request in BestSMS's format `fmt` (json, xml, form, query) decoded."""
    if fmt == "query":
        return decode("GET", None, body, query_string)
    return decode("POST", CONTENT_TYPES[fmt], body, query_string)


@pytest.mark.parametrize(("method", "content_type", "body", "fmt"), [
    ("GET", None, b"", "query"), ("POST", "application/json; charset=utf-8", b"{}", "json"),
    ("POST", "text/xml", b"<a/>", "xml"), ("POST", "application/x-www-form-urlencoded", b"a=1", "form"),
    ("POST", None, b"", "query"),
])
def test_format_of(method, content_type, body, fmt):
    assert format_of(method, content_type, body) == fmt


def test_form_and_query_take_first_of_repeated_fields_and_drop_token():
    payload = decoded("query", b"", "MessageID=a&MessageID=b&token=secret")
    assert payload.fields == {"MessageID": "a"}


def test_xml_any_root_element_name():
    payload = decoded("xml", b"<Anything><MessageID>m</MessageID><Price/></Anything>", "")
    assert payload.fields == {"MessageID": "m", "Price": ""}


def test_xml_external_entity_refused():
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><W><M>&e;</M></W>'
    refused = decoded("xml", body).refused
    assert refused is not None and refused.status == 400


@pytest.mark.parametrize(("fmt", "body"), [
    ("json", '{"APIKey": "s3cr3t-token", "MessageID": "m"}'),
    ("json", '{"\\u0041PIKey": "\\u0073\\u0033cr3t-token", "MessageID": "m"}'),
    ("xml", "<W><APIKey>s3cr3t-token</APIKey><MessageID>m</MessageID></W>"),
    ("xml", "<W><APIKey >&#115;3cr3t-token</APIKey ><MessageID>m</MessageID></W>"),
    ("form", "APIKey=s3cr3t-token&MessageID=m"),
    ("form", "%41PIKey=s3cr3t-token&MessageID=m"),
    ("form", "MessageID=m&apikey=%73%33cr3t-token"),
    ("form", "%74oken=s3cr3t-token&MessageID=m"),
])
def test_credentials_are_taken_out_by_field_whatever_their_spelling(fmt, body):
    payload = decoded(fmt, body.encode(), "")
    assert payload.credentials == ("s3cr3t-token",)
    assert payload.fields == {"MessageID": "m"}
    assert "s3cr3t" not in (payload.stored_body or "")
    # ... and what is stored decodes to the same fields: reprocessing needs nothing more.
    assert decoded(fmt, (payload.stored_body or "").encode(), "").fields == {"MessageID": "m"}


def test_a_body_without_credentials_is_stored_exactly_as_sent():
    body = '{"MessageID": "fz-mangle-0001",   "Destination": "0"}'
    assert decoded("json", body.encode(), "").stored_body == body


@pytest.mark.parametrize(("raw", "stored", "credentials"), [
    ("token=abc&x=1", "x=1", ("abc",)), ("%41PIKey=abc", "", ("abc",)), ("x=%20&y", "x=%20&y", ()),
])
def test_query_strings_lose_their_credentials(raw, stored, credentials):
    assert query(raw) == (stored, credentials)


def test_redact_removes_known_secrets_in_any_encoding():
    assert redact("x=a%2Bb%2Fc&y=a+b/c", ("a+b/c",)) == "x=[REDACTED]&y=[REDACTED]"


# -- a body of more fields than any webhook: refused before it is parsed --------------------------

def _fields(fmt: str, n: int) -> bytes:
    if fmt == "json":
        return ("{" + ", ".join(f'"F{i}": "v{i}, :"' for i in range(n)) + "}").encode()  # , and : in strings
    if fmt == "xml":
        return ("<Webhook>" + "".join(f"<F{i}>v</F{i}>" for i in range(n)) + "</Webhook>").encode()
    return "&".join(f"F{i}=v" for i in range(n)).encode()


@pytest.mark.parametrize("fmt", ["json", "xml", "form", "query"])
def test_a_body_of_max_fields_is_read_and_one_more_is_refused_unparsed(fmt):
    def payload(n: int) -> Payload:
        body = _fields(fmt, n)
        return decoded(fmt, b"", body.decode()) if fmt == "query" else decoded(fmt, body)

    assert len(payload(MAX_FIELDS).fields) == MAX_FIELDS
    over = payload(MAX_FIELDS + 1)
    assert over.refused is not None and over.refused.status == 400
    assert over.refused.message.startswith(f"more than {MAX_FIELDS} fields"), over.refused.message
    assert over.fields == {}


@pytest.mark.parametrize("fmt", ["json", "xml", "form"])
def test_the_credential_of_a_body_over_the_field_limit_is_still_found(fmt):
    """So that an authentic one is kept as rejected, not answered 401."""
    body = {"json": b'{"APIKey": "s3cret", ' + _fields("json", MAX_FIELDS)[1:],
            "xml": _fields("xml", MAX_FIELDS).replace(b"<Webhook>", b"<Webhook><APIKey>s3cret</APIKey>"),
            "form": b"APIKey=s3cret&" + _fields("form", MAX_FIELDS)}[fmt]
    payload = decoded(fmt, body)
    assert payload.refused is not None and payload.refused.message.startswith("more than")
    assert payload.credentials == ("s3cret",)


def test_json_nested_members_and_array_elements_count_toward_the_limit():
    deep = decoded("json", ('{"a": ' + "[" * 150 + "1" + ",1" * 2 * MAX_FIELDS + "]" * 150 + "}").encode())
    assert deep.refused is not None and deep.refused.message.startswith("more than")
    text = decoded("json", b'{"Message": "' + b'\\", ' * 5000 + b'"}')  # separators inside a string
    assert text.refused is None and text.fields["Message"] == '", ' * 5000


@pytest.mark.parametrize("body", [
    "<W><A>x</A><B/><A>second</A></W>",
    "<W><A>before<B>inner</B>after</A><C>c</C></W>",
    "<W>root text<A>a</A>tail<B>b</B></W>",
    "<W><A>x<!-- a comment -->y</A><?pi data?><B><![CDATA[<not a tag> & raw]]></B></W>",
    '<n:W xmlns:n="urn:x" xmlns:m="urn:y"><n:A>a</n:A><m:B>b</m:B><C xmlns="urn:z">c</C></n:W>',
    "<W><A>&lt;&amp;&#x1F600;&#233;</A><B>\n  </B><C><D><E>deep</E></D></C></W>",
])
def test_xml_fields_are_the_roots_children_as_elementtree_reads_them(body):
    """Read without building a tree; the fields are what ElementTree's tree of the same body gives."""
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.fromstring(body)
    expected: dict[str, str] = {}
    for child in tree:
        expected.setdefault(child.tag.rpartition("}")[2], child.text or "")
    assert decoded("xml", body.encode()).fields == expected


@pytest.mark.parametrize(("fmt", "body"), [
    ("json", b'"APIKey":"s3cret-token-1"'),  # what the fuzz test found: malformed, its credential scanned
    ("json", b'{"APIKey": "s3cret-token-1", "MessageID": '),
    ("form", b"APIKey=s3cret-token-1&" + b"f=v&" * MAX_FIELDS),
    ("xml", b"<W><APIKey>s3cret-token-1</APIKey><unclosed></W>"),
])
def test_a_refused_body_is_kept_without_the_credential_found_in_it(fmt, body):
    payload = decoded(fmt, body)
    assert payload.refused is not None and payload.credentials == ("s3cret-token-1",)
    assert "s3cret-token-1" not in (payload.stored_body or "") and "[REDACTED]" in (payload.stored_body or "")
    short = decoded("json", b'"APIKey":"short"')  # shorter than any token may be: no secret, kept as sent
    assert short.credentials == ("short",) and short.stored_body == '"APIKey":"short"'
