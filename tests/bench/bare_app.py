"""The framework's ceiling: a Flask app that only parses the webhook's JSON (no database)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/bestsms")
def webhook():  # type: ignore[no-untyped-def]
    data = request.get_json()
    return jsonify({"status": "parsed", "fields": len(data)})


@app.get("/readyz")
def ready():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ready"})
