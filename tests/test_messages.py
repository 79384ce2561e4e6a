"""`POST /messages`: a sending application registers a message for the poller (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.config import Settings
from tests.support import TOKEN, counts, fetch, free_port

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_track_endpoint_registers_messages(client, db):
    response = client.post("/messages", json={"MessageID": "reg-1", "SubAccount": "Clinic", "Department": "R",
                                              "Recipients": 3}, headers=BEARER)
    assert response.status_code == 201 and response.get_json() == {"MessageID": "reg-1", "tracked": True,
                                                                    "created": True}
    again = client.post(f"/messages?token={TOKEN}", json={"MessageID": "reg-1"})
    assert again.status_code == 200 and again.get_json()["created"] is False
    [m] = fetch(db, "SELECT * FROM messages WHERE message_id = %s", "reg-1")
    assert (m["sub_account"], m["department"], m["recipient_count"], m["poll_state"]) == ("Clinic", "R", 3, "active")


# label: (body, headers, status, what the error says)
REFUSED: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "no token": (b'{"MessageID": "reg-2"}', {}, 401, "missing or wrong webhook token"),
    "wrong token": (b'{"MessageID": "reg-2", "APIKey": "not-the-token"}', {}, 401, "missing or wrong webhook token"),
    "not JSON, no token": (b"MessageID=reg-2", {}, 401, "missing or wrong webhook token"),
    "not JSON": (b"MessageID=reg-2", BEARER, 400, 'expected a JSON object: {"MessageID"'),
    "a JSON list": (b'[{"MessageID": "reg-2"}]', BEARER, 400, "must be an object"),
    "MessageID too long": (b'{"MessageID": "' + b"x" * 41 + b'"}', BEARER, 400, "MessageID"),
    "no MessageID": (b'{"Recipients": 2}', BEARER, 400, "MessageID"),
    "MessageID with a control character": (b'{"MessageID": "reg\\u0001-2"}', BEARER, 400, "MessageID"),
    "MessageID with a space": (b'{"MessageID": "reg 2"}', BEARER, 400, "MessageID"),
    "MessageID as a number": (b'{"MessageID": 12345}', BEARER, 400, "MessageID"),
    "negative recipients": (b'{"MessageID": "reg-2", "Recipients": -1}', BEARER, 400, "Recipients"),
    "recipients as text": (b'{"MessageID": "reg-2", "Recipients": "2"}', BEARER, 400, "Recipients"),
    "over MAX_BODY_BYTES": (b'{"MessageID": "reg-2", "x": "' + b"x" * (1 << 20) + b'"}', BEARER, 413,
                            "request body over"),
}


@pytest.mark.parametrize("label", REFUSED)
def test_what_is_refused_is_said_and_nothing_is_tracked(client, db, label):
    body, headers, status, error = REFUSED[label]
    response = client.post("/messages", data=body, headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status, response.get_data(as_text=True)
    assert error in response.get_json()["error"]
    assert counts(db)["messages"] == 0


def test_database_away_is_503_with_retry_after():
    from receiver import create_app
    from receiver.web import services

    app = create_app(Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                              webhook_tokens=(TOKEN,), db_pool_size=1, request_timeout_seconds=1))
    try:
        response: Any = app.test_client().post("/messages", json={"MessageID": "reg-3"}, headers=BEARER)
        assert response.status_code == 503 and response.headers["Retry-After"] == "30"
        assert response.get_json()["error"] == "database unavailable, retry later"
    finally:
        services(app).database.close()
