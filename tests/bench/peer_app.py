"""The peer: the receiver a user would write in an afternoon. Flask, a psycopg_pool, and one INSERT
of the raw JSON into a one-table schema, committed per webhook (autocommit: durable before the
200). No validation, no merge, no archive of headers, no metrics, no log line.

    CREATE TABLE peer_webhooks (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(),
                                body jsonb NOT NULL);

DATABASE_URL names the database; PEER_POOL_SIZE its pool per worker (the threads, by default).
"""

import os

from flask import Flask, jsonify, request
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

app = Flask(__name__)
pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=int(os.environ.get("PEER_POOL_SIZE", "8")),
                      max_size=int(os.environ.get("PEER_POOL_SIZE", "8")), kwargs={"autocommit": True}, open=True)


@app.post("/webhooks/bestsms")
def webhook():  # type: ignore[no-untyped-def]
    data = request.get_json()
    with pool.connection() as conn:
        conn.execute("INSERT INTO peer_webhooks (body) VALUES (%s)", (Jsonb(data),))
    return jsonify({"status": "stored"})


@app.get("/readyz")
def ready():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ready"})
