"""receiver/web.py: what every endpoint shares; here the request id that ties a request's log
lines together (authentication, bodies and answers are tested through the endpoints)."""

from __future__ import annotations

import dataclasses
import json
import re
import socket

import httpx
import pytest

from receiver import create_app
from receiver.web import services
from tests.support import TOKEN, post_http, start_gunicorn, stop

HEX_ID = re.compile(r"[0-9a-f]{32}")


def test_every_answer_has_a_request_id_of_its_own(client):
    answers = [client.get("/healthz"), client.get("/nothing"), client.post("/webhooks/bestsms", json={})]
    ids = [a.headers["X-Request-ID"] for a in answers]
    assert [a.status_code for a in answers] == [200, 404, 401]
    assert all(HEX_ID.fullmatch(i) for i in ids) and len(set(ids)) == 3


@pytest.mark.parametrize(("given", "proxy_hops", "kept"), [
    ("nginx-id-0123456789", 0, False),  # a client on the internet cannot choose the id
    ("nginx-id-0123456789", 1, True),  # the proxy in front can (nginx's $request_id)
    ("x\x01{\"forged\": 1}", 1, False),
    ("x" * 65, 1, False),
])
def test_a_request_id_is_taken_from_a_trusted_proxy_only(settings, given, proxy_hops, kept):
    app = create_app(dataclasses.replace(settings, proxy_hops=proxy_hops))
    try:
        answer = app.test_client().get("/healthz", headers={"X-Request-ID": given})
    finally:
        services(app).database.close()
    assert (answer.headers["X-Request-ID"] == given) is kept
    assert kept or HEX_ID.fullmatch(answer.headers["X-Request-ID"])


@pytest.mark.slow
def test_each_log_line_of_a_request_carries_its_request_id_and_message_id(database_url, db, tmp_path):
    """Two different final results: the webhook's line and the warning about the conflict name the
    same request and message, through a real gunicorn."""
    log_path = tmp_path / "gunicorn.log"
    proc, base = start_gunicorn(database_url, workers=1, log_path=log_path)
    fields = {"APIKey": TOKEN, "MessageID": "log-1", "Destination": "+61410010001", "DestSeq": "1"}
    try:
        first = post_http(base, {**fields, "Status": "Success", "Result": "delivered"})
        second = post_http(base, {**fields, "Status": "Failed", "Result": "expired"})
        unauthorized = httpx.post(f"{base}/webhooks/bestsms", json={**fields, "APIKey": "wrong-token-123"})
        # A request line built to write a log record of its own, as gunicorn quotes it back.
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b'GET /webhooks/bestsms?token=x&a=%0a{"message_id":"FORGED-LOG"}%0a\x01 HTTP/1.1\r\n\r\n')
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        stop(proc)
    assert (first.status_code, second.status_code, unauthorized.status_code) == (200, 200, 401)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line a JSON record
    assert not any(line.get("message_id") == "FORGED-LOG" for line in lines)
    assert any("FORGED-LOG" in str(line["event"]) for line in lines)  # gunicorn's line, quoting it as text
    by_request: dict[str, list[dict[str, object]]] = {}
    for line in lines:
        if "request_id" in line:
            by_request.setdefault(str(line["request_id"]), []).append(line)
    conflict = by_request[second.headers["X-Request-ID"]]
    assert [line["event"] for line in conflict] == ["conflicting final results", "webhook"]
    assert {line["message_id"] for line in conflict} == {"log-1"}
    [refused] = [line for line in by_request[unauthorized.headers["X-Request-ID"]] if line["event"] == "webhook"]
    assert refused["status"] == 401 and "message_id" not in refused  # nothing of an unauthenticated body is logged
