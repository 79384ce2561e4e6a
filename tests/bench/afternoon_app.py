"""The afternoon version: the same job as the receiver's result webhook, as a user would write it
in an afternoon. Flask, a marshmallow schema of the result webhook (12 fields), phonenumbers'
E.164, a psycopg_pool; per webhook one transaction: the raw body archived, the message inserted if
new, the recipient upserted on (MessageID, destination) with a status-rank compare in the upsert's
WHERE; commit, 200. No group commit, no reply linking, no other encodings, no poller, no metrics,
no log line. A bad token is 401, a payload the schema refuses 400.

Its tables are made by throughput.py (AFTERNOON_TABLES).

DATABASE_URL names the database, WEBHOOK_TOKEN the APIKey expected, PEER_POOL_SIZE the pool per
worker (the threads, by default).
"""

import hmac
import os

import phonenumbers
from flask import Flask, jsonify, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates
from psycopg_pool import ConnectionPool

RANK = {"Pending": 0, "Success": 1, "Failed": 1}


class ResultWebhook(Schema):
    class Meta:
        unknown = EXCLUDE

    APIKey = fields.String(required=True)
    MessageID = fields.String(required=True, validate=validate.Length(1, 40))
    DestSeq = fields.String(load_default=None)
    Destination = fields.String(required=True)
    Type = fields.String(load_default=None)
    SubAccount = fields.String(load_default=None)
    Department = fields.String(load_default=None)
    JobNumber = fields.String(load_default=None)
    SentTimeUTC_RFC3339 = fields.AwareDateTime(load_default=None)
    Status = fields.String(required=True, validate=validate.OneOf(list(RANK)))
    Result = fields.String(load_default=None)
    Price = fields.Decimal(load_default=None)

    @validates("Destination")
    def e164(self, value: str, **_: object) -> None:
        try:
            number = phonenumbers.parse(value, "AU")
        except phonenumbers.NumberParseException as exc:
            raise ValidationError(str(exc)) from exc
        if not phonenumbers.is_possible_number(number):
            raise ValidationError("not a phone number")


schema = ResultWebhook()
app = Flask(__name__)
size = int(os.environ.get("PEER_POOL_SIZE", "8"))
pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=size, max_size=size, kwargs={"autocommit": True},
                      open=True)
token = os.environ.get("WEBHOOK_TOKEN", "")


@app.post("/webhooks/bestsms")
def webhook():  # type: ignore[no-untyped-def]
    raw = request.get_data(as_text=True)
    try:
        data = schema.load(request.get_json(force=True))
    except ValidationError as exc:
        return jsonify({"error": exc.messages}), 400
    if not hmac.compare_digest(data["APIKey"], token):
        return jsonify({"error": "unauthorized"}), 401
    destination = phonenumbers.format_number(phonenumbers.parse(data["Destination"], "AU"),
                                             phonenumbers.PhoneNumberFormat.E164)
    with pool.connection() as conn, conn.transaction():
        conn.execute("INSERT INTO afternoon_raw (body) VALUES (%s)", (raw,))
        conn.execute("INSERT INTO afternoon_messages (message_id, sub_account, department, job_number) "
                     "VALUES (%s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING",
                     (data["MessageID"], data["SubAccount"], data["Department"], data["JobNumber"]))
        conn.execute(
            "INSERT INTO afternoon_recipients AS r (message_id, destination, dest_seq, type, status, rank, result,"
            " sent_at, price) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (message_id, destination) DO UPDATE SET status = EXCLUDED.status, rank = EXCLUDED.rank,"
            " result = EXCLUDED.result, sent_at = EXCLUDED.sent_at, price = coalesce(EXCLUDED.price, r.price),"
            " dest_seq = coalesce(r.dest_seq, EXCLUDED.dest_seq), updated_at = now()"
            " WHERE EXCLUDED.rank > r.rank OR (EXCLUDED.rank = r.rank AND EXCLUDED.sent_at > r.sent_at)",
            (data["MessageID"], destination, data["DestSeq"], data["Type"], data["Status"], RANK[data["Status"]],
             data["Result"], data["SentTimeUTC_RFC3339"], data["Price"]))
    return jsonify({"status": "stored"})


@app.get("/readyz")
def ready():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ready"})
