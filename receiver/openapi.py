"""The receiver's own API, described: an OpenAPI 3 document built from the marshmallow schemas
that validate the requests (apispec), served at `GET /openapi.json`.

The webhook schemas here are the ones the endpoint loads with, so the description cannot drift
from what is accepted; the answers' schemas below are what every endpoint answers (web.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response
from marshmallow import Schema, fields

from . import web
from .bestsms.events import ReplySchema, ResultSchema
from .bestsms.fields import TIME, Count, Price, Time
from .config import DEFAULT_REGION, DEFAULT_TIMEZONE
from .messages import MAX_RECIPIENTS, TrackSchema

TITLE = "BestSMS receiver"
VERSION = "1"


# -- the answers ------------------------------------------------------------------------------------

class Outcome(Schema):
    status = fields.String(required=True, metadata={"enum": ["applied", "duplicate", "stale"],
                                                    "description": "What the webhook changed, once committed"})
    event_id = fields.Integer(required=True, metadata={"description": "Its row in webhook_events"})


class Error(Schema):
    error = fields.String(required=True, metadata={"description": "What is wrong, in one line"})
    fields_ = fields.Dict(data_key="fields", metadata={"description": "The bad fields, each with why"})
    event_id = fields.Integer(metadata={"description": "A refused webhook is kept: its row in webhook_events"})
    reason = fields.String(metadata={"description": "Why the database is unavailable (503)"})


class Tracked(Schema):
    message_id = fields.String(data_key="MessageID", required=True)
    tracked = fields.Boolean(required=True)
    created = fields.Boolean(required=True)


class Alive(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class Ready(Schema):
    status = fields.String(required=True, metadata={"enum": ["ready", "unavailable"]})
    schema = fields.String(metadata={"description": "The schema revision this code needs (ready)"})
    reason = fields.String(metadata={"description": "Why not ready (unavailable)"})
    poller = fields.Dict(metadata={"description": "The pollers' state: unauthorized, backlog, last sweep"})
    archive_days_ahead = fields.Integer(metadata={
        "description": "Days after today (UTC) webhook_events has partitions for; -1: not even today's "
                       "(the next webhook makes it)"})


class Allowed(Schema):
    allow = fields.List(fields.String(), required=True)


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}}
_ERRORS = {
    "400": _json("Error", "Refused: malformed, or a value BestSMS never sends (a webhook is kept as rejected)"),
    "401": _json("Error", "No accepted token in the Authorization header, `?token=` or the body's APIKey"),
    "413": _json("Error", "The body is over MAX_BODY_BYTES"),
    "503": _json("Error", "The database is away, too slow or its schema behind: nothing applied",
                 headers=_RETRY_AFTER),
}


# -- the document -----------------------------------------------------------------------------------

def _field_properties(self: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """What BestSMS's own value fields are, in OpenAPI's words."""
    if isinstance(field, Price):
        return {"type": "string", "pattern": r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$",
                "description": "A plain decimal (a JSON number written plainly is taken too)"}
    if isinstance(field, Time):
        return {"type": "string", "pattern": f"^{TIME.pattern}$"}
    if isinstance(field, Count):
        return {"type": "integer", "minimum": 0}
    return {}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(TITLE, VERSION, "3.0.3", plugins=[plugin], info={
        "description": "Receives BestSMS (TNZ API v2.04) Send Result and Inbound SMS webhooks into PostgreSQL."})
    plugin.converter.add_attribute_function(_field_properties)  # type: ignore[union-attr]
    zone = ZoneInfo(DEFAULT_TIMEZONE)
    for name, schema in (("ResultWebhook", ResultSchema(tz=zone, region=DEFAULT_REGION)),
                         ("ReplyWebhook", ReplySchema(tz=zone, region=DEFAULT_REGION)),
                         ("Track", TrackSchema()), ("Outcome", Outcome), ("Error", Error), ("Tracked", Tracked),
                         ("Alive", Alive), ("Ready", Ready), ("Allowed", Allowed)):
        spec.components.schema(name, schema=schema)
    for scheme, definition in (("bearer", {"type": "http", "scheme": "bearer"}),
                               ("basic", {"type": "http", "scheme": "basic"}),
                               ("query", {"type": "apiKey", "in": "query", "name": "token"})):
        spec.components.security_scheme(scheme, definition)
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}, {"query": []}]

    webhook = {"oneOf": [{"$ref": "#/components/schemas/ResultWebhook"}, {"$ref": "#/components/schemas/ReplyWebhook"}]}
    answers = {"200": _json("Outcome", "Stored and committed"), **_ERRORS,
               "415": _json("Error", "Not JSON, XML or a form: kept as rejected")}
    spec.path("/webhooks/bestsms", operations={
        "post": {
            "summary": "A Send Result or Inbound SMS webhook, as JSON, XML or a form",
            "description": "Authenticated by the body's APIKey field (BestSMS's way), or as the security schemes say.",
            "security": security,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": webhook},
                "application/xml": {"schema": webhook},
                "application/x-www-form-urlencoded": {"schema": webhook}}},
            "responses": answers},
        "get": {
            "summary": "A webhook as a query string (WebhookCallbackFormat GET)",
            "security": security,
            "responses": answers},
    })
    spec.path("/messages", operations={"post": {
        "summary": "Track a message, so that the poller fetches what its webhooks miss",
        "security": security,
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Track"}}},
        "responses": {"201": _json("Tracked", "Tracked, new"), "200": _json("Tracked", "Already tracked"),
                      **_ERRORS}}})
    spec.path("/healthz", operations={"get": {
        "summary": "Liveness: the process serves requests", "security": [],
        "responses": {"200": _json("Alive", "Alive")}}})
    spec.path("/readyz", operations={"get": {
        "summary": "Readiness: the database answers at the schema this code needs", "security": [],
        "responses": {"200": _json("Ready", "Ready"), "503": _json("Ready", "Not ready, and why")}}})
    spec.path("/metrics", operations={"get": {
        "summary": "Prometheus metrics of every worker, and the pollers' state", "security": [],
        "responses": {"200": {"description": "Prometheus exposition text",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    spec.path("/openapi.json", operations={"get": {
        "summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {
            "type": "object"}}}}}}})
    return _described(spec.to_dict())


# What a webhook must hold to be taken, beyond its fields' types: the rules the schemas enforce in
# code (which kind it is, what a number or a time is), written as JSON Schema. Each is a subset of
# what is accepted (the endpoint also takes lower-case statuses, other number spellings, other
# years ...: refusing what BestSMS might send loses it): what the document promises is always taken.
# A number as BestSMS passes it on: international or local, spaced or not (3 to 17 digits).
_PHONE = r"^[+]?[0-9]( ?[0-9]){2,16}$"
# A time as BestSMS writes it (`2025-06-12T20:44:30.000Z`, `2025-06-12 20:44:16+00:00`, a local
# `2025-06-13 06:44:30`), from 2000 to 2099; a date no calendar has (2026-02-30) is refused.
_WHEN = (r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]"
         r"(:[0-5][0-9](\.[0-9]{1,9})?)?(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?$")
_WHEN_SAYS = ("A time as BestSMS writes it, from 2000 to 2099: RFC 3339 (`2025-06-12T20:44:30.000Z`), with a space "
              "(`2025-06-12 20:44:16+00:00`), or without an offset (the UTC fields: UTC; the local ones: the "
              "account's time zone). A date that does not exist (2026-02-30) is refused (400).")
# A price in dollars: a plain decimal under 1,000 as text or as a JSON number, or empty (none).
_PRICE = r"^([0-9]{1,3}(\.[0-9]*)?|\.[0-9]+)?$"
_PRESENT = "[0-9A-Za-z]"  # an id holds a letter or digit (an empty or blank value is an absent one)
_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "ResultWebhook": {"MessageID": {"pattern": _PRESENT}, "Destination": {"pattern": _PHONE},
                      "Status": {"enum": ["Success", "Failed", "Pending"]}, "Type": {"enum": ["SMS"]}},
    "ReplyWebhook": {"ReceivedID": {"pattern": _PRESENT}, "Destination": {"pattern": _PHONE},
                     "Type": {"enum": ["SMSReply", "SMSInbound"]}},
    "Track": {"MessageID": {"pattern": "^[A-Za-z0-9-]{1,40}$"},
              "Recipients": {"minimum": 0, "maximum": MAX_RECIPIENTS}},
}
_REQUIRED = {"ReplyWebhook": ["Type"]}  # what tells a reply from a result


def _described(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document["components"]["schemas"]
    for name in ("ResultWebhook", "ReplyWebhook", "Track"):
        schema = schemas[name]
        schema.setdefault("required", []).extend(_REQUIRED.get(name, []))
        for prop, rules in schema["properties"].items():
            rules.pop("default", None)
            if rules.get("pattern", "").startswith("^[0-9]{4}"):  # a time
                rules.update(pattern=_WHEN, description=_WHEN_SAYS, nullable=False)  # a form has no null
            if rules.get("description", "").startswith("A plain decimal"):
                schema["properties"][prop] = {
                    "description": "Dollars: a plain decimal under 1,000, as text or a JSON number; empty: none",
                    "oneOf": [{"type": "string", "pattern": _PRICE},
                                                {"type": "number", "minimum": 0, "maximum": 999.9999}]}
            rules.update(_RULES.get(name, {}).get(prop, {}))
    result = schemas["ResultWebhook"]  # a GET webhook: the same fields, as query parameters
    document["paths"]["/webhooks/bestsms"]["get"]["parameters"] = [
        {"in": "query", "name": prop, "schema": rules, "required": prop in result["required"]}
        for prop, rules in result["properties"].items()]
    return document


bp = Blueprint("openapi", __name__)


@bp.route("/openapi.json")
def openapi_json() -> Response:
    """This service's API, described (OpenAPI 3, from the schemas that validate the requests)."""
    return web.answer(200, document())
